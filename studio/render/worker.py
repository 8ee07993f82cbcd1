"""One render worker: a warm Studio for one device, run by Ray as an actor (a plain class, so it can also be
used and tested without Ray).

A worker plans and runs with its own machine's folders and libraries. It first proves itself (``probe``):
the render's settings opened here as a preset made on the driver, which gives the cross-machine report, the
initial-noise fingerprint of seed 0, and the latents after seed 0's first step. Then it renders jobs one
image at a time and returns each as PNG bytes with full metadata; the driver alone writes files.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Optional


class RenderWorker:
    def __init__(self, config: Optional[dict] = None, threads: Optional[int] = None, name: Optional[str] = None):
        """``config``: the AppConfig to use (a local render passes the driver's folders, with any of this
        worker's own); None reads this machine's (STUDIO_* variables and defaults), as a worker on another host
        must. ``threads``: the CPU threads its runs use."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a worker never fetches weights
        # Workers share cores: OpenMP threads that wait spinning would take the CPU from the other workers'
        # (2 workers × 2 threads on 2 cores ran about 5× slower). Waiting passively changes no result.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from studio.runtime import prepare_process, quiet_libraries

        prepare_process()
        quiet_libraries()
        import torch

        # Ray limits a worker's OpenMP threads to its CPU share; torch's results depend on the thread count,
        # so a worker runs the count it is given, else the one a studio process on this host would run.
        threads = int(threads) if threads else _standalone_threads()
        torch.set_num_threads(threads)
        from studio.service import Studio
        from studio.settings import AppConfig

        self.studio = Studio(AppConfig.from_env() if config is None else AppConfig.model_validate(config))
        self.threads = threads
        self.model_here: Optional[str] = None  # the render's model as it is named on this machine
        self.name = name or f"worker-{os.getpid()}"

    def identity(self) -> dict:
        return {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(), "threads": self.threads}

    def probe(self, preset_json: dict) -> dict:
        """This worker's proof: the driver's settings (as a preset made there) opened here, and seed 0 run to
        its first step. Loads the model (and on OpenVINO compiles it) once, for every job after."""
        from studio.errors import StudioError
        from studio.settings import Preset

        started = time.perf_counter()
        out = self.identity()
        try:
            preset = Preset.model_validate(preset_json)
            opened = self.studio.open_preset(preset, [])
            plan = opened.plan
            self.model_here = opened.request.model
            latents = self.studio.engine.first_step(plan)
        except StudioError as exc:
            return {**out, "error": exc.message, "seconds": round(time.perf_counter() - started, 3)}
        from studio.repro import environment

        return {**out, "made_on": environment.made_on(plan.backend.device, plan.backend.precision, plan),
                "report": opened.report, "fingerprint": self.studio.engine.preview_fingerprints(plan)[0],
                "latents": latents, "latents_sha256": latents_sha256(latents),
                "seconds": round(time.perf_counter() - started, 3)}

    def render(self, key: str, request_json: dict) -> dict:
        """One image of the render: its PNG bytes (with the metadata of its plan, made here), its pixel hash and
        noise fingerprint, and how long it took."""
        from studio.outputs import encode
        from studio.render.manifest import pixel_sha256
        from studio.settings import GenerationRequest

        started = time.perf_counter()
        request = GenerationRequest.model_validate(request_json)
        if self.model_here is not None:
            request = request.model_copy(update={"model": self.model_here})
        plan = self.studio.engine.with_current_compile(self.studio.plan(request))
        result = self.studio.engine.run(plan)
        image = result.pil_images()[0]
        fingerprint = result.fingerprints[0]
        data = encode(image, result.plan, 0, fingerprint, result.notes, "png")
        return {**self.identity(), "key": key, "png": data, "sha256": pixel_sha256(image),
                "fingerprint": fingerprint, "seconds": round(time.perf_counter() - started, 3),
                "notes": list(result.notes)}


def _standalone_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def latents_sha256(latents) -> str:
    import numpy as np

    array = np.ascontiguousarray(latents, dtype=np.float32)
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()

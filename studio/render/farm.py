"""The render farm's driver: settings × seeds × prompts on Ray workers, each proven before it works.

One call of ``render`` does, in order:
1. make every job and check the output folder (a folder holding another render's manifest is refused);
2. drop the jobs the manifest says are done (file there, pixels unchanged): a rerun resumes;
3. start local Ray (or join a cluster at ``address``) and one actor per worker, each a warm Studio;
4. prove every worker (proof.py) and save the verdicts in workers.json; only admitted workers get jobs;
5. hand out jobs one image at a time, at most two per worker, so a slow worker never holds the queue; a
   worker that dies gives its jobs back to the queue and a fresh worker (proven like the others) takes
   its place;
6. write each image (temp file, then rename) and then its manifest line; stop cleanly when the disk is
   nearly full, saying how far it got.
Only the driver writes files, so a job retried elsewhere can never leave a duplicate line or a half file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from studio.errors import StudioError
from studio.fsutil import WriteError, atomic_write_bytes, check_can_write
from studio.render import proof
from studio.render.jobs import RenderJob, make_jobs
from studio.render.manifest import Manifest
from studio.settings import GenerationRequest

SETTINGS_FILE = "render.json"  # the render's settings: a rerun into the folder must ask for the same ones
WORKERS_FILE = "workers.json"  # every worker's proof: environment, fingerprint, first step, verdict
KEEP_FREE = 200 << 20  # bytes left free on the output disk before a render stops
IN_FLIGHT = 2  # jobs given to a worker at once: one running, one waiting, so it never idles between jobs
POLL_S = 0.25


@dataclass
class RenderSettings:
    request: GenerationRequest  # the base settings; each job sets its own seed (batch 1, seed mode fixed)
    seeds: Sequence[int]
    out: Path
    prompts: Optional[Sequence[str]] = None  # default: the request's own prompt
    workers: Optional[int] = None  # default: one per GPU for CUDA settings, else one
    address: Optional[str] = None  # None: local Ray, started here and stopped after; "auto" or ray://HOST:PORT
    allow_drift: bool = False
    cores_per_worker: Optional[int] = None  # CPU threads of each worker (default: the cores shared out)
    keep_free: int = KEEP_FREE
    # Local renders only: AppConfig fields given to one worker over the driver's (worker i gets item i),
    # e.g. another models or LoRA folder, as a machine with its own files would have.
    worker_config: Sequence[dict] = ()
    preset_report: Optional[dict] = None  # the preset opened on the driver: what differs from where it was made


@dataclass
class WorkerStats:
    name: str
    host: str = "?"
    pid: Optional[int] = None
    state: str = "starting"  # starting | proving | working | refused | died | done
    images: int = 0
    seconds: float = 0.0

    def per_minute(self) -> float:
        return 60.0 * self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    total: int
    done_before: int  # found done in the manifest at the start
    done: int = 0  # rendered by this run
    started: float = field(default_factory=time.monotonic)
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    stage: str = "starting"

    def images_per_minute(self) -> float:
        elapsed = time.monotonic() - self.started
        return 60.0 * self.done / elapsed if self.done and elapsed > 0 else 0.0

    def line(self) -> str:
        finished = self.done_before + self.done
        rate = self.images_per_minute()
        left = self.total - finished
        eta = f" · about {left / rate:.0f} min left" if rate > 0 and left else ""
        each = ", ".join(f"{w.name} {w.per_minute():.1f}/min" if w.state in ("working", "done") else
                         f"{w.name} {w.state}" for w in self.workers.values())
        bar_width = 24
        filled = int(bar_width * finished / max(self.total, 1))
        return (f"[{'#' * filled}{'.' * (bar_width - filled)}] {finished}/{self.total} · {rate:.1f} images/min"
                f"{eta}{f' · {each}' if each else ''}{f' · {self.stage}' if self.stage != 'rendering' else ''}")


class RenderStopped(StudioError):
    """Stop was pressed: what is done stays done, and the same render resumes from there."""


def _base_settings(request: GenerationRequest) -> dict:
    """The settings a render's folder belongs to: everything but the seed, the batch and the prompt."""
    data = request.model_dump(mode="json")
    for key in ("seed", "batch", "seed_mode", "prompt", "expanded_prompt"):
        data.pop(key, None)
    return data


def _check_folder(out: Path, request: GenerationRequest) -> None:
    """Refuse ``out`` if it cannot be written or holds another render's settings (nothing is written here)."""
    check_can_write(out)
    path = out / SETTINGS_FILE
    if not path.exists():
        return
    base = _base_settings(request)
    try:
        there = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        there = None
    if there != base:
        changed = sorted(k for k in set(base) | set(there or {}) if (there or {}).get(k) != base.get(k))
        raise StudioError(f"{out} holds a render of other settings ({', '.join(changed[:5]) or 'unreadable'} "
                          "differ): render into another folder (--out), or run the same settings to resume")


def _claim_folder(out: Path, request: GenerationRequest) -> None:
    """Make ``out`` this render's folder (once its checks passed): a rerun into it must ask for the same settings."""
    path = out / SETTINGS_FILE
    if not path.exists():
        atomic_write_bytes(path, json.dumps({"settings": _base_settings(request)}, indent=2,
                                            ensure_ascii=False).encode())


def _default_workers(plan, address: Optional[str]) -> int:
    if plan.backend.device.startswith("cuda"):
        import ray

        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    return 1


class _Pool:
    """The workers: Ray actors, their proofs and the jobs each holds."""

    def __init__(self, settings: RenderSettings, config: dict, local: bool, preset_json: dict, fingerprint: str,
                 progress: Progress, gpus: int, cpus: float, threads: int):
        import ray

        self.ray = ray
        self.settings, self.config, self.local = settings, config, local
        self.preset_json, self.fingerprint, self.progress = preset_json, fingerprint, progress
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_concurrency=1)(
            _actor_class())
        self.threads = threads
        self.actors: dict[str, object] = {}
        self.held: dict[str, list] = {}  # worker → [(ref, job)]
        self.probing: dict = {}  # ref → worker
        self.jobs: dict = {}  # ref → (worker, job)
        self.admitted: list[str] = []
        self.reference: Optional[dict] = None
        self.waiting_probes: list[dict] = []  # probes that came back before there was a reference
        self.verdicts: dict[str, proof.Verdict] = {}
        self.started = 0

    def start(self) -> None:
        """Start one more worker and its proof."""
        self.started += 1
        name = f"w{self.started}"
        config = dict(self.config)
        if self.local and len(self.settings.worker_config) >= self.started:
            config.update({k: str(v) if isinstance(v, Path) else v
                           for k, v in self.settings.worker_config[self.started - 1].items()})
        actor = self.remote.remote(config if self.local else None, self.threads, name)
        self.actors[name] = actor
        self.held[name] = []
        self.progress.workers[name] = WorkerStats(name, state="proving")
        self.probing[actor.probe.remote(self.preset_json)] = name

    def refs(self) -> list:
        return list(self.probing) + list(self.jobs)

    def proved(self, ref, probe: dict) -> list[proof.Verdict]:
        """A probe came back: judge it (or keep it until a reference exists); the verdicts given now."""
        self.probing.pop(ref)
        stats = self.progress.workers[probe.get("worker", "?")]
        stats.host, stats.pid = probe.get("host", "?"), probe.get("pid")
        if self.reference is None and proof.is_reference(probe, self.fingerprint, self.settings.allow_drift):
            self.reference = probe
        self.waiting_probes.append(probe)
        return self.judge_waiting()

    def lost_while_proving(self, ref) -> str:
        name = self.probing.pop(ref)
        self.progress.workers[name].state = "died"
        self.kill(name)
        return name

    def judge_waiting(self) -> list[proof.Verdict]:
        """Judge the probes kept back, once there is a reference to compare with or no probe is out."""
        if self.reference is None and self.probing:
            return []
        given, self.waiting_probes = self.waiting_probes, []
        return [self._judge(p) for p in given]

    def _judge(self, probe: dict) -> proof.Verdict:
        verdict = proof.judge(probe, self.fingerprint, self.reference, self.settings.allow_drift)
        self.verdicts[verdict.worker] = verdict
        stats = self.progress.workers[verdict.worker]
        if verdict.admitted:
            self.admitted.append(verdict.worker)
            stats.state = "working"
        else:
            stats.state = "refused"
            self.kill(verdict.worker)
        return verdict

    def feed(self, queue: deque) -> None:
        for name in self.admitted:
            while queue and len(self.held[name]) < IN_FLIGHT:
                job = queue.popleft()
                ref = self.actors[name].render.remote(job.key, job.request.model_dump(mode="json"))
                self.held[name].append((ref, job))
                self.jobs[ref] = (name, job)

    def finished(self, ref):
        name, job = self.jobs.pop(ref)
        self.held[name] = [(r, j) for r, j in self.held[name] if r is not ref]
        return name, job

    def died(self, name: str, queue: deque) -> None:
        """Worker ``name`` is gone: its jobs go back to the front of the queue."""
        for ref, job in reversed(self.held.pop(name, [])):
            self.jobs.pop(ref, None)
            queue.appendleft(job)
        self.held[name] = []
        if name in self.admitted:
            self.admitted.remove(name)
        self.progress.workers[name].state = "died"
        self.kill(name)

    def kill(self, name: str) -> None:
        actor = self.actors.pop(name, None)
        if actor is not None:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass

    def close(self) -> None:
        for name in list(self.actors):
            self.kill(name)


def _actor_class():
    from studio.render.worker import RenderWorker

    return RenderWorker


def _is_worker_loss(exc: BaseException) -> bool:
    import ray.exceptions as rx

    lost = tuple(getattr(rx, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                            "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
                 if hasattr(rx, n))
    return isinstance(exc, lost)


def _message(exc: BaseException) -> str:
    """The one line a worker's failure says: a StudioError's message, else the exception's last line."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, StudioError):
        return cause.message
    lines = str(cause).strip().splitlines()
    return lines[-1] if lines else type(cause).__name__


def start_ray(address: Optional[str], cpus: int, gpus: int) -> bool:
    """Ray for this render: a cluster joined at ``address``, or a local instance started here (True: stop
    it after). Nothing is sent anywhere: usage statistics are off, and no dashboard is started."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"could not start {where} ({first}): " +
                          ("check the address and that `ray start --head` runs there" if address else
                           "check that nothing else holds Ray's ports, or give --address of a running cluster"))
    return True


def render(studio, settings: RenderSettings, on_progress: Optional[Callable[[Progress], None]] = None,
           stop: Optional[threading.Event] = None) -> dict:
    """Render every job of ``settings`` not done yet; the summary (see the module's docstring)."""
    out = Path(settings.out)
    jobs = make_jobs(settings.request, list(settings.seeds), settings.prompts)
    # Planned here before anything starts: bad settings are one line now, not a worker's error later.
    probe_request = jobs[0].request.model_copy(update={"seed": 0})
    plan = studio.plan(probe_request)
    for job in {j.prompt: j for j in jobs}.values():
        studio.plan(job.request)  # each prompt (its tokens, its LoRA tags) checked before a worker starts
    _check_folder(out, settings.request)
    manifest = Manifest(out)
    todo = [job for job in jobs if manifest.done(job.key) is None]
    progress = Progress(total=len(jobs), done_before=len(jobs) - len(todo))
    summary = {"out": str(out), "total": len(jobs), "done_before": progress.done_before, "rendered": 0,
               "manifest": str(manifest.path), "workers": [], "dropped_manifest_lines": manifest.dropped, "notes": []}
    if not todo:
        progress.stage = "nothing to do"
        if on_progress:
            on_progress(progress)
        return {**summary, "message": f"all {len(jobs)} images are done already ({manifest.path.name})"}
    _check_space(out, settings.keep_free, progress)
    _claim_folder(out, settings.request)  # only now: a refused render writes nothing
    preset = studio.make_preset(probe_request, "render")
    fingerprint = studio.engine.preview_fingerprints(plan)[0]
    local = not settings.address
    cuda = plan.backend.device.startswith("cuda")
    cpus = os.cpu_count() or 1
    gpus = 0
    if cuda and local:
        import torch

        gpus = torch.cuda.device_count()
    started_ray = start_ray(settings.address, cpus, gpus)
    pool = None
    try:
        import ray

        workers = settings.workers or _default_workers(plan, settings.address)
        total_cpus = float(ray.cluster_resources().get("CPU", cpus))
        if settings.cores_per_worker:
            actor_cpus, threads = float(settings.cores_per_worker), settings.cores_per_worker
            if local and actor_cpus * workers > total_cpus:
                raise StudioError(f"{workers} workers × {settings.cores_per_worker} cores need "
                                  f"{workers * settings.cores_per_worker:g} cores; this machine has {total_cpus:g}: "
                                  "give fewer workers or fewer --cores-per-worker")
        else:
            # Each worker runs as many torch threads as `studio generate` here does: torch's CPU results
            # depend on the thread count, and a render's images must be the ones generate gives. The workers
            # then share the cores (Ray is told each takes its share).
            import torch

            actor_cpus = total_cpus / workers if not cuda else 1.0
            threads = torch.get_num_threads() if local else None
        pool = _Pool(settings, studio.config.model_dump(mode="json"), local, preset.to_json_dict(), fingerprint,
                     progress, 1 if cuda else 0, actor_cpus, threads)
        for _ in range(workers):
            pool.start()
        progress.stage = f"proving {workers} worker(s)"
        summary["preset_report"] = settings.preset_report
        _run(pool, deque(todo), manifest, out, settings, progress, on_progress, stop, workers, summary)
    finally:
        if pool is not None:
            _save_workers(out, pool, settings)
            summary["workers"] = [{**v.to_json(), "images": progress.workers[v.worker].images,
                                   "images_per_min": round(progress.workers[v.worker].per_minute(), 2),
                                   "state": progress.workers[v.worker].state}
                                  for v in pool.verdicts.values()]
            for v in summary["workers"]:
                v.pop("report", None)
                v.pop("made_on", None)
            pool.close()
        if started_ray:
            import ray

            ray.shutdown()
    summary["rendered"] = progress.done
    summary["images_per_min"] = round(progress.images_per_minute(), 2)
    summary["seconds"] = round(time.monotonic() - progress.started, 2)
    summary["workers_file"] = str(out / WORKERS_FILE)
    return summary


def _run(pool: _Pool, queue: deque, manifest: Manifest, out: Path, settings: RenderSettings, progress: Progress,
         on_progress, stop: Optional[threading.Event], workers: int, summary: dict) -> None:
    ray = pool.ray
    replacements = workers  # a worker lost is replaced, up to as many times as there are workers
    last_told = 0.0
    while queue or pool.jobs:
        if stop is not None and stop.is_set():
            raise RenderStopped(f"stopped: {progress.done_before + progress.done} of {progress.total} images are "
                                "done; run the same render again to go on from there")
        pool.feed(queue)
        if not pool.refs():
            refused = [v.line() for v in pool.verdicts.values() if not v.admitted]
            raise StudioError("no worker can render these settings as the driver planned them: "
                              + (" | ".join(refused) if refused else "every worker was lost")
                              + f" ({progress.done_before + progress.done} of {progress.total} images are done)")
        ready, _ = ray.wait(pool.refs(), num_returns=1, timeout=POLL_S)
        for ref in ready:
            if ref in pool.probing:
                try:
                    probe = ray.get(ref)
                except Exception as exc:
                    if _is_worker_loss(exc):  # killed while it loaded: a fresh one takes its place
                        name = pool.lost_while_proving(ref)
                        summary["notes"].append(f"{name} was lost while it was being proven ({type(exc).__name__})")
                        if replacements > 0:
                            replacements -= 1
                            pool.start()
                        summary["notes"] += [v.line() for v in pool.judge_waiting() if not v.admitted]
                        continue
                    probe = {"worker": pool.probing[ref], "error": _message(exc)}
                for verdict in pool.proved(ref, probe):
                    if not verdict.admitted:
                        summary["notes"].append(verdict.line())
                _save_workers(out, pool, settings)
                if pool.admitted:
                    progress.stage = "rendering"
                continue
            name, job = pool.finished(ref)
            try:
                done = ray.get(ref)
            except Exception as exc:
                if _is_worker_loss(exc):
                    queue.appendleft(job)
                    pool.died(name, queue)
                    summary["notes"].append(
                        f"{name} was lost ({type(exc).__name__}); its jobs went back to the queue")
                    if replacements > 0:
                        replacements -= 1
                        pool.start()
                    continue
                raise StudioError(f"seed {job.seed} failed on {name}: {_message(exc)} ({progress.done_before + progress.done}"
                                  f" of {progress.total} images are done)") from None
            _save(out, manifest, job, done, settings.keep_free, progress)
            stats = progress.workers[name]
            stats.images += 1
            stats.seconds += float(done["seconds"])
        now = time.monotonic()
        if on_progress is not None and (now - last_told > 0.5 or not (queue or pool.jobs)):
            last_told = now
            on_progress(progress)
    for stats in progress.workers.values():
        if stats.state == "working":
            stats.state = "done"
    progress.stage = "done"
    if on_progress is not None:
        on_progress(progress)


def _check_space(out: Path, keep_free: int, progress: Progress, needed: int = 0) -> None:
    disk = out
    while not disk.exists() and disk.parent != disk:  # a folder still to be made: the disk it will be on
        disk = disk.parent
    free = shutil.disk_usage(disk).free
    if free - needed < keep_free:
        raise StudioError(f"the disk holding {out} has {free / 2**20:.0f} MiB free, under the {keep_free / 2**20:.0f} "
                          f"MiB a render leaves free: {progress.done_before + progress.done} of {progress.total} images"
                          " are done; free some space, then run the same render again to go on")


def _save(out: Path, manifest: Manifest, job: RenderJob, done: dict, keep_free: int, progress: Progress) -> None:
    data = done["png"]
    _check_space(out, keep_free, progress, len(data))
    try:
        atomic_write_bytes(out / job.file, data)
        manifest.add({"key": job.key, "seed": job.seed, "prompt": job.prompt, "file": job.file,
                      "sha256": done["sha256"], "worker": done["worker"], "host": done["host"],
                      "fingerprint": done["fingerprint"], "seconds": done["seconds"], "pid": done.get("pid")})
    except WriteError as exc:
        raise StudioError(f"{exc.message} ({progress.done_before + progress.done} of {progress.total} images are "
                          "done; run the same render again to go on from there)") from None
    progress.done += 1


def _save_workers(out: Path, pool: _Pool, settings: RenderSettings) -> None:
    """workers.json beside the images: each worker's proof and verdict, and the preset's own report."""
    record = {"driver_fingerprint": pool.fingerprint, "allow_drift": settings.allow_drift,
              "latent_drift_limit": proof.LATENT_DRIFT, "preset_report": settings.preset_report,
              "workers": [v.to_json() for v in pool.verdicts.values()]}
    try:
        atomic_write_bytes(out / WORKERS_FILE, json.dumps(record, indent=2, ensure_ascii=False, default=str).encode())
    except WriteError:
        pass  # the images and the manifest matter more; a full disk is said by the render itself

"""torch.compile (inductor, static shapes) of a pipeline's UNet and VAE decoder, one variant per signature.

Why a warm-up run: torch.compile compiles lazily, on the first call with new shapes. Studio compiles when the
recompile manager activates a signature instead, by running the real pipeline one step (and a decode) at the
signature's size with the run's own conditioning and sampler, so the compile is a stage with its seconds, and
the image's steps never include one. A compile during the real run (guards that differed from the warm-up)
would be a prediction gone wrong: `graphs()` counts them, and the run's notes say so.

Why the timestep is cast to float32 before the compiled UNet: schedulers hand it over as int64 or float32, and
each dtype is another compiled graph. The UNet casts it to float32 first thing (diffusers' time projection), so
the cast changes no value and one graph serves every sampler.

Why the on-disk cache has a folder per key (model, device, precision, shapes, library versions, CPU flags):
inductor keys its own cache entries by graph and versions, but studio checks each file it reads back against
what it wrote (blob_cache.py), and a key's folder can be removed alone. A reloaded compile gives the same pixels
as the first (tests/test_torch_compile.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from studio.backends.blob_cache import BlobCache
from studio.backends.compile_manager import Signature

# Dynamo keeps at most this many graphs per compiled function before it silently runs eager: above any LRU size.
GRAPH_LIMIT = 128


class _TimestepAsFloat:
    """The compiled UNet as the pipeline calls it, with the timestep given as a float32 tensor (see above)."""

    def __init__(self, compiled):
        self.__dict__["_compiled"] = compiled

    def __call__(self, sample, timestep, *args, **kwargs):
        import torch

        return self._compiled(sample, torch.as_tensor(timestep, dtype=torch.float32, device=sample.device),
                              *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def graphs() -> int:
    """Graphs compiled so far in this process (dynamo's count)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def configure() -> None:
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, GRAPH_LIMIT)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit,
                                                            GRAPH_LIMIT)


def reset() -> None:
    """Forget every compiled graph in this process (dynamo cannot free one alone)."""
    import torch._dynamo

    torch._dynamo.reset()


class CompiledParts:
    """The compiled UNet and VAE decoder of one pipeline (made once; dynamo holds a graph per signature)."""

    def __init__(self, pipe):
        import torch

        configure()
        self.unet = _TimestepAsFloat(torch.compile(pipe.unet, dynamic=False))
        self.decoder = torch.compile(pipe.vae.decoder, dynamic=False)

    @contextmanager
    def swapped_in(self, pipe):
        """The pipeline runs the compiled parts inside the block, its eager modules again after it."""
        unet, decoder = pipe.unet, pipe.vae.decoder
        object.__setattr__(pipe, "unet", self.unet)  # not diffusers' __setattr__: its config stays the model's
        pipe.vae.decoder = self.decoder
        try:
            yield
        finally:
            object.__setattr__(pipe, "unet", unet)
            pipe.vae.decoder = decoder


def disk_key(sig: Signature, model_sha256: str, dtypes: dict) -> dict:
    from studio.repro.environment import PACKAGES, _version, cpu_info

    return {"model": model_sha256, "device": sig.device, "mode": sig.mode, "signature": str(sig),
            "precision": dict(sorted(dtypes.items())), "cpu_flags": cpu_info()[1],
            "versions": {p: _version(p) for p in PACKAGES if p in ("torch", "diffusers")}}


def compile_variant(cache: BlobCache, sig: Signature, model_sha256: str, dtypes: dict,
                    warm_up: Callable[[], Any]) -> dict:
    """Run ``warm_up`` (one step and a decode through the compiled parts) with inductor's cache in this key's
    folder; what was compiled, from the disk cache or not, and notes."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    from torch._dynamo.utils import counters

    folder, notes = cache.open(disk_key(sig, model_sha256, dtypes))
    hits_before = counters["inductor"]["fxgraph_cache_hit"]
    misses_before = counters["inductor"]["fxgraph_cache_miss"]
    start = time.perf_counter()
    with temporary_cache_dir(str(folder)):
        warm_up()
    cache.record(folder)
    hits = counters["inductor"]["fxgraph_cache_hit"] - hits_before
    misses = counters["inductor"]["fxgraph_cache_miss"] - misses_before
    from_disk = hits > 0 and misses == 0
    notes.append(f"torch.compile: {'loaded the compiled code from the disk cache' if from_disk else 'compiled'} "
                 f"for {sig.width}×{sig.height} in {time.perf_counter() - start:.1f} s (inductor, "
                 f"{hits} graph(s) from disk, {misses} compiled)")
    return {"notes": notes, "from_cache": from_disk, "folder": Path(folder)}

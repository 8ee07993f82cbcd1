"""Studio's engine against the raw diffusers pipeline, same model and settings, alternating in one process.

    python bench/overhead.py [--models tiny sd15-random] [--runs 5]

Both sides load the same built-in model folder and run the same sampler, steps, size and seed with one
CPU generator per image; studio's side is `engine.run(engine.plan(request))` (planning, seeding,
initial-noise fingerprint and all). Prints the median seconds of each and the ratio studio / raw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {"tiny": {"size": 64, "steps": 4}, "sd15-random": {"size": 256, "steps": 2}}


def bench(name: str, runs: int, cache_dir: Path) -> dict:
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from studio.engine.engine import Engine
    from studio.settings import AppConfig, build_request

    size, steps = SETTINGS[name]["size"], SETTINGS[name]["steps"]
    engine = Engine(AppConfig(cache_dir=cache_dir, output_dir=Path(tempfile.mkdtemp())))
    request = build_request(prompt="a lighthouse at dusk, oil painting", seed=7, steps=steps, width=size,
                            height=size, sampler="euler", model=name)
    first = engine.plan(request)
    engine.run(first)  # load the model and warm up
    source = engine.registry.resolve(name)
    raw = StableDiffusionPipeline.from_pretrained(str(source.path), local_files_only=True, safety_checker=None,
                                                  requires_safety_checker=False)
    raw.scheduler = EulerDiscreteScheduler.from_config(raw.scheduler.config)
    raw.set_progress_bar_config(disable=True)

    def run_raw():
        return raw(prompt=request.prompt, num_inference_steps=steps, guidance_scale=request.cfg, width=size,
                   height=size, generator=[torch.Generator().manual_seed(7)], output_type="np").images

    def run_studio():
        return engine.run(engine.plan(request)).images

    same = np.abs(run_raw() - run_studio()).max()
    times = {"raw": [], "studio": []}
    for _ in range(runs):
        for side, fn in (("raw", run_raw), ("studio", run_studio)):
            t = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t)
    raw_s, studio_s = statistics.median(times["raw"]), statistics.median(times["studio"])
    return {"model": name, "size": size, "steps": steps, "runs": runs, "raw_s": raw_s, "studio_s": studio_s,
            "ratio": studio_s / raw_s, "max_abs_diff": float(same)}


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE_DIR",
                                                                          Path.home() / ".cache" / "studio")))
    args = ap.parse_args()
    rows = [bench(m, args.runs, args.cache_dir) for m in args.models]
    print("| model | size | steps | runs | raw diffusers (s, median) | studio (s, median) | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['steps']} | {r['runs']} | {r['raw_s']:.4f} | {r['studio_s']:.4f} "
              f"| {r['ratio']:.3f} | {r['max_abs_diff']:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

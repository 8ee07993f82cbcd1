"""Image-to-image against text-to-image, studio and raw diffusers side by side in one process.

    python bench/img2img.py [--models tiny sd15-random] [--runs 3] [--strength 0.5]

Image-to-image at strength s runs int(steps × s) of the schedule's steps, plus one VAE encode: at 0.5 it
should cost about half of text-to-image. Each row runs the same model, sampler (euler), steps, size, seed and
prompt; the raw side is diffusers' StableDiffusionPipeline and StableDiffusionImg2ImgPipeline (from_pipe),
studio's side is `engine.run(engine.plan(request))` with and without an input image (vary at strength s).
Rows alternate; each figure is the median of ``--runs`` warm runs.
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

SETTINGS = {"tiny": {"size": 64, "steps": 20}, "sd15-random": {"size": 256, "steps": 8}}


def picture(size: int):
    """A smooth seeded test picture (the same one every run)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([0.5 + 0.5 * np.sin(6.3 * x), 0.5 + 0.5 * np.cos(6.3 * y), (x + y) / 2], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def bench(name: str, runs: int, strength: float, cache_dir: Path) -> list[dict]:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from studio.engine.engine import Engine
    from studio.settings import AppConfig, build_request

    size, steps = SETTINGS[name]["size"], SETTINGS[name]["steps"]
    engine = Engine(AppConfig(cache_dir=cache_dir, output_dir=Path(tempfile.mkdtemp())))
    image = picture(size)
    sha = engine.inputs.put(image)
    common = dict(prompt="a lighthouse at dusk, oil painting", seed=7, steps=steps, width=size, height=size,
                  sampler="euler", model=name)
    t2i = build_request(**common)
    i2i = build_request(**common, image={"mode": "vary-subtle", "sha256": sha, "strength": strength})
    engine.run(engine.plan(t2i))  # load the model and warm up
    engine.run(engine.plan(i2i))
    source = engine.registry.resolve(name)
    raw = StableDiffusionPipeline.from_pretrained(str(source.path), local_files_only=True, safety_checker=None,
                                                  requires_safety_checker=False)
    raw.scheduler = EulerDiscreteScheduler.from_config(raw.scheduler.config)
    raw.set_progress_bar_config(disable=True)
    raw_i2i = StableDiffusionImg2ImgPipeline.from_pipe(raw)
    raw_i2i.set_progress_bar_config(disable=True)

    def generator():
        return [torch.Generator().manual_seed(7)]

    sides = {
        "raw diffusers, text to image": lambda: raw(prompt=t2i.prompt, num_inference_steps=steps, guidance_scale=t2i.cfg,
                                                    width=size, height=size, generator=generator(), output_type="np"),
        "raw diffusers, image to image": lambda: raw_i2i(prompt=t2i.prompt, image=image, strength=strength,
                                                         num_inference_steps=steps, guidance_scale=t2i.cfg,
                                                         generator=generator(), output_type="np"),
        "studio, text to image": lambda: engine.run(engine.plan(t2i)),
        "studio, vary (image to image)": lambda: engine.run(engine.plan(i2i)),
    }
    sides["raw diffusers, image to image"]()  # its first run builds the image processor
    times = {side: [] for side in sides}
    for _ in range(runs):
        for side, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t)
    ran = {side: (engine.plan(i2i).image.steps_run if "image to image" in side else steps) for side in sides}
    return [{"model": name, "size": size, "steps": steps, "strength": strength, "side": side, "runs": runs,
             "steps_run": ran[side], "s": statistics.median(times[side])} for side in sides]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE_DIR",
                                                                          Path.home() / ".cache" / "studio")))
    args = ap.parse_args()
    print("| model | size | side | steps run | s per image (median) | vs its text to image |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        rows = bench(model, args.runs, args.strength, args.cache_dir)
        by_side = {r["side"]: r for r in rows}
        for r in rows:
            base = by_side[r["side"].split(",")[0] + ", text to image"]["s"]
            print(f"| {r['model']} | {r['size']} | {r['side']} | {r['steps_run']} of {r['steps']} | {r['s']:.3f} "
                  f"| {r['s'] / base:.2f}× |", flush=True)
        print(f"| {model} | | studio / raw, image to image | | "
              f"{by_side['studio, vary (image to image)']['s'] / by_side['raw diffusers, image to image']['s']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

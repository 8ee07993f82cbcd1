"""OpenVINO vs torch on one model, side by side in one process.

    python bench/openvino.py [--model sd15-random] [--size 256] [--steps 3] [--runs 3]

Prints, per UNet step (CFG batch 2): torch fp32 (the diffusers UNet), raw OpenVINO (a compiled UNet
called directly, accuracy and performance) and studio's OpenVINO backend in both modes (time
between step callbacks of a real run); end-to-end seconds of a run; export and compile seconds; and
the cost of switching between two cached signatures against the cost of a compile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the library it measures: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_time(fn, runs):
    fn()  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15-random")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE_DIR",
                                                                          Path.home() / ".cache" / "studio")))
    args = ap.parse_args()

    import numpy as np
    import torch

    from studio.engine.engine import Engine
    from studio.settings import AppConfig, build_request

    engine = Engine(AppConfig(cache_dir=args.cache_dir, output_dir=Path(tempfile.mkdtemp()),
                              compile_cache_size=4))
    base = dict(prompt="a lighthouse at dusk, oil painting", seed=7, steps=args.steps, width=args.size,
                height=args.size, sampler="euler", model=args.model)
    rows = {}

    def studio_run(request):
        stamps = []
        t = time.perf_counter()
        result = engine.run(engine.plan(request), on_step=lambda i, n: stamps.append(time.perf_counter()))
        total = time.perf_counter() - t
        return result, total, statistics.median(np.diff(stamps)) if len(stamps) > 2 else float("nan")

    # torch fp32: end to end, and the UNet alone
    torch_request = build_request(**base)
    studio_run(torch_request)  # load + warm up
    torch_runs = [studio_run(torch_request) for _ in range(args.runs)]
    torch_result = torch_runs[0][0]
    rows["torch fp32 (studio)"] = (statistics.median(r[2] for r in torch_runs), statistics.median(r[1] for r in torch_runs))
    pipe = next(iter(engine.backend("torch")._pipelines.values()))
    h = args.size // pipe.vae_scale_factor
    sample = torch.randn(2, 4, h, h)
    hidden = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        rows["torch fp32 UNet (raw diffusers)"] = (median_time(lambda: pipe.unet(sample, 500, hidden), args.runs), None)
    engine.backend("torch")._pipelines.clear()  # free memory for OpenVINO

    notes = {}
    for mode in ("accuracy", "performance"):
        request = build_request(**base, backend={"name": "openvino", "device": "CPU", "ov_mode": mode})
        first, first_total, _ = studio_run(request)
        notes[mode] = (first.notes, first.compile_events)
        runs = [studio_run(request) for _ in range(args.runs)]
        diff = np.abs(runs[0][0].images - torch_result.images).max()
        rows[f"openvino {mode} (studio)"] = (statistics.median(r[2] for r in runs), statistics.median(r[1] for r in runs))
        backend = engine.backend("openvino")
        compiled = backend.manager._lru[backend.manager._last]
        unet = compiled["unet"]
        inputs = {"sample": sample.numpy(), "timestep": np.array([500], dtype=np.int64) if unet.input("timestep").get_partial_shape().rank.get_length() == 1 else np.array(500, dtype=np.int64),
                  "encoder_hidden_states": hidden.numpy()}
        rows[f"openvino {mode} UNet (raw compiled model)"] = (median_time(lambda: unet(inputs), args.runs), None)
        rows[f"openvino {mode} max abs diff vs torch"] = (float(diff), None)

    # the text encoder: PyTorch on the CPU (default) against the OpenVINO option, a two-chunk prompt + negative
    from studio.prompts.encode import encode

    backend = engine.backend("openvino")
    text_request = build_request(**base, backend={"name": "openvino", "device": "CPU", "ov_mode": "accuracy",
                                                  "text_encoder": "openvino"})
    studio_run(text_request)  # compiles the text encoder
    loaded = backend._loaded[1]
    ov_side = loaded.ov_text[("CPU", "accuracy")]
    long_prompt = base["prompt"] + ", " + ", ".join(["golden light"] * 40)
    text_rows = {}
    for name, side in (("torch", loaded.text), ("openvino", ov_side)):
        text_rows[name] = median_time(lambda: encode(side, long_prompt, "blurry", 2), max(args.runs, 5))
    text_diff = float((encode(ov_side, long_prompt, "blurry", 2).prompt_embeds
                       - encode(loaded.text, long_prompt, "blurry", 2).prompt_embeds).abs().max())

    # switching between two cached signatures vs a compile
    other = build_request(**{**base, "width": args.size + 64}, backend={"name": "openvino", "device": "CPU",
                                                                        "ov_mode": "accuracy"})
    result, _, _ = studio_run(other)
    compile_s = [e["seconds"] for e in result.compile_events if e["kind"] == "compile"][0]
    sig_a = backend.manager._last
    acc = build_request(**base, backend={"name": "openvino", "device": "CPU", "ov_mode": "accuracy"})
    plan_b = engine.plan(acc)
    sig_b = backend.signature(acc, plan_b.model.short_hash, plan_b.width, plan_b.height, plan_b.prompt.chunk_count,
                              "CPU")
    switches = []
    for _ in range(20):
        for sig in (sig_b, sig_a):
            t = time.perf_counter()
            backend.manager.activate(sig, lambda s: (_ for _ in ()).throw(AssertionError("not cached")))
            switches.append(time.perf_counter() - t)

    torch_step, torch_total = rows["torch fp32 (studio)"]
    from studio.repro.environment import cpu_info

    cpu, flags = cpu_info()
    ran = {mode: next((e.get("precision") for e in notes[mode][1] if e.get("precision")), "?")
           for mode in ("accuracy", "performance")}
    bf16 = "bf16 in force" if ran["performance"] == "bf16" else "no bf16 on this CPU: performance mode ran in fp32"
    print(f"CPU: {cpu} ({os.cpu_count()} cores; flags: {', '.join(flags) or 'none listed'}); "
          f"accuracy ran in {ran['accuracy']}, performance in {ran['performance']} ({bf16})")
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, CFG batch 2, median of {args.runs}\n")
    print("| path | s/step | run (s) | torch step / this |")
    print("|---|---|---|---|")
    for name, (step, total) in rows.items():
        if name.endswith("vs torch"):
            continue
        ratio = f"{torch_step / step:.2f}×" if step else ""
        print(f"| {name} | {step:.3f} | {'' if total is None else f'{total:.2f}'} | {ratio} |")
    for mode in ("accuracy", "performance"):
        studio_step = rows[f"openvino {mode} (studio)"][0]
        raw_step = rows[f"openvino {mode} UNet (raw compiled model)"][0]
        print(f"\n{mode}: studio step / raw compiled UNet = {studio_step / raw_step:.3f}; "
              f"end to end torch / openvino = {torch_total / rows[f'openvino {mode} (studio)'][1]:.2f}×; "
              f"max abs diff vs torch = {rows[f'openvino {mode} max abs diff vs torch'][0]:.2g}")
        print(f"  first run notes: {notes[mode][0]}; events: {notes[mode][1]}")
    print(f"\ntext encoder, 2 chunks + negative: torch {text_rows['torch']:.3f} s, openvino accuracy "
          f"{text_rows['openvino']:.3f} s ({text_rows['torch'] / text_rows['openvino']:.2f}×); "
          f"max abs diff of the embeddings {text_diff:.2g}")
    switch = statistics.median(switches)
    print(f"\nswitch between two cached signatures: {switch * 1e3:.3f} ms; a compile: {compile_s:.2f} s; "
          f"switch / compile = {100 * switch / compile_s:.4f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

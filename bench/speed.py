"""Every generation path of one model side by side in one process: speed, memory and pixels against torch fp32.

    python bench/speed.py [--model sd15-random] [--size 512] [--steps 20] [--runs 3]
                          [--paths torch-fp32,ov-performance,...] [--starts] [--json OUT.json]

Per path (one after another, each from an unloaded engine): the cold first image (load + export/compile +
image, with its stages), the median s/image and s/step of --runs warm runs (s/step: the median interval
between step callbacks), the process's peak RSS, and the verdict and max abs diff of its image against
torch fp32's. torch-bf16-cl times the raw bf16 UNet with and without channels_last (studio has no setting
for it). Also the machine's matmul floor: one OpenVINO MatMul in performance mode against the UNet's FLOPs
per step, and (--starts, slow) a cold and a warm process start of `studio generate` on a fresh cache.
An IR or compiled blob already cached on disk makes a path's cold image shorter: its stages say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# This folder holds a file named like a library it measures (openvino.py): keep it off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse at dusk, oil painting"
CPU_OV = {"name": "openvino", "device": "CPU"}
PATHS = {
    "torch-fp32": {"backend": {"name": "torch", "device": "cpu"}},
    "torch-bf16": {"backend": {"name": "torch", "device": "cpu"}, "precision": {"unet": "bf16"}},
    "torch-bf16-cl": None,  # raw UNet rows, measured on torch-bf16's pipeline
    "torch-compile": {"backend": {"name": "torch", "device": "cpu", "compile": "torch"}},
    "ov-accuracy": {"backend": {**CPU_OV, "ov_mode": "accuracy"}},
    "ov-performance": {"backend": {**CPU_OV, "ov_mode": "performance"}},
    "ov-int8": {"backend": {**CPU_OV, "ov_mode": "performance", "ov_weights": "int8"}},
    "ov-int8-accuracy": {"backend": {**CPU_OV, "ov_mode": "accuracy", "ov_weights": "int8"}},
    "cuda-fp16": {"backend": {"name": "torch", "device": "cuda"},
                  "precision": {"unet": "fp16", "vae": "fp16", "text": "fp16"}},
    "cuda-fp32": {"backend": {"name": "torch", "device": "cuda"}},
}
# A sanity check: a path that silently ran without its option would give the same pixels as this one.
SAME_AS = {"torch-compile": "torch-fp32", "ov-int8": "ov-performance", "ov-int8-accuracy": "ov-accuracy"}
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
GIB = 1024 ** 3


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def proc_status(key: str) -> int | None:
    """A byte count from /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """The process's peak RSS over a stretch: VmHWM reset by clear_refs, else psutil sampled every 20 ms."""

    def __init__(self):
        self.before = proc_status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := current RSS
            self.sampler = None
        except OSError:
            import psutil

            proc, self.peak, self.done = psutil.Process(), 0, threading.Event()
            self.before = proc.memory_info().rss

            def sample():
                while not self.done.wait(0.02):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()

    def stop(self) -> dict:
        if self.sampler is None:
            peak, how = proc_status("VmHWM"), "VmHWM"
        else:
            self.done.set()
            self.sampler.join()
            peak, how = self.peak, "psutil every 20 ms"
        return {"rss_before_gib": self.before / GIB if self.before else None,
                "peak_rss_gib": peak / GIB if peak else None, "peak_rss_by": how}


def unload(engine) -> None:
    """Every path starts from nothing loaded and nothing compiled in memory (disk caches stay: the stages say)."""
    engine.unload()
    for backend in engine._backends.values():
        if hasattr(backend, "drop_compile_cache"):
            backend.drop_compile_cache()
    gc.collect()


def timed_run(engine, request, stages: list | None = None):
    """(result, wall s of plan + run, median s between step callbacks)."""
    import numpy as np

    stamps = []
    on_stage = None if stages is None else (lambda name: stages.append((name, time.perf_counter())))
    t = time.perf_counter()
    result = engine.run(engine.plan(request), on_step=lambda done, total: stamps.append(time.perf_counter()),
                        on_stage=on_stage)
    wall = time.perf_counter() - t
    if stages is not None:
        stages.append((None, time.perf_counter()))  # the last stage ends when run returns
    step = float(statistics.median(np.diff(stamps))) if len(stamps) > 1 else None
    return result, wall, step


def unet_inputs(pipe, size: int, dtype):
    """Latents and prompt embeddings of a CFG step (batch 2) at the run's size."""
    import torch

    h = size // pipe.vae_scale_factor
    return (torch.randn(2, pipe.unet.config.in_channels, h, h, dtype=dtype),
            torch.randn(2, 77, pipe.unet.config.cross_attention_dim, dtype=dtype))


def raw_unet_steps(pipe, size: int, dtype, runs: int, channels_last: bool = False) -> float:
    """Median seconds of one raw UNet forward (CFG batch 2) at the run's shapes."""
    import torch

    sample, hidden = unet_inputs(pipe, size, dtype)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        sample = sample.to(memory_format=torch.channels_last)
    try:
        times = []
        with torch.no_grad():
            for i in range(runs + 1):  # the first one warms up
                t = time.perf_counter()
                pipe.unet(sample, 500, hidden)
                if i:
                    times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        pipe.unet.to(memory_format=torch.contiguous_format)


def unet_flops(pipe, size: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sample, hidden = unet_inputs(pipe, size, pipe.unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(sample, 500, hidden)
    return counter.get_total_flops()


def matmul_floor(n: int = 2048, runs: int = 10) -> dict:
    """FLOP/s of one n×n @ n×n MatMul compiled by OpenVINO in performance mode, and the precision it ran in."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from studio.backends.openvino_backend import _precision_name

    a = ops.parameter([n, n], ov.Type.f32, name="a")
    w = ops.constant(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, w, False, False)], [a]), "CPU",
                                       {"EXECUTION_MODE_HINT": "PERFORMANCE"})
    request, x = compiled.create_infer_request(), np.ones((n, n), np.float32)
    request.infer({0: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t)
    return {"n": n, "seconds": statistics.median(times), "flops_per_s": 2 * n ** 3 / statistics.median(times),
            "precision": _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def measure(engine, name: str, request, args, refs: dict) -> dict:
    """One path: cold image with its stages, warm medians, peak RSS; its first warm image goes to ``refs``."""
    row: dict = {"path": name}
    memory = PeakRSS()
    try:
        marks: list = []
        cold, cold_s, _ = timed_run(engine, request, marks)
        callback_stages = [{"stage": s, "seconds": round(marks[i + 1][1] - t, 4)}
                           for i, (s, t) in enumerate(marks[:-1])]
        row.update(cold_s=cold_s, cold_timings=cold.timings, cold_notes=cold.notes,
                   cold_compile_events=cold.compile_events,
                   stages=cold.timings.get("stages") or callback_stages,
                   stages_from="result.timings" if cold.timings.get("stages") else "on_stage callbacks")
        warm = [timed_run(engine, request) for _ in range(args.runs)]
        steps = [w[2] for w in warm if w[2] is not None]
        row.update(s_per_image=statistics.median(w[1] for w in warm),
                   s_per_step=statistics.median(steps) if steps else None)
        refs[name] = warm[0][0].images[0]
        if name == "torch-fp32":
            refs["torch-fp32 cold"] = cold.images[0]
            pipe = next(iter(engine.backend("torch")._pipelines.values()), None)
            row["unet_flops_per_step"] = None if pipe is None else unet_flops(pipe, args.size)
        elif name == "torch-compile" and not cold.timings.get("compile_s") and not cold.compile_events:
            row["suspect"] = "no compile reported (compile_s 0, no compile events): ran eager?"
    except Exception as exc:  # a path being built may fail: the row says so, the bench goes on
        row["error"] = first_line(exc)
    row.update(memory.stop())
    return row


def verdicts(rows: list[dict], refs: dict) -> None:
    """Each path's first warm image against torch fp32's (torch fp32's own against its cold run)."""
    from studio.repro.compare import compare_arrays

    for row in rows:
        name = row["path"]
        if name not in refs:
            continue
        ref = refs.get("torch-fp32 cold" if name == "torch-fp32" else "torch-fp32")
        if ref is not None:
            c = compare_arrays(refs[name], ref)
            row.update(verdict=c.verdict, max_abs_diff=c.max_abs_diff, psnr_db=c.psnr_db, comparison=c.as_dict())
        twin = refs.get(SAME_AS.get(name))
        if twin is not None and compare_arrays(refs[name], twin).verdict == "identical":
            row["suspect"] = f"same pixels as {SAME_AS[name]}: the option seems not applied"


def raw_channels_last(engine, args) -> list[dict]:
    """The bf16 UNet called raw, contiguous and channels_last, on torch-bf16's pipeline (loaded if needed)."""
    import torch

    from studio.settings import build_request

    try:
        pipe = next(iter(engine.backend("torch")._pipelines.values()), None)
        if pipe is None or pipe.unet.dtype != torch.bfloat16:
            unload(engine)
            engine.run(engine.plan(build_request(**base_request(args), **PATHS["torch-bf16"])))
            pipe = next(iter(engine.backend("torch")._pipelines.values()))
        return [{"path": f"raw UNet bf16{label}", "raw": True,
                 "s_per_step": raw_unet_steps(pipe, args.size, torch.bfloat16, max(args.runs, 3), cl)}
                for label, cl in (("", False), (" channels_last", True))]
    except Exception as exc:
        return [{"path": "raw UNet bf16 (channels_last)", "raw": True, "error": first_line(exc)}]


def base_request(args) -> dict:
    return dict(prompt=PROMPT, seed=7, steps=args.steps, width=args.size, height=args.size, sampler="euler",
                model=args.model, batch=1)


def process_starts(args, source_cache: Path) -> dict:
    """`studio generate` twice in fresh processes on one fresh cache: cold (export, compile) then warm (cached)."""
    out: dict = {}
    for name, extra in (("torch-fp32", []), ("ov-accuracy", ["--backend", "openvino", "--ov-mode", "accuracy"])):
        with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
            cache = Path(tmp) / "cache"
            cache.mkdir()
            # Built-in models live in the cache (registry.resolve: cache_dir/builtin): borrow them, and their
            # hashes (keyed by resolved path), so the fresh cache lacks only IRs and compiled blobs.
            (cache / "builtin").symlink_to(source_cache / "builtin", target_is_directory=True)
            if (source_cache / "hashes.json").is_file():
                shutil.copy(source_cache / "hashes.json", cache / "hashes.json")
            (Path(tmp) / "out").mkdir()
            cmd = [sys.executable, "-m", "studio", "generate", "--json", "--model", args.model, "--prompt", PROMPT,
                   "--width", str(args.size), "--height", str(args.size), "--steps", str(args.steps), "--seed", "7",
                   "--sampler", "euler", "--out", str(Path(tmp) / "out"), *extra]
            env = {**os.environ, "STUDIO_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
            for start in ("cold", "warm"):
                t = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                entry: dict = {"wall_s": time.perf_counter() - t}
                try:
                    report = json.loads(proc.stdout)
                    entry.update(timings=report["timings"], job_timings=report["jobs"][0]["timings"],
                                 compile_events=report["jobs"][0]["compile_events"])
                except (ValueError, KeyError, IndexError):
                    lines = (proc.stderr or proc.stdout).strip().splitlines()
                    entry["error"] = f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
                out[f"{name} {start}"] = entry
    return out


def fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def table(rows: list[dict]) -> list[str]:
    ref = next((r.get("s_per_step") for r in rows if r["path"] == "torch-fp32"), None)
    lines = ["| path | s/step | s/image | vs torch fp32 per step | cold first image (s) | peak RSS (GiB) "
             "| verdict vs torch fp32 | max abs diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["path"] + (" †" if r.get("suspect") else "")
        if "error" in r or "skipped" in r:
            what = r.get("skipped") or "failed: " + r["error"]
            lines.append(f"| {name} | {what.replace('|', '/')} | — | — | — | — | — | — |")
            continue
        step = r.get("s_per_step")
        speed = f"{ref / step:.2f}×" if ref and step else "—"
        rss = fmt(r.get("peak_rss_gib"), ".2f") + (f" (from {r['rss_before_gib']:.2f})" if r.get("rss_before_gib")
                                                   else "")
        verdict = "— (raw UNet, no image)" if r.get("raw") else r.get("verdict", "— (no torch-fp32 row)")
        if r["path"] == "torch-fp32" and "verdict" in r:
            verdict += " (warm vs its cold run)"
        lines.append(f"| {name} | {fmt(step)} | {fmt(r.get('s_per_image'), '.2f')} | {speed} "
                     f"| {fmt(r.get('cold_s'), '.2f')} | {rss} | {verdict} "
                     f"| {fmt(r.get('max_abs_diff'), '.2g')} |")
    return lines


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15-random")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="warm runs per path, after the cold one")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma separated, of: " + ", ".join(PATHS))
    ap.add_argument("--starts", action="store_true", help="also a cold and a warm `studio generate` process (slow)")
    ap.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure here too")
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("STUDIO_CACHE_DIR",
                                                                          Path.home() / ".cache" / "studio")))
    args = ap.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or args.runs < 1:
        ap.error(f"unknown paths {unknown}; pick from {', '.join(PATHS)}" if unknown else "--runs must be >= 1")

    import openvino
    import torch

    from studio.engine.engine import Engine
    from studio.repro.environment import cpu_info
    from studio.settings import AppConfig, build_request

    engine = Engine(AppConfig(cache_dir=args.cache_dir, output_dir=Path(tempfile.mkdtemp())))
    floor = matmul_floor()
    rows, refs = [], {}
    for name in paths:
        print(f"-- {name}", file=sys.stderr, flush=True)
        if name == "torch-bf16-cl":
            rows += raw_channels_last(engine, args)
            continue
        if name.startswith("cuda") and not torch.cuda.is_available():
            rows.append({"path": name, "skipped": "not measured (no GPU here)"})
            continue
        unload(engine)
        try:
            request = build_request(**base_request(args), **PATHS[name])
        except Exception as exc:
            rows.append({"path": name, "error": first_line(exc)})
            continue
        rows.append(measure(engine, name, request, args, refs))
    unload(engine)
    verdicts(rows, refs)

    by = {r["path"]: r for r in rows}
    flops = by.get("torch-fp32", {}).get("unet_flops_per_step")
    summary = {"matmul": floor, "unet_flops_per_step": flops}
    if flops:
        summary["floor_s_per_step"] = flops / floor["flops_per_s"]
    ovp, ref = by.get("ov-performance", {}).get("s_per_step"), by.get("torch-fp32", {}).get("s_per_step")
    if ovp and flops:
        summary["ov_performance_over_floor"] = ovp / summary["floor_s_per_step"]
    if ovp and ref:
        summary["ov_performance_speedup_per_step"] = ref / ovp
    starts = process_starts(args, args.cache_dir) if args.starts else None

    cpu, flags = cpu_info()
    shown = [f for f in SHOWN_FLAGS if f in flags]
    print(f"CPU: {cpu}, {os.cpu_count()} cores, flags: {', '.join(shown) or 'none of ' + '/'.join(SHOWN_FLAGS)}; "
          f"torch {torch.__version__}, openvino {openvino.__version__}; "
          f"OpenVINO performance mode runs in {floor['precision']}")
    print(f"model {args.model}, {args.size}x{args.size}, {args.steps} steps, euler, CFG batch 2, seed 7; "
          f"medians of {args.runs} warm run(s)\n")
    print("\n".join(table(rows)))
    for r in rows:
        if r.get("suspect"):
            print(f"† {r['path']}: {r['suspect']}")
    print()
    for r in rows:
        if r.get("stages"):
            parts = ", ".join(f"{s['stage']} {s['seconds']:.2f} s" for s in r["stages"])
            print(f"{r['path']} cold ({r['stages_from']}): {parts}")
    print(f"\nmatmul floor: {floor['n']}² @ {floor['n']}² in {floor['precision']}, "
          f"{floor['flops_per_s'] / 1e9:.1f} GFLOP/s; UNet {fmt(flops and flops / 1e9, '.1f')} GFLOP per step "
          f"(batch 2) -> floor {fmt(summary.get('floor_s_per_step'))} s/step")
    print(f"ov-performance: {fmt(summary.get('ov_performance_over_floor'), '.2f')}× the floor (target ≤ 1.2 on a "
          f"bf16/AMX CPU); {fmt(summary.get('ov_performance_speedup_per_step'), '.2f')}× torch fp32 per step "
          "(target ≥ 2.5)")
    for name, s in (starts or {}).items():
        told = s.get("error") or f"job timings {s['job_timings']}; compile events {len(s['compile_events'])}"
        print(f"process start {name}: {s['wall_s']:.2f} s wall; {told}")
    if args.json:
        report = {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "torch": torch.__version__,
                  "openvino": openvino.__version__, "args": {k: str(v) for k, v in vars(args).items()},
                  "rows": rows, "summary": summary, "starts": starts}
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

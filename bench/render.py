"""The render farm's throughput: `studio render` with 1 and 2 workers against `studio generate --prompt-file`
in one process, on the same settings and the same number of images, run one after another by this script.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/render.py [--model tiny|sd15-random] [--images N] [--runs R]

Each row is a whole command in its own process (Ray cannot run inside the one that measures). Two figures:
- wall: the command from start to exit (Python and library imports, Ray, model loads, every image);
- steady: images per minute once warm: generate's per-image run time, and for render the sum of the
  workers' own rates (each worker's images over the seconds its jobs took).
Rows: generate (one process, all cores), render --workers 1, render --workers 2 (each with as many threads as
generate: the images are generate's), render --workers 2 --cores-per-worker 1 --allow-drift (one thread
each: faster side by side, but the images drift from generate's, so the proof asks for --allow-drift).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"tiny": ["--steps", "8", "--width", "64", "--height", "64"],
            "sd15-random": ["--steps", "4", "--width", "256", "--height", "256"]}


def studio(*argv, env):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "studio", *argv, "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-400:]}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=sorted(SETTINGS))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="bench-render-"))
    preset = work / "p.json"
    common = ["--model", args.model, *SETTINGS[args.model], "--sampler", "euler"]
    studio("preset", "save", str(preset), *common, "--prompt", "a lighthouse at dusk", "--seed", "0", env=env)
    prompts = work / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\n" * args.images)
    rows = {"generate --prompt-file": [], "render --workers 1": [], "render --workers 2": [],
            "render --workers 2 --cores-per-worker 1": []}
    for run in range(args.runs):
        wall, out = studio("generate", *common, "--prompt-file", str(prompts), "--seed", "0", "--seed-mode",
                           "increment", "--out", str(work / f"gen{run}"), env=env)
        per_image = [job["timings"]["total_s"] - job["timings"]["load_s"] for job in out["jobs"]][1:]
        rows["generate --prompt-file"].append((wall, 60.0 / statistics.median(per_image)))
        for name, extra in (("render --workers 1", ["--workers", "1"]), ("render --workers 2", ["--workers", "2"]),
                            ("render --workers 2 --cores-per-worker 1",
                             ["--workers", "2", "--cores-per-worker", "1", "--allow-drift"])):
            wall, out = studio("render", "--preset", str(preset), "--seeds", f"0-{args.images - 1}", "--out",
                               str(work / f"{name.replace(' ', '_')}{run}"), *extra, env=env)
            rows[name].append((wall, sum(w["images_per_min"] for w in out["workers"] if w["admitted"])))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"{args.model}, {args.images} images, {' '.join(SETTINGS[args.model])}, euler; {os.cpu_count()} cores "
          f"({cpu}); median of {args.runs}")
    base_wall = statistics.median(w for w, _ in rows["generate --prompt-file"])
    base_rate = statistics.median(r for _, r in rows["generate --prompt-file"])
    print(f"{'command':44} {'wall s':>8} {'× gen':>7} {'steady img/min':>15} {'× gen':>7}")
    for name, values in rows.items():
        wall = statistics.median(w for w, _ in values)
        rate = statistics.median(r for _, r in values)
        print(f"{name:44} {wall:8.1f} {base_wall / wall:7.2f} {rate:15.1f} {rate / base_rate:7.2f}")


if __name__ == "__main__":
    main()

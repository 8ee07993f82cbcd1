"""The render farm: a preset × seeds on local Ray workers, each worker proven first; resumable; faults.

The Ray tests start a real local Ray instance with real actors (each a warm Studio on the tiny model)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adapter_files import write_lora
from studio.cli import main
from studio.errors import StudioError
from studio.render import proof
from studio.render.jobs import job_key, make_jobs, parse_seeds, read_seed_list
from studio.render.manifest import Manifest, file_pixel_sha256
from studio.settings import build_request

SEEDS = 40
SMALL = ["--model", "tiny", "--steps", "3", "--width", "64", "--height", "64", "--sampler", "euler",
         "--prompt", "a red cube on a table"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def preset(tmp_path_factory, cache_dir):
    path = tmp_path_factory.mktemp("render-preset") / "cube.json"
    assert main(["preset", "save", str(path), *SMALL, "--seed", "0", "--json"]) == 0
    return path


def render_cmd(preset, out, *extra):
    return [sys.executable, "-m", "studio", "render", "--preset", str(preset), "--seeds", f"0-{SEEDS - 1}",
            "--out", str(out), *extra]


def lines_of(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# -- jobs, seeds and the manifest (no Ray) ------------------------------------------------------------------


def test_seed_forms_and_their_errors(tmp_path):
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("7") == [7]
    assert parse_seeds("3,1-2, 3") == [3, 1, 2]
    for bad, needle in [("5-1", "goes down"), ("a-b", "FIRST-LAST"), ("1-", "FIRST-LAST"),
                        (f"0-{2**32}", "from 0 to")]:
        with pytest.raises(StudioError, match=needle):
            parse_seeds(bad)
    listed = tmp_path / "seeds.txt"
    listed.write_text("# keepers\n12\n\n5\n12\n")
    assert read_seed_list(listed) == [12, 5]
    listed.write_text("12\nseven\n")
    with pytest.raises(StudioError, match="line 2"):
        read_seed_list(listed)


def test_jobs_are_every_prompt_by_every_seed_each_alone():
    base = build_request(prompt="a cat", seed=5, batch=4, seed_mode="increment", steps=3, model="tiny",
                         expansion=True, expanded_prompt="a cat, stored expansion")
    jobs = make_jobs(base, [1, 2], ["a cat", "a dog"])
    assert [(j.prompt, j.seed) for j in jobs] == [("a cat", 1), ("a cat", 2), ("a dog", 1), ("a dog", 2)]
    assert all(j.request.batch == 1 and j.request.seed_mode == "fixed" for j in jobs)
    assert jobs[0].request.expanded_prompt == "a cat, stored expansion"  # the base prompt keeps its stored text
    assert jobs[2].request.expanded_prompt is None  # another prompt is expanded from its own seed
    assert len({j.key for j in jobs}) == 4 and jobs[0].key == job_key(1, "a cat")
    assert jobs[0].file == f"{jobs[0].key}.png"


def test_the_manifest_drops_a_torn_line_and_forgets_an_image_that_changed(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (40, 50, 60)).save(tmp_path / "b.png")
    manifest = Manifest(tmp_path)
    for key in ("a", "b"):
        manifest.add({"key": key, "seed": 1, "prompt": "p", "file": f"{key}.png",
                      "sha256": file_pixel_sha256(tmp_path / f"{key}.png"), "worker": "w1", "host": "h",
                      "fingerprint": "f", "seconds": 0.1})
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"key": "c", "seed": 1, "pro')  # a crash in the middle of a line
    again = Manifest(tmp_path)
    assert again.dropped == 1 and set(again.lines) == {"a", "b"}
    assert (tmp_path / "manifest.jsonl").read_bytes().endswith(b"\n"), "the torn line is still there"
    assert again.done("a") and again.done("b")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "b.png")  # its pixels changed
    (tmp_path / "a.png").unlink()
    assert again.done("a") is None and again.done("b") is None


def test_a_worker_is_judged_by_its_report_its_noise_and_its_first_step():
    latents = np.linspace(-3, 3, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    from studio.render.worker import latents_sha256

    def probe(name, lat, expected="identical", fingerprint="f0"):
        return {"worker": name, "host": "h", "pid": 1, "report": {"expected": expected, "differences": []},
                "fingerprint": fingerprint, "latents": lat, "latents_sha256": latents_sha256(lat)}

    ref = probe("w1", latents)
    assert proof.is_reference(ref, "f0")
    assert proof.judge(ref, "f0", ref, False).verdict == "identical"
    nudged = latents + np.float32(1e-5)
    drift = proof.judge(probe("w2", nudged), "f0", ref, False)
    assert drift.verdict == "drift" and not drift.admitted and "--allow-drift" in drift.reasons[-1]
    assert proof.judge(probe("w2", nudged), "f0", ref, True).admitted
    far = proof.judge(probe("w3", latents * 1.5), "f0", ref, True)
    assert far.verdict == "different" and not far.admitted
    noise = proof.judge(probe("w4", latents, fingerprint="f1"), "f0", ref, True)
    assert noise.verdict == "different" and "initial noise" in noise.reasons[0]
    other = proof.judge(probe("w5", latents, expected="drift"), "f0", ref, True)
    assert other.verdict == "drift" and other.admitted


def test_bad_render_flags_are_one_line_before_anything_starts(capsys, preset, tmp_path):
    out = tmp_path / "r"
    for argv, needle in [(["--seeds", "9-1"], "goes down"), (["--seeds", "0-3", "--workers", "0"], "--workers 0"),
                         (["--seeds", "0-3", "--address", "nowhere"], "--address"),
                         (["--seeds", "0-3", "--keep-free", str(1 << 30)], "free some space")]:
        code, _, err = run_cli(capsys, "render", "--preset", str(preset), "--out", str(out), *argv)
        assert code == 2, err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
        assert not out.exists() or not any(out.iterdir()), f"a refused render wrote {list(out.iterdir())}"


def test_a_folder_of_another_render_is_refused(capsys, preset, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "render.json").write_text(json.dumps({"settings": {"steps": 99}}))
    code, _, err = run_cli(capsys, "render", "--preset", str(preset), "--out", str(out), "--seeds", "0-1")
    assert code == 2 and "holds a render of other settings" in err, err


# -- on Ray ----------------------------------------------------------------------------------------------


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_forty_seeds_on_two_workers_survive_a_killed_worker_and_a_killed_driver(preset, tmp_path, config, capsys):
    """40 seeds, 2 workers: one worker is killed (SIGKILL) mid-run, then the driver itself; the rerun finishes
    with 40 unique lines, each image the same pixels as its seed run alone; a second rerun does nothing."""
    out = tmp_path / "farm"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "first.err", "w")
    proc = subprocess.Popen(render_cmd(preset, out, "--workers", "2"), stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        workers = wait_for(lambda: [w for w in json.loads((out / "workers.json").read_text())["workers"]
                                    if w["admitted"]] if (out / "workers.json").exists() else None,
                           240, "a worker to be proven")
        wait_for(lambda: len(lines_of(out)) >= 4, 120, "the first images")
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = len(lines_of(out))
        wait_for(lambda: len(lines_of(out)) >= killed_at + 8, 180, "images after the worker was killed")
        proc.send_signal(signal.SIGKILL)  # the driver, mid-run
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    first = lines_of(out)
    assert 0 < len(first) < SEEDS, f"{len(first)} lines: the run was not cut mid-way"
    assert len({line["key"] for line in first}) == len(first), "a job was written twice"
    assert any(line["worker"] != victim["worker"] for line in first[killed_at:]), "no worker took over"

    rerun = subprocess.run(render_cmd(preset, out, "--workers", "2", "--json"), capture_output=True, text=True,
                           env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["done_before"] == len(first) and summary["rendered"] == SEEDS - len(first)
    lines = lines_of(out)
    assert len(lines) == SEEDS and {line["seed"] for line in lines} == set(range(SEEDS))
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(line["file"] for line in lines), "a file without its line, or a line without its file"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temp file was left"
    for line in lines:
        assert file_pixel_sha256(out / line["file"]) == line["sha256"]

    # each image is its seed run alone: by the engine, and (seed 31) by `studio generate --preset --seed`
    from studio.service import Studio

    studio = Studio(config)
    for line in lines:
        request = build_request(prompt="a red cube on a table", seed=line["seed"], steps=3, width=64, height=64,
                                sampler="euler", model="tiny")
        alone = studio.engine.run(studio.plan(request)).pil_images()[0]
        assert np.array_equal(np.asarray(alone), np.asarray(_open(out / line["file"]))), line
    code = main(["generate", "--preset", str(preset), "--seed", "31", "--out", str(tmp_path / "generated"), "--json"])
    assert code == 0
    path = json.loads(capsys.readouterr().out)["jobs"][0]["images"][0]["path"]
    assert file_pixel_sha256(Path(path)) == next(line for line in lines if line["seed"] == 31)["sha256"], \
        "seed 31: render ≠ generate"
    info = _open(out / lines[0]["file"]).info
    assert "parameters" in info and "studio" in json.dumps(list(info)), "the image lost its metadata"

    before = (out / "manifest.jsonl").read_bytes()
    again = subprocess.run(render_cmd(preset, out, "--json"), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rendered"] == 0 and (out / "manifest.jsonl").read_bytes() == before


def _open(path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


def test_a_stopped_render_resumes_redoes_a_changed_image_and_refuses_a_worker_with_other_files(config, tmp_path,
                                                                                               engine):
    """Stop after two images; one saved image is then changed. The same render again, now with a second worker
    whose LoRA folder holds other bytes under the LoRA's name: that worker is refused (its report says so) and
    renders nothing, the first finishes the render and makes the changed image again."""
    from PIL import Image

    from studio.render.farm import RenderSettings, RenderStopped, render
    from studio.service import Studio

    tiny = engine.registry.load(engine.registry.resolve("tiny"))
    write_lora(config.lora_folder / "look.safetensors", tiny, "kohya", seed=11)
    other = tmp_path / "other-loras"
    write_lora(other / "look.safetensors", tiny, "kohya", seed=12)
    studio = Studio(config)
    request = build_request(prompt="a red cube", steps=2, width=64, height=64, sampler="euler", model="tiny",
                            loras=[{"name": "look", "weight": 0.8}])
    request = studio.plan(request).request  # with the LoRA's hash, as a preset records it
    out = tmp_path / "farm"
    stop = threading.Event()

    def stop_after_two(progress):
        if progress.done >= 2:
            stop.set()

    with pytest.raises(RenderStopped, match="run the same render again"):
        render(studio, RenderSettings(request=request, seeds=range(8), out=out, workers=1), stop_after_two, stop)
    first = lines_of(out)
    assert 2 <= len(first) < 8
    changed = out / first[0]["file"]
    Image.new("RGB", (64, 64), (0, 0, 0)).save(changed)

    told = []
    summary = render(studio, RenderSettings(request=request, seeds=range(8), out=out, workers=2,
                                            worker_config=[{}, {"loras_dir": other}]), on_progress=told.append)
    assert summary["done_before"] == len(first) - 1 and summary["rendered"] == 8 - len(first) + 1
    verdicts = {w["worker"]: w for w in summary["workers"]}
    assert verdicts["w1"]["admitted"] and verdicts["w1"]["verdict"] == "identical"
    assert not verdicts["w2"]["admitted"] and verdicts["w2"]["verdict"] == "different"
    assert any("look" in reason for reason in verdicts["w2"]["reasons"]), verdicts["w2"]["reasons"]
    lines = lines_of(out)
    assert len({line["key"] for line in Manifest(out).entries()}) == 8
    assert {line["worker"] for line in lines} == {"w1"}
    assert Manifest(out).done(first[0]["key"]) is not None, "the changed image was not made again"
    saved = json.loads((out / "workers.json").read_text())
    assert {w["worker"]: w["admitted"] for w in saved["workers"]} == {"w1": True, "w2": False}
    assert saved["workers"][0]["made_on"]["torch_threads"]
    assert told and told[-1].done == summary["rendered"] and "8/8" in told[-1].line()

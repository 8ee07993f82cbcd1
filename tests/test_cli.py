"""The CLI contract: --json prints one object; a user error is one `error:` line, exit 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "out"


BASE = ["generate", "--steps", "2", "--width", "64", "--height", "64", "--json"]


def assert_user_error(capsys, out_dir, argv, needle):
    code, out, err = run_cli(capsys, *argv, "--out", str(out_dir))
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("argv,needle", [
    (["--sampler", "nope"], "choose one of: euler, euler_a"),
    (["--width", "65"], "multiple of 8"),
    (["--height", "2056"], "between 64 and 2048"),
    (["--width", "56"], "between 64 and 2048"),
    (["--steps", "0"], "steps"),
    (["--steps", "151"], "steps"),
    (["--batch", "0"], "batch"),
    (["--batch", "17"], "batch"),
    (["--steps", "many"], "invalid int value"),
    (["--device", "cuda"], "no GPU"),
    (["--dtype", "vae=fp8"], "--dtype"),
    (["--dtype", "unet=fp16"], "fp16 is not supported on CPU"),
    (["--model", "/nonexistent/model.safetensors"], "not found"),
    (["--prompt-file", "/nonexistent/prompts.txt"], "cannot read prompt file"),
])
def test_bad_generate_input(capsys, cache_dir, out_dir, argv, needle):
    if needle == "no GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    merged = list(BASE)
    for flag in ("--steps", "--width", "--height"):
        if flag in argv and flag in merged:
            i = merged.index(flag)
            del merged[i:i + 2]
    assert_user_error(capsys, out_dir, merged + argv, needle)


def test_pickle_is_refused_without_the_flag(capsys, cache_dir, out_dir, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"cond_stage_model.transformer.x": torch.zeros(1)}}, ckpt)
    assert_user_error(capsys, out_dir, BASE + ["--model", str(ckpt)], "--allow-unsafe-pickle")


def test_corrupt_safetensors_is_refused(capsys, cache_dir, out_dir, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_user_error(capsys, out_dir, BASE + ["--model", str(bad)], "safetensors")


def test_unreadable_model_file_is_refused(capsys, cache_dir, out_dir, tmp_path):
    path = tmp_path / "locked.safetensors"
    save_file({"cond_stage_model.transformer.x": torch.zeros(1)}, str(path))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything; fall back to a folder in the way
        path.chmod(0o644)
        path.unlink()
        path.mkdir()
    assert_user_error(capsys, out_dir, BASE + ["--model", str(path)], str(path.name))


def test_generate_json_contract_and_job_list(capsys, cache_dir, out_dir):
    code, out, err = run_cli(capsys, *BASE, "--prompt", "a red cube", "--prompt", "a blue ball", "--seed", "5",
                             "--seed-mode", "increment", "--batch", "2", "--out", str(out_dir))
    assert code == 0, err
    doc = json.loads(out)
    assert [j["prompt"] for j in doc["jobs"]] == ["a red cube", "a blue ball"]
    seeds = [[i["seed"] for i in j["images"]] for j in doc["jobs"]]
    assert seeds == [[5, 6], [7, 8]]  # increment carries on from job to job
    for job in doc["jobs"]:
        assert job["compile_events"] == []  # eager torch compiles nothing
        for image in job["images"]:
            assert os.path.isfile(image["path"]) and len(image["noise_fingerprint"]) == 16
            assert (image["width"], image["height"]) == (64, 64)
    assert doc["model"]["name"] == "tiny" and len(doc["model"]["sha256"]) == 64
    assert doc["backend"] == {"name": "torch", "device": "cpu", "mode": None,
                              "precision": {"text": "fp32", "unet": "fp32", "vae": "fp32"}}
    assert set(doc["timings"]) == {"total_s", "compile_s", "steps_per_s"}
    assert "untrained" in err  # said plainly, on stderr so stdout stays one JSON object


def test_prompt_file_jobs_run_in_order(capsys, cache_dir, out_dir, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    code, out, err = run_cli(capsys, *BASE, "--prompt-file", str(pf), "--seed", "3", "--out", str(out_dir))
    assert code == 0, err
    doc = json.loads(out)
    assert [j["prompt"] for j in doc["jobs"]] == ["first prompt", "second prompt"]
    assert [j["images"][0]["seed"] for j in doc["jobs"]] == [3, 3]  # fixed seed mode


def test_a_bad_later_job_fails_before_the_first_is_written(capsys, cache_dir, out_dir, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("a fine first prompt\nsecond line (cat:5000)\n", encoding="utf-8")
    assert_user_error(capsys, out_dir, [*BASE, "--prompt-file", str(pf), "--seed", "3"],
                      "prompt weight 5000.0 (on 'cat') is out of range")


def test_tokens_json(capsys, cache_dir):
    code, out, _ = run_cli(capsys, "tokens", "a photograph of an astronaut riding a horse", "--json")
    assert code == 0
    assert json.loads(out) == {"tokens": 8, "chunks": 1, "capacity": 75, "to_next_boundary": 67,
                               "chunk_token_counts": [8],
                               "segments": [["a photograph of an astronaut riding a horse", 1.0]]}


def test_plan_json(capsys, cache_dir):
    code, out, _ = run_cli(capsys, "plan", "--prompt", "a cat", "--seed", "9", "--batch", "3", "--width", "64",
                           "--height", "64", "--sampler", "euler_a", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["seeds"] == [9, 10, 11]
    assert plan["noise"] == {"source": "cpu", "generator_device": "cpu", "latent_shape": [4, 32, 32],
                             "from_sampler_alias": False}
    assert plan["compile"] is None and plan["stochastic_sampler"] is True


def test_real_process_error_contract(cache_dir, tmp_path):
    """The console entry point as a user runs it: one line on stderr, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "studio", "generate", "--sampler", "bogus", "--json"],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1

"""The OpenVINO backend on CPU with the tiny model: accuracy vs torch, modes, static-shape recompiles."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from studio.errors import StudioError


@pytest.fixture(scope="module")
def ov_engine(config):
    """A fresh engine: its own compile LRU, the session's IR cache."""
    from studio.engine.engine import Engine

    # room for every signature here, unless a test is about eviction
    return Engine(config.model_copy(update={"compile_cache_size": 16}))


def ov(tiny_request, **overrides):
    backend = {"name": "openvino", "device": "CPU", "ov_mode": overrides.pop("mode", "accuracy"),
               "text_encoder": overrides.pop("text_encoder", "torch")}
    return tiny_request(backend=backend, **overrides)


def kinds(result):
    return [(e["kind"], e["reason"]) for e in result.compile_events]


def test_accuracy_mode_matches_torch_fp32(ov_engine, tiny_request):
    torch_result = ov_engine.run(ov_engine.plan(tiny_request(seed=11, sampler="euler_a")))
    plan = ov_engine.plan(ov(tiny_request, seed=11, sampler="euler_a"))
    assert plan.backend.precision["unet"] == "fp32" and plan.noise.generator_device == "cpu"
    result = ov_engine.run(plan)
    assert result.fingerprints == torch_result.fingerprints
    diff = np.abs(result.images - torch_result.images).max()
    assert diff <= 1e-4, diff
    assert any("ran in fp32 (accuracy mode on CPU)" in n for n in result.notes)


def test_performance_mode_runs_and_reports_its_precision(ov_engine, tiny_request, say):
    import openvino

    expected = str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    plan = ov_engine.plan(ov(tiny_request, mode="performance", seed=11))
    assert "compiled_performance_mode" in {r.code for r in plan.risks}
    result = ov_engine.run(plan)
    ran = result.compile_events[0]["precision"]
    assert ran == plan.backend.precision["unet"]
    assert {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}[ran] in expected.replace("float", "f").replace("bfloat16", "bf16")
    assert np.isfinite(result.images).all()
    assert any(f"ran in {ran} (performance mode on CPU)" in n for n in result.notes)
    say(f"[precision] OpenVINO performance mode ran in {ran} on this CPU, after accuracy-mode runs")


def test_crossing_75_tokens_compiles_once_then_hits(ov_engine, tiny_request):
    short = " ".join(["cat"] * 60)
    long = " ".join(["cat"] * 80)
    ov_engine.run(ov_engine.plan(ov(tiny_request, prompt=short, width=72, height=72)))
    plan = ov_engine.plan(ov(tiny_request, prompt=long, width=72, height=72))
    assert plan.compile.will_compile and plan.compile.reason == "prompt crossed 75 tokens: chunks 1→2"
    first = ov_engine.run(plan)
    assert kinds(first) == [("compile", "prompt crossed 75 tokens: chunks 1→2")]
    again = ov_engine.plan(ov(tiny_request, prompt=long + " dog", width=72, height=72))
    assert not again.compile.will_compile
    assert kinds(ov_engine.run(again)) == [("hit", "cached")]


def test_resolution_change_is_predicted(ov_engine, tiny_request):
    ov_engine.run(ov_engine.plan(ov(tiny_request, width=64, height=64)))
    plan = ov_engine.plan(ov(tiny_request, width=80, height=64))
    assert plan.compile.will_compile and plan.compile.reason == "resolution 64×64→80×64"


def test_lru_evicts_the_oldest_and_recompiles_it(ov_engine, tiny_request):
    sizes = [(88, 64), (96, 64), (104, 64)]
    ov_engine.set_compile_cache_size(2)  # the app's setting (--lru), not a request's
    try:
        events = [ov_engine.run(ov_engine.plan(ov(tiny_request, width=w, height=h))).compile_events
                  for w, h in sizes]
        assert [e["kind"] for e in events[2]] == ["compile", "evict"]
        evicted = events[2][1]["signature"]
        assert ":96x64:" not in evicted  # the most recent before it stays
        back = ov_engine.plan(ov(tiny_request, width=88, height=64))
        assert back.compile.will_compile and back.compile.reason.startswith("evicted earlier")
    finally:
        ov_engine.set_compile_cache_size(16)


def test_pad_policy_compiles_once_for_short_and_long_prompts(ov_engine, tiny_request):
    before = dict(ov_engine.backend("openvino").manager.counters)
    for words in (10, 140):
        ov_engine.run(ov_engine.plan(ov(tiny_request, prompt=" ".join(["cat"] * words), chunk_policy="pad:2",
                                        width=112, height=64)))
    after = ov_engine.backend("openvino").manager.counters
    assert after["compiles"] - before["compiles"] == 1 and after["hits"] - before["hits"] == 1


def test_positive_one_chunk_negative_three_chunks(ov_engine, tiny_request):
    plan = ov_engine.plan(ov(tiny_request, prompt="a cat", negative_prompt="ugly BREAK blurry BREAK dark"))
    assert plan.prompt.chunk_count == 3 and ":231tok" in plan.compile.signature
    assert np.isfinite(ov_engine.run(plan).images).all()


def test_missing_device_is_a_clear_error(ov_engine, tiny_request):
    with pytest.raises(StudioError, match="OpenVINO device 'NPU' is not available here; devices: CPU"):
        ov_engine.plan(tiny_request(backend={"name": "openvino", "device": "NPU"}))
    with pytest.raises(StudioError, match="follows the mode"):
        ov_engine.plan(ov(tiny_request, precision={"unet": "bf16"}))


def test_second_process_loads_the_ir_without_export(cache_dir, tmp_path):
    """Two CLI processes on one cache folder: the first may export, the second never does."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", STUDIO_CACHE_DIR=str(cache_dir))
    argv = [sys.executable, "-m", "studio", "generate", "--backend", "openvino", "--device", "CPU", "--steps", "2",
            "--width", "64", "--height", "64", "--seed", "1", "--out", str(tmp_path), "--json"]
    notes = []
    for _ in range(2):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        notes.append(json.loads(proc.stdout)["jobs"][0]["notes"])
    assert "openvino: IR loaded from cache (no export)" in notes[1]
    assert not any("exported" in n for n in notes[1])


def test_verify_against_openvino_accuracy(capsys, cache_dir):
    from studio.cli import main

    code = main(["verify", "--against", "openvino:accuracy", "--seed", "4", "--steps", "3", "--width", "64",
                 "--height", "64", "--tolerance", "1e-4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] in ("identical", "within_tolerance") and doc["max_abs_diff"] <= 1e-4
    assert "openvino:accuracy on CPU" in doc["compared"]


def test_sdxl_accuracy_mode_matches_torch(ov_engine, tiny_request):
    torch_result = ov_engine.run(ov_engine.plan(tiny_request(model="tiny-sdxl", seed=6, steps=2)))
    result = ov_engine.run(ov_engine.plan(ov(tiny_request, model="tiny-sdxl", seed=6, steps=2)))
    assert np.abs(result.images - torch_result.images).max() <= 1e-4


# -- the text encoder compiled with OpenVINO (option; PyTorch on the CPU is the default) ----------------------


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_openvino_text_encoder_matches_pytorch(ov_engine, tiny_request, model):
    from studio.prompts.encode import encode

    # No attention weights here: A1111's mean restore divides by the chunk's mean, which is ~0 for
    # the tiny models' untrained layer norms, so 1e-6 of backend drift would be amplified without bound.
    long_prompt = "a red fox in deep snow, " + " ".join(["trees"] * 90) + " BREAK moonlight"
    plan = ov_engine.plan(ov(tiny_request, model=model, seed=4, steps=2, text_encoder="openvino", prompt=long_prompt,
                             negative_prompt="blurry"))
    assert plan.backend.text_encoder == "openvino" and plan.backend.precision["text"] == "fp32"
    assert plan.prompt.chunk_count == 3
    result = ov_engine.run(plan)
    assert any("text encoder compiled" in n for n in result.notes)
    assert any("text encoder, UNet and VAE ran in fp32" in n for n in result.notes)
    backend = ov_engine.backend("openvino")
    loaded = backend._loaded[1]
    ov_side = loaded.ov_text[("CPU", "accuracy")]
    for clip_skip in ((1, 2) if model == "tiny-sdxl" else (1,)):
        ours = encode(ov_side, long_prompt, "blurry", 3, clip_skip)
        ref = encode(loaded.text, long_prompt, "blurry", 3, clip_skip)
        assert ours.prompt_embeds.shape == ref.prompt_embeds.shape == (1, 231, ref.prompt_embeds.shape[-1])
        assert np.isfinite(ours.prompt_embeds.numpy()).all()
        assert (ours.prompt_embeds - ref.prompt_embeds).abs().max() <= 1e-4
        assert (ours.negative_prompt_embeds - ref.negative_prompt_embeds).abs().max() <= 1e-4
        if model == "tiny-sdxl":
            assert (ours.pooled_prompt_embeds - ref.pooled_prompt_embeds).abs().max() <= 1e-4
    # the whole image: within the accuracy tolerance of the PyTorch text encoder's
    torch_text = ov_engine.run(ov_engine.plan(ov(tiny_request, model=model, seed=4, steps=2, prompt=long_prompt,
                                                  negative_prompt="blurry")))
    assert np.abs(result.images - torch_text.images).max() <= 1e-4
    # a second run reuses the compiled text encoder
    again = ov_engine.run(plan)
    assert not any("text encoder compiled" in n for n in again.notes)
    np.testing.assert_array_equal(again.images, result.images)


def test_openvino_text_encoder_refusals(ov_engine, tiny_request):
    with pytest.raises(StudioError, match="clip skip 2 needs the text encoder's inner layers.*--text-encoder torch"):
        ov_engine.plan(ov(tiny_request, text_encoder="openvino", clip_skip=2))
    with pytest.raises(StudioError, match="openvino backend; use --backend openvino, or --text-encoder torch"):
        ov_engine.plan(tiny_request(backend={"name": "torch", "text_encoder": "openvino"}))
    with pytest.raises(StudioError, match=r"leave --dtype unet/vae/text at fp32"):
        ov_engine.plan(ov(tiny_request, text_encoder="openvino", precision={"text": "bf16"}))


def test_reduced_precision_fixes_name_the_mode_on_openvino():
    """On a bf16 CPU performance mode runs the VAE in bf16; --dtype is refused by the OpenVINO backend,
    so the fix must be the mode (found in the app: the risk said --dtype vae=fp32)."""
    from test_repro import _assess

    backend = {"name": "openvino", "device": "CPU", "mode": "performance",
               "precision": {"text": "fp32", "unet": "bf16", "vae": "bf16"}}
    found = _assess(backend=backend)
    for code in ("vae_not_fp32", "reduced_precision"):
        assert "--ov-mode accuracy" in found[code].fix and "--dtype" not in found[code].fix
    torch_found = _assess(request={"precision": {"vae": "bf16", "unet": "bf16"}})
    assert "--dtype vae=fp32" in torch_found["vae_not_fp32"].fix

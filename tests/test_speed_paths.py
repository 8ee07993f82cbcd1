"""What issue 15 adds beside torch.compile: int8 OpenVINO weights, one model in memory at a time, and the stages
of a run with their seconds (nothing done twice at start)."""

import json
import os
import subprocess
import sys

import numpy as np


def ov(tiny_request, weights="full", **overrides):
    return tiny_request(backend={"name": "openvino", "device": "CPU", "ov_mode": "accuracy", "ov_weights": weights},
                        **overrides)


# -- int8 weights ------------------------------------------------------------------------------------------------
def test_int8_weights_are_a_separate_ir_predicted_with_their_risk(config, tiny_request, say):
    from studio.engine.engine import Engine

    engine = Engine(config)
    full = engine.run(engine.plan(ov(tiny_request, seed=21)))
    plan = engine.plan(ov(tiny_request, "int8", seed=21))
    # said before the run: the compression, the separate variant, and the risk
    assert plan.backend.weights == "int8"
    assert plan.compile.will_compile and plan.compile.signature.endswith(":int8")
    assert "weights full→int8" in plan.compile.reason
    assert "compressed to int8 by NNCF" in (plan.compile.export or ""), plan.compile
    assert "int8_weights" in {r.code for r in plan.risks}
    int8 = engine.run(plan)
    assert any("compressed the UNet's weights to int8" in n for n in int8.notes), int8.notes
    # a separate IR beside the full one; its UNet's weights are about a quarter of the size
    ir_root = config.cache_dir / "openvino" / "ir"
    full_ir = next(d for d in ir_root.iterdir() if d.name.startswith(plan.model.sha256[:16]) and "-lora" not in d.name
                   and not d.name.endswith("-int8"))
    int8_ir = full_ir.with_name(full_ir.name + "-int8")
    full_bin = (full_ir / "unet" / "openvino_model.bin").stat().st_size
    int8_bin = (int8_ir / "unet" / "openvino_model.bin").stat().st_size
    assert int8_bin < 0.4 * full_bin, (int8_bin, full_bin)
    assert (int8_ir / "vae_decoder" / "openvino_model.bin").stat().st_ino == \
        (full_ir / "vae_decoder" / "openvino_model.bin").stat().st_ino  # the rest is hard-linked, not copied
    # the image differs from the full weights, by a little
    diff = float(np.abs(int8.images - full.images).max())
    assert 0 < diff < 0.1, diff
    # the full weights are untouched: their next run is a hit and the same pixels
    again = engine.run(engine.plan(ov(tiny_request, seed=21)))
    np.testing.assert_array_equal(again.images, full.images)
    say(f"[int8] tiny: int8 UNet weights {int8_bin / full_bin:.2f} of fp32; max abs diff vs full {diff:.3g}")


# -- memory: one model at a time ------------------------------------------------------------------------------
MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path

from studio.engine.engine import Engine
from studio.settings import AppConfig, build_request


def peak_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


cache, models, out, order = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(",")
engine = Engine(AppConfig(cache_dir=cache, models_dir=models, output_dir=out))
peaks = []
for spec in order:
    name, backend = spec.split("@")
    request = build_request(model=name, steps=1, width=64, height=64, seed=1, prompt="a boat",
                            backend={"name": backend, "device": "CPU" if backend == "openvino" else "cpu"})
    engine.run(engine.plan(request))
    peaks.append(peak_mib())
print(json.dumps(peaks))
"""


def _big_model(folder, seed: int) -> int:
    """A diffusers SD1 folder whose UNet holds ~150 MB of fp32 weights (seeded): big enough that holding two at
    once shows in the peak memory. Returns the size of its weights in bytes."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from studio.models import demo
    from studio.settings import AppConfig

    base = demo._build_tiny(AppConfig.from_env().cache_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(192, 384), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                                   scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return sum(p.numel() * 4 for p in unet.parameters())


def test_loading_a_second_model_frees_the_first(config, tmp_path, say):
    models = tmp_path / "models"
    size = _big_model(models / "big-a", 1)
    _big_model(models / "big-b", 2)
    assert size > 100 * 2**20
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(config.cache_dir), str(models),
                           str(tmp_path / "out"), "big-a@torch,big-b@torch,big-a@torch"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second, third = json.loads(proc.stdout.strip().splitlines()[-1])
    margin = 0.5 * size / 2**20  # far below a second copy of the weights (measured without the fix: +1.3 copies)
    say(f"[memory] peak after model A {first:.0f} MiB, after B {second:.0f} MiB, after A again "
        f"{third:.0f} MiB (weights {size / 2**20:.0f} MiB each)")
    assert second <= first + margin, (first, second, size)
    assert third <= first + margin, (first, third, size)


def test_another_backend_releases_the_model_the_first_one_held(config, tiny_request):
    from studio.engine.engine import Engine

    engine = Engine(config)
    engine.run(engine.plan(tiny_request(steps=1)))
    torch_backend = engine.backend("torch")
    assert torch_backend._pipelines
    engine.run(engine.plan(ov(tiny_request, steps=1)))
    assert not torch_backend._pipelines  # freed before OpenVINO loaded its copy
    ov_backend = engine.backend("openvino")
    held = ov_backend.manager.cached
    engine.run(engine.plan(tiny_request(steps=1)))
    assert ov_backend._loaded is None
    assert ov_backend.manager.cached == held  # the same model's compiled variants stay: its compile cache


# -- stages and one load per process -----------------------------------------------------------------------------
def test_stages_are_timed_and_the_model_is_loaded_once(config, tiny_request, monkeypatch):
    from studio.engine.engine import Engine

    engine = Engine(config)
    loads = []
    original = engine.registry.load
    monkeypatch.setattr(engine.registry, "load",
                        lambda source, **kw: loads.append(source.name) or original(source, **kw))
    first = engine.run(engine.plan(tiny_request(steps=2, seed=3)))
    second = engine.run(engine.plan(tiny_request(steps=2, seed=4, prompt="another prompt")))
    assert loads == ["tiny"]  # the second job reuses the pipeline: no second load, no second copy
    names = [s["stage"] for s in first.timings["stages"]]
    assert names == ["loading the model", "image 1 of 1", "decoding"]
    assert all(s["seconds"] >= 0 for s in first.timings["stages"])
    assert sum(s["seconds"] for s in first.timings["stages"]) <= first.timings["total_s"]
    assert 0 < first.timings["first_step_s"] <= first.timings["total_s"]
    assert [s["stage"] for s in second.timings["stages"]] == ["image 1 of 1", "decoding"]


def test_the_cli_prints_the_stages_and_the_time_to_the_first_image(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "studio", "generate", "--model", "tiny", "--steps", "2", "--width", "64",
            "--height", "64", "--seed", "5", "--out", str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stderr.splitlines() if l.startswith("stages: "))
    assert "loading the model" in line and "image 1 of 1" in line and "first step done after" in line
    proc = subprocess.run(args + ["--json"], capture_output=True, text=True, env=env, timeout=600)
    doc = json.loads(proc.stdout)
    start = doc["start"]
    assert start["first_image_since_process_start_s"] >= doc["timings"]["total_s"] > 0
    assert start["stages"][0]["stage"] == "loading the model" and start["load_s"] > 0


def test_openvino_with_its_ir_on_disk_loads_only_the_text_encoder(config, tiny_request, monkeypatch):
    """A second start of an exported model reads the UNet and VAE from the IR only: PyTorch loads the text
    encoder alone, not a second copy of the weights."""
    from studio.engine.engine import Engine

    engine = Engine(config)
    first = engine.run(engine.plan(ov(tiny_request, steps=1, seed=8)))  # exports the IR if this session has none
    engine.unload()
    loads = []
    original = engine.registry.load
    monkeypatch.setattr(engine.registry, "load",
                        lambda source, **kw: loads.append(kw.get("text_only", False)) or original(source, **kw))
    again = engine.run(engine.plan(ov(tiny_request, steps=1, seed=8)))
    assert loads == [True]
    assert again.timings["stages"][0]["stage"] == "loading the model's text encoder"
    np.testing.assert_array_equal(again.images, first.images)

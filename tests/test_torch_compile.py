"""--compile torch: inductor through the recompile manager, its disk cache, and a reload in a fresh process.

One real compile of a one-block tiny model (minutes of CPU on 2 cores: inductor generates and builds C++), then what the
manager says about the runs after it, then a fresh process that reads the compiled code back from disk.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from studio.backends.compile_manager import CompileManager, Signature

LONG = "a lighthouse on a cliff at dusk, " + ", ".join(["golden light over the stormy sea"] * 12)  # > 75 tokens


MODEL = "tiny-compile"


def compiled(tiny_request, **overrides):
    return tiny_request(backend={"name": "torch", "device": "cpu", "compile": "torch"}, steps=3, model=MODEL,
                        **overrides)


def build_one_block_model(folder):
    """The tiny model with a UNet of one cross-attention block and one resnet per block: inductor's cold compile
    (Python codegen and C++ builds, one kernel per fused op) scales with the ops; this UNet keeps every kind the
    full one has (resnet, cross-attention, time embedding) and takes the cold compile from 119 s to 88 s here."""
    import torch
    from diffusers import UNet2DConditionModel

    from studio.models import demo
    from studio.settings import AppConfig

    pipe = demo._build_tiny(AppConfig.from_env().cache_dir)
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        block_out_channels=(32,), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=32)
    pipe.save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope="module")
def compile_engine(config, tmp_path_factory):
    """An engine with its own cache folder: the first compile here is a cold one."""
    from studio.engine.engine import Engine

    build_one_block_model(config.models_dir / MODEL)
    cache = tmp_path_factory.mktemp("compile-cache")
    for name in ("builtin", "tokenizers", "configs", "hashes.json"):  # the models, not the compiled code
        if (config.cache_dir / name).exists():
            os.symlink(config.cache_dir / name, cache / name)
    return Engine(config.model_copy(update={"cache_dir": cache}))


def test_compile_predictions_disk_cache_and_reload(compile_engine, tiny_request, tmp_path, say):
    engine = compile_engine
    # 1. predicted before anything ran, with the risk
    plan = engine.plan(compiled(tiny_request, chunk_policy="pad:2"))
    assert plan.backend.mode == "inductor"
    assert plan.compile.will_compile and plan.compile.reason == "first load"
    assert "inductor-fp32" in plan.compile.signature and plan.compile.signature.endswith("154tok")
    assert "torch_compile" in {r.code for r in plan.risks}

    # 2. the compile: a stage of its own, before the steps; nothing compiles during them
    stages = []
    first = engine.run(plan, on_stage=stages.append)
    assert [e["kind"] for e in first.compile_events] == ["compile"]
    assert first.compile_events[0]["from_cache"] is False
    assert stages[1].startswith("compiling UNet and VAE decoder with torch.compile") and stages[2] == "image 1 of 1"
    assert not any("during the steps" in n for n in first.notes), first.notes
    assert [s["stage"] for s in first.timings["stages"]] == stages
    files = list((engine.config.cache_dir / "torch" / "compiled").rglob("*.so"))
    assert files, "inductor's compiled code is on disk"

    # 3. a prompt past 75 tokens under pad:2 keeps the signature: a hit, no compile
    long_plan = engine.plan(compiled(tiny_request, prompt=LONG, chunk_policy="pad:2"))
    assert long_plan.prompt.own_chunks == 2 and not long_plan.compile.will_compile
    hit = engine.run(long_plan)
    assert [e["kind"] for e in hit.compile_events] == ["hit"]
    assert not any("during the steps" in n for n in hit.notes), hit.notes

    # 4. what would recompile is said before the run: the chunk count and the resolution
    short = engine.plan(compiled(tiny_request))
    assert short.compile.will_compile and "chunks 2→1" in short.compile.reason
    wider = engine.plan(compiled(tiny_request, width=72, chunk_policy="pad:2"))
    assert wider.compile.will_compile and "resolution 64×64→72×64" in wider.compile.reason

    # 5. eager torch on the same seed: the verifier's verdict is within 1/255
    from studio.repro.compare import compare_arrays

    eager = engine.run(engine.plan(tiny_request(steps=3, chunk_policy="pad:2", model=MODEL)))
    verdict = compare_arrays(first.images[0], eager.images[0])
    assert verdict.verdict in ("identical", "within_tolerance"), verdict.as_dict()

    # 6. a fresh process reads the compiled code back from disk and makes the same pixels
    out = tmp_path / "again"
    env = dict(os.environ, HF_HUB_OFFLINE="1", STUDIO_CACHE_DIR=str(engine.config.cache_dir),
               STUDIO_MODELS_DIR=str(engine.config.models_dir))
    proc = subprocess.run([sys.executable, "-m", "studio", "generate", "--json", "--model", MODEL,
                           "--prompt", plan.request.prompt, "--seed", str(plan.request.seed), "--steps", "3",
                           "--width", "64", "--height", "64", "--sampler", plan.request.sampler,
                           "--chunk-policy", "pad:2", "--compile", "torch", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads(proc.stdout)["jobs"][0]
    assert [e["kind"] for e in job["compile_events"]] == ["compile"]
    assert job["compile_events"][0]["from_cache"] is True, job["notes"]
    assert any("from the disk cache" in n for n in job["notes"]), job["notes"]
    from PIL import Image

    again = np.asarray(Image.open(job["images"][0]["path"]).convert("RGB"))
    np.testing.assert_array_equal(again, np.asarray(first.pil_images()[0]))
    assert [s["stage"] for s in job["timings"]["stages"]][0] == "loading the model"
    say(f"[torch.compile] cold compile {first.compile_events[0]['seconds']:.1f} s, reload from disk "
        f"{job['compile_events'][0]['seconds']:.1f} s; vs eager: {verdict.verdict}, "
        f"max {verdict.max_abs_diff:.2g}")


def test_compile_torch_is_refused_on_openvino_and_int8_on_torch(engine, tiny_request):
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="--compile torch is the torch backend's"):
        engine.plan(tiny_request(backend={"name": "openvino", "device": "CPU", "compile": "torch"}))
    with pytest.raises(StudioError, match="int8 weights are OpenVINO's"):
        engine.plan(tiny_request(backend={"name": "torch", "ov_weights": "int8"}))


def test_an_lru_that_cannot_free_one_variant_evicts_all_but_the_new_one():
    manager = CompileManager(capacity=2, evict_all=True)
    sigs = [Signature(device="cpu", mode="inductor-fp32", batch=2, width=64 + 8 * i, height=64, chunks=1)
            for i in range(3)]
    for sig in sigs[:2]:
        manager.activate(sig, lambda s: {})
    prediction = manager.predict(sigs[2])
    assert prediction.will_compile and prediction.evicts == f"{sigs[0]}, {sigs[1]}"
    _, events = manager.activate(sigs[2], lambda s: {})
    assert [e["kind"] for e in events] == ["compile", "evict", "evict"]
    assert manager.cached == [str(sigs[2])]
    assert manager.predict(sigs[0]).reason.startswith("evicted earlier")


def test_shrinking_the_torch_lru_drops_every_variant(tmp_path):
    """Dynamo cannot free one graph: a smaller LRU that must drop one drops all, and says so for each."""
    from studio.backends.torch_backend import TorchBackend

    backend = TorchBackend(tmp_path, compile_cache_size=3)
    sigs = [Signature(device="cpu", mode="inductor-fp32", batch=2, width=64 + 8 * i, height=64, chunks=1)
            for i in range(3)]
    for sig in sigs:
        backend.manager.activate(sig, lambda s: {})
    assert backend.resize_compile_cache(3) == []
    events = backend.resize_compile_cache(2)
    assert sorted(e["signature"] for e in events) == sorted(str(s) for s in sigs)
    assert backend.manager.cached == [] and backend.manager.capacity == 2
    assert backend.manager.predict(sigs[2]).will_compile

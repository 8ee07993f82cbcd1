"""Reproducibility core: noise source, fingerprints, determinism, precision guard, risks."""

import json

import numpy as np
import pytest
import torch

from studio.engine import determinism, noise
from studio.plan import ModelInfo, NoisePlan, PromptPlan, ResolvedBackend
from studio.metadata.png import read_text_chunks
from studio.outputs import save_result
from studio.repro import risks

# Same seed + size + CPU noise → the same fingerprint on every machine. Do not "fix" these.
GOLDEN_SD15_512_SEED42 = "74fae2fa62ef905ff67b3006cb8705fa85be97ccb8f514ff3cefa5ba674352f6"
GOLDEN_TINY_64_SEED15 = "23f3fdc429cf8375"


def test_golden_initial_noise_fingerprint():
    latents = noise.initial_latents(noise.make_generators([42], "cpu"), (4, 64, 64), "cpu")
    assert noise.fingerprint(latents) == GOLDEN_SD15_512_SEED42


def test_golden_fingerprint_through_the_engine(engine, tiny_request):
    result = engine.run(engine.plan(tiny_request(seed=15)))
    assert result.fingerprints == [GOLDEN_TINY_64_SEED15]


def test_fingerprint_covers_shape_and_values():
    g = noise.make_generators([1], "cpu")
    x = noise.initial_latents(g, (4, 8, 8), "cpu")
    assert noise.fingerprint(x) != noise.fingerprint(x.reshape(1, 4, 4, 16))
    y = x.clone()
    y[0, 0, 0, 0] += 1e-7
    assert noise.fingerprint(x) != noise.fingerprint(y)


def test_gpu_alias_means_device_noise(engine, tiny_request):
    plan = engine.plan(tiny_request(sampler="euler_a-gpu"))
    assert plan.sampler == "euler_a" and plan.request.sampler == "euler_a-gpu"
    assert plan.noise.source == "device" and plan.noise.from_sampler_alias
    assert plan.noise.generator_device == plan.backend.device  # created on the execution device
    assert "device_noise" in {r.code for r in plan.risks}
    cpu = engine.plan(tiny_request(sampler="euler_a"))
    assert (cpu.noise.source, cpu.noise.generator_device) == ("cpu", "cpu")
    assert "device_noise" not in {r.code for r in cpu.risks}


def test_generators_live_on_the_resolved_device():
    gens = noise.make_generators([1, 2, 3], "cpu")
    assert len({id(g) for g in gens}) == 3 and all(g.device.type == "cpu" for g in gens)
    if torch.cuda.is_available():
        assert all(g.device.type == "cuda" for g in noise.make_generators([1], "cuda:0"))


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_sde", "dpmpp_sde"])
def test_per_step_noise_comes_from_the_image_generator(engine, tiny_request, sampler):
    """With noise source cpu, every random number of a stochastic sampler comes from the image's own
    CPU generator, so it is the same on any execution device and repeats run to run."""
    plan = engine.plan(tiny_request(sampler=sampler, seed=21, steps=4))
    backend = engine.backend("torch")
    load = lambda: engine.registry.load(engine.registry.resolve("tiny"))

    def run_with(gen_seed):
        g = noise.make_generators([gen_seed], "cpu")
        latents = noise.initial_latents(g, tuple(plan.noise.latent_shape), "cpu")
        images = backend.generate(plan, load, latents, g).images
        return images, g[0].get_state()

    a, state_a = run_with(21)
    b, state_b = run_with(21)
    assert np.array_equal(a, b) and torch.equal(state_a, state_b)
    untouched = noise.make_generators([21], "cpu")[0]
    noise.initial_latents([untouched], tuple(plan.noise.latent_shape), "cpu")
    assert not torch.equal(state_a, untouched.get_state()), "the sampler drew its step noise elsewhere"
    # Another generator seed, same initial latents: the per-step noise changes the image.
    g = noise.make_generators([21], "cpu")
    latents = noise.initial_latents(g, tuple(plan.noise.latent_shape), "cpu")
    other = noise.make_generators([999], "cpu")
    c = backend.generate(plan, load, latents, other).images
    assert np.abs(c - a).max() > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_noise_is_independent_of_the_execution_device(engine, tiny_request):
    cpu = engine.run(engine.plan(tiny_request(sampler="euler_a", seed=5)))
    gpu_plan = engine.plan(tiny_request(sampler="euler_a", seed=5, backend={"device": "cuda"}))
    assert gpu_plan.noise.generator_device == "cpu"
    gpu = engine.run(gpu_plan)
    assert gpu.fingerprints == cpu.fingerprints
    assert np.abs(gpu.images - cpu.images).max() < 1e-2


def test_deterministic_mode_switches_and_is_recorded(engine, tiny_request, tmp_path):
    try:
        applied = determinism.apply(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
        assert applied["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        determinism.apply(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        plan = engine.plan(tiny_request(deterministic=True))
        assert plan.determinism["deterministic"] and plan.determinism["attention"] == "math"
        a, b = engine.run(plan), engine.run(plan)
        assert np.array_equal(a.images, b.images)
        record = json.loads(read_text_chunks(save_result(a, tmp_path)[0]["path"])["studio"])
        assert record["plan"]["determinism"]["deterministic"] is True
    finally:
        determinism.apply(False)


def test_low_precision_vae_collapse_is_decoded_again_in_fp32(engine, tiny_request, tmp_path):
    fp32 = engine.run(engine.plan(tiny_request(seed=8)))
    plan = engine.plan(tiny_request(seed=8, precision={"vae": "bf16"}))
    assert "vae_not_fp32" in {r.code for r in plan.risks}
    healthy = engine.run(plan)
    assert healthy.notes == []  # bf16 decoded fine: no upcast
    pipe = next(iter(engine.backend("torch")._pipelines.values()))
    # Make the low-precision decode collapse the way fp16 VAEs do (NaN), and only in low precision.
    hook = pipe.vae.decoder.conv_out.register_forward_hook(
        lambda _m, _i, out: out * float("nan") if out.dtype == torch.bfloat16 else out)
    try:
        guarded = engine.run(plan)
    finally:
        hook.remove()
    assert np.isfinite(guarded.images).all()
    assert any(n.startswith("vae_upcast") for n in guarded.notes)
    assert np.abs(guarded.images - fp32.images).max() < 1e-2  # fp32 decode of bf16-rounded weights
    assert pipe.vae.dtype == torch.bfloat16  # back to the asked precision after the redo
    record = json.loads(read_text_chunks(save_result(guarded, tmp_path)[0]["path"])["studio"])
    assert any(n.startswith("vae_upcast") for n in record["run"]["notes"])


def _assess(**kw):
    from studio.settings import build_request

    request = build_request(**kw.pop("request", {}))
    backend = ResolvedBackend(**{"name": "torch", "device": "cpu", "precision": request.precision.model_dump(),
                                 **kw.pop("backend", {})})
    model = ModelInfo(**{"name": "m", "kind": "diffusers", "family": "sd1", "sha256": "ab" * 32,
                         "short_hash": "abababab", "untrained": False, **kw.pop("model", {})})
    prompt = PromptPlan(prompt="", prompt_final="", negative="", tokens=5, chunks=1, negative_tokens=0,
                        negative_chunks=1, chunk_count=1)
    noise_plan = NoisePlan(**{"source": "cpu", "generator_device": "cpu", "latent_shape": [4, 8, 8],
                              **kw.pop("noise", {})})
    return {r.code: r for r in risks.assess(request, backend, model, prompt, noise_plan)}


def test_risks_each_with_why_and_fix():
    assert _assess() == {}
    cases = {
        "device_noise": dict(noise={"source": "device", "generator_device": "cuda:0"}),
        "vae_not_fp32": dict(request={"precision": {"vae": "bf16"}}),
        "reduced_precision": dict(request={"precision": {"unet": "bf16"}}),
        "prompt_expansion": dict(request={"expansion": True}),
        "nondeterministic_cuda": dict(backend={"device": "cuda:0"}),
        "attention_backend": dict(backend={"device": "cuda:0"}),
        "compiled_performance_mode": dict(backend={"name": "openvino", "device": "CPU", "mode": "performance"}),
        "model_without_hash": dict(model={"sha256": "", "short_hash": ""}),
    }
    for code, kw in cases.items():
        found = _assess(**kw)
        assert code in found, code
        assert found[code].why and found[code].fix
    assert "nondeterministic_cuda" not in _assess(backend={"device": "cuda:0"}, request={"deterministic": True})
    assert "compiled_performance_mode" not in _assess(backend={"name": "openvino", "device": "CPU",
                                                               "mode": "accuracy"})


def test_load_image_refuses_what_it_cannot_read(tmp_path):
    """Found by bench/fuzz.py: `studio verify` blocked forever on a FIFO and raised DecompressionBombError."""
    import os
    import struct
    import zlib

    from studio.errors import StudioError
    from studio.repro.compare import load_image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    for path, message in ((bomb, "exceeds limit"), (fifo, "not a regular file"), (tmp_path, "folder"),
                          (junk, "cannot read image"), (tmp_path / "missing.png", "cannot read image")):
        with pytest.raises(StudioError, match=message) as info:
            load_image(path)
        assert "\n" not in str(info.value)

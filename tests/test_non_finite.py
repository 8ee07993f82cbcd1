"""NaN/inf never reaches a file or the screen: each backend stops at the failing component and step.

The faults are injected into the real components (a UNet or VAE whose output turns NaN at a given
call), as a bf16 overflow or a broken blob would make them; everything else runs for real.
"""

import json

import numpy as np
import pytest
import torch

from studio.errors import StudioError


def nan_after(calls: int):
    """A forward hook that makes the module's output NaN from call ``calls`` on."""
    seen = {"n": 0}

    def hook(_module, _args, output):
        seen["n"] += 1
        if seen["n"] < calls:
            return output
        if isinstance(output, torch.Tensor):
            return torch.full_like(output, float("nan"))
        output[0].fill_(float("nan"))  # diffusers output dataclasses: the sample
        return output

    return hook


def torch_pipe(engine, plan):
    backend = engine.backend("torch")
    return backend._pipeline(plan, lambda: engine.registry.load(engine.registry.resolve(plan.request.model)))


def test_torch_unet_nan_stops_at_its_step_and_saves_nothing(engine, tiny_request, tmp_path, capsys, monkeypatch):
    from studio.cli import main

    plan = engine.plan(tiny_request(seed=3))
    pipe = torch_pipe(engine, plan)
    handle = pipe.unet.register_forward_hook(nan_after(3))  # step 3 of 4 (CFG runs as one batch)
    try:
        with pytest.raises(StudioError, match=r"^the UNet gave NaN/inf values at step 3 of 4 \(fp32 on cpu\); the "
                                              r"run stopped and nothing was saved"):
            engine.run(plan)
    finally:
        handle.remove()
    np.testing.assert_array_equal(engine.run(plan).images, engine.run(plan).images)  # the pipeline is unharmed

    # Through the CLI: one error line, exit 2, no file. The CLI's own engine loads its own pipeline.
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward

    def failing(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out[0].fill_(float("inf"))
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", failing)
    out = tmp_path / "out"
    code = main(["generate", "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "1",
                 "--dtype", "unet=bf16", "--out", str(out), "--json"])
    _, err = capsys.readouterr()
    assert code == 2
    assert [line for line in err.strip().splitlines() if not line.startswith("note: ")] == [
        "error: the UNet gave NaN/inf values at step 1 of 2 (bf16 on cpu); the run stopped and nothing was saved: "
        "run the UNet in fp32 (--dtype unet=fp32); bf16 overflowed"]
    assert not out.exists() or not any(out.iterdir())


def test_torch_fp32_vae_nan_is_refused_before_saving(engine, tiny_request, tmp_path):
    from studio.outputs import save_result

    plan = engine.plan(tiny_request(seed=4, steps=2))
    pipe = torch_pipe(engine, plan)
    handle = pipe.vae.decoder.register_forward_hook(nan_after(1))
    try:
        with pytest.raises(StudioError, match=r"image 1 of the batch \(seed 4\) decoded to NaN/inf values \(torch, "
                                              r"VAE in fp32\); nothing was saved"):
            result = engine.run(plan)
            save_result(result, tmp_path)  # never reached
    finally:
        handle.remove()
    assert not any(tmp_path.iterdir())


def test_nan_text_embeddings_stop_before_the_unet(engine, tiny_request):
    plan = engine.plan(tiny_request(seed=5, steps=2, prompt="a lighthouse at dusk"))
    pipe = torch_pipe(engine, plan)
    backend = engine.backend("torch")
    backend._last_conditioning = None  # encode anew, through the failing encoder
    handle = pipe.text_encoder.register_forward_hook(nan_after(1))
    try:
        with pytest.raises(StudioError, match="the text encoder gave NaN/inf embeddings for the prompt; nothing was "
                                              "run or saved"):
            engine.run(plan)
    finally:
        handle.remove()
        backend._last_conditioning = None


@pytest.fixture
def ov_unet_fails(monkeypatch):
    """optimum-intel's UNet wrapper returning NaN from a given call on (as a broken compiled variant would)."""
    from optimum.intel.openvino.modeling_diffusion import OVModelUnet

    original = OVModelUnet.forward

    def arm(from_call: int):
        seen = {"n": 0}

        def failing(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            seen["n"] += 1
            if seen["n"] >= from_call:
                out[0].fill_(float("nan"))
            return out

        monkeypatch.setattr(OVModelUnet, "forward", failing)

    return arm


def test_openvino_unet_nan_names_the_step_and_mode(engine, tiny_request, ov_unet_fails):
    request = tiny_request(seed=6, backend={"name": "openvino", "device": "CPU", "ov_mode": "performance"})
    plan = engine.plan(request)
    ov_unet_fails(2)
    with pytest.raises(StudioError, match=r"^the UNet gave NaN/inf values at step 2 of 4 \(\w+, performance mode on "
                                          r"CPU\); the run stopped and nothing was saved: use accuracy mode"):
        engine.run(plan)


def test_openvino_performance_vae_collapse_is_decoded_again_in_fp32(engine, tiny_request, monkeypatch):
    from optimum.intel.openvino.modeling_diffusion import OVModelVaeDecoder

    request = tiny_request(seed=7, steps=2, backend={"name": "openvino", "device": "CPU", "ov_mode": "performance"})
    plan = engine.plan(request)
    reference = engine.run(plan)
    accurate = engine.run(engine.plan(request.model_copy(update={"backend": request.backend.model_copy(
        update={"ov_mode": "accuracy"})})))
    original, calls = OVModelVaeDecoder.forward, []

    def first_decode_fails(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(self.request)
        if len(calls) == 1:
            out[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(OVModelVaeDecoder, "forward", first_decode_fails)
    result = engine.run(plan)
    assert len(calls) == 2 and calls[0] is not calls[1]  # the second decode ran on another (fp32) decoder
    assert any(n.startswith("vae_upcast: the VAE decode in performance mode") for n in result.notes), result.notes
    assert np.isfinite(result.images).all()
    # Within the accuracy tolerance of the normal decode, and of an accuracy-mode run's.
    assert np.abs(result.images - reference.images).max() <= 1e-4
    assert np.abs(result.images - accurate.images).max() <= 0.05
    json.dumps(result.notes)


def test_guard_costs_nothing_when_all_is_well(engine, tiny_request):
    result = engine.run(engine.plan(tiny_request(seed=8, steps=2)))
    assert np.isfinite(result.images).all() and not any("NaN" in n for n in result.notes)

"""LoRAs on the OpenVINO backend (tiny model, CPU, accuracy mode): fused before export into an IR per LoRA set.

One module-scoped sequence of runs (base, LoRA, LoRA again, base again) shares two exports: the base model's and
the LoRA set's; the tests read its results."""

import re
import time

import numpy as np
import pytest

from tests.adapter_files import write_lora

LORA = [{"name": "style", "weight": 0.8}]


def request(**overrides):
    """conftest's tiny request (function-scoped there; the shared runs here are module-scoped)."""
    from studio.settings import build_request

    values = dict(prompt="a photograph of an astronaut riding a horse", seed=21, steps=3, width=64, height=64,
                  sampler="euler_a", model="tiny")
    return build_request(**{**values, **overrides})


def ov(**overrides):
    return request(backend={"name": "openvino", "device": "CPU", "ov_mode": "accuracy"}, **overrides)


def seconds(result, pattern=r"exported .* to IR in ([0-9.]+) s"):
    found = [re.search(pattern, n) for n in result.notes]
    return next((float(m.group(1)) for m in found if m), None)


def export_seconds(result):
    return seconds(result)


def weights_seconds(result):
    return seconds(result, r"wrote the LoRA set's weights into the model's IR in ([0-9.]+) s")


@pytest.fixture(scope="module")
def ov_engine(config):
    from studio.engine.engine import Engine

    return Engine(config.model_copy(update={"compile_cache_size": 16}))


@pytest.fixture(scope="module")
def runs(ov_engine, config):
    """The sequence every test here reads: plans are made just before their runs, as the app makes them."""
    pipe = ov_engine.registry.load(ov_engine.registry.resolve("tiny"))
    write_lora(config.lora_folder / "style.safetensors", pipe, fmt="kohya", seed=5)
    out = {}

    def step(name, request):
        plan = ov_engine.plan(request)
        start = time.perf_counter()
        out[name] = (plan, ov_engine.run(plan), time.perf_counter() - start)

    step("base", ov())
    step("lora", ov(loras=LORA))
    step("lora_again", ov(loras=LORA))
    step("base_again", ov())
    step("torch_lora", request(loras=LORA))
    return out


def test_lora_on_openvino_matches_torch(runs, say):
    _, ov_result, _ = runs["lora"]
    _, torch_result, _ = runs["torch_lora"]
    _, base, _ = runs["base"]
    diff = float(np.abs(ov_result.images - torch_result.images).max())
    moved = float(np.abs(ov_result.images - base.images).max())
    say(f"[lora] OpenVINO accuracy vs torch with a LoRA: max abs diff {diff:.2e} (the LoRA moves the "
        f"image by {moved:.3f}); export {export_seconds(base)} s base; the LoRA set's IR: weights written "
        f"into a copy of the base IR in {weights_seconds(ov_result)} s (no export)")
    assert moved > 1e-2  # the LoRA is really applied
    assert diff <= 1e-4, diff


def test_lora_set_change_is_predicted_and_reported_the_same(runs):
    plan, result, _ = runs["lora"]
    reason = "LoRA set changed: none → style 0.8"
    assert plan.compile.will_compile and plan.compile.reason == reason
    assert plan.compile.export == ("the LoRA set's weights (style 0.8) written into a copy of the model's IR first "
                                   "(no export, under a second)")
    base_plan, base_result, _ = runs["base"]
    if export_seconds(base_result) is not None:  # this module exported the base model (no other test had)
        assert base_plan.compile.export.startswith("an export to OpenVINO IR of the model first")
    else:
        assert base_plan.compile.export is None
    assert [(e["kind"], e["reason"]) for e in result.compile_events] == [("compile", reason)]
    assert export_seconds(result) is None and weights_seconds(result) is not None
    assert plan.compile.signature != runs["base"][0].compile.signature


def test_same_lora_set_again_needs_no_export_or_compile(runs):
    plan, result, _ = runs["lora_again"]
    assert not plan.compile.will_compile and plan.compile.export is None
    assert [e["kind"] for e in result.compile_events] == ["hit"]
    assert export_seconds(result) is None and weights_seconds(result) is None
    assert np.array_equal(result.images, runs["lora"][1].images)


def test_removing_the_lora_gives_the_base_image_bit_for_bit(runs):
    plan, result, _ = runs["base_again"]
    assert not plan.compile.will_compile and plan.compile.export is None  # the base variant is still cached
    assert [e["kind"] for e in result.compile_events] == ["hit"]
    assert any("IR loaded from cache (no export)" in n for n in result.notes)
    assert np.array_equal(result.images, runs["base"][1].images)


def test_dropped_compile_cache_compiles_the_lora_set_again_without_export(runs, ov_engine):
    ov_engine.drop_compile_cache()
    plan = ov_engine.plan(ov(loras=LORA))
    reason = "the compile cache was dropped: LoRA set changed: none → style 0.8"
    assert plan.compile.will_compile and plan.compile.reason == reason and plan.compile.export is None
    result = ov_engine.run(plan)
    assert [(e["kind"], e["reason"]) for e in result.compile_events] == [("compile", reason)]
    assert export_seconds(result) is None
    assert np.array_equal(result.images, runs["lora"][1].images)


def test_lora_weight_change_names_both_sets():
    from studio.backends.compile_manager import CompileManager, Signature

    manager = CompileManager(2)
    first = Signature("CPU", "accuracy", 2, 64, 64, 1, "abc", loras=(("f" * 16, 0.8),), lora_label="style 0.8")
    manager.activate(first, lambda s: object())
    other = Signature("CPU", "accuracy", 2, 64, 64, 1, "abc", loras=(("f" * 16, 0.5),), lora_label="style 0.5")
    assert manager.predict(other).reason == "LoRA set changed: style 0.8 → style 0.5"
    assert str(first) != str(other) and str(first).startswith("abc:CPU:accuracy:b2:64x64:77tok:lora-")

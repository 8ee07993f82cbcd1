"""Image input on the OpenVINO backend (CPU, accuracy mode): vary and inpaint match torch fp32, repeat exactly,
regenerate alone; a 9-channel inpaint model runs; the recompile reasons of a task or input-size change are
predicted before the run in the words the run reports."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_picture

TOLERANCE = 1e-4  # max abs diff of the float images, OpenVINO accuracy mode vs torch fp32


@pytest.fixture(scope="module")
def ov_engine(config):
    """A fresh engine: its own compile LRU (room for every signature here), the session's IR cache."""
    from studio.engine.engine import Engine

    return Engine(config.model_copy(update={"compile_cache_size": 16}))


@pytest.fixture(scope="module")
def inputs(ov_engine):
    picture = make_picture(64, 64, seed=3)
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (16, 16, 48, 40))
    wide = make_picture(80, 64, seed=4)
    return {"sha": ov_engine.inputs.put(picture), "mask_sha": ov_engine.inputs.put(mask),
            "wide_sha": ov_engine.inputs.put(wide), "picture": picture, "mask": mask}


def request(tiny_request, inputs, mode, backend="openvino", model="tiny", sha=None, **extra):
    image = {"mode": mode, "sha256": sha or inputs["sha"], **extra}
    if mode == "inpaint":
        image["mask_sha256"] = inputs["mask_sha"]
    spec = ({"name": "openvino", "device": "CPU", "ov_mode": "accuracy"} if backend == "openvino"
            else {"name": "torch"})
    return tiny_request(model=model, steps=6, seed=11, backend=spec, image=image)


def against_torch(engine, tiny_request, inputs, mode, model="tiny", **extra):
    """torch's result, and two OpenVINO runs, of the same request."""
    reference = engine.run(engine.plan(request(tiny_request, inputs, mode, "torch", model, **extra)))
    plan = engine.plan(request(tiny_request, inputs, mode, "openvino", model, **extra))
    return plan, reference, engine.run(plan), engine.run(plan)


@pytest.mark.parametrize("model,mode", [("tiny", "vary-subtle"), ("tiny", "inpaint"), ("tiny-sdxl", "vary-subtle")])
def test_matches_torch_fp32_and_repeats(ov_engine, tiny_request, inputs, model, mode, say):
    plan, reference, first, again = against_torch(ov_engine, tiny_request, inputs, mode, model)
    expected = {"vary-subtle": ("image-to-image", ":img2img"),
                "inpaint": ("latent mask blending (4-channel UNet)", ":inpaint")}[mode]
    assert plan.image.method == expected[0] and plan.compile.signature.endswith(expected[1])
    assert [e["signature"] for e in first.compile_events] == [plan.compile.signature]
    diff = float(np.abs(first.images - reference.images).max())
    say(f"[ov-image] {model} {mode}: OpenVINO accuracy vs torch fp32 max abs diff {diff:.3g}")
    assert diff <= TOLERANCE, diff
    assert np.array_equal(first.images, again.images)
    assert first.fingerprints == again.fingerprints == reference.fingerprints
    assert [e["kind"] for e in again.compile_events] == ["hit"]
    # The input image decided the result: not the text-to-image image of the same seed and prompt.
    text = ov_engine.run(ov_engine.plan(request(tiny_request, inputs, mode, model=model).model_copy(
        update={"image": None})))
    assert np.abs(text.images - first.images).max() > 0.05


def test_image_of_a_batch_alone_equals_the_batchs(ov_engine, tiny_request, inputs):
    plan = ov_engine.plan(request(tiny_request, inputs, "vary-strong").model_copy(update={"batch": 2}))
    batch = ov_engine.run(plan)
    alone = ov_engine.run(plan.for_image(1))
    assert batch.images.shape == (2, 64, 64, 3)
    assert np.array_equal(batch.images[1], alone.images[0]) and alone.fingerprints == batch.fingerprints[1:]
    assert not np.array_equal(batch.images[0], batch.images[1])  # each image its own noise


def test_task_and_input_size_changes_are_predicted_in_the_words_the_run_reports(config, tiny_request, inputs):
    from studio.engine.engine import Engine

    engine = Engine(config.model_copy(update={"compile_cache_size": 16}))  # an LRU of its own: a known past
    inpaint = engine.plan(request(tiny_request, inputs, "inpaint"))
    text = engine.plan(request(tiny_request, inputs, "inpaint").model_copy(update={"image": None}))
    engine.run(text)
    assert text.compile.signature == f"{text.model.short_hash}:CPU:accuracy:b2:64x64:77tok"  # as it always read
    # planned before the text-to-image run, predicted again after it: what the run will do now
    inpaint = engine.with_current_compile(inpaint)
    assert inpaint.compile.will_compile and inpaint.compile.reason == "mask mode text to image→inpaint (latent blending)"
    painted = engine.run(inpaint)
    assert [(e["kind"], e["reason"]) for e in painted.compile_events] == [("compile", inpaint.compile.reason)]
    vary = engine.plan(request(tiny_request, inputs, "vary-subtle"))
    assert vary.compile.reason == "mask mode inpaint (latent blending)→image to image"
    assert engine.run(vary).compile_events[0]["reason"] == vary.compile.reason
    wide = engine.plan(request(tiny_request, inputs, "vary-subtle", sha=inputs["wide_sha"]))
    assert (wide.width, wide.height) == (80, 64)
    assert wide.compile.will_compile and wide.compile.reason == "input size 64×64→80×64"
    assert [(e["kind"], e["reason"]) for e in engine.run(wide).compile_events] == [("compile", wide.compile.reason)]
    again = engine.plan(request(tiny_request, inputs, "inpaint"))
    assert not again.compile.will_compile and again.compile.signature == inpaint.compile.signature
    # Dropped (the image pipelines' compiled parts too): compiled again, said so, and the same image.
    engine.drop_compile_cache()
    again = engine.plan(request(tiny_request, inputs, "inpaint"))
    assert again.compile.reason == "the compile cache was dropped: mask mode image to image→inpaint (latent blending), " \
                                   "input size 80×64→64×64"
    rerun = engine.run(again)
    assert rerun.compile_events[0]["reason"] == again.compile.reason
    assert np.array_equal(rerun.images, painted.images)


def test_nine_channel_inpaint_model_runs_on_openvino(ov_engine, tiny_request, inputs, tiny_inpaint, say):
    plan, reference, first, again = against_torch(ov_engine, tiny_request, inputs, "inpaint", tiny_inpaint)
    assert plan.image.method == "inpaint UNet (9 channels)" and plan.compile.signature.endswith(":inpaint9")
    diff = float(np.abs(first.images - reference.images).max())
    say(f"[ov-image] tiny-inpaint (9-channel UNet) inpaint: OpenVINO accuracy vs torch fp32 max abs diff {diff:.3g}")
    assert diff <= TOLERANCE, diff
    assert np.array_equal(first.images, again.images)
    keep = np.asarray(inputs["mask"]) == 0
    out = (first.images[0] * 255).round().astype(int)
    assert np.abs(out - np.asarray(inputs["picture"]).astype(int))[keep].max() <= 1  # the kept pixels are kept

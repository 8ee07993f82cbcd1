"""Image input on the torch backend: every mode on the tiny SD1 and SDXL models, the same every time, image i of a
batch alone the same, the noise the fingerprint names, inpaint keeping what the mask keeps, a 9-channel
inpainting model, and the refusals before anything runs."""

import numpy as np
import pytest
from PIL import Image

from studio.errors import StudioError
from tests.conftest import make_picture

MODES = (("vary-subtle", {}), ("vary-strong", {}), ("upscale-1.5", {}), ("upscale-2", {}),
         ("inpaint", {"mask": True}), ("inpaint", {"mask": True, "inpaint_area": "masked"}),
         ("outpaint", {"outpaint": {"left": 16, "top": 8}}))


@pytest.fixture(scope="module")
def inputs(engine):
    picture = make_picture(96, 64)
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (24, 16, 56, 40))
    return {"picture": picture, "sha": engine.inputs.put(picture), "mask": mask, "mask_sha": engine.inputs.put(mask)}


def image_request(tiny_request, inputs, mode, model="tiny", **extra):
    extra = dict(extra)
    if extra.pop("mask", False):
        extra["mask_sha256"] = inputs["mask_sha"]
    return tiny_request(model=model, steps=6, seed=11, image={"mode": mode, "sha256": inputs["sha"], **extra})


def quantised(image):
    return (image * 255).round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("mode,extra", MODES, ids=[m + ("-" + e.get("inpaint_area", "")).rstrip("-") for m, e in MODES])
def test_mode_repeats_and_each_image_regenerates_alone(engine, tiny_request, inputs, model, mode, extra):
    plan = engine.plan(image_request(tiny_request, inputs, mode, model, **extra).model_copy(
        update={"batch": 2, "steps": 4}))
    first = engine.run(plan)
    # The whole batch again on SD1; on SDXL image 1 alone is the repeat (the same seed, run again), which keeps
    # the suite's time in bounds.
    again = engine.run(plan) if model == "tiny" else first
    alone = engine.run(plan.for_image(1))
    w, h = plan.output_size
    assert first.images.shape == (2, h, w, 3)
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.images[1], alone.images[0])
    assert first.fingerprints == again.fingerprints == engine.preview_fingerprints(plan)
    assert alone.fingerprints == first.fingerprints[1:]
    assert not np.array_equal(first.images[0], first.images[1])  # each image its own noise


def test_sizes_and_steps_follow_the_mode(engine, tiny_request, inputs):
    sizes = {}
    for mode, extra in MODES:
        plan = engine.plan(image_request(tiny_request, inputs, mode, **extra))
        sizes[(mode, extra.get("inpaint_area"))] = (plan.output_size, (plan.width, plan.height), plan.image.steps_run)
    assert sizes[("vary-subtle", None)] == ((96, 64), (96, 64), 3)  # int(6 × 0.5)
    assert sizes[("vary-strong", None)] == ((96, 64), (96, 64), 5)  # int(6 × 0.85)
    assert sizes[("upscale-1.5", None)] == ((144, 96), (144, 96), 2)  # int(6 × 0.382)
    assert sizes[("upscale-2", None)] == ((192, 128), (192, 128), 2)
    assert sizes[("inpaint", None)] == ((96, 64), (96, 64), 6)
    out, run, _ = sizes[("inpaint", "masked")]
    assert out == (96, 64) and run != (96, 64) and run[0] % 8 == 0 and run[1] % 8 == 0  # the crop, at work size
    assert sizes[("outpaint", None)] == ((112, 72), (112, 72), 6)


def test_steps_reported_are_the_steps_that_run(engine, tiny_request, inputs):
    plan = engine.plan(image_request(tiny_request, inputs, "vary-subtle").model_copy(update={"steps": 10}))
    seen = []
    engine.run(plan, on_step=lambda done, total: seen.append((done, total)))
    assert plan.image.first_step == 5 and seen == [(i, 5) for i in range(1, 6)]


def test_denoise_changes_the_image_and_the_fingerprint(engine, tiny_request, inputs):
    a = engine.plan(image_request(tiny_request, inputs, "vary-subtle"))
    b = engine.plan(image_request(tiny_request, inputs, "vary-subtle", strength=0.7))
    ra, rb = engine.run(a), engine.run(b)
    assert a.noise == b.noise and ra.fingerprints != rb.fingerprints  # same draw, added at another step
    assert not np.array_equal(ra.images, rb.images)


def test_inpaint_keeps_unmasked_pixels_of_the_input(engine, tiny_request, inputs):
    for model in ("tiny", "tiny-sdxl"):
        plan = engine.plan(image_request(tiny_request, inputs, "inpaint", model, mask=True, mask_blur=0))
        out = quantised(engine.run(plan).images[0]).astype(int)
        keep = np.asarray(inputs["mask"]) == 0
        original = np.asarray(inputs["picture"]).astype(int)
        assert np.abs(out - original)[keep].max() <= 1
        assert np.abs(out - original)[~keep].max() > 8  # and the masked area was repainted


def test_mask_blur_feathers_the_edge(engine, tiny_request, inputs):
    sharp = engine.run(engine.plan(image_request(tiny_request, inputs, "inpaint", mask=True)))
    soft = engine.run(engine.plan(image_request(tiny_request, inputs, "inpaint", mask=True, mask_blur=4)))
    original = np.asarray(inputs["picture"]).astype(int)
    ring = np.asarray(inputs["mask"].filter(__import__("PIL.ImageFilter").ImageFilter.MaxFilter(5))) > 0
    ring &= np.asarray(inputs["mask"]) == 0  # just outside the mask: kept exactly without blur, blended with it
    assert np.array_equal(quantised(sharp.images[0])[ring], original.astype(np.uint8)[ring])
    assert not np.array_equal(quantised(soft.images[0])[ring], original.astype(np.uint8)[ring])


def test_nine_channel_inpaint_model(engine, tiny_request, inputs, tiny_inpaint):
    plan = engine.plan(image_request(tiny_request, inputs, "inpaint", tiny_inpaint, mask=True))
    assert plan.image.method == "inpaint UNet (9 channels)"
    first, again = engine.run(plan), engine.run(plan)
    assert np.array_equal(first.images, again.images)
    out = engine.run(engine.plan(image_request(tiny_request, inputs, "outpaint", tiny_inpaint,
                                               outpaint={"right": 24})))
    assert out.images.shape == (1, 64, 120, 3)
    with pytest.raises(StudioError, match="inpainting model"):
        engine.plan(image_request(tiny_request, inputs, "vary-subtle", tiny_inpaint))
    with pytest.raises(StudioError, match="inpainting model"):
        engine.plan(tiny_request(model=tiny_inpaint))


def test_refusals_before_anything_runs(engine, tiny_request, inputs):
    black = engine.inputs.put(Image.new("L", (96, 64), 0))
    with pytest.raises(StudioError, match="all black"):
        engine.plan(image_request(tiny_request, inputs, "inpaint", mask_sha256=black))
    with pytest.raises(StudioError, match="runs no step"):
        engine.plan(image_request(tiny_request, inputs, "vary-subtle", strength=0.1))
    big = engine.inputs.put(make_picture(1200, 80))
    with pytest.raises(StudioError, match="2048"):
        engine.plan(tiny_request(image={"mode": "upscale-2", "sha256": big}))
    with pytest.raises(StudioError, match="not in the inputs store"):
        engine.plan(tiny_request(image={"mode": "vary-subtle", "sha256": "0" * 64}))
    for bad, match in (({"mode": "inpaint"}, "needs a mask"), ({"mode": "outpaint"}, "at least one side"),
                       ({"mode": "vary-subtle", "strength": 0}, "greater than 0"),
                       ({"mode": "vary-subtle", "strength": 1.5}, "less than or equal to 1")):
        with pytest.raises(StudioError, match=match):
            tiny_request(image={"sha256": inputs["sha"], **bad})


def test_a_mask_of_another_size_is_resized_and_said(engine, tiny_request, inputs):
    small = inputs["mask"].resize((48, 32), Image.Resampling.NEAREST)
    plan = engine.plan(image_request(tiny_request, inputs, "inpaint", mask_sha256=engine.inputs.put(small)))
    assert any("mask was 48×32, resized to the image's 96×64" in n for n in plan.image.notes)

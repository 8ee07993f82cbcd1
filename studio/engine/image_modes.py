"""Image input (vary, upscale, inpaint, outpaint): what runs at which size, decided before anything runs,
and the pixels each run starts from and is composited into.

The input and its mask come from the inputs store by hash (studio/image_input.py). Planning reads them to
size the run; running prepares the same pixels again from the same hashes, so a plan made on one machine
runs the same on another that holds the same inputs.

Noise: the run's initial noise is the same draw as text to image (the image's own generator, on the chosen
noise source), added to the encoded image at the first step that runs. The encoded image is the VAE
posterior's mean, so no random draw depends on the VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from studio import image_input as ii
from studio.errors import StudioError
from studio.plan import ImagePlan
from studio.settings import GenerationRequest, ImageInput

MAX_RUN_SIDE = 2048  # the largest side a request may run at (settings: width/height)
METHODS = {"img2img": "image-to-image", "blend": "latent mask blending (4-channel UNet)",
           "inpaint_unet": "inpaint UNet (9 channels)"}
MASK_MODES = ("inpaint", "outpaint")


def _size(size) -> str:
    return f"{size[0]}×{size[1]}"


def strength_of(image: ImageInput) -> float:
    return image.strength if image.strength is not None else ii.DEFAULT_STRENGTH[image.mode]


def steps_run(steps: int, strength: float) -> int:
    """The denoising steps that run, counted as diffusers counts them."""
    return min(int(steps * strength), steps)


def _fit(image, notes: list[str], what: str):
    """``image`` at a size the model runs: sides rounded down to multiples of 8, and at most MAX_RUN_SIDE."""
    w, h = image.size
    scale = min(1.0, MAX_RUN_SIDE / max(w, h))
    size = ii.fit_size(int(w * scale), int(h * scale))
    if size != (w, h):
        why = (f"the largest side that runs is {MAX_RUN_SIDE}" if scale < 1 else "sides run in multiples of 8")
        notes.append(f"{what} resized from {_size((w, h))} to {_size(size)} ({why})")
    return ii.resize(image, size)


@dataclass
class Prepared:
    """The pixels a run starts from: ``image`` at the run size (encoded by the backend), the pipeline's mask at
    the run size (white = repaint), and for compositing, the ``canvas`` the result goes into with its blurred
    ``blend`` mask (both at the output size)."""

    image: Any  # PIL RGB, width×height of the plan
    mask: Optional[Any] = None  # PIL L, width×height of the plan (inpaint and outpaint)
    canvas: Optional[Any] = None  # PIL RGB, the output size
    blend: Optional[Any] = None  # PIL L, the output size


def _inputs(image: ImageInput, store: ii.InputStore):
    """The input and mask as the request names them, shaped as the mode needs them: (canvas, mask, notes,
    the stored input's size)."""
    notes: list[str] = []
    source = store.get(image.sha256).convert("RGB")
    size = source.size
    if image.mode.startswith(("vary", "upscale")):
        return source, None, notes, size
    if image.mode == "outpaint":
        fitted = _fit(source, notes, "the input")
        o = image.outpaint
        canvas, mask = ii.outpaint_canvas(fitted, o.left, o.right, o.top, o.bottom)
        return canvas, mask, notes, size
    mask = store.get(image.mask_sha256).convert("L")
    if mask.size != source.size:
        notes.append(f"mask was {_size(mask.size)}, resized to the image's {_size(source.size)}")
        mask = ii.resize(mask, source.size)
    if image.inpaint_area == "whole":
        source = _fit(source, notes, "the input")
        mask = ii.resize(mask, source.size)
    if not np.asarray(mask).any():
        raise StudioError("the mask is all black: nothing to repaint (white = repaint); paint the area to change")
    return source, mask, notes, size


def plan_image(request: GenerationRequest, arch: dict, store: ii.InputStore) -> tuple[ImagePlan, int, int]:
    """The ImagePlan of ``request.image`` and the width and height the UNet runs at."""
    image = request.image
    inpaint_unet = arch.get("unet_in_channels", 4) == 9
    if inpaint_unet and image.mode not in MASK_MODES:
        raise StudioError(f"this is an inpainting model (9-channel UNet): it runs inpaint and outpaint only; "
                          f"pick an ordinary model for {image.mode}")
    canvas, mask, notes, source_size = _inputs(image, store)
    crop = None
    if image.mode.startswith("upscale"):
        size = ii.upscaled_size(*canvas.size, ii.UPSCALE_FACTOR[image.mode])
        if max(size) > MAX_RUN_SIDE:
            raise StudioError(f"{image.mode} of a {_size(canvas.size)} image gives {_size(size)}; the largest is "
                              f"{MAX_RUN_SIDE} per side: use a smaller image or upscale-1.5")
        run_size = canvas_size = size
    elif image.mode.startswith("vary"):
        fitted = _fit(canvas, notes, "the input")
        run_size = canvas_size = fitted.size
    elif image.mode == "inpaint" and image.inpaint_area == "masked":
        crop = ii.masked_box(mask, image.masked_padding + image.mask_blur)
        if crop is None:
            raise StudioError("the mask is all black: nothing to repaint (white = repaint)")
        canvas_size = canvas.size
        side = arch["default_size"]
        run_size = ii.work_size(crop[2] - crop[0], crop[3] - crop[1], side * side, max_side=MAX_RUN_SIDE)
    else:
        if max(canvas.size) > MAX_RUN_SIDE:
            raise StudioError(f"outpaint makes a {_size(canvas.size)} canvas; the largest is {MAX_RUN_SIDE} per "
                              "side: add fewer pixels or use a smaller image")
        run_size = canvas_size = canvas.size
    strength = strength_of(image)
    run = steps_run(request.steps, strength)
    if run < 1:
        raise StudioError(f"denoise {strength:g} × {request.steps} steps runs no step: raise the denoise or the steps")
    if image.mode.startswith(("vary", "upscale")):
        method = METHODS["img2img"]
    else:
        method = METHODS["inpaint_unet" if inpaint_unet else "blend"]
    o = image.outpaint
    plan = ImagePlan(
        mode=image.mode, input_sha256=image.sha256, input_size=list(source_size),
        strength=strength, steps_run=run, first_step=request.steps - run, method=method,
        canvas_size=list(canvas_size), mask_sha256=image.mask_sha256,
        mask_blur=image.mask_blur if image.mode in MASK_MODES else 0,
        area=image.inpaint_area if image.mode == "inpaint" else "whole", crop=list(crop) if crop else None,
        outpaint=o.model_dump() if image.mode == "outpaint" else None, notes=notes)
    return plan, run_size[0], run_size[1]


def prepare(plan: ImagePlan, request: GenerationRequest, width: int, height: int, store: ii.InputStore) -> Prepared:
    """The pixels of a run of ``plan`` (made again from the hashes, exactly as planning saw them)."""
    canvas, mask, _, _ = _inputs(request.image, store)
    if plan.mode.startswith("upscale") or plan.mode.startswith("vary"):
        return Prepared(image=ii.resize(canvas, (width, height)))
    blend = ii.blur_mask(mask, plan.mask_blur)
    if plan.crop is not None:
        box = tuple(plan.crop)
        return Prepared(image=ii.resize(canvas.crop(box), (width, height)),
                        mask=ii.resize(mask.crop(box), (width, height)), canvas=canvas, blend=blend)
    return Prepared(image=canvas, mask=mask, canvas=canvas, blend=blend)


def finish(plan: ImagePlan, prepared: Prepared, images):
    """The saved images: the run's output, pasted into the canvas through the blurred mask where one applies
    (pixels the mask keeps are the input's, exactly)."""
    if prepared.canvas is None:
        return images
    if plan.crop is not None:
        return np.stack([ii.paste_crop(prepared.canvas, img, tuple(plan.crop), prepared.blend) for img in images])
    return np.stack([ii.composite(img, prepared.canvas, prepared.blend) for img in images])


def fingerprint_salt(plan: ImagePlan) -> str:
    """What an image's fingerprint covers beside its noise: the input, the mask and where the noise is added."""
    return f"{plan.mode};{plan.input_sha256};{plan.mask_sha256 or '-'};{plan.first_step}"

"""The one schema of what a user sets: each control's name, where it lives in the request, its label, its
CLI flag and help. Choices, ranges and defaults are read from GenerationRequest itself, so the app's
controls, the CLI's flags and the request model cannot drift apart.

The control name is also the app's HTTP API parameter name.

CONTROLS are the page's inputs (CONTROL_ORDER): the app builds a component for each, and every one sets a
field of a plain text-to-image request. IMAGE_CONTROLS set fields of the request's input image
(``request.image``: they apply only when an image is given); they are in BY_NAME, and the CLI makes flags
of them as of the others. They join the page's inputs when the app builds their components.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Optional

from studio.samplers import GPU_SUFFIX, SAMPLERS
from studio.settings import BackendSpec, GenerationRequest, ImageInput, Precision

Kind = Literal["text", "number", "slider", "choice", "check", "multi"]


@dataclass(frozen=True)
class Control:
    name: str  # UI key and API parameter name
    path: tuple[str, ...]  # the request field it sets (nested: ("backend", "device"))
    label: str
    kind: Kind
    flag: Optional[str] = None  # the CLI flag that sets it (None: the CLI sets it another way)
    help: str = ""
    step: float = 1
    lines: int = 1

    @property
    def field(self):
        model = {"backend": BackendSpec, "precision": Precision, "image": ImageInput}.get(
            self.path[0], GenerationRequest) if len(self.path) > 1 else GenerationRequest
        return model.model_fields[self.path[-1]]

    @property
    def default(self):
        return self.field.get_default(call_default_factory=True)

    @property
    def choices(self) -> list[str]:
        if self.name == "sampler":
            return list(SAMPLERS) + [s + GPU_SUFFIX for s in SAMPLERS if SAMPLERS[s].stochastic]
        if self.name == "chunk_policy":
            return ["exact", "pad:2", "pad:3", "pad:4"]
        annotation = self.field.annotation
        if typing.get_origin(annotation) is Literal:
            return list(typing.get_args(annotation))
        return []

    @property
    def bounds(self) -> tuple[Optional[float], Optional[float]]:
        low = high = None
        for rule in self.field.metadata:
            low = getattr(rule, "ge", getattr(rule, "gt", low))  # gt: the bound itself is refused (denoise > 0)
            high = getattr(rule, "le", high)
        return low, high


CONTROLS: tuple[Control, ...] = (
    Control("prompt", ("prompt",), "Prompt", "text", "--prompt", lines=3),
    Control("negative_prompt", ("negative_prompt",), "Negative prompt", "text", "--negative", lines=2),
    Control("seed", ("seed",), "Seed (-1 draws one)", "number", "--seed"),
    Control("seed_mode", ("seed_mode",), "After each run", "choice", "--seed-mode",
            "fixed keeps the seed, increment moves past the batch, random draws a new one"),
    Control("batch", ("batch",), "Image number", "slider", "--batch"),
    # Quality and Speed only set steps; the fast modes set steps, sampler and CFG and add their LoRA. The CLI's
    # --performance (studio/cli.py) takes the step counts too, so its choices are not the field's.
    Control("performance", ("performance",), "Performance", "choice", None,
            "Extreme Speed (LCM LoRA) and Lightning set steps, sampler and CFG and add their LoRA from loras/"),
    Control("steps", ("steps",), "Steps", "slider", "--steps"),
    Control("cfg", ("cfg",), "Guidance scale (CFG)", "slider", "--cfg", step=0.5),
    Control("sampler", ("sampler",), "Sampler", "choice", "--sampler",
            "a -gpu suffix draws the noise on the device, as ComfyUI's samplers do"),
    Control("width", ("width",), "Width", "number", "--width"),
    Control("height", ("height",), "Height", "number", "--height"),
    Control("model", ("model",), "Checkpoint", "choice", "--model"),
    Control("noise_source", ("noise_source",), "Noise drawn on", "choice", "--noise-source",
            "cpu noise is the same on every machine; device noise differs between GPUs"),
    Control("deterministic", ("deterministic",), "Deterministic mode", "check", "--deterministic",
            "deterministic algorithms only (slower on a GPU)"),
    Control("text_dtype", ("precision", "text"), "Text encoder precision", "choice", "--dtype text="),
    Control("unet_dtype", ("precision", "unet"), "UNet precision", "choice", "--dtype unet="),
    Control("vae_dtype", ("precision", "vae"), "VAE precision", "choice", "--dtype vae="),
    Control("expansion", ("expansion",), "Prompt expansion", "check", "--expansion",
            "seeded style words added to the prompt, shown and stored with each image"),
    Control("backend", ("backend", "name"), "Backend", "choice", "--backend"),
    Control("device", ("backend", "device"), "Device", "choice", "--device"),
    Control("ov_mode", ("backend", "ov_mode"), "OpenVINO mode", "choice", "--ov-mode",
            "accuracy runs fp32 everywhere; performance lets the CPU run bf16 where it can"),
    Control("text_encoder", ("backend", "text_encoder"), "OpenVINO text encoder", "choice", "--text-encoder",
            "PyTorch on the CPU, or compiled with OpenVINO"),
    Control("compile", ("backend", "compile"), "torch.compile", "choice", "--compile",
            "torch: compile the UNet and VAE decoder with inductor per size and prompt length (faster steps, "
            "pixels drift from eager torch; compiled code is cached on disk)"),
    Control("ov_weights", ("backend", "ov_weights"), "OpenVINO weights", "choice", "--ov-weights",
            "int8: the UNet's weights compressed by NNCF (a separate IR; less memory, the image differs)"),
    Control("chunk_policy", ("chunk_policy",), "Chunk policy", "choice", "--chunk-policy",
            "pad:N encodes every prompt as N chunks, so prompt length never recompiles"),
    Control("clip_skip", ("clip_skip",), "CLIP skip", "slider", None, "A1111's Clip skip: 1 = the last layer"),
    Control("styles", ("styles",), "Styles", "multi", "--style",
            "prompt templates applied in order before the prompt is counted and chunked"),
    # The input image's settings (request.image); the image and mask themselves are files (--image, --mask; the
    # app's Input image panel), and outpaint's four sides one --outpaint flag (the panel's directions and pixels).
    Control("image_mode", ("image", "mode"), "Input image mode", "choice", "--mode",
            "what to do with --image (default vary-subtle): vary it, upscale it, inpaint the --mask's white "
            "area, or outpaint (--outpaint)"),
    Control("strength", ("image", "strength"), "Denoise", "slider", "--strength",
            "the share of the steps that run on the input, more than 0 and at most 1 (default, and 0 in the app: "
            "the mode's own, vary 0.5/0.85, upscale 0.382, inpaint and outpaint 1)", step=0.01),
    Control("mask_blur", ("image", "mask_blur"), "Mask blur", "slider", "--mask-blur",
            "inpaint: blur the mask's edge by this many pixels"),
    Control("inpaint_area", ("image", "inpaint_area"), "Inpaint area", "choice", "--inpaint-area",
            "inpaint: the whole image, or only the masked area (and padding) at full resolution"),
    Control("masked_padding", ("image", "masked_padding"), "Masked area padding", "slider", "--masked-padding",
            "inpaint --inpaint-area masked: pixels kept around the masked area"),
)
BY_NAME = {c.name: c for c in CONTROLS}
CONTROL_ORDER = tuple(c.name for c in CONTROLS)


def flag_for(name: str) -> str:
    """How a control is named to a user who runs the CLI (for fix hints that must work in both)."""
    control = BY_NAME[name]
    return control.flag or control.name


def ui_label(name: str) -> str:
    return BY_NAME[name].label

# Fooocus's LoRA slots: each an enable switch, a name from the LoRA folder ("None": empty) and a weight. They are
# the app's API parameters lora_<i>_enabled, lora_<i>_name, lora_<i>_weight (after the image panel's) and become
# request.loras; the CLI's repeatable --lora NAME[:WEIGHT] sets the same list. The slider spans Fooocus's range;
# the request itself takes -10..10 (a preset or a --lora may go further than the slider).
LORA_SLOTS = 5
LORA_NONE = "None"
LORA_WEIGHT_RANGE = (-2.0, 2.0)
LORA_WEIGHT_STEP = 0.01
LORA_DEFAULT_WEIGHT = 1.0


def lora_slot_names(slot: int) -> tuple[str, str, str]:
    """The API names of slot ``slot`` (1-based): enabled, name, weight."""
    return f"lora_{slot}_enabled", f"lora_{slot}_name", f"lora_{slot}_weight"


LORA_ORDER = tuple(name for slot in range(1, LORA_SLOTS + 1) for name in lora_slot_names(slot))

"""The Plan: everything that decides the pixels, resolved before anything runs.

A Plan is plain data. The UI shows it before Generate, the image metadata records it, a preset
stores it, and two Plans made on two machines can be compared field by field.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from studio.settings import GenerationRequest


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Frozen):
    name: str
    kind: str
    family: str
    sha256: str
    short_hash: str
    untrained: bool


class ResolvedBackend(_Frozen):
    name: str
    device: str
    mode: Optional[str] = None
    precision: dict[str, str]
    text_encoder: str = "torch"  # where the text encoder runs: torch (on the CPU for OpenVINO) or openvino
    weights: str = "full"  # OpenVINO: the exported weights as they are, or "int8" (NNCF-compressed)


class AppliedStyle(_Frozen):
    """A style as it was applied: its text is recorded, so a machine whose style of that name differs can tell."""

    name: str
    prompt: str
    negative_prompt: str
    source: str  # "studio", or the styles folder's file it came from


class PromptPlan(_Frozen):
    prompt: str
    prompt_final: str  # what is encoded: the prompt after styles and expansion (the first image's, see per_image)
    negative: str  # what is encoded: the negative prompt after styles (the request holds the user's)
    tokens: int  # the longest of the encoded texts
    chunks: int
    negative_tokens: int
    negative_chunks: int
    chunk_count: int  # chunks every image is encoded as (77 tokens each): the largest, or pad:N's N
    expansion: Optional[dict] = None  # expander, seeds, added words per image, and whether the text was replayed
    # Expansion is seeded by each image's seed, so each image of a batch has its own text; None when
    # every image encodes prompt_final.
    per_image: Optional[list[str]] = None
    styles: list[AppliedStyle] = []  # in the order applied (studio/styles.py says how they combine)
    prompt_styled: Optional[str] = None  # the prompt after styles, before expansion; None without styles
    embeddings: list["UsedEmbedding"] = []  # textual-inversion embeddings the texts use, in order of first use

    @property
    def own_chunks(self) -> int:
        """The chunks the prompt and negative need themselves, before a pad:N policy."""
        return max(self.chunks, self.negative_chunks)

    def final_for(self, index: int) -> str:
        """The text image ``index`` of the batch encodes."""
        return self.per_image[index] if self.per_image is not None else self.prompt_final


class NoisePlan(_Frozen):
    source: str  # "cpu" or "device": what will run (a sampler's -gpu alias means "device")
    generator_device: str  # where the generators really live
    latent_shape: list[int]  # per image: channels, height, width
    from_sampler_alias: bool = False  # the source came from a -gpu sampler name


class Risk(_Frozen):
    code: str
    why: str
    fix: str


class CompilePlan(_Frozen):
    signature: str
    will_compile: bool
    reason: str
    evicts: Optional[str] = None  # the variant the LRU will drop to make room
    # An export to IR the run does first (a new model or LoRA set), with the seconds it is expected to take.
    export: Optional[str] = None


class AppliedLora(_Frozen):
    """A LoRA as the run applies it (adapters/loras.py): the file found here, its hashes, its weight."""

    name: str  # as asked (a slot's name, or the prompt tag's)
    file: str  # the file used on this machine (found by hash when the name differs)
    sha256: str
    short_hash: str  # A1111's 12-hex hash, as `Lora hashes` writes it
    weight: float
    source: str  # "request" (a slot), "prompt" (a <lora:…> tag) or "performance" (a speed mode's LoRA)
    format: str  # "kohya" or "diffusers"
    notes: list[str] = []  # found by hash under another name; keys not applied


class UsedEmbedding(_Frozen):
    """A textual-inversion embedding a text uses (adapters/embeddings.py): the word, the file found here (by
    name or hash), its hashes and how many token positions it takes."""

    name: str  # the word the text uses (the file's stem, or the request's name for a file found by hash)
    file: str  # the file used on this machine
    sha256: str
    short_hash: str  # A1111's 12-hex hash, as `TI hashes` writes it
    vectors: int  # token positions each use takes
    where: str  # "prompt" or "negative"
    notes: list[str] = []  # found by hash under another name


class ImagePlan(_Frozen):
    """What an image-input run does with its input, resolved before it runs (engine/image_modes.py)."""

    mode: str
    input_sha256: str
    input_size: list[int]  # the stored input's width, height
    strength: float  # denoise: the share of the schedule that runs
    steps_run: int  # the denoising steps that run: int(steps × strength), as diffusers counts them
    first_step: int  # steps of the schedule skipped at its start (steps − steps_run)
    method: str  # "image-to-image", "latent mask blending (4-channel UNet)" or "inpaint UNet (9 channels)"
    canvas_size: list[int]  # width, height of the image saved (the input, resized, upscaled or extended)
    mask_sha256: Optional[str] = None
    mask_blur: int = 0
    area: str = "whole"  # "masked": only the crop runs, at width×height, and is pasted back
    crop: Optional[list[int]] = None  # masked area: x0, y0, x1, y1 of the canvas that runs
    outpaint: Optional[dict] = None  # pixels added on each side
    vae_encode: str = "mean"  # the encoded image is the VAE posterior's mean: no draw, the same everywhere
    notes: list[str] = []  # what was done to the input that the user did not ask for (converted, resized)

    def summary(self, steps: int) -> str:
        """One line for the plan's reader: what runs on which input, how many steps, what comes out."""
        w, h = self.input_size
        parts = [f"{self.mode} of input {self.input_sha256[:12]} ({w}×{h})",
                 f"denoise {self.strength:g}: runs {self.steps_run} of {steps} steps", self.method]
        if self.mask_sha256:
            parts.append(f"mask {self.mask_sha256[:12]}, blur {self.mask_blur}")
        if self.outpaint:
            parts.append("adds " + ", ".join(f"{v} px {k}" for k, v in self.outpaint.items() if v))
        if self.crop:
            parts.append(f"only the masked area {self.crop[2] - self.crop[0]}×{self.crop[3] - self.crop[1]} "
                         f"at ({self.crop[0]}, {self.crop[1]})")
        parts.append("output {}×{}".format(*self.canvas_size))
        return " · ".join(parts)


PromptPlan.model_rebuild()


class Plan(_Frozen):
    studio_version: str
    request: GenerationRequest  # as asked, with the seed resolved
    seeds: list[int]
    width: int
    height: int
    sampler: str
    scheduler: str
    stochastic_sampler: bool
    noise: NoisePlan
    model: ModelInfo
    backend: ResolvedBackend
    prompt: PromptPlan
    determinism: dict
    risks: list[Risk]
    compile: Optional[CompilePlan] = None
    image: Optional[ImagePlan] = None  # image input: None for text to image
    loras: list[AppliedLora] = []  # in the order applied
    # A fast mode (studio/performance.py): its name, the steps, sampler and CFG it set (the request above holds
    # them too) and the values of the request it replaced; None without one. Its LoRA is in `loras`.
    performance: Optional[dict] = None

    @property
    def steps_run(self) -> int:
        """The denoising steps each image runs (fewer than the request's with an input image)."""
        return self.image.steps_run if self.image is not None else self.request.steps

    @property
    def output_size(self) -> tuple[int, int]:
        """Width and height of the saved images (the canvas, for an input image: the UNet may run a crop)."""
        return tuple(self.image.canvas_size) if self.image is not None else (self.width, self.height)

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")

    def for_image(self, index: int) -> "Plan":
        """The plan of image ``index`` alone: its seed, batch 1, and its own expanded text.

        Running it gives the same pixels as that image of the batch (images run one at a time);
        the compile signature is the batch's, since every image shares the batch's chunk count.
        """
        seed = self.seeds[index]
        request = {"seed": seed, "batch": 1}
        prompt = self.prompt
        if prompt.per_image is not None or isinstance(self.request.expanded_prompt, list):
            text = prompt.final_for(index)
            expansion = dict(prompt.expansion or {})
            for key in ("seeds", "added"):
                if isinstance(expansion.get(key), list) and len(expansion[key]) == len(self.seeds):
                    expansion[key] = [expansion[key][index]]
            prompt = prompt.model_copy(update={"prompt_final": text, "per_image": None, "expansion": expansion})
            request["expanded_prompt"] = text
        return self.model_copy(update={"seeds": [seed], "request": self.request.model_copy(update=request),
                                       "prompt": prompt})

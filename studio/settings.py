"""Validated settings: what a user asks for (GenerationRequest) and where the app keeps things (AppConfig).

Every model forbids unknown keys: a typo in a preset or a request is an error, never a silent default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from studio.samplers import SAMPLERS, split_alias, unknown_sampler_message
from studio.errors import StudioError
from studio.prompts.chunking import MAX_PROMPT_CHARS
from studio.untrusted import MAX_REQUEST_STYLES, check_name

DType = Literal["fp32", "fp16", "bf16"]
SeedMode = Literal["fixed", "increment", "random"]
NoiseSource = Literal["cpu", "device"]
MAX_SEED = 2**32 - 1


def _as_name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except StudioError as exc:  # pydantic reports a ValueError as this field's error
        raise ValueError(str(exc)) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Precision(_Strict):
    text: DType = "fp32"
    unet: DType = "fp32"
    vae: DType = "fp32"


class BackendSpec(_Strict):
    name: Literal["torch", "openvino"] = "torch"
    device: str = "cpu"
    ov_mode: Literal["performance", "accuracy"] = "accuracy"
    # OpenVINO only: the text encoder in PyTorch on the CPU (SD.Next's default) or compiled with OpenVINO.
    text_encoder: Literal["torch", "openvino"] = "torch"
    # torch only: the UNet and VAE decoder compiled by torch.compile (inductor, static shapes) per signature,
    # as OpenVINO compiles; faster steps whose pixels drift from eager torch (the plan's risk says how far).
    compile: Literal["none", "torch"] = "none"
    # OpenVINO only: the exported weights as they are, or the UNet's (and text encoders') compressed to int8 by
    # NNCF (SD.Next's "compress weights"): a separate IR; less memory, and the image differs (a risk says how far).
    ov_weights: Literal["full", "int8"] = "full"


# Fooocus's fast modes (their steps, sampler, CFG and LoRA are studio/performance.py's table).
FastModeName = Literal["extreme-speed", "lightning"]
ImageMode = Literal["vary-subtle", "vary-strong", "upscale-1.5", "upscale-2", "inpaint", "outpaint"]
SHA256 = r"^[0-9a-f]{64}$"


class Outpaint(_Strict):
    """Pixels added on each side; the new area is filled from the edge and inpainted."""

    left: int = Field(default=0, ge=0, le=1024, multiple_of=8)
    right: int = Field(default=0, ge=0, le=1024, multiple_of=8)
    top: int = Field(default=0, ge=0, le=1024, multiple_of=8)
    bottom: int = Field(default=0, ge=0, le=1024, multiple_of=8)

    @property
    def any(self) -> bool:
        return bool(self.left or self.right or self.top or self.bottom)

    def spec(self) -> str:
        """The sides as the --outpaint flag and the infotext write them: ``left=128,top=64`` (zero sides left out)."""
        return ",".join(f"{side}={getattr(self, side)}" for side in OUTPAINT_SIDES if getattr(self, side))


OUTPAINT_SIDES = ("left", "right", "top", "bottom")


def parse_outpaint(text: str) -> dict:
    """``left=128,right=64`` (any of left, right, top, bottom, each once) as {side: pixels}; a ValueError says
    what is wrong. The pixels' range is the Outpaint model's to check."""
    sides: dict = {}
    for part in str(text).split(","):
        side, sep, value = (p.strip() for p in part.partition("="))
        if not sep or side not in OUTPAINT_SIDES or not re.fullmatch(r"\d{1,5}", value):
            raise ValueError(f"{part.strip()[:40]!r} is not SIDE=PIXELS: give left=128,right=64,... with the sides "
                             "left, right, top or bottom and the pixels a multiple of 8 from 0 to 1024")
        if side in sides:
            raise ValueError(f"{side} is given twice")
        sides[side] = int(value)
    return sides


class ImageInput(_Strict):
    """An input image and what to do with it. Images are named by the sha256 of their pixels in the output
    folder's inputs store (studio/image_input.py), never by a path: a request, a preset or an image's
    metadata carries the hash, and the store (or a folder searched by hash) gives the pixels."""

    mode: ImageMode
    sha256: str = Field(pattern=SHA256, description="the input image's pixel sha256 (image_input.pixel_sha256)")
    strength: Optional[float] = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False,
                                      description="denoise: how much of the schedule runs (None: the mode's "
                                                  "default, as Fooocus: vary 0.5/0.85, upscale 0.382, inpaint 1)")
    mask_sha256: Optional[str] = Field(default=None, pattern=SHA256, description="inpaint: white = repaint")
    mask_blur: int = Field(default=0, ge=0, le=64, description="Gaussian blur radius of the mask's edge, in pixels")
    inpaint_area: Literal["whole", "masked"] = Field(
        default="whole", description="masked: only the masked area (and padding) runs, at full resolution")
    masked_padding: int = Field(default=32, ge=0, le=256, description="pixels around the masked area, for 'masked'")
    outpaint: Outpaint = Outpaint()

    @model_validator(mode="after")
    def _mode_needs(self) -> "ImageInput":
        if self.mode == "inpaint" and self.mask_sha256 is None:
            raise ValueError("inpaint needs a mask (white = repaint): --mask FILE, or paint one in the app")
        if self.mode == "outpaint" and not self.outpaint.any:
            raise ValueError("outpaint needs pixels to add on at least one side (--outpaint left=128,...)")
        if self.mode != "outpaint" and self.outpaint.any:
            raise ValueError(f"outpaint sides are set but the mode is {self.mode}: use --mode outpaint")
        if self.mode != "inpaint" and self.mask_sha256 is not None:
            raise ValueError(f"a mask is given but the mode is {self.mode}: use --mode inpaint")
        return self


# An adapter file's sha256, or A1111's short hash of it (10 or 12 hex) as an image's infotext records it.
ADAPTER_HASH = r"^([0-9a-f]{10}|[0-9a-f]{12}|[0-9a-f]{64})$"


class LoraUse(_Strict):
    """A LoRA applied to the model: its file's name in the LoRA folder, its weight, and (recorded by every
    plan, preset and image) its sha256, by which another machine finds it under any name."""

    name: str = Field(description="the file's name in loras/ without .safetensors")
    weight: float = Field(default=1.0, ge=-10.0, le=10.0, allow_inf_nan=False)
    sha256: Optional[str] = Field(default=None, pattern=ADAPTER_HASH,
                                  description="the file's sha256 (or A1111's 10/12-hex short hash, from an image)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _as_name(v, "LoRA")


MAX_LORAS = 10


class EmbeddingUse(_Strict):
    """A textual-inversion embedding a prompt uses by its name, with (recorded by a preset or an image) its
    sha256, by which another machine finds the file under any name: the prompt's word stays the same."""

    name: str = Field(description="the word the prompt uses: the file's name in embeddings/ without its suffix")
    sha256: Optional[str] = Field(default=None, pattern=ADAPTER_HASH,
                                  description="the file's sha256 (or A1111's 10/12-hex short hash, from an image)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _as_name(v, "embedding")


MAX_EMBEDDINGS = 32


class GenerationRequest(_Strict):
    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    styles: list[str] = Field(default_factory=list, max_length=MAX_REQUEST_STYLES,
                              description="style names, applied in this order before expansion and chunking "
                                          "(studio/styles.py); 'Fooocus V2' turns expansion on instead")
    seed: Optional[int] = Field(default=None, ge=0, le=MAX_SEED, description="None, or seed_mode random, draws a new seed")
    seed_mode: SeedMode = "fixed"
    batch: int = Field(default=1, ge=1, le=16)
    steps: int = Field(default=30, ge=1, le=150)
    cfg: float = Field(default=7.0, ge=0.0, le=30.0, allow_inf_nan=False)
    sampler: str = "dpmpp_2m_sde_karras"
    width: Optional[int] = None
    height: Optional[int] = None
    model: str = "tiny"
    backend: BackendSpec = BackendSpec()
    noise_source: NoiseSource = "cpu"
    deterministic: bool = False
    expansion: bool = False
    expander: Literal["wordbank", "causal-lm"] = "wordbank"
    expansion_model: Optional[str] = Field(default=None, description="a causal-LM folder's name in models/prompt_expansion/, for causal-lm")
    expansion_new_chunk: bool = Field(default=False, description="let expansion start a new 75-token chunk")
    expanded_prompt: Optional[str | list[str]] = Field(
        default=None, description="expanded text to replay verbatim (set when restoring; never regenerated): "
                                  "one text for every image, or a list with one text per image of the batch")
    precision: Precision = Precision()
    clip_skip: int = Field(default=1, ge=1, le=12, description="A1111's Clip skip: 1 = the last layer")
    comma_backtrack: int = Field(default=20, ge=0, le=74,
                                 description="move words after a comma to the next chunk when a chunk fills "
                                             "within this many tokens of it (0 = off)")
    chunk_policy: str = "exact"
    image: Optional[ImageInput] = Field(default=None, description="image input (vary, upscale, inpaint, "
                                                                  "outpaint); None: text to image")
    loras: list[LoraUse] = Field(default_factory=list, max_length=MAX_LORAS,
                                 description="LoRAs with their weights (Fooocus's slots); <lora:name:w> tags in "
                                             "the prompt add to these")
    lora_hashes: dict[str, str] = Field(default_factory=dict, max_length=MAX_LORAS,
                                        description="the sha256 (or A1111's short hash) of each <lora:name:w> tag's "
                                                    "file by name, recorded by the plan (A1111's Lora hashes), so "
                                                    "another machine finds it under any name")
    embeddings: list[EmbeddingUse] = Field(default_factory=list, max_length=MAX_EMBEDDINGS,
                                           description="textual-inversion embeddings by the word the prompt uses, "
                                                       "with their hashes; a word of the prompt or negative that "
                                                       "names a file in embeddings/ is one too")
    performance: Optional[FastModeName] = Field(
        default=None, description="Fooocus's fast mode (studio/performance.py): its LoRA at weight 1.0, and its "
                                  "steps, sampler and CFG in place of the request's; None: as set (Quality and "
                                  "Speed are step counts)")
    performance_lora: Optional[LoraUse] = Field(
        default=None, description="the fast mode's LoRA as a plan found it (name, sha256), written by the plan so "
                                  "a replay applies the same bytes; leave unset to take the mode's file by name")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        if split_alias(v)[0] not in SAMPLERS:
            raise ValueError(unknown_sampler_message(v))
        return v

    @field_validator("model", "expansion_model")
    @classmethod
    def _plain_name(cls, v: Optional[str], info) -> Optional[str]:
        # A request may come from a preset, an image or a remote client: it names, it never points.
        return None if v is None else _as_name(v, "model" if info.field_name == "model" else "expansion model")

    @model_validator(mode="before")
    @classmethod
    def _expansion_style(cls, data):
        # Fooocus lists its prompt expansion among the styles; here it is the expansion toggle.
        if isinstance(data, dict) and isinstance(data.get("styles"), list):
            from studio.styles import EXPANSION_STYLE

            if EXPANSION_STYLE in data["styles"]:
                data = {**data, "styles": [s for s in data["styles"] if s != EXPANSION_STYLE], "expansion": True}
        return data

    @field_validator("styles")
    @classmethod
    def _style_names(cls, v: list[str]) -> list[str]:
        for name in v:
            # A style is looked up by name in the library, never opened as a file: a path is refused.
            _as_name(name, "style")
        twice = sorted({name for name in v if v.count(name) > 1})
        if twice:
            raise ValueError(f"style {twice[0][:80]!r} is given twice")
        return v

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and (v % 8 or not 64 <= v <= 2048):
            raise ValueError(f"{v} must be a multiple of 8 between 64 and 2048")
        return v

    @field_validator("chunk_policy")
    @classmethod
    def _chunk_policy(cls, v: str) -> str:
        if v != "exact" and not re.fullmatch(r"pad:([1-9]|1[0-9]|20)", v):
            raise ValueError("use 'exact' or 'pad:N' with N from 1 to 20")
        return v

    @field_validator("lora_hashes")
    @classmethod
    def _lora_hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, sha in v.items():
            _as_name(name, "LoRA")
            if not re.fullmatch(ADAPTER_HASH, sha):
                raise ValueError(f"LoRA {name[:60]!r}: {sha[:70]!r} is not a sha256 (64 hex) or a short hash (10 or "
                                 "12 hex)")
        return v

    @model_validator(mode="after")
    def _performance_lora_needs_its_mode(self) -> "GenerationRequest":
        lora = self.performance_lora
        if lora is not None and self.performance is None:
            raise ValueError("performance_lora is set but performance is not: set performance (extreme-speed or "
                             "lightning) or drop performance_lora")
        if lora is not None and lora.weight != 1.0:
            raise ValueError(f"performance_lora: a fast mode applies its LoRA at weight 1.0, not {lora.weight:g}")
        return self

    @model_validator(mode="after")
    def _one_text_per_image(self) -> "GenerationRequest":
        texts = self.expanded_prompt
        for text in [texts] if isinstance(texts, str) else texts or []:
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"expanded_prompt: a text of {len(text)} characters; the most is {MAX_PROMPT_CHARS}")
        if isinstance(texts, list) and len(texts) != self.batch:
            raise ValueError(f"expanded_prompt has {len(texts)} texts for a batch of {self.batch}: give one text "
                             "per image (or one text for all), or drop expanded_prompt to expand anew")
        return self


class AppConfig(_Strict):
    """Where studio keeps models, outputs and caches; built once at start-up and passed down."""

    models_dir: Path = Path("models")
    output_dir: Path = Path("outputs")
    cache_dir: Path = Field(default_factory=lambda: Path(os.path.expanduser("~/.cache/studio")))
    styles_dir: Optional[Path] = Field(default=None, description="a folder of Fooocus-format style files")
    loras_dir: Optional[Path] = Field(default=None, description="LoRA files (default: the models folder's loras/)")
    embeddings_dir: Optional[Path] = Field(default=None, description="textual-inversion embeddings (default: the "
                                                                     "models folder's embeddings/)")
    allow_unsafe_pickle: bool = False
    # How many compiled variants (signatures) a compiling backend keeps in memory. A property of this
    # process, not of an image: it never changes pixels, so it lives here and not in requests or presets.
    compile_cache_size: int = Field(default=3, ge=1, le=64)

    @property
    def lora_folder(self) -> Path:
        return self.loras_dir if self.loras_dir is not None else self.models_dir / "loras"

    @property
    def embedding_folder(self) -> Path:
        return self.embeddings_dir if self.embeddings_dir is not None else self.models_dir / "embeddings"

    @classmethod
    def from_env(cls, **overrides) -> "AppConfig":
        """Defaults, then STUDIO_* environment variables, then explicit overrides (None = unset)."""
        values: dict = {}
        for field, env in (("models_dir", "STUDIO_MODELS_DIR"), ("output_dir", "STUDIO_OUTPUT_DIR"),
                           ("cache_dir", "STUDIO_CACHE_DIR"), ("styles_dir", "STUDIO_STYLES_DIR"),
                           ("loras_dir", "STUDIO_LORAS_DIR"), ("embeddings_dir", "STUDIO_EMBEDDINGS_DIR")):
            if os.environ.get(env):
                values[field] = Path(os.environ[env])
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise StudioError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """One line naming the field and what is wrong with it."""
    parts, said = [], set()
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if msg not in said:  # a preset's model name is checked in `model` and again in its request
            said.add(msg)
            parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


# Request keys older studios wrote that no longer exist, and why each was dropped. A record or preset that
# carries one still opens: the key is removed before validation and the reader gets the note.
RETIRED_REQUEST_KEYS = {
    "lru": "request.lru (the compile cache size) is no longer a generation setting: it never changed the image; "
           "dropped it (set the size with --lru or AppConfig.compile_cache_size)",
}


def drop_retired_keys(values: dict) -> tuple[dict, list[str]]:
    """``values`` (a request's fields) without retired keys, and a note for each one dropped."""
    if not isinstance(values, dict):
        return values, []
    found = [k for k in RETIRED_REQUEST_KEYS if k in values]
    return {k: v for k, v in values.items() if k not in found}, [RETIRED_REQUEST_KEYS[k] for k in found]


def is_valid_request(**values) -> bool:
    """Would GenerationRequest accept these values (its ranges, its sampler names)?"""
    try:
        GenerationRequest(**values)
    except Exception:  # ValidationError, or anything odd a hostile value provokes
        return False
    return True


def build_request(**values) -> GenerationRequest:
    try:
        return GenerationRequest(**values)
    except ValidationError as exc:
        raise StudioError(validation_message(exc)) from None


PRESET_SCHEMA_VERSION = 1


class PresetModel(_Strict):
    file: str = Field(description="a built-in model or a name in the models folder (never a path)")
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # A preset comes from elsewhere: it may name a model, never point into this machine's disk.
        return _as_name(v, "model")


class MadeOn(_Strict):
    os: str
    python: str
    torch: Optional[str] = None
    diffusers: Optional[str] = None
    transformers: Optional[str] = None
    openvino: Optional[str] = None
    optimum_intel: Optional[str] = None
    peft: Optional[str] = None  # applies the LoRAs
    device: str
    device_name: str
    cpu: str
    cpu_flags: list[str] = []
    inference_precision: dict[str, str] = {}
    # torch's CPU threads: its kernels split sums by thread, so the count moves results by ~1e-6 (a pixel level
    # now and then). None in presets made before it was recorded.
    torch_threads: Optional[int] = None
    # The LoRA and embedding files this machine used, by folder and file name → sha256.
    adapters: dict[str, str] = {}


class Preset(_Strict):
    """A versioned, shareable set of settings: enough to reproduce an image on another machine."""

    schema_version: Literal[1] = PRESET_SCHEMA_VERSION
    name: Optional[str] = None
    description: Optional[str] = None
    model: PresetModel
    request: GenerationRequest = Field(description="every generation setting; its model is `model.file`")
    made_on: Optional[MadeOn] = None
    plan: Optional[dict] = Field(default=None, description="the Plan made where the preset was saved")

    @model_validator(mode="before")
    @classmethod
    def _request_model_from_model(cls, data):
        # The model is named once, in `model`; the request inside takes it from there.
        if isinstance(data, dict) and isinstance(data.get("request"), dict) and isinstance(data.get("model"), dict):
            if "model" in data["request"]:
                raise ValueError("request.model: unknown key (the model is named in `model.file`)")
            data = {**data, "request": {**data["request"], "model": data["model"].get("file", "")}}
        return data

    def to_json_dict(self) -> dict:
        out = self.model_dump(mode="json", exclude_none=True)
        out["request"].pop("model", None)
        return out

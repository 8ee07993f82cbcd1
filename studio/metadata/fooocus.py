"""Fooocus presets (`presets/*.json`) → studio request values, with everything that does not map said out loud.

Download URLs in a preset are listed, never fetched. Takes any object (hostile JSON included) and
never raises anything but StudioError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import StudioError
from studio.metadata.text import describe, lone_surrogate
from studio.untrusted import MAX_PRESET_BYTES, parse_json, read_text_bounded
from studio.settings import is_valid_request


# Fooocus sampler (ComfyUI k-sampler names) → studio sampler, per scheduler.
_PLAIN = {"euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "lms": "lms", "ddim": "ddim",
          "uni_pc": "uni_pc", "dpmpp_2m": "dpmpp_2m", "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_sde": "dpmpp_sde"}
_KARRAS = {"dpmpp_2m": "dpmpp_2m_karras", "dpmpp_2m_sde": "dpmpp_2m_sde_karras"}
_STOCHASTIC = {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"}
FOOOCUS_DEFAULT_SCHEDULER = "karras"

# Fooocus "performance" → its step count (used when default_overwrite_step is not > 0).
PERFORMANCE_STEPS = {"Speed": 30, "Quality": 60, "Extreme Speed": 8, "Lightning": 4, "Hyper-SD": 4}
_PERFORMANCE_EXTRAS = {"Extreme Speed", "Lightning", "Hyper-SD"}

DOWNLOAD_KEYS = ("checkpoint_downloads", "embeddings_downloads", "lora_downloads", "vae_downloads")
_HANDLED = {"default_model", "default_refiner", "default_refiner_switch", "default_loras", "default_cfg_scale",
            "default_sample_sharpness", "default_sampler", "default_scheduler", "default_performance",
            "default_prompt", "default_prompt_negative", "default_styles", "default_aspect_ratio",
            "default_overwrite_step", "previous_default_models", "default_clip_skip", "default_image_number",
            *DOWNLOAD_KEYS}
_ASPECT = re.compile(r"\s*(\d{1,5})\s*[*×xX]\s*(\d{1,5})(?!\d)")


@dataclass
class FooocusImport:
    request_values: dict = field(default_factory=dict)  # GenerationRequest fields, each valid on its own
    model_file: str | None = None  # default_model, a checkpoint file name
    downloads: list[str] = field(default_factory=list)  # every URL named in *_downloads, never fetched
    unknown_keys: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # key → why studio does not use it
    notes: list[str] = field(default_factory=list)


def show_value(value) -> str:
    """A short, safe description of any value (no recursion into nested containers)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a very large integer"
        return text
    return f"a {type(value).__name__}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())


def _key_name(key) -> str:
    return key if isinstance(key, str) else show_value(key)


def fooocus_sampler(sampler: str, scheduler: str | None) -> str | None:
    """Fooocus sampler + scheduler → a studio sampler name (with -gpu for `*_gpu`), or None."""
    gpu = sampler.endswith("_gpu")
    base = sampler[: -len("_gpu")] if gpu else sampler
    if scheduler == "karras":
        ours = _KARRAS.get(base)
    elif scheduler == "normal":
        ours = _PLAIN.get(base)
    else:
        ours = None
    if ours is None:
        return None
    return ours + ("-gpu" if gpu else "")


def import_fooocus(data: object, library=None) -> FooocusImport:
    """A parsed Fooocus preset (a JSON object) → FooocusImport. Raises StudioError only.

    ``library`` (studio.styles.StyleLibrary, default: studio's shipped styles) decides which of
    default_styles are applied; the others are named in a note.
    """
    if not isinstance(data, dict):
        raise StudioError(f"a Fooocus preset is a JSON object of default_* keys, not {show_value(data)}")
    bad = lone_surrogate(data)
    if bad is not None:
        raise StudioError(f"the Fooocus preset holds text that is not valid Unicode (a lone surrogate, in "
                          f"{describe(bad)})")
    out = FooocusImport()
    values = out.request_values

    def note_type(key: str, expected: str) -> None:
        out.notes.append(f"{key}: expected {expected}, got {show_value(data[key])}; left out")

    def put(key: str, name: str, value) -> None:
        if is_valid_request(**{name: value}):
            values[name] = value
        else:
            out.notes.append(f"{key}: {show_value(value)} is not a valid studio {name}; left out")

    for key in data:
        if not (isinstance(key, str) and key in _HANDLED):
            out.unknown_keys.append(_key_name(key))

    # prompts
    for key, name in (("default_prompt", "prompt"), ("default_prompt_negative", "negative_prompt")):
        if key in data:
            if isinstance(data[key], str):
                put(key, name, data[key])
            else:
                note_type(key, "a string")

    # model
    if "default_model" in data:
        model = data["default_model"]
        if isinstance(model, str) and model.strip() and model.strip() != "None":
            out.model_file = model.strip()
        elif not isinstance(model, str):
            note_type("default_model", "a checkpoint file name (string)")

    # CFG
    if "default_cfg_scale" in data:
        cfg = data["default_cfg_scale"]
        if not _is_number(cfg):
            note_type("default_cfg_scale", "a number")
        elif isinstance(cfg, int) and abs(cfg) > 10**6 or not math.isfinite(cfg):
            out.notes.append(f"default_cfg_scale: {show_value(cfg)} is not a valid studio cfg; left out")
        else:
            put("default_cfg_scale", "cfg", float(cfg))

    # sampler + scheduler
    scheduler = data.get("default_scheduler", None)
    if "default_scheduler" in data and not isinstance(scheduler, str):
        note_type("default_scheduler", "a scheduler name (string)")
        scheduler = None
    if "default_sampler" in data:
        sampler = data["default_sampler"]
        if not isinstance(sampler, str):
            note_type("default_sampler", "a sampler name (string)")
        else:
            if "default_scheduler" not in data:
                scheduler = FOOOCUS_DEFAULT_SCHEDULER
                out.notes.append("default_scheduler missing: Fooocus's default 'karras' assumed")
            ours = fooocus_sampler(sampler, scheduler) if scheduler is not None else None
            if ours is None:
                out.notes.append(f"Fooocus sampler {show_value(sampler)} with scheduler {show_value(scheduler)} "
                                 "has no studio equivalent; left out (studio's default sampler applies)")
            else:
                put("default_sampler", "sampler", ours)
                base = sampler[:-4] if sampler.endswith("_gpu") else sampler
                if base in _STOCHASTIC and not sampler.endswith("_gpu") and "sampler" in values:
                    out.notes.append(f"Fooocus draws {sampler}'s per-step noise on the GPU; studio keeps it on "
                                     f"the CPU ({ours}); use {ours}-gpu to match Fooocus")
    elif "default_scheduler" in data:
        out.ignored["default_scheduler"] = "no default_sampler to apply it to"

    # steps: an explicit overwrite wins over performance
    overwrite = None
    if "default_overwrite_step" in data:
        step = data["default_overwrite_step"]
        if not _whole(step):
            note_type("default_overwrite_step", "a whole number (-1 = off)")
        elif step > 0:
            overwrite = int(step)
            put("default_overwrite_step", "steps", overwrite)
    if "default_performance" in data:
        perf = data["default_performance"]
        if not isinstance(perf, str):
            note_type("default_performance", "one of " + ", ".join(PERFORMANCE_STEPS))
        elif perf not in PERFORMANCE_STEPS:
            out.notes.append(f"default_performance {show_value(perf)} is unknown (known: "
                             f"{', '.join(PERFORMANCE_STEPS)}); left out")
        elif overwrite is not None:
            out.ignored["default_performance"] = "default_overwrite_step sets the steps"
        else:
            values["steps"] = PERFORMANCE_STEPS[perf]
            if perf in _PERFORMANCE_EXTRAS:
                out.notes.append(f"performance {perf!r}: Fooocus also swaps in a speed-up LoRA and its own "
                                 "sampler/CFG for it; studio takes only the step count, images will differ")

    # size
    if "default_aspect_ratio" in data:
        ratio = data["default_aspect_ratio"]
        m = _ASPECT.match(ratio) if isinstance(ratio, str) else None
        if m is None:
            note_type("default_aspect_ratio", "'WIDTH*HEIGHT' such as '1152*896'")
        else:
            width, height = int(m.group(1)), int(m.group(2))
            if is_valid_request(width=width, height=height):
                values["width"], values["height"] = width, height
            else:
                out.notes.append(f"default_aspect_ratio {width}x{height}: studio needs multiples of 8 "
                                 "between 64 and 2048; left out")

    # extras newer Fooocus versions write
    if "default_clip_skip" in data:
        skip = data["default_clip_skip"]
        if _whole(skip):
            put("default_clip_skip", "clip_skip", int(skip))
        else:
            note_type("default_clip_skip", "a whole number")
    if "default_image_number" in data:
        number = data["default_image_number"]
        if _whole(number):
            put("default_image_number", "batch", int(number))
        else:
            note_type("default_image_number", "a whole number")

    # downloads: listed, never fetched
    for key in DOWNLOAD_KEYS:
        if key not in data:
            continue
        entries = data[key]
        if not isinstance(entries, dict):
            note_type(key, "an object of file name → URL")
            continue
        for name, url in entries.items():
            if isinstance(url, str) and url.strip():
                out.downloads.append(url.strip())
            else:
                out.notes.append(f"{key}[{_key_name(name)}]: expected a URL string, got {show_value(url)}")

    # known keys studio does not use
    refiner = data.get("default_refiner")
    if "default_refiner" in data:
        if isinstance(refiner, str) and refiner.strip() in ("", "None"):
            out.ignored["default_refiner"] = "no refiner set"
        else:
            out.ignored["default_refiner"] = "studio has no refiner stage; images will differ from Fooocus"
    if "default_refiner_switch" in data:
        out.ignored["default_refiner_switch"] = "studio has no refiner stage"
    if "default_loras" in data:
        uses, lora_notes = fooocus_loras(data["default_loras"])
        out.notes += lora_notes
        if uses:
            put("default_loras", "loras", uses)
        else:
            out.ignored["default_loras"] = "no LoRA enabled"
    if "default_sample_sharpness" in data:
        out.ignored["default_sample_sharpness"] = "Fooocus's sharpness (its own guidance tweak) has no studio equivalent"
    if "default_styles" in data:
        styles = data["default_styles"]
        if not isinstance(styles, list):
            note_type("default_styles", "a list of style names")
        else:
            from studio.styles import imported_styles, load_library

            found, expansion, style_notes = imported_styles(styles, library or load_library(), "default_styles")
            if found:
                put("default_styles", "styles", found)
            out.notes += style_notes
            if expansion:
                values["expansion"] = True
                out.notes.append("preset turns on 'Fooocus V2' prompt expansion: studio's own expander is on "
                                 "(its words differ from Fooocus's GPT-2; the plan records the text it adds)")
    if "previous_default_models" in data:
        out.ignored["previous_default_models"] = "Fooocus uses it only to find older model files"
    return out


def fooocus_loras(entries) -> tuple[list[dict], list[str]]:
    """Fooocus's LoRA slots as request LoRAs, and notes. A preset writes ``[enabled, name, weight]`` (older
    ones ``[name, weight]``), an image ``[name, weight]`` or ``[name, weight, hash]``; name 'None' is an empty
    slot. Names are file names (``x.safetensors``, perhaps in a subfolder): the request takes the stem, and a
    hash, when given, lets the plan find the file under another name."""
    from studio.settings import MAX_LORAS, LoraUse

    if not isinstance(entries, list):
        return [], [f"loras: expected a list of [enabled, name, weight], got {show_value(entries)}; left out"]
    uses, notes = [], []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            continue
        if isinstance(entry[0], bool):  # a preset's slot: [enabled, name, weight]
            if len(entry) != 3 or entry[0] is not True:
                continue
            name, weight, digest = entry[1], entry[2], None
        else:
            name, weight, digest = entry[0], entry[1], entry[2] if len(entry) == 3 else None
        if not isinstance(name, str) or name.strip() in ("", "None"):
            continue
        stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
        stem = stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem
        value = {"name": stem, "weight": weight}
        if isinstance(digest, str) and digest.strip():
            value["sha256"] = digest.strip().lower()
        try:
            uses.append(LoraUse(**value).model_dump(exclude_none=True))
        except Exception:
            notes.append(f"LoRA {show_value(name)} ({show_value(weight)}): not a usable name and weight; left out")
    if len(uses) > MAX_LORAS:
        notes.append(f"{len(uses)} LoRAs: studio applies at most {MAX_LORAS}; the first {MAX_LORAS} are kept")
        uses = uses[:MAX_LORAS]
    return uses, notes


def load_fooocus_preset(path, library=None) -> FooocusImport:
    """Read a preset file (at most 1 MiB of JSON) and import it. Raises StudioError only."""
    path = Path(path)
    text = read_text_bounded(path, MAX_PRESET_BYTES, f"Fooocus preset {path.name}")
    return import_fooocus(parse_json(text, f"cannot import {path.name}: the file"), library)

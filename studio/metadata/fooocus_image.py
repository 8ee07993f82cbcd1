"""Fooocus's own image metadata (its "fooocus" scheme) → studio request values.

With that scheme Fooocus writes a JSON object into the PNG `parameters` chunk (and EXIF
UserComment for JPEG/WebP), next to a `fooocus_scheme` chunk. Its keys are Fooocus's task
fields: prompt, negative_prompt, styles (a Python list as text), performance, steps,
resolution ("(1152, 896)"), guidance_scale, sharpness, sampler, scheduler, seed (text),
base_model and base_model_hash (a full sha256), prompt_expansion (the "Fooocus V2" text),
loras, vae, refiner_model, version, and more. Values are read as data: nothing is evaluated.

Takes any text (hostile included) and never raises anything but StudioError.
"""

from __future__ import annotations

import math
import re

from studio.errors import StudioError
from studio.metadata.fooocus import FOOOCUS_DEFAULT_SCHEDULER, fooocus_sampler, show_value
from studio.metadata.text import describe, lone_surrogate
from studio.settings import MAX_SEED, is_valid_request
from studio.untrusted import parse_json

MAX_JSON_CHARS = 256 * 1024
_RESOLUTION = re.compile(r"\s*\(\s*'?(\d{1,5})'?\s*,\s*'?(\d{1,5})'?\s*\)\s*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_STYLE = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
EXPANSION_STYLE = "Fooocus V2"

# Keys that say something about the run but have no studio setting: key → why it is left out.
_IGNORED = {
    "sharpness": "Fooocus's sharpness (its own guidance tweak) has no studio equivalent",
    "adm_guidance": "Fooocus's ADM guidance scaling has no studio equivalent",
    "adaptive_cfg": "Fooocus's CFG mimicking has no studio equivalent",
    "refiner_swap_method": "studio has no refiner stage",
    "refiner_switch": "studio has no refiner stage",
    "overwrite_switch": "studio has no refiner stage",
    "freeu": "studio does not apply FreeU",
    "vae": "studio uses the model's own VAE",
    "performance": "the steps field gives the step count",
}
# Keys that describe the image or its maker, kept as information only.
_INFORMATION = {"full_prompt", "full_negative_prompt", "version", "created_by", "metadata_scheme",
                "base_model", "base_model_hash", "refiner_model_hash", "lora_hashes", "prompt_expansion"}
_MAPPED = {"styles", "prompt", "negative_prompt", "steps", "resolution", "guidance_scale", "sampler", "scheduler", "seed",
           "clip_skip", "loras", "refiner_model"}


def looks_like_fooocus_json(text: str | None) -> bool:
    """Is ``text`` (a `parameters` value) a JSON object rather than A1111 infotext?"""
    return isinstance(text, str) and text.lstrip().startswith("{")


def _whole(value) -> int | None:
    """An integer from a JSON number or a decimal string (Fooocus writes the seed as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,25}\s*", value):
        return int(value)
    return None


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value) if not isinstance(value, int) or abs(value) < 10**9 else None
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,9}(\.\d{1,9})?\s*", value):
        number = float(value)
    else:
        return None
    return number if number is not None and math.isfinite(number) else None


def _styles(value) -> list[str]:
    """Fooocus writes styles as Python list text ("['Fooocus V2', 'Fooocus Enhance']"); read it as data."""
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str)]
    if not isinstance(value, str):
        return []
    return [a if a else b for a, b in _STYLE.findall(value[:4096])]


def parse_fooocus_json(text: str, library=None) -> dict:
    """Fooocus JSON metadata → {"request", "model", "model_sha256", "fields", "unknown", "ignored", "notes"}.

    `request` holds GenerationRequest values for what maps and is valid; `fields` the object as
    it was; `unknown` the keys studio does not know; `ignored` known keys it does not use, with why.
    ``library`` (studio.styles.StyleLibrary, default: studio's shipped styles) decides which styles apply.
    """
    if not isinstance(text, str):
        raise StudioError(f"Fooocus metadata must be text, not {type(text).__name__}")
    if len(text) > MAX_JSON_CHARS:
        raise StudioError(f"Fooocus metadata is {len(text)} characters, over the {MAX_JSON_CHARS // 1024} KiB limit")
    data = parse_json(text, "Fooocus metadata")
    if not isinstance(data, dict):
        raise StudioError("Fooocus metadata is JSON but not an object")
    bad = lone_surrogate(data)
    if bad is not None:
        raise StudioError(f"Fooocus metadata holds text that is not valid Unicode (a lone surrogate, in {describe(bad)})")
    values: dict = {}
    notes: list[str] = []
    ignored: dict[str, str] = {}

    def put(key: str, name: str, value) -> None:
        if is_valid_request(**{name: value}):
            values[name] = value
        else:
            notes.append(f"{key}: {show_value(value)} is not a valid studio {name}; left out")

    for key, name in (("prompt", "prompt"), ("negative_prompt", "negative_prompt")):
        if isinstance(data.get(key), str):
            put(key, name, data[key])
    for key, name, parse, expected in (("steps", "steps", _whole, "a whole number"),
                                       ("guidance_scale", "cfg", _number, "a number")):
        if key in data:
            value = parse(data[key])
            if value is None:
                notes.append(f"{key}: expected {expected}, got {show_value(data[key])}; left out")
            else:
                put(key, name, value)
    if "clip_skip" in data:
        skip = _whole(data["clip_skip"])
        if skip is not None:
            put("clip_skip", "clip_skip", skip)
    if "resolution" in data:
        m = _RESOLUTION.fullmatch(data["resolution"]) if isinstance(data["resolution"], str) else None
        if m is None:
            notes.append(f"resolution: expected '(WIDTH, HEIGHT)', got {show_value(data['resolution'])}; left out")
        elif is_valid_request(width=int(m.group(1)), height=int(m.group(2))):
            values["width"], values["height"] = int(m.group(1)), int(m.group(2))
        else:
            notes.append(f"resolution {m.group(1)}x{m.group(2)}: studio needs multiples of 8 between 64 and 2048; "
                         "left out")
    if "seed" in data:
        seed = _whole(data["seed"])
        if seed is None:
            notes.append(f"seed: expected a whole number, got {show_value(data['seed'])}; left out")
        elif seed < 0:
            notes.append(f"seed {seed} is negative; left out, so studio draws its own")
        elif seed > MAX_SEED:
            notes.append(f"seed {seed} is beyond studio's 32-bit seeds (Fooocus allows 63 bits); left out, "
                         "so studio draws its own")
        else:
            values["seed"] = seed
    if isinstance(data.get("sampler"), str):
        scheduler = data.get("scheduler") if isinstance(data.get("scheduler"), str) else FOOOCUS_DEFAULT_SCHEDULER
        ours = fooocus_sampler(data["sampler"], scheduler)
        if ours is None:
            notes.append(f"Fooocus sampler {show_value(data['sampler'])} with scheduler {show_value(scheduler)} "
                         "has no studio equivalent; left out (studio's default sampler applies)")
        else:
            put("sampler", "sampler", ours)

    # Styles this machine has are applied by name (studio.styles); the others are named in a note.
    from studio.styles import apply_styles, imported_styles, load_library

    library = library or load_library()
    styles = _styles(data.get("styles"))
    found, _, style_notes = imported_styles(styles, library, "styles")
    if found:
        put("styles", "styles", found)
    notes += style_notes
    # Fooocus V2 expansion: the text it added is stored, so studio replays it verbatim.
    expansion = data.get("prompt_expansion")
    if EXPANSION_STYLE in styles and isinstance(expansion, str) and expansion.strip():
        values["expansion"] = True
        replay = expansion
        if "styles" in values:
            # Fooocus encodes the styled prompt and then the expanded one; studio replays one text that holds
            # both, so the styles are not lost behind the replayed expansion.
            replay = ", ".join(p for p in (apply_styles(values.get("prompt", ""), "",
                                                        library.resolve(values["styles"]))[0], expansion) if p)
        put("prompt_expansion", "expanded_prompt", replay)
        notes.append("Fooocus V2 expansion: its stored text is replayed verbatim as the prompt (Fooocus encodes "
                     "each part as its own CLIP pass, studio one joined text, so the image will differ)")
    if data.get("loras"):
        from studio.metadata.fooocus import fooocus_loras

        uses, lora_notes = fooocus_loras(data["loras"])
        notes += lora_notes
        if uses:
            put("loras", "loras", uses)
    if isinstance(data.get("refiner_model"), str) and data["refiner_model"].strip() not in ("", "None"):
        ignored["refiner_model"] = "studio has no refiner stage; images will differ"
    for key, why in _IGNORED.items():
        if key in data:
            ignored[key] = why

    model = data.get("base_model") if isinstance(data.get("base_model"), str) and data["base_model"].strip() else None
    sha = data.get("base_model_hash")
    sha = sha.lower() if isinstance(sha, str) and _SHA256.fullmatch(sha) else None
    known = _MAPPED | _INFORMATION | set(_IGNORED) | {"lora_combined_" + str(i) for i in range(1, 11)}
    unknown = [k if isinstance(k, str) else show_value(k) for k in data if k not in known]
    return {"request": values, "model": model, "model_sha256": sha, "fields": data, "unknown": unknown,
            "ignored": ignored, "notes": notes}

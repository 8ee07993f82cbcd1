"""A1111 infotext: the `parameters` text other tools read (A1111, Forge, civitai, SD.Next)."""

from __future__ import annotations

import json
import re

from studio.plan import Plan
from studio.samplers import SAMPLERS
from studio.errors import StudioError
from studio.settings import Outpaint, is_valid_request, parse_outpaint


def _quote(value) -> str:
    """A1111 quotes a value that holds a comma, a colon or a newline, as JSON."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(plan: Plan, index: int, fingerprint: str) -> str:
    """A1111's layout and field order: Steps, Sampler, CFG scale, Seed, Size, Model hash, Model, ..., RNG, Version."""
    request = plan.request
    fields: list[tuple[str, object]] = [
        ("Steps", request.steps),
        ("Sampler", SAMPLERS[plan.sampler].a1111_name),
        ("CFG scale", request.cfg),
        ("Seed", plan.seeds[index]),
        ("Size", f"{plan.width}x{plan.height}"),
        ("Model hash", plan.model.short_hash),
        ("Model", plan.model.name),
    ]
    image = plan.image
    if image is not None:
        fields.append(("Denoising strength", image.strength))  # A1111's place for it: after Model
    if request.clip_skip != 1:
        fields.append(("Clip skip", request.clip_skip))
    if plan.prompt.styles:
        # SD.Next's field; the prompt lines above hold the styled text, so other tools see what was encoded.
        fields.append(("Styles", ", ".join(s.name for s in plan.prompt.styles)))
    if image is not None:
        fields += _image_fields(image, request.image)
    tagged = [lora for lora in plan.loras if lora.source != "performance"]
    if tagged:
        # A1111's field: what its <lora:…> tags were, by the file's short hash (civitai matches on it).
        fields.append(("Lora hashes", ", ".join(f"{lora.name}: {lora.short_hash}" for lora in tagged)))
    used = list(dict.fromkeys((e.name, e.short_hash) for e in plan.prompt.embeddings))
    if used:
        fields.append(("TI hashes", ", ".join(f"{name}: {digest}" for name, digest in used)))
    if plan.backend.precision.get("vae") != "fp32":
        fields.append(("VAE precision", plan.backend.precision["vae"]))
    fields += [
        ("RNG", "CPU" if plan.noise.generator_device == "cpu" else "GPU"),
        ("Noise fingerprint", fingerprint),
        ("Backend", plan.backend.name + (f" {plan.backend.mode}" if plan.backend.mode else "")
         + (f" {plan.backend.weights}" if plan.backend.weights != "full" else "")),
        ("Version", f"studio {plan.studio_version}"),
    ]
    # A1111 keeps <lora:name:weight> in the prompt: a slot's LoRA is written as its tag too, so other tools
    # apply it (a performance mode's LoRA is the mode's, written by it).
    lines = [plan.prompt.final_for(index) + "".join(f" <lora:{lora.name}:{lora.weight:g}>" for lora in tagged)]
    if plan.prompt.negative:
        lines.append(f"Negative prompt: {plan.prompt.negative}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def _image_fields(image, asked) -> list[tuple[str, object]]:
    """An input image's fields (``image`` the ImagePlan, ``asked`` the request's ImageInput): A1111's own where
    it has one (Mask blur, Inpaint area: Only masked, Masked area padding, as its img2img tab writes them), then
    studio's: the mode, the inputs' pixel sha256 and outpaint's sides."""
    fields: list[tuple[str, object]] = []
    if image.mode in ("inpaint", "outpaint"):
        fields.append(("Mask blur", image.mask_blur))
    if image.area == "masked":
        fields.append(("Inpaint area", "Only masked"))
        fields.append(("Masked area padding", asked.masked_padding))
    fields += [("Image mode", image.mode), ("Input image", image.input_sha256)]
    if image.mask_sha256:
        fields.append(("Mask", image.mask_sha256))
    if image.outpaint:
        fields.append(("Outpaint", Outpaint(**image.outpaint).spec()))
    return fields


# --------------------------------------------------------------------------------------------
# Reading: A1111 infotext (and what Forge, SD.Next, civitai and studio itself write) → values.
# The parser takes any text and never raises anything but StudioError (for input over 64 KiB).

MAX_INFOTEXT_BYTES = 64 * 1024
NEGATIVE_PREFIX = "Negative prompt:"
_MAX_JSON_VALUES = 64  # bounded work for unquoted JSON values ({...} / [...]) on one line

_FIELD_END = re.compile(r"[:,]")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_KEY = re.compile(r"\w[\w \-/.()+#']*")
_SIZE = re.compile(r"(\d{1,5})\s*x\s*(\d{1,5})")
_HASH = re.compile(r"[0-9a-fA-F]{8,64}")
_CORE_FIELDS = ("Steps", "Sampler", "CFG scale", "Seed", "Size")

# A1111 sampler label → studio sampler, as A1111 names them up to 1.8 (the schedule in the name).
_A1111_SAMPLERS = {spec.a1111_name.casefold(): spec.name for spec in SAMPLERS.values() if spec.a1111_name}
# A1111 ≥ 1.9 writes `Sampler: DPM++ 2M, Schedule type: Karras`; "Automatic" means the
# sampler's own default schedule (karras for DPM++ 2M and DPM++ SDE, exponential for DPM++ 2M SDE).
_AUTOMATIC_SCHEDULE = {"dpm++ 2m": "karras", "dpm++ sde": "karras", "dpm++ 2m sde": "exponential"}
_PLAIN_SCHEDULES = {"uniform", "automatic"}


def _split_fields(line: str) -> tuple[dict[str, str], list[str]]:
    """`key: value, key: "json, quoted", ...` → ({key: value}, [segments that are no `key: value`]).

    Linear in the line's length: every scan starts where the last one ended.
    """
    fields: dict[str, str] = {}
    skipped: list[str] = []
    json_tries = 0
    pos, n = 0, len(line)
    decoder = json.JSONDecoder()
    while pos < n:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            break
        end = _FIELD_END.search(line, pos)
        if end is None or end.group() == ",":
            stop = n if end is None else end.start()
            if line[pos:stop].strip():
                skipped.append(line[pos:stop].strip())
            pos = stop + 1
            continue
        key = line[pos:end.start()].strip()
        j = end.end()
        while j < n and line[j] in " \t":
            j += 1
        value = None
        if j < n and line[j] == '"':
            m = _QUOTED.match(line, j)
            if m is not None:
                after = m.end()
                while after < n and line[after] in " \t":
                    after += 1
                if after >= n or line[after] == ",":
                    try:
                        loaded = json.loads(m.group())
                    except (ValueError, RecursionError):
                        loaded = None
                    value = loaded if isinstance(loaded, str) else m.group()[1:-1]
                    stop = after
        elif j < n and line[j] in "{[" and json_tries < _MAX_JSON_VALUES:
            # civitai writes `Hashes: {"model": "..."}` unquoted; keep the JSON text whole.
            json_tries += 1
            try:
                _, after = decoder.raw_decode(line, j)
            except (ValueError, RecursionError):
                after = None
            if after is not None:
                raw_end = after
                while after < n and line[after] in " \t":
                    after += 1
                if after >= n or line[after] == ",":
                    value = line[j:raw_end]
                    stop = after
        if value is None:
            comma = line.find(",", j)
            stop = n if comma < 0 else comma
            value = line[j:stop].strip()
        if _KEY.fullmatch(key):
            fields.pop(key, None)  # a repeated key: the last one wins, at the last place
            fields[key] = value
        else:
            skipped.append(line[pos:stop].strip())
        pos = stop + 1
    return fields, skipped


def _is_parameters_line(line: str) -> tuple[bool, dict[str, str]]:
    fields, skipped = _split_fields(line)
    # A1111's own test is "three or more `key: value` pairs"; stricter here, so that a prompt like
    # `style: anime, mood: dark, light: soft` stays a prompt: one of A1111's core fields is there,
    # and nothing is left over unless the line starts the way every A1111 parameters line does.
    ok = (len(fields) >= 3 and any(k in fields for k in _CORE_FIELDS)
          and (not skipped or line.lstrip().startswith("Steps:")))
    return ok, fields


def _a1111_sampler(sampler: str, schedule: str | None) -> str | None:
    name = " ".join(sampler.split()).casefold()
    if schedule is None:
        return _A1111_SAMPLERS.get(name)
    sched = " ".join(schedule.split()).casefold()
    if sched == "automatic":
        sched = _AUTOMATIC_SCHEDULE.get(name, "uniform")
    if sched in _PLAIN_SCHEDULES:
        return _A1111_SAMPLERS.get(name)
    if sched == "karras":
        if name.endswith(" karras"):
            return _A1111_SAMPLERS.get(name)
        return _A1111_SAMPLERS.get(name + " karras")
    return None


def _int(text: str) -> int | None:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,20}", text):
        return None
    return int(text)


def _float(text: str) -> float | None:
    text = text.strip()
    if not re.fullmatch(r"[+-]?(\d{1,20}(\.\d{0,20})?|\.\d{1,20})([eE][+-]?\d{1,3})?", text):
        return None
    return float(text)


def _map_fields(fields: dict[str, str], notes: list[str]) -> tuple[dict, str | None, dict[str, str], dict]:
    """Fields → (request values, model hash, fields that did not map, the input image's fields read)."""
    request: dict = {}
    used: set[str] = set()

    def take(key: str, field: str, value) -> None:
        if value is not None and is_valid_request(**{field: value}):
            request[field] = value
            used.add(key)

    if "Steps" in fields:
        take("Steps", "steps", _int(fields["Steps"]))
    if "CFG scale" in fields:
        cfg = _float(fields["CFG scale"])
        take("CFG scale", "cfg", cfg)
    if "Seed" in fields:
        take("Seed", "seed", _int(fields["Seed"]))
    if "Size" in fields:
        m = _SIZE.fullmatch(fields["Size"].strip())
        if m and is_valid_request(width=int(m.group(1)), height=int(m.group(2))):
            request["width"], request["height"] = int(m.group(1)), int(m.group(2))
            used.add("Size")
    if "Sampler" in fields:
        schedule = fields.get("Schedule type")
        ours = _a1111_sampler(fields["Sampler"], schedule)
        if ours is not None and is_valid_request(sampler=ours):
            request["sampler"] = ours
            used.add("Sampler")
            if schedule is not None:
                used.add("Schedule type")
        else:
            what = fields["Sampler"] + (f" with schedule {schedule}" if schedule is not None else "")
            notes.append(f"sampler {what!r} has no studio equivalent; left out")
    if "Clip skip" in fields:
        take("Clip skip", "clip_skip", _int(fields["Clip skip"]))
    if "RNG" in fields:
        rng = fields["RNG"].strip().upper()
        if rng == "CPU":
            take("RNG", "noise_source", "cpu")
        elif rng in ("GPU", "NV"):
            take("RNG", "noise_source", "device")
            if rng == "NV":
                notes.append("RNG NV (A1111's NVIDIA-like noise on the CPU) maps to device noise; images may differ")
    if "Model" in fields and fields["Model"].strip():
        take("Model", "model", fields["Model"].strip())
    if "VAE precision" in fields:
        take("VAE precision", "precision", {"vae": fields["VAE precision"].strip()})
    if "Backend" in fields:
        parts = fields["Backend"].split()
        if len(parts) == 1 and parts[0] == "torch":
            take("Backend", "backend", {"name": "torch"})
        elif parts == ["torch", "inductor"]:
            take("Backend", "backend", {"name": "torch", "compile": "torch"})
        elif len(parts) in (2, 3) and parts[0] == "openvino" and parts[2:] in ([], ["int8"]):
            take("Backend", "backend", {"name": "openvino", "ov_mode": parts[1],
                                        **({"ov_weights": "int8"} if parts[2:] else {})})
    # Hires fix (txt2img) writes its own Denoising strength beside its Hires fields: no input image then.
    image = {} if any(k.startswith("Hires ") for k in fields) else _read_image_fields(fields, used)
    if image.get("sha256") and image.get("mode") and is_valid_request(image=image):
        request["image"] = image
        used.add("Size")  # the size an input image ran at: the input decides it (it may be no text-to-image size)
    if "Lora hashes" in fields:
        hashes = _name_hashes(fields["Lora hashes"])
        if hashes and is_valid_request(lora_hashes=hashes):
            request["lora_hashes"] = hashes
            used.add("Lora hashes")
    if "TI hashes" in fields:
        embeddings = [{"name": n, "sha256": h} for n, h in _name_hashes(fields["TI hashes"]).items()]
        if embeddings and is_valid_request(embeddings=embeddings):
            request["embeddings"] = embeddings
            used.add("TI hashes")
    model_hash = None
    if "Model hash" in fields and _HASH.fullmatch(fields["Model hash"].strip()):
        model_hash = fields["Model hash"].strip().lower()
        used.add("Model hash")
    unknown = {k: v for k, v in fields.items() if k not in used}
    return request, model_hash, unknown, image


def _name_hashes(text: str) -> dict[str, str]:
    """A1111's ``name: hash, name: hash`` (Lora hashes, TI hashes) as {name: hash}; entries that do not parse
    are left out."""
    out = {}
    for part in text.split(","):
        name, sep, digest = part.rpartition(":")
        if sep and name.strip() and re.fullmatch(r"[0-9a-fA-F]{10,64}", digest.strip()):
            out[name.strip()] = digest.strip().lower()
    return out


_INPAINT_AREA = {"only masked": "masked", "whole picture": "whole"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_image_fields(fields: dict[str, str], used: set[str]) -> dict:
    """An input image's fields (A1111's and studio's, see _image_fields) as ImageInput values, each one that
    parses and is in range; the keys taken are added to ``used``."""
    from studio.image_input import MODES

    found: dict = {}

    def take(key: str, name: str, value, ok) -> None:
        if value is not None and ok(value):
            found[name] = value
            used.add(key)

    def text(key: str) -> str | None:
        return fields[key].strip() if key in fields else None

    if (value := text("Denoising strength")) is not None:
        take("Denoising strength", "strength", _float(value), lambda v: 0 < v <= 1)
    if (value := text("Mask blur")) is not None:
        take("Mask blur", "mask_blur", _int(value), lambda v: 0 <= v <= 64)
    if (value := text("Inpaint area")) is not None:
        take("Inpaint area", "inpaint_area", _INPAINT_AREA.get(value.casefold()), bool)
    if (value := text("Masked area padding")) is not None:
        take("Masked area padding", "masked_padding", _int(value), lambda v: 0 <= v <= 256)
    if (value := text("Image mode")) is not None:
        take("Image mode", "mode", value, lambda v: v in MODES)
    if (value := text("Input image")) is not None:
        take("Input image", "sha256", value.lower(), _SHA256.fullmatch)
    if (value := text("Mask")) is not None:
        take("Mask", "mask_sha256", value.lower(), _SHA256.fullmatch)
    if (value := text("Outpaint")) is not None:
        try:
            sides = parse_outpaint(value)
        except ValueError:
            sides = None
        take("Outpaint", "outpaint", sides, lambda v: is_valid_request(image={"mode": "outpaint", "sha256": "0" * 64,
                                                                              "outpaint": v}))
    return found


def image_summary(image: dict, known: bool) -> dict:
    """What is known of an image's input from its settings (for `studio info`): the mode, the denoise, the
    inputs' hashes and the mask's settings (those the mode uses); ``input_known`` says whether the input image
    is named (by hash)."""
    keys = (("mode", "mode"), ("denoise", "strength"), ("input_sha256", "sha256"), ("mask_sha256", "mask_sha256"),
            ("mask_blur", "mask_blur"), ("inpaint_area", "inpaint_area"), ("masked_padding", "masked_padding"),
            ("outpaint", "outpaint"))
    mode = image.get("mode") if isinstance(image.get("mode"), str) else None  # a record may hold anything
    unused = {"vary-subtle": ("mask_blur", "inpaint_area", "masked_padding", "outpaint"),
              "vary-strong": ("mask_blur", "inpaint_area", "masked_padding", "outpaint"),
              "upscale-1.5": ("mask_blur", "inpaint_area", "masked_padding", "outpaint"),
              "upscale-2": ("mask_blur", "inpaint_area", "masked_padding", "outpaint"),
              "inpaint": ("outpaint",), "outpaint": ("inpaint_area", "masked_padding")}.get(mode, ())
    if image.get("inpaint_area") == "whole":
        unused += ("masked_padding",)
    out = {name: image[key] for name, key in keys if image.get(key) is not None and name not in unused}
    out["input_known"] = bool(known and out.get("input_sha256"))
    return out


def parse_infotext(text: str) -> dict:
    """A1111 infotext → {"prompt", "negative_prompt", "fields", "request", "model_hash", "styles", "unknown", "notes",
    "image"}.

    `fields` keeps every `key: value` of the parameters line, in order, values unquoted;
    `request` holds GenerationRequest values for what maps and is valid (prompt and negative
    prompt included); `unknown` the fields that did not map (or did not parse, or are out of
    range). `styles` lists the names of a `Styles:` field (SD.Next's, and studio's): the prompt
    holds the styled text, so they are not put in `request` (studio.styles.restyle_values takes them
    out of the text when this machine has them). `image` summarises an input image (image_summary): from
    studio's `Image mode` and `Input image` keys it is also `request["image"]`; A1111's `Denoising strength`
    alone says the image was made from an input that the text does not name (a note says so). Text without a
    parameters line is all prompt.
    Raises StudioError only, for text over 64 KiB.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_INFOTEXT_BYTES:
            raise StudioError(f"infotext too long: over {MAX_INFOTEXT_BYTES // 1024} KiB")
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise StudioError(f"infotext must be text, not {type(text).__name__}")
    if len(text) > MAX_INFOTEXT_BYTES or len(text.encode("utf-8", errors="surrogatepass")) > MAX_INFOTEXT_BYTES:
        raise StudioError(f"infotext too long: over {MAX_INFOTEXT_BYTES // 1024} KiB; "
                          "A1111 parameters are a few lines")
    lines = [line[:-1] if line.endswith("\r") else line for line in text.strip().split("\n")]
    fields: dict[str, str] = {}
    if lines and lines[-1].strip():
        ok, parsed = _is_parameters_line(lines[-1])
        if ok:
            fields = parsed
            lines.pop()
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX):].lstrip(" "))
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    prompt = "\n".join(prompt_lines).strip()
    negative = "\n".join(negative_lines).strip()
    notes: list[str] = []
    request, model_hash, unknown, image_fields = _map_fields(fields, notes)
    image = None
    if "image" in request:
        image = image_summary(request["image"], known=True)
    elif image_fields.get("sha256"):  # studio's keys, but not a valid input together (an edited text)
        image = image_summary(image_fields, known=True)
        notes.append("the input image fields do not fit together (mode, mask, outpaint): left out of the settings")
    elif "strength" in image_fields or "mode" in image_fields:
        # A1111's img2img: a Denoising strength (and Mask blur for inpaint), and no word of the input itself.
        image = image_summary(image_fields, known=False)
        masked = "mask_blur" in image or "mask_sha256" in image
        denoise = f"denoise {image['denoise']:g}" if "denoise" in image else "denoise not given"
        flags = "--image FILE" + (" --mode inpaint --mask FILE" if masked else "") \
            + (f" --strength {image['denoise']:g}" if "denoise" in image else "")
        notes.append(f"made from an input image ({'inpainted, ' if masked else ''}{denoise}): the input image "
                     f"itself is not known (the text does not name it); to run it from an image give {flags}")
    styles = [name.strip() for name in unknown.pop("Styles", "").split(",") if name.strip()][:64]
    values: dict = {}
    if is_valid_request(prompt=prompt):
        values["prompt"] = prompt
    if negative and is_valid_request(negative_prompt=negative):
        values["negative_prompt"] = negative
    values.update(request)
    return {"prompt": prompt, "negative_prompt": negative, "fields": fields, "request": values,
            "model_hash": model_hash, "styles": styles, "unknown": unknown, "notes": notes, "image": image}


def to_request_values(parsed: dict) -> dict:
    """The GenerationRequest values of a parse_infotext result, checked together (what fails is dropped)."""
    values = dict(parsed.get("request") or {})
    if is_valid_request(**values):
        return values
    return {k: v for k, v in values.items() if is_valid_request(**{k: v})}

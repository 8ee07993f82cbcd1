"""What both front ends do, in one place: plan jobs, run and save them, open and save presets, read an
image's settings, verify. The CLI and the app call this; neither talks to the engine's parts on its own.

Every function raises StudioError only (one line for the user); nothing here prints or knows about Gradio.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from studio.errors import StudioError
from studio.settings import AppConfig, GenerationRequest


@dataclass
class Job:
    """One run and what it saved."""

    plan: object
    result: object
    saved: list[dict]  # per image: path, seed, noise_fingerprint, index, prompt_final, width, height
    notes: list[str] = field(default_factory=list)
    history_notes: list[str] = field(default_factory=list)  # saved, but the history or day log was not written


@dataclass
class OpenedSettings:
    """A preset or an image opened here: the request to run, its plan here, and what differs."""

    request: GenerationRequest
    plan: object
    report: dict  # repro.diff.compare's report ("expected", "differences"), or a plain one for images
    notes: list[str]


class Studio:
    """The service in front of one Engine (one process, one set of folders)."""

    def __init__(self, config: AppConfig):
        from studio.engine.engine import Engine

        self.engine = Engine(config)

    @property
    def config(self) -> AppConfig:
        return self.engine.config

    @property
    def registry(self):
        return self.engine.registry

    # -- generate -------------------------------------------------------------------------------
    def plan(self, request: GenerationRequest):
        return self.engine.plan(request)

    def plan_jobs(self, requests: list[GenerationRequest]) -> list:
        """A plan for every job before the first one runs (a bad job 40 fails before job 1 writes), each
        job's seed following the one before it as the seed mode says."""
        plans, carried_seed = [], None
        for request in requests:
            if carried_seed is not None:
                request = request.model_copy(update={"seed": carried_seed})
            plans.append(self.engine.plan(request))
            carried_seed = self.engine.next_request(request, plans[-1]).seed
        return plans

    def check_output_folder(self) -> None:
        from studio.outputs import check_output_folder

        check_output_folder(self.config.output_dir)

    def run_job(self, plan, fmt: str = "png", on_step: Optional[Callable[[int, int], None]] = None,
                stop: Optional[threading.Event] = None, **run_options) -> Job:
        """Run ``plan`` (its compile prediction made again: jobs before it may have compiled) and save it."""
        from studio.outputs import save_result

        plan = self.engine.with_current_compile(plan)
        result = self.engine.run(plan, on_step=on_step, stop=stop, **run_options)
        already = len(result.notes)
        saved = save_result(result, self.config.output_dir, fmt)
        return Job(plan=plan, result=result, saved=saved, notes=list(result.notes),
                   history_notes=result.notes[already:])

    def next_seed(self, request: GenerationRequest, plan) -> Optional[int]:
        return self.engine.next_request(request, plan).seed

    # -- presets --------------------------------------------------------------------------------
    def open_preset(self, preset, notes: list[str], folders: Sequence[Path] = ()) -> OpenedSettings:
        """``preset`` as it will run here: its model found (by name, else by hash) and the report of what differs.

        An input image or mask the preset names that is not in the inputs store is looked for by hash in
        ``folders`` (the preset's own folder, say) and stored; one still missing is a difference of the
        report (and a line in ``report["missing_inputs"]``), and the plan is made without the input image."""
        from studio import presets
        from studio.repro import diff, environment

        from studio.styles import split_known

        model, found = presets.locate_model(preset, self.registry)
        # A style missing here is one of the report's differences, not a refusal to compare.
        known, _ = split_known(preset.request.styles, self.engine.styles)
        request = preset.request.model_copy(update={"model": model, "styles": known})
        stored, missing = self.locate_inputs(request.image, folders, "the preset's")
        plannable, lost_loras = self.without_missing_adapters(request)
        plan = self.engine.plan(plannable if not missing else plannable.model_copy(update={"image": None}))
        report = diff.compare(preset, plan, environment.made_on(plan.backend.device, plan.backend.precision, plan))
        report = _with_missing_loras(report, lost_loras, "the preset's")
        return OpenedSettings(request=request, plan=plan,
                              report=_with_missing_inputs(report, request.image, missing, "the preset's"),
                              notes=list(notes) + found + stored)

    def without_missing_loras(self, request: GenerationRequest):
        """``request`` without the LoRAs (slots and prompt tags) this machine has under neither their name nor
        their hash, and those missing as (name, hash, "slot" or "prompt tag"): opened settings are compared
        without them, and the report says what to copy."""
        from studio.prompts.extra_networks import TAG, take_lora_tags

        folder = self.engine.loras.files

        def here(name: str, sha: Optional[str]) -> bool:
            try:
                folder.find(name, sha)
                return True
            except StudioError:
                return False

        missing = [(u.name, u.sha256, "slot") for u in request.loras if not here(u.name, u.sha256)]
        try:
            _, tags = take_lora_tags(request.prompt)
        except StudioError:
            tags = []  # a bad tag is the plan's error to say
        gone = {n for n, _ in tags if not here(n, request.lora_hashes.get(n))}
        missing += [(n, request.lora_hashes.get(n), "prompt tag") for n in dict.fromkeys(n for n, _ in tags)
                    if n in gone]
        if not missing:
            return request, []

        def drop(match):
            return "" if match.group(2).split(":")[0].strip() in gone else match.group(0)

        kept = [u for u in request.loras if here(u.name, u.sha256)]
        return request.model_copy(update={"loras": kept, "prompt": TAG.sub(drop, request.prompt)}), missing

    def without_missing_embeddings(self, request: GenerationRequest):
        """``request`` without the embeddings it records that are here under neither their name nor their hash
        (their words are then plain words), and those missing as (name, hash, "embedding")."""
        folder = self.engine.embeddings.files
        missing, kept = [], []
        for use in request.embeddings:
            try:
                folder.find(use.name, use.sha256)
                kept.append(use)
            except StudioError:
                missing.append((use.name, use.sha256, "embedding"))
        return (request.model_copy(update={"embeddings": kept}) if missing else request), missing

    def without_missing_speed_lora(self, request: GenerationRequest):
        """``request`` without its fast mode when the mode's LoRA is not here (the report says so; the rest is
        compared as Quality would run it), and that LoRA as (name, hash, "speed mode")."""
        from studio import performance

        if request.performance is None:
            return request, []
        mode = performance.FAST_MODES[request.performance]
        family = self.registry.resolve(request.model).family
        wanted = performance.speed_lora(mode, family)  # a mode made for another family is the plan's error
        try:
            use = performance.find_speed_lora(mode, family, self.engine.loras.files, request.performance_lora)
            self.engine.loras.files.find(use.name, use.sha256)
            return request, []
        except StudioError:
            recorded = request.performance_lora
            name = recorded.name if recorded is not None else wanted.stem
            return (request.model_copy(update={"performance": None, "performance_lora": None}),
                    [(name, recorded.sha256 if recorded is not None else None, "speed mode")])

    def without_missing_adapters(self, request: GenerationRequest):
        """``request`` as it can be planned here, and the LoRAs and embeddings it uses that are not here."""
        request, loras = self.without_missing_loras(request)
        request, embeddings = self.without_missing_embeddings(request)
        request, speed = self.without_missing_speed_lora(request)
        return request, loras + embeddings + speed

    def make_preset(self, request: GenerationRequest, name: str):
        """The settings, planned here, as a Preset (with the plan and made_on) ready to save or share."""
        from studio.repro import environment
        from studio.settings import Preset

        plan = self.engine.plan(request)
        return Preset(name=name, model={"file": plan.model.name, "sha256": plan.model.sha256},
                      request=plan.request, plan=plan.to_json_dict(),
                      made_on=environment.made_on(plan.backend.device, plan.backend.precision, plan))

    def save_preset(self, request: GenerationRequest, path: Path):
        from studio import presets

        preset = self.make_preset(request, Path(path).stem)
        return preset, presets.save(preset, Path(path))

    # -- input images ---------------------------------------------------------------------------
    @property
    def inputs(self):
        """The inputs store (the output folder's inputs/): input images and masks by pixel hash."""
        return self.engine.inputs

    def put_input(self, source, what: str = "input image", keep: bool = True) -> tuple[str, list[str]]:
        """Read an input image (a file, bytes, a PIL image or an array; image_input.read_image) and store it:
        its pixel sha256 and a note for every conversion made. A file that is refused writes nothing. Without
        ``keep`` (a plan preview) it is only held in memory (InputStore.hold)."""
        from studio.image_input import read_image

        image, notes = read_image(source, what)
        store = self.engine.inputs
        return (store.put if keep else store.hold)(image), notes

    def put_mask(self, source, image_sha: str, what: str = "mask", keep: bool = True) -> tuple[str, list[str]]:
        """Read a mask at the size of the stored input ``image_sha`` (a mask of another size is resized, and a
        note says so) and store it (or, without ``keep``, hold it): its sha256 and the notes."""
        from studio.image_input import read_mask

        store = self.engine.inputs
        mask, notes = read_mask(source, store.get(image_sha).size, what)
        return (store.put if keep else store.hold)(mask), notes

    def locate_inputs(self, image, folders: Sequence[Path] = (), whose: str = "the request's") \
            -> tuple[list[str], list[str]]:
        """Make sure the input image and mask ``image`` (an ImageInput, or None) names are in the inputs store.

        One that is not is looked for by hash in ``folders`` (not their subfolders) under any name or format,
        and stored (a note says where it was found). Returns (notes, missing): ``missing`` holds (what, sha256)
        for each input still not here ("input image" or "mask"; ``missing_input_line`` says it in one line)."""
        notes: list[str] = []
        missing: list[tuple[str, str]] = []
        if image is None:
            return notes, missing
        store = self.engine.inputs
        for sha, what in ((image.sha256, "input image"), (image.mask_sha256, "mask")):
            if sha is None or store.has(sha):
                continue
            path = store.find(sha, [Path(f) for f in folders]) if folders else None
            if path is not None and self._store_found(path, sha):
                notes.append(f"{whose} {what} {sha[:12]} was not in the inputs store: found it as {path} "
                             "(same pixels) and stored it")
            else:
                missing.append((what, sha))
        return notes, missing

    def _store_found(self, path: Path, sha: str) -> bool:
        """Store the picture in ``path`` under ``sha``, read as an input image or as a mask, whichever has it."""
        from studio.image_input import pixel_sha256, read_image, read_mask

        try:
            image, _ = read_image(path)
            if pixel_sha256(image) != sha:
                image, _ = read_mask(path, image.size)
        except StudioError:
            return False
        if pixel_sha256(image) != sha:
            return False
        return self.engine.inputs.put(image) == sha

    # -- images ---------------------------------------------------------------------------------
    def open_image(self, path: Path, fallback_model: Optional[str] = None,
                   folders: Optional[Sequence[Path]] = None) -> OpenedSettings:
        """An image's settings as a request to run here (model found by name, else by its hash), with notes.

        With ``fallback_model``, an image whose model is not here opens on that one (said in the notes)
        instead of being refused: the app fills its controls and the user picks the model. An input image or
        mask its record names that is not in the inputs store is looked for by hash in ``folders`` (default:
        the image's own folder), else it is a line of ``report["missing_inputs"]`` and the plan is made
        without it, as open_preset does."""
        from studio import presets
        from studio.settings import Preset, build_request, drop_retired_keys

        info = read_image_settings(path, self.engine.styles)
        values, retired = drop_retired_keys(dict(info.get("request") or {}))
        model, notes = model_name(info.get("model"))
        notes = retired + notes
        values.pop("model", None)
        sha = info.get("model_sha256")
        notes = list(info.get("notes") or []) + notes
        build_request(**{**values, "model": "tiny"})  # the values themselves are valid (a clear line if not)
        preset = Preset(model={"file": model, "sha256": sha if _is_sha256(sha) else None},
                        request={**values}, plan=info.get("plan") if info["source"] == "studio" else None)
        from studio.styles import split_known

        try:
            located, found = presets.locate_model(preset, self.registry)
        except StudioError as exc:
            if fallback_model is None:
                raise
            located, found = fallback_model, [f"{exc.message}; the settings are shown with {fallback_model}"]
        known, _ = split_known(preset.request.styles, self.engine.styles)  # the missing ones are in the notes
        request = preset.request.model_copy(update={"model": located, "styles": known})
        stored, missing = self.locate_inputs(request.image, [Path(path).parent] if folders is None else folders,
                                             "the image's")
        plannable, lost_loras = self.without_missing_adapters(request)
        plan = self.engine.plan(plannable if not missing else plannable.model_copy(update={"image": None}))
        if info["source"] == "studio":
            from studio.repro import diff, environment

            report = diff.compare(preset, plan, environment.made_on(plan.backend.device, plan.backend.precision, plan))
        else:
            report = {"expected": "different", "differences": []}
            notes.append(f"read from {info['source']} metadata: studio can match its settings, not its pixels "
                         "(another program's sampler and noise code)")
        report = _with_missing_loras(report, lost_loras, "the image's")
        return OpenedSettings(request=request, plan=plan,
                              report=_with_missing_inputs(report, request.image, missing, "the image's"),
                              notes=notes + found + stored)

    # -- verify ---------------------------------------------------------------------------------
    def verify_runs(self, request: GenerationRequest, against: Optional[str], tolerance: float):
        """Run ``request`` twice (``against`` None) or on its backend and on ``against``; compare the pixels.

        Returns (comparison, images a, images b, what was compared)."""
        from studio.repro.compare import compare_arrays

        first = self.engine.plan(request)
        second = self.engine.plan(first.request if against is None else against_request(against, first.request))
        a, b = self.engine.run(first).images, self.engine.run(second).images
        compared = (f"two runs of {describe_backend(first)}" if against is None
                    else f"{describe_backend(first)} vs {describe_backend(second)}")
        return compare_arrays(a, b, tolerance), a, b, compared, first


def missing_input_line(what: str, sha: str, whose: str = "the request's") -> str:
    """The one line said when an input image or mask is not in this machine's inputs store: its hash and the fix."""
    flag = "--mask" if what == "mask" else "--image"
    return f"{whose} {what} {sha[:12]} is not in this machine's inputs store: give it with {flag} FILE"


def _with_missing_loras(report: dict, missing: list[tuple[str, Optional[str], str]], whose: str) -> dict:
    """``report`` with a difference for each LoRA the settings use that is not here (by name or hash)."""
    if not missing:
        return report
    differences = list(report.get("differences") or [])
    for name, sha, source in missing:
        digest = f" (sha256 {sha[:12]})" if sha else ""
        kind, field, flag = ("embedding", "embeddings", "--embeddings-dir") if source == "embedding" else \
            ("LoRA", "loras", "--loras-dir")
        differences.append({"field": f"{field}.{name}", "preset": f"{name}{digest}", "here": "not here",
                            "effect": "different",
                            "fix": f"copy {whose} {kind} {name}{digest} into the {kind} folder ({flag}); any file "
                                   "name will do, it is found by its hash"})
    return {**report, "expected": "different", "differences": differences,
            "missing_loras": [f"{'embedding' if source == 'embedding' else 'LoRA'} {name} ({source}) is not here"
                              for name, _, source in missing]}


def _with_missing_inputs(report: dict, image, missing: list[tuple[str, str]], whose: str) -> dict:
    """``report`` with a difference for each input that is not here (the image will differ without it), and,
    when the settings have an input ``image``, ``missing_inputs``: the one line said for each (a text-to-image
    report keeps its shape)."""
    if image is None:
        return report
    lines = [missing_input_line(what, sha, whose) for what, sha in missing]
    report = {**report, "missing_inputs": lines}
    if missing:
        report["differences"] = list(report.get("differences", [])) + [
            {"field": "image.mask_sha256" if what == "mask" else "image.sha256", "preset": sha[:12],
             "here": "not in this machine's inputs store", "effect": "different",
             "fix": f"give it with {'--mask' if what == 'mask' else '--image'} FILE"} for what, sha in missing]
        report["expected"] = "different"
    return report


def stages_text(timings: dict) -> str:
    """A run's stages with their seconds, for the CLI and the app: "loading the model 1.8 s · … · decoding 0.1 s
    (first step done after 3.0 s)"."""
    parts = [f"{s['stage']} {s['seconds']:.1f} s" for s in timings.get("stages", [])]
    first = timings.get("first_step_s")
    return " · ".join(parts) + (f" (first step done after {first:.1f} s)" if first is not None else "")


def describe_backend(plan) -> str:
    b = plan.backend
    return b.name + (f":{b.mode}" if b.mode else "") + f" on {b.device}"


def against_request(spec: str, request: GenerationRequest) -> GenerationRequest:
    """``request`` moved to the backend (and OpenVINO mode) ``spec`` names: ``torch`` or ``openvino[:MODE]``."""
    from studio.settings import build_request

    name, _, mode = spec.partition(":")
    if name not in ("torch", "openvino"):
        raise StudioError(f"--against {spec!r}: use torch or openvino, optionally with :performance or :accuracy")
    # The reference is the plain path of that backend: eager torch, OpenVINO with its full weights.
    backend = {"name": name, "compile": "none", "ov_weights": "full"}
    if name == "torch" and request.backend.name != "torch":
        backend.update(device="cpu", text_encoder="torch")
    if mode:
        if mode not in ("performance", "accuracy"):
            raise StudioError(f"--against {spec!r}: the mode must be performance or accuracy")
        backend["ov_mode"] = mode
    return build_request(**{**request.model_dump(), "backend": {**request.backend.model_dump(), **backend}})


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def model_name(name: Optional[str]) -> tuple[str, list[str]]:
    """A model name from foreign settings, as a preset may hold it (a plain name, never a path)."""
    from studio.settings import PresetModel

    if not name:
        return "tiny", ["no model named: the preset uses tiny; set model.file to your model's file name"]
    plain = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    try:
        PresetModel(file=plain)
    except Exception:
        return "tiny", [f"model {name!r} is not a usable file name: the preset uses tiny"]
    return plain, ([] if plain == name else [f"model path {name!r} kept as its file name {plain!r}"])


def fooocus_metadata(text: Optional[str], library=None) -> Optional[dict]:
    """Fooocus's JSON metadata parsed, or None when ``text`` is not a JSON object (A1111 text then)."""
    from studio.metadata.fooocus_image import looks_like_fooocus_json, parse_fooocus_json

    if not looks_like_fooocus_json(text):
        return None
    try:
        return parse_fooocus_json(text, library)
    except StudioError:
        return None  # an A1111 prompt may start with "{" too (dynamic prompts)


def missing_styles_notes(names, library) -> list[str]:
    from studio.styles import split_known

    _, missing = split_known(names if isinstance(names, list) else [], library)
    if not missing:
        return []
    return [f"styles {', '.join(repr(m) for m in missing[:8])} are not here: put a Fooocus-format style file "
            "holding them in the styles folder (--styles-dir DIR) before running it (the preset keeps their "
            "names and the text they had)"]


def _style_records(names, library) -> list[dict]:
    """The styles a foreign image's request applies, with the text they have here."""
    return [library.get(n).record() for n in names or [] if library.get(n) is not None]


def _record_image_input(plan: dict) -> Optional[dict]:
    """A studio record's input image, as `studio info` shows it (image_summary), with what its plan resolved: the
    denoise that ran, the input's size, the steps that ran and the output size. None for text to image."""
    from studio.metadata.a1111 import image_summary

    request = plan.get("request") if isinstance(plan.get("request"), dict) else {}
    asked = request.get("image")
    if not isinstance(asked, dict):
        return None
    resolved = plan.get("image") if isinstance(plan.get("image"), dict) else {}
    # The denoise that ran: the request's may be None (the mode's default), the plan has the value.
    out = image_summary({**asked, "strength": resolved.get("strength", asked.get("strength"))}, known=True)
    for name, key in (("input_size", "input_size"), ("steps_run", "steps_run"), ("method", "method"),
                      ("output_size", "canvas_size")):
        if resolved.get(key) is not None:
            out[name] = resolved[key]
    return out


def read_image_settings(path: Path, library=None) -> dict:
    """The generation settings an image carries: studio's own record, Fooocus's JSON, or A1111 infotext.

    ``source`` says which; ``request`` holds request values (a studio record's model is in ``plan``);
    ``styles`` the styles applied with their text; ``image_input`` what is known of an input image (None
    for text to image; from A1111 text only the denoise and mask settings, and ``input_known`` false);
    ``library`` (the style library here, default the shipped one) finds styles by name.
    """
    from studio.metadata.a1111 import parse_infotext, to_request_values
    from studio.metadata.read import read_metadata
    from studio.styles import load_library, restyle_values

    library = library if library is not None else load_library(None)
    meta = read_metadata(path)
    if meta["studio"] is not None:
        record = meta["studio"]
        plan = record.get("plan") or {}
        model = plan.get("model") if isinstance(plan.get("model"), dict) else {}
        prompt = plan.get("prompt") if isinstance(plan.get("prompt"), dict) else {}
        return {"source": "studio", "format": meta["format"], "request": plan.get("request"),
                "styles": prompt.get("styles") or [], "model": model.get("name"), "model_sha256": model.get("sha256"),
                "image": record.get("image"), "plan": record.get("plan"), "run": record.get("run"),
                "image_input": _record_image_input(plan),
                "notes": missing_styles_notes((plan.get("request") or {}).get("styles"), library),
                "parameters": meta["parameters"]}
    if (fooocus := fooocus_metadata(meta["parameters"], library)) is not None:
        return {"source": "fooocus", "format": meta["format"], "request": fooocus["request"],
                "styles": _style_records(fooocus["request"].get("styles"), library),
                "model": fooocus["model"], "model_sha256": fooocus["model_sha256"], "fields": fooocus["fields"],
                "unknown": fooocus["unknown"], "ignored": fooocus["ignored"], "notes": fooocus["notes"],
                "parameters": meta["parameters"]}
    if meta["parameters"]:
        parsed = parse_infotext(meta["parameters"])
        values = to_request_values(parsed)
        notes = parsed["notes"] + restyle_values(values, parsed["styles"], library, "Styles")
        return {"source": "a1111", "format": meta["format"], "request": values, "model": values.get("model"),
                "model_sha256": None, "styles": _style_records(values.get("styles"), library),
                "styles_named": parsed["styles"], "fields": parsed["fields"], "unknown": parsed["unknown"],
                "model_hash": parsed["model_hash"], "image_input": parsed["image"], "notes": notes,
                "parameters": meta["parameters"]}
    raise StudioError(f"no generation settings found in {Path(path).name} (no studio record, no A1111 "
                      "parameters, no Fooocus metadata)")

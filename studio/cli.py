"""The `studio` command line. It builds requests and shows results; the engine does the work.

Contract (../shared/DESIGN.md): with --json exactly one JSON object on stdout; a user error is one
`error: ...` line on stderr, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

from studio.choices import PERFORMANCE_FLAGS
from studio.controls import CONTROLS
from studio.errors import ArgumentParser, StudioError

EXIT_USER_ERROR = 2


def _add_generate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="a preset name (presets/) or file; flags given beside it override it")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for several jobs in one process")
    p.add_argument("--prompt-file", type=Path, help="a file with one prompt a line")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--style", action="append", metavar="NAME",
                   help="apply a style (repeatable, applied in order; `studio styles` lists them)")
    p.add_argument("--styles-dir", type=Path, metavar="DIR",
                   help="a folder of Fooocus-format style files (*.json) to add to studio's styles")
    # The request's own settings: flag, choices and help from the one control schema (studio/controls.py),
    # as the app's controls are, so the two cannot drift.
    for control in CONTROLS:
        if control.flag is None or not control.flag.startswith("--") or control.flag.endswith("=") \
                or control.name in ("prompt", "negative_prompt", "styles", "deterministic", "expansion", "model"):
            continue  # set another way: repeatable, a switch, or COMPONENT=DTYPE
        kind = {"number": int, "slider": float if control.step != 1 else int}.get(control.kind, str)
        choices = control.choices if control.choices and control.name not in ("sampler", "chunk_policy") else None
        p.add_argument(control.flag, dest=control.name, type=kind, choices=choices, help=control.help or None)
    p.add_argument("--performance", choices=list(PERFORMANCE_FLAGS),
                   help="quality (60 steps) or speed (30) set --steps; extreme-speed (the LCM LoRA, 8 steps, lcm, "
                        "CFG 1) and lightning (the Lightning LoRA, 4 steps, euler_sgm_uniform, CFG 1) set steps, "
                        "sampler and CFG and apply their LoRA from the LoRA folder")
    p.add_argument("--image", type=Path, metavar="IN.png",
                   help="an input image to vary, upscale, inpaint or outpaint (--mode; PNG, JPEG, WebP, BMP, GIF, "
                        "TIFF or AVIF); stored by its pixels' hash in the output folder's inputs/")
    p.add_argument("--mask", type=Path, metavar="M.png",
                   help="--mode inpaint: the mask, white = repaint (an alpha channel counts as the mask; another "
                        "size is resized to the image's)")
    p.add_argument("--outpaint", metavar="SIDE=PIXELS,...",
                   help="--mode outpaint: pixels to add per side, e.g. left=128,right=64 (multiples of 8, at most "
                        "1024)")
    p.add_argument("--model", help="tiny, tiny-sdxl, sd15-random, a name in the models folder, or a path")
    p.add_argument("--lora", action="append", metavar="NAME[:WEIGHT]",
                   help="apply a LoRA of the LoRA folder at WEIGHT (default 1.0; repeatable, applied in order; "
                        "replaces a --preset's LoRAs; `studio loras` lists them)")
    p.add_argument("--lru", type=int, help="compiled variants a compiling backend keeps in memory (default 3); "
                                            "a setting of this process, not of the image")
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--expansion", choices=["on", "off"])
    p.add_argument("--expander", choices=["wordbank", "causal-lm"])
    p.add_argument("--expansion-model", help="a causal-LM folder (GPT-2 style) for --expander causal-lm: a name in "
                                             "the models folder's prompt_expansion/, or a path")
    p.add_argument("--expansion-new-chunk", action="store_true", default=None,
                   help="let expansion fill the next 75-token chunk too")
    p.add_argument("--expanded-prompt", help="replay this expanded text verbatim (expansion is not run again)")
    p.add_argument("--dtype", action="append", default=[], metavar="COMPONENT=DTYPE",
                   help="precision of text, unet or vae: fp32, fp16 or bf16 (repeatable)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default="png",
                   help="image file format (JPEG and WebP carry the metadata in EXIF)")
    p.add_argument("--models-dir", type=Path)
    _add_adapter_dirs(p)
    p.add_argument("--allow-unsafe-pickle", action="store_true", default=None,
                   help="allow .ckpt/.pt/.bin pickles, loaded with torch.load(weights_only=True)")
    p.add_argument("--json", action="store_true")


def _add_adapter_dirs(p: argparse.ArgumentParser) -> None:
    """--loras-dir and --embeddings-dir: the app's launcher takes them too (studio/ui/server.py)."""
    p.add_argument("--loras-dir", type=Path, metavar="DIR",
                   help="the LoRA folder (default: the models folder's loras/; or STUDIO_LORAS_DIR)")
    p.add_argument("--embeddings-dir", type=Path, metavar="DIR",
                   help="the textual-inversion embeddings folder (default: the models folder's embeddings/; or "
                        "STUDIO_EMBEDDINGS_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="studio", description="Reproducible Stable Diffusion")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    _add_generate_flags(sub.add_parser("generate", help="make images"))
    _add_generate_flags(sub.add_parser("plan", help="show what a generate would do, without running it"))
    verify = sub.add_parser("verify", help="compare two images, two runs (--twice) or two backends (--against)")
    verify.add_argument("images", nargs="*", type=Path, help="two images to compare")
    verify.add_argument("--twice", action="store_true", help="run the generate flags twice and compare")
    verify.add_argument("--against", metavar="BACKEND[:MODE]",
                        help="run the generate flags on their backend and on this one, and compare")
    verify.add_argument("--heatmap", type=Path, metavar="OUT.png", help="write an amplified difference heatmap")
    verify.add_argument("--tolerance", type=float, default=None,
                        help="largest difference (pixel values 0..1) still 'within_tolerance'; default 1/255")
    _add_generate_flags(verify)
    tokens = sub.add_parser("tokens", help="count CLIP tokens in 75-token chunks")
    tokens.add_argument("text")
    tokens.add_argument("--json", action="store_true")
    preset = sub.add_parser("preset", help="save, compare and import presets")
    preset_sub = preset.add_subparsers(dest="preset_command", required=True, parser_class=ArgumentParser)
    save = preset_sub.add_parser("save", help="save the generate flags (planned here) as a preset")
    # Its own dest: the generate flags' --out (the output folder, where input images are stored) is another thing.
    save.add_argument("preset_path", type=Path, metavar="OUT.json")
    _add_generate_flags(save)
    imp = preset_sub.add_parser("import", help="a Fooocus preset, A1111 infotext or an image → a studio preset")
    imp.add_argument("source", type=Path, metavar="FILE")
    imp.add_argument("--from", dest="kind", choices=["fooocus", "a1111", "image"], required=True)
    imp.add_argument("--out", type=Path, required=True, metavar="OUT.json")
    imp.add_argument("--styles-dir", type=Path, metavar="DIR",
                     help="a folder of Fooocus-format style files: the import applies the styles found there too")
    imp.add_argument("--json", action="store_true")
    diff = preset_sub.add_parser("diff", help="what will differ if this preset runs here")
    diff.add_argument("preset_file", metavar="P", help="preset name or file")
    diff.add_argument("--models-dir", type=Path)
    diff.add_argument("--styles-dir", type=Path, metavar="DIR", help="a folder of Fooocus-format style files")
    diff.add_argument("--out", type=Path, help="output folder (its inputs/ holds the input images found here)")
    diff.add_argument("--json", action="store_true")
    info = sub.add_parser("info", help="the settings recovered from an image (studio's own, A1111 infotext, or Fooocus JSON)")
    info.add_argument("image", type=Path)
    info.add_argument("--styles-dir", type=Path, metavar="DIR", help="a folder of Fooocus-format style files")
    info.add_argument("--json", action="store_true")
    styles = sub.add_parser("styles", help="list the styles (studio's and a --styles-dir folder's) and the "
                                           "problems reading them")
    styles.add_argument("--styles-dir", type=Path, metavar="DIR", help="a folder of Fooocus-format style files")
    styles.add_argument("--search", default="", metavar="WORDS", help="only the styles whose name or text holds "
                                                                       "every word")
    styles.add_argument("--json", action="store_true")
    history = sub.add_parser("history", help="the images saved in the output folder, newest first, with their settings")
    history.add_argument("--limit", type=int, default=20, help="how many entries (default 20)")
    history.add_argument("--offset", type=int, default=0, help="skip this many newest entries first")
    history.add_argument("--out", type=Path, help="output folder")
    history.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="list the models that can be picked")
    models.add_argument("--models-dir", type=Path)
    models.add_argument("--json", action="store_true")
    loras = sub.add_parser("loras", help="list the LoRA folder's LoRAs: name, short hash, format")
    loras.add_argument("--models-dir", type=Path)
    loras.add_argument("--loras-dir", type=Path, metavar="DIR",
                       help="the LoRA folder (default: the models folder's loras/; or STUDIO_LORAS_DIR)")
    loras.add_argument("--allow-unsafe-pickle", action="store_true", default=None,
                       help="list .pt/.ckpt/.bin LoRAs as usable (they are listed either way)")
    loras.add_argument("--json", action="store_true")
    _add_render_flags(sub.add_parser("render", help="a preset × many seeds (and prompts) on Ray workers, each "
                                                    "proven reproducible first; resumable"))
    return parser


def _add_render_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, metavar="P", help="the preset to render (a name or a file)")
    seeds = p.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seeds", metavar="FIRST-LAST", help="the seeds: 0-1999, or 1,5,10-20")
    seeds.add_argument("--seed-list", type=Path, metavar="FILE", help="a file of seeds, one a line")
    p.add_argument("--prompt-file", type=Path, metavar="FILE",
                   help="prompts, one a line: every prompt × every seed (default: the preset's prompt)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the images, manifest.jsonl and workers.json go; the same command again resumes")
    p.add_argument("--address", metavar="auto|ray://HOST:PORT",
                   help="a running Ray cluster (`ray start --head` there); default: local Ray, started and stopped "
                        "by this command")
    p.add_argument("--workers", type=int, metavar="N", help="workers (default: one per GPU for CUDA presets, else one)")
    p.add_argument("--cores-per-worker", type=int, metavar="N",
                   help="CPU threads of each worker (default: as many as `studio generate` runs here, so the "
                        "images are its images; other counts move results slightly, which needs --allow-drift)")
    p.add_argument("--allow-drift", action="store_true",
                   help="let a worker whose images would drift (within tolerance) render too; never one whose "
                        "images would differ")
    p.add_argument("--keep-free", type=int, default=200, metavar="MiB",
                   help="stop cleanly when the output disk has less than this free (default 200)")
    p.add_argument("--models-dir", type=Path)
    _add_adapter_dirs(p)
    p.add_argument("--styles-dir", type=Path, metavar="DIR", help="a folder of Fooocus-format style files")
    p.add_argument("--allow-unsafe-pickle", action="store_true", default=None,
                   help="load .ckpt/.pt/.bin files (pickles can run code): only for files you trust")
    p.add_argument("--json", action="store_true")


# -- flags → requests ------------------------------------------------------------------------------
def _precision(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        component, sep, dtype = pair.partition("=")
        if not sep or component not in ("text", "unet", "vae") or dtype not in ("fp32", "fp16", "bf16"):
            raise StudioError(f"--dtype {pair!r}: use COMPONENT=DTYPE with COMPONENT text, unet or vae "
                              "and DTYPE fp32, fp16 or bf16")
        out[component] = dtype
    return out


def parse_lora(text: str) -> dict:
    """``NAME[:WEIGHT]`` → a request's LoRA use (the name is checked by the request model)."""
    import math

    name, sep, weight = text.rpartition(":")
    if not sep:
        return {"name": text, "weight": 1.0}
    try:
        value = float(weight)
    except ValueError:
        raise StudioError(f"--lora {text!r}: the weight {weight!r} is not a number; use NAME[:WEIGHT], e.g. "
                          f"--lora {name or 'NAME'}:0.8") from None
    if not math.isfinite(value):
        raise StudioError(f"--lora {text!r}: the weight must be a finite number, e.g. --lora {name or 'NAME'}:0.8")
    if not name:
        raise StudioError(f"--lora {text!r}: give the LoRA's name before the weight (NAME[:WEIGHT])")
    return {"name": name, "weight": value}


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file is not None:
        from studio.untrusted import MAX_PROMPT_FILE_BYTES, MAX_PROMPT_FILE_LINES, read_text_bounded

        text = read_text_bounded(args.prompt_file, MAX_PROMPT_FILE_BYTES, f"prompt file {args.prompt_file}")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > MAX_PROMPT_FILE_LINES:
            raise StudioError(f"prompt file {args.prompt_file} has {len(lines)} prompts; the most in one run is "
                              f"{MAX_PROMPT_FILE_LINES}: split the file")
        prompts += lines
    return prompts or [""]


def _preset_base(args, registry) -> dict:
    """Request values from --preset (empty without one), its model located here; notes go to stderr."""
    if not getattr(args, "preset", None):
        return {}
    from studio import presets

    preset, notes = presets.load(args.preset)
    values = preset.request.model_dump()
    if args.model is None:
        values["model"], found = presets.locate_model(preset, registry)
        notes += found
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return values


def _name_operator_paths(args, registry) -> None:
    """--model and --expansion-model may be paths (the operator's own flags); requests hold only names."""
    if args.model:
        args.model = registry.name_from_flag(args.model)
    if args.expansion_model:
        args.expansion_model = registry.name_from_flag(args.expansion_model, "expansion")


# The input image's flags made from the control schema: argparse attribute → (ImageInput field, flag).
_IMAGE_FLAGS = {"image_mode": ("mode", "--mode"), "strength": ("strength", "--strength"),
                "mask_blur": ("mask_blur", "--mask-blur"), "inpaint_area": ("inpaint_area", "--inpaint-area"),
                "masked_padding": ("masked_padding", "--masked-padding")}
_PLACEHOLDER_SHA = "0" * 64  # stands for an input not read yet, while the flags are checked


def _image_flag_values(args, preset_image: dict | None) -> dict | None:
    """The input image's settings from the flags over the preset's, checked before any file is read: the
    request's ImageInput values (an input given by file has a placeholder hash until it is read), or None."""
    from pydantic import ValidationError

    from studio.settings import ImageInput, parse_outpaint

    given = {field: getattr(args, attr) for attr, (field, _) in _IMAGE_FLAGS.items()
             if getattr(args, attr) is not None}
    if args.outpaint is not None:
        try:
            given["outpaint"] = parse_outpaint(args.outpaint)
        except ValueError as exc:
            raise StudioError(f"--outpaint {args.outpaint!r}: {exc}") from None
    if args.image is None and preset_image is None:
        flags = [flag for attr, (_, flag) in _IMAGE_FLAGS.items() if getattr(args, attr) is not None]
        flags += [f for f, v in (("--mask", args.mask), ("--outpaint", args.outpaint)) if v is not None]
        if flags:
            raise StudioError(f"{flags[0]} needs an input image: give it with --image FILE")
        return None
    strength = given.get("strength")
    if strength is not None and not 0 < strength <= 1:  # also NaN
        raise StudioError(f"--strength {strength:g}: the denoise must be more than 0 and at most 1")
    values = dict(preset_image or {"mode": "vary-subtle"})
    mode = given.get("mode", values["mode"])
    if preset_image is not None and mode != preset_image["mode"]:
        # Another mode than the preset's: its mask or outpaint sides belong to its own mode.
        if mode != "inpaint":
            values.pop("mask_sha256", None)
        if mode != "outpaint":
            values.pop("outpaint", None)
    values.update(given)
    if args.image is not None:
        values["sha256"] = _PLACEHOLDER_SHA
    if args.mask is not None:
        values["mask_sha256"] = _PLACEHOLDER_SHA
    try:
        ImageInput(**values)
    except ValidationError as exc:
        raise StudioError(_image_error(exc)) from None
    return values


def _image_error(exc) -> str:
    """A refused ImageInput in one line, naming the flag."""
    flags = {field: flag for field, flag in _IMAGE_FLAGS.values()} | {"outpaint": "--outpaint"}
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = [str(p) for p in err["loc"]]
        parts.append(f"{flags[loc[0]]}: {msg}" if loc and loc[0] in flags else msg)
    return "; ".join(dict.fromkeys(parts))


def _input_folders(args) -> list[Path]:
    """Where a preset's input image is looked for by hash when it is not in the inputs store: the preset's own
    folder, then the current folder."""
    folders = []
    if getattr(args, "preset", None):
        from studio import presets

        folders.append(presets.find(args.preset).resolve().parent)
    folders.append(Path.cwd())
    return list(dict.fromkeys(folders))


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _read_inputs(args, values: dict, preset_image: dict | None, studio) -> dict:
    """The input image and mask the flags give, read and put in the inputs store (their notes said), or the
    preset's, found here (by hash in the preset's folder if need be): ``values`` with the real hashes."""
    from studio.service import missing_input_line
    from studio.settings import ImageInput

    values = dict(values)
    if args.image is not None:
        values["sha256"], notes = studio.put_input(args.image)
        for note in notes:
            _note(f"{args.image.name}: {note}")
        if preset_image is not None and preset_image["sha256"] != values["sha256"]:
            _note(f"the preset's input was {preset_image['sha256'][:12]}; this run uses {values['sha256'][:12]}")
    if args.mask is not None:
        values["mask_sha256"], notes = studio.put_mask(args.mask, values["sha256"])
        for note in notes:
            _note(f"{args.mask.name}: {note}")
    notes, missing = studio.locate_inputs(ImageInput(**values), _input_folders(args), "the preset's")
    for note in notes:
        _note(note)
    if missing:
        raise StudioError(missing_input_line(*missing[0], "the preset's"))
    return values


def _performance_values(args) -> dict:
    """--performance as request values: quality/speed set the steps (a request never stores the shortcut), a
    fast mode is named (the plan sets its steps, sampler and CFG, and says which flags it replaced)."""
    value = PERFORMANCE_FLAGS[args.performance]
    if isinstance(value, str):
        return {"performance": value}
    if args.steps is not None and args.steps != value:
        raise StudioError(f"--performance {args.performance} means {value} steps and --steps says {args.steps}: "
                          "give one of them")
    return {"performance": None, "steps": value}


def requests_from_args(args, studio=None):
    """The requests the flags ask for (one per prompt). ``studio`` (the service) opens --preset, names the
    --model, reads an input image or mask given by file into its inputs store and finds a preset's there;
    without it only the flags themselves are checked, and an input image cannot be given."""
    from studio.settings import build_request

    registry = studio.registry if studio is not None else None
    base = _preset_base(args, registry) if registry is not None else {}
    image = _image_flag_values(args, base.get("image"))
    if image is not None and studio is None:
        raise StudioError("an input image is read through the service: call requests_from_args with studio")
    image = _read_inputs(args, image, base.get("image"), studio) if image is not None else None
    if registry is not None:
        _name_operator_paths(args, registry)
    values: dict = {}
    simple = {"negative": "negative_prompt", "seed": "seed", "seed_mode": "seed_mode", "batch": "batch",
              "steps": "steps", "cfg": "cfg", "sampler": "sampler", "width": "width", "height": "height",
              "model": "model", "noise_source": "noise_source", "chunk_policy": "chunk_policy",
              "deterministic": "deterministic", "expander": "expander", "expansion_model": "expansion_model",
              "expansion_new_chunk": "expansion_new_chunk", "expanded_prompt": "expanded_prompt"}
    for flag, field in simple.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
    if args.performance is not None:
        values.update(_performance_values(args))
        base.pop("performance_lora", None)  # a preset's recorded speed LoRA belongs to its own mode
    if args.expansion is not None:
        values["expansion"] = args.expansion == "on"
    if args.style is not None:
        values["styles"] = args.style  # replaces the preset's list: the styles given are all that apply
    if args.lora is not None:
        values["loras"] = [parse_lora(text) for text in args.lora]  # replaces the preset's LoRAs, as --style does
    backend = {k: v for k, v in (("name", args.backend), ("device", args.device), ("ov_mode", args.ov_mode),
                                 ("text_encoder", args.text_encoder), ("compile", args.compile),
                                 ("ov_weights", args.ov_weights)) if v}
    if backend:
        values["backend"] = {**base.get("backend", {}), **backend}
    if args.dtype:
        values["precision"] = {**base.get("precision", {}), **_precision(args.dtype)}
    merged = {**base, **values, "image": image}
    given = _prompts(args)
    if given == [""] and "prompt" in base:
        given = [base["prompt"]]  # no prompt flag: the preset's prompt
    elif given != [base.get("prompt")]:
        merged.pop("expanded_prompt", None)  # a new prompt: the preset's expanded text does not apply
    return [build_request(**{**merged, "prompt": p}) for p in given]


def _config(args):
    from studio.settings import AppConfig

    lru = getattr(args, "lru", None)
    if lru is not None and not 1 <= lru <= 64:
        raise StudioError(f"--lru {lru}: keep 1 to 64 compiled variants in memory")
    config = AppConfig.from_env(models_dir=getattr(args, "models_dir", None), output_dir=getattr(args, "out", None),
                                allow_unsafe_pickle=getattr(args, "allow_unsafe_pickle", None),
                                compile_cache_size=lru, styles_dir=getattr(args, "styles_dir", None),
                                loras_dir=getattr(args, "loras_dir", None),
                                embeddings_dir=getattr(args, "embeddings_dir", None))
    # The app lists a missing folder among the styles' problems; for a command that uses styles, a
    # folder that is not there is a mistake to say now.
    if hasattr(args, "styles_dir") and config.styles_dir is not None and not config.styles_dir.is_dir():
        raise StudioError(f"styles folder {config.styles_dir} is not a folder (--styles-dir or STUDIO_STYLES_DIR)")
    return config


def _style_library(args):
    from studio.styles import load_library

    return load_library(_config(args).styles_dir)


# -- commands ------------------------------------------------------------------------------------
def _note_untrained(plan) -> None:
    if plan.model.untrained:
        from studio.models.demo import UNTRAINED_NOTE

        print(f"note: {plan.model.name} is a {UNTRAINED_NOTE}", file=sys.stderr)


def image_plan_lines(plan) -> list[str]:
    """What an image-input plan does with its input, for a terminal (none for text to image)."""
    return [] if plan.image is None else ["input image: " + plan.image.summary(plan.request.steps)]


def plan_lines(plan) -> list[str]:
    """What a terminal is told of a plan beyond its JSON: a fast mode's settings and LoRA, the input image's run."""
    from studio.performance import performance_summary

    fast = ["performance: " + performance_summary(plan.performance)] if plan.performance else []
    return fast + image_plan_lines(plan)


def _note_image_plan(plan) -> None:
    for note in plan.image.notes if plan.image is not None else []:
        _note(note)


def cmd_generate(args) -> dict:
    from studio.service import Studio, stages_text

    studio = Studio(_config(args))
    requests = requests_from_args(args, studio=studio)  # every job is validated before the first one runs
    jobs, totals = [], {"total_s": 0.0, "compile_s": 0.0, "steps": 0, "run_s": 0.0}
    plans = studio.plan_jobs(requests)  # a bad prompt on line 40 fails before anything is written
    _note_untrained(plans[0])
    _note_image_plan(plans[0])
    if not args.json:
        for line in plan_lines(plans[0]):
            print(line, file=sys.stderr)
    studio.check_output_folder()  # before minutes of work, not after
    for plan in plans:
        job = studio.run_job(plan, args.format)
        plan, result, images = job.plan, job.result, job.saved
        for note in job.history_notes:  # the images are saved, but their history or log is not
            print(f"note: {note}", file=sys.stderr)
        jobs.append({
            "prompt": plan.prompt.prompt,
            "prompt_final": plan.prompt.prompt_final,
            "images": images,
            "compile_events": result.compile_events,
            "risks": [r.model_dump() for r in plan.risks],
            "notes": result.notes,
            "image": None if plan.image is None else plan.image.model_dump(mode="json"),  # the input image's plan
            "timings": result.timings,
        })
        t = result.timings
        if not jobs[1:]:  # the first job: how long this process took to its first image, imports included
            totals["first_image_since_start_s"] = round(_since_process_start(), 4)
        totals["total_s"] += t["total_s"]
        totals["compile_s"] += t["compile_s"]
        totals["steps"] += plan.steps_run * plan.request.batch
        totals["run_s"] += t["total_s"] - t["compile_s"] - t["load_s"]
        if not args.json:
            print(f"stages: {stages_text(t)}", file=sys.stderr)
            for img in images:
                print(f"{img['path']}  seed {img['seed']}  noise {img['noise_fingerprint']}")
    return {
        "jobs": jobs,
        "model": {"name": plan.model.name, "sha256": plan.model.sha256, "untrained": plan.model.untrained},
        "backend": {"name": plan.backend.name, "device": plan.backend.device, "mode": plan.backend.mode,
                    "precision": plan.backend.precision},
        "timings": {"total_s": round(totals["total_s"], 4), "compile_s": round(totals["compile_s"], 4),
                    "steps_per_s": round(totals["steps"] / max(totals["run_s"], 1e-9), 4)},
        # Time to the first image: from this process's start (imports included), and the first job's stages.
        "start": {"first_image_since_process_start_s": totals["first_image_since_start_s"],
                  "load_s": jobs[0]["timings"]["load_s"], "stages": jobs[0]["timings"]["stages"]},
    }


def _since_process_start() -> float:
    """Seconds since this process started (its interpreter start, imports included)."""
    import time

    import psutil

    return time.time() - psutil.Process().create_time()


def cmd_plan(args) -> dict:
    from studio.service import Studio

    studio = Studio(_config(args))
    requests = requests_from_args(args, studio=studio)
    if len(requests) > 1:
        raise StudioError("plan takes one prompt; give --prompt once")
    plan = studio.plan(requests[0])
    _note_untrained(plan)
    _note_image_plan(plan)
    if not args.json:  # stdout stays the plan's JSON (scripts read it); the summary is for the reader
        for line in plan_lines(plan):
            print(line, file=sys.stderr)
    return plan.to_json_dict()


def cmd_tokens(args) -> dict:
    from studio.adapters.embeddings import EmbeddingLibrary
    from studio.models.tokenizer import clip_tokenizer
    from studio.prompts.attention import is_break, parse
    from studio.prompts.chunking import count_tokens

    config = _config(args)
    # An embedding's name counts as its vectors, as a run counts it.
    vectors = EmbeddingLibrary(config).counts_in(args.text)
    count = count_tokens(args.text, clip_tokenizer(str(config.cache_dir)), embeddings=vectors)  # refuses bad weights
    # The parsed (text, weight) pairs; a chunk break is ["BREAK", -1], as A1111 writes it.
    segments = [["BREAK", -1] if is_break(t, w) else [t, float(w)] for t, w in parse(args.text)]
    if not args.json:
        print(count.label())
        print("  ".join("BREAK" if s == ["BREAK", -1] else f"{s[0]!r}×{s[1]:.4g}" for s in segments))
    return {**count.as_dict(), "segments": segments}


def cmd_models(args) -> dict:
    from studio.models.registry import ModelRegistry

    config = _config(args)
    names = ModelRegistry(config.models_dir, config.cache_dir).available()
    if not args.json:
        print("\n".join(names))
    return {"models": names, "models_dir": str(config.models_dir)}


def cmd_loras(args) -> dict:
    from studio.adapters.loras import LoraLibrary, inspect

    config = _config(args)
    folder = config.lora_folder
    if args.loras_dir is not None and not folder.is_dir():  # the default folder may simply not exist yet
        raise StudioError(f"--loras-dir {folder}: " + ("not a folder" if folder.exists() else "no such folder"))
    files = LoraLibrary(config).files
    found, problems = [], []
    for file in files.all():
        entry = {"name": file.name, "file": file.path.name, "sha256": file.sha256, "short_hash": file.short_hash}
        if file.pickle:
            entry["format"] = "pickle"
            if not config.allow_unsafe_pickle:
                problems.append(f"{file.path.name} is a pickle: it is used only with --allow-unsafe-pickle")
        else:
            try:
                entry["format"] = inspect(file.path).format
            except StudioError as exc:  # one bad file is listed with its problem, not the end of the listing
                entry["format"] = None
                problems.append(exc.message)
        found.append(entry)
    if not args.json:
        for e in found:
            print(f"{e['name']}  {e['short_hash']}  {e['format'] or '?'}  {e['file']}")
        for line in problems:
            print(f"problem: {line}", file=sys.stderr)
    return {"loras": found, "loras_dir": str(folder), "problems": problems}


def cmd_history(args) -> dict:
    from studio import history
    from studio.errors import one_line
    from studio.untrusted import MAX_HISTORY_LIMIT

    if not 1 <= args.limit <= MAX_HISTORY_LIMIT:
        raise StudioError(f"--limit {args.limit}: give a number from 1 to {MAX_HISTORY_LIMIT}")
    if args.offset < 0:
        raise StudioError(f"--offset {args.offset}: give 0 or more")
    out = _config(args).output_dir
    if args.out is not None and not args.out.is_dir():  # the default folder may simply not exist yet
        raise StudioError(f"--out {args.out}: " + ("not a folder" if args.out.exists() else "no such folder"))
    found = history.entries(out, limit=args.limit, offset=args.offset)
    if not args.json:
        for e in found:
            r = e.record
            # Recorded text is untrusted: one line, control characters escaped, for the terminal.
            print(one_line(f"{r.time}  {e.path}  seed {r.seed}  noise {r.noise_fingerprint}  {r.model.name}  "
                           f"{r.sampler} {r.steps} steps cfg {r.cfg} {r.width}x{r.height}  "
                           + (f"{r.image_mode} denoise {r.denoise:g}  " if r.image_mode and r.denoise else "")
                           + f"{r.prompt[:80]!r}"
                           + ("" if e.request is not None else f"  (no Apply: {e.request_error})")))
    return {"output_dir": str(out), "logs": str(Path(out) / history.LOG_FOLDER), "limit": args.limit,
            "offset": args.offset, "entries": [e.to_json() for e in found]}


def cmd_preset(args) -> dict:
    from studio import presets
    from studio.service import Studio

    if args.preset_command == "import":
        return _import_preset(args)  # no engine: nothing is planned (and --out is the preset file)
    studio = Studio(_config(args))
    if args.preset_command == "save":
        requests = requests_from_args(args, studio=studio)
        if len(requests) > 1:
            raise StudioError("a preset holds one prompt; give --prompt once")
        preset, path = studio.save_preset(requests[0], args.preset_path)
        image = preset.request.image
        if image is not None:
            masked = f" and its mask {image.mask_sha256[:12]}" if image.mask_sha256 else ""
            _note(f"the preset names its input image {image.sha256[:12]}{masked} by the pixels' hash: share the "
                  "image with the preset (studio finds it by hash in the preset's folder)")
        if not args.json:
            print(path)
        return {"path": str(path), "preset": preset.to_json_dict()}
    found = presets.find(args.preset_file)
    opened = studio.open_preset(*presets.load(args.preset_file),
                                folders=list(dict.fromkeys([found.resolve().parent, Path.cwd()])))
    report = {**opened.report, "notes": opened.notes}
    if not args.json:
        print(f"expected: {report['expected']}")
        for d in report["differences"]:
            print(f"- {d['field']}: {d['preset']} → {d['here']} [{d['effect']}] {d['fix']}")
        for note in opened.notes:
            _note(note)
    return report


def _import_preset(args) -> dict:
    from studio import presets
    from studio.metadata.a1111 import parse_infotext, to_request_values
    from studio.metadata.fooocus import load_fooocus_preset
    from studio.metadata.read import read_metadata
    from pydantic import ValidationError

    from studio.service import fooocus_metadata, missing_styles_notes, model_name
    from studio.settings import Preset, build_request, drop_retired_keys, validation_message
    from studio.styles import restyle_values

    report: dict = {"notes": []}
    sha = None
    plan = None
    library = _style_library(args)
    if args.kind == "fooocus":
        imported = load_fooocus_preset(args.source, library)
        values, (model, notes) = imported.request_values, model_name(imported.model_file)
        report.update(downloads=imported.downloads, unknown_keys=imported.unknown_keys, ignored=imported.ignored)
        report["notes"] += imported.notes + notes
        if imported.downloads:
            report["notes"].append(f"{len(imported.downloads)} download URL(s) listed, not fetched: studio never "
                                   "downloads; get the files yourself into the models folder")
    else:
        if args.kind == "a1111":
            from studio.untrusted import MAX_INFOTEXT_BYTES, read_text_bounded

            text = read_text_bounded(args.source, MAX_INFOTEXT_BYTES, str(args.source))
            record = None
        else:
            meta = read_metadata(args.source)
            text, record = meta["parameters"], meta["studio"]
        fooocus = fooocus_metadata(text, library) if record is None else None
        if record is not None:  # our own image: its whole plan
            plan = record.get("plan")
            try:
                values = dict(plan["request"])
                sha = plan["model"]["sha256"]
                model, notes = model_name(plan["model"]["name"])
            except (KeyError, TypeError):
                raise StudioError(f"{args.source}: the studio record has no plan") from None
            values.pop("model", None)
            values, dropped = drop_retired_keys(values)
            report["notes"] += notes + dropped + missing_styles_notes(values.get("styles"), library)
        elif fooocus is not None:  # Fooocus's own JSON scheme
            values, sha = fooocus["request"], fooocus["model_sha256"]
            model, notes = model_name(fooocus["model"])
            report.update(unknown_fields=fooocus["unknown"], ignored=fooocus["ignored"])
            report["notes"] += fooocus["notes"] + notes
        elif text:
            parsed = parse_infotext(text)
            values = to_request_values(parsed)
            model, notes = model_name(values.pop("model", None))
            report.update(unknown_fields=parsed["unknown"], model_hash=parsed["model_hash"])
            report["notes"] += parsed["notes"] + notes + restyle_values(values, parsed["styles"], library, "Styles")
            if parsed["model_hash"]:
                report["notes"].append(f"A1111 gives only a short model hash ({parsed['model_hash']}); "
                                       "`studio preset diff` checks the full sha256 once model.sha256 is set")
        else:
            raise StudioError(f"no generation settings found in {args.source}")
    build_request(**{**values, "model": "tiny"})  # the values are valid before anything is written
    image = values.get("image")
    if isinstance(image, dict) and image.get("sha256"):
        masked = f" and its mask {image['mask_sha256'][:12]}" if image.get("mask_sha256") else ""
        report["notes"].append(f"the preset needs its input image {image['sha256'][:12]}{masked} (named by the "
                               "pixels' hash): keep the image beside the preset, or give it with --image FILE")
    for lora in values.get("loras") or []:
        digest = f" (hash {lora['sha256'][:12]})" if lora.get("sha256") else ""
        report["notes"].append(f"the preset applies LoRA {lora['name']}{digest} at {lora.get('weight', 1.0):g}: it "
                               "must be in the LoRA folder (any file name with those bytes) to run")
    try:
        preset = Preset(name=args.out.stem, description=f"imported from {args.source.name} ({args.kind})",
                        model={"file": model, "sha256": sha}, request={**values}, plan=plan)
    except ValidationError as exc:
        raise StudioError(f"{args.source}: cannot make a preset of it: {validation_message(exc)}") from None
    path = presets.save(preset, args.out)
    if not args.json:
        print(path)
        for note in report["notes"]:
            print(f"note: {note}")
    return {"path": str(path), "preset": preset.to_json_dict(), "report": report}


def cmd_info(args) -> dict:
    from studio.service import read_image_settings

    out = read_image_settings(args.image, _style_library(args))
    # The service's summary fields that `studio info --json` never had (its contract is DESIGN.md's).
    drop = {"studio": ("model", "model_sha256"), "a1111": ("model", "model_sha256")}
    for key in drop.get(out["source"], ()):
        out.pop(key, None)
    if not args.json:
        print(json.dumps(out.get("request"), indent=2, ensure_ascii=False))
        if out.get("image_input"):
            print("input image: " + json.dumps(out["image_input"], ensure_ascii=False))
        for style in out.get("styles") or []:
            if isinstance(style, dict):
                print(f"style {style.get('name')}: {style.get('prompt')!r} / negative {style.get('negative_prompt')!r}")
        for note in out.get("notes") or []:
            print(f"note: {note}")
    return out


def cmd_styles(args) -> dict:
    library = _style_library(args)
    shown = library.search(args.search)
    if not args.json:
        for style in shown:
            print(f"{style.name}  ({style.source})")
        for line in library.notes:
            print(f"note: {line}", file=sys.stderr)
        for line in library.problems:
            print(f"problem: {line}", file=sys.stderr)
    return {"styles": [s.record() for s in shown], "count": len(library.styles),
            "styles_dir": None if library.folder is None else str(library.folder),
            "problems": library.problems, "notes": library.notes}


def cmd_verify(args) -> dict:
    from studio.repro.compare import ONE_LEVEL, compare_images, write_heatmap

    tolerance = ONE_LEVEL if args.tolerance is None else args.tolerance
    if tolerance < 0:
        raise StudioError("--tolerance must be 0 or more")
    modes = sum([bool(args.images), args.twice, args.against is not None])
    if modes != 1 or (args.images and len(args.images) != 2):
        raise StudioError("give two images, or --twice, or --against BACKEND[:MODE] (with generate flags)")
    if args.images:
        result, a, b = compare_images(args.images[0], args.images[1], tolerance)
        compared = f"{args.images[0]} vs {args.images[1]}"
    else:
        from studio.service import Studio

        studio = Studio(_config(args))
        requests = requests_from_args(args, studio=studio)
        if len(requests) > 1:
            raise StudioError("verify takes one prompt; give --prompt once")
        # The second run takes the first plan's seed, so both draw the same noise.
        result, a, b, compared, first = studio.verify_runs(requests[0], None if args.twice else args.against,
                                                           tolerance)
        _note_untrained(first)
    if args.heatmap:
        result.heatmap = write_heatmap(a, b, args.heatmap)
    out = {**result.as_dict(), "compared": compared}
    if not args.json:
        psnr = "inf" if result.psnr_db is None else f"{result.psnr_db:.2f}"
        print(f"{result.verdict}: max {result.max_abs_diff:.3g}, mean {result.mean_abs_diff:.3g}, PSNR {psnr} dB, "
              f"{result.pct_pixels_differ:.2f}% pixels differ ({compared})")
    return out


def cmd_render(args) -> dict:
    from studio import presets
    from studio.render.farm import RenderSettings, render
    from studio.render.jobs import parse_seeds, read_seed_list
    from studio.service import Studio

    # Every flag is checked before Ray or a model starts.
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise StudioError(f"--workers {args.workers}: give 1 to 1024 workers")
    if args.cores_per_worker is not None and not 1 <= args.cores_per_worker <= 1024:
        raise StudioError(f"--cores-per-worker {args.cores_per_worker}: give 1 to 1024 cores")
    if not 0 <= args.keep_free <= 1 << 30:
        raise StudioError(f"--keep-free {args.keep_free}: give MiB to leave free on the output disk (0 or more)")
    if args.address is not None and not (args.address == "auto" or args.address.startswith("ray://")
                                         or ":" in args.address):
        raise StudioError(f"--address {args.address!r}: give auto, ray://HOST:PORT or HOST:PORT of a Ray cluster")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else read_seed_list(args.seed_list)
    prompts = None
    if args.prompt_file is not None:
        args.prompt = None
        prompts = _prompts(args)
    studio = Studio(_config(args))
    found = presets.find(args.preset)
    preset, notes = presets.load(args.preset)
    opened = studio.open_preset(preset, notes, folders=list(dict.fromkeys([found.resolve().parent, Path.cwd()])))
    for note in opened.notes:
        _note(note)
    if opened.report["expected"] != "identical":
        _note(f"this preset was made on another machine: here its images are expected to be "
              f"{opened.report['expected']} (`studio preset diff {args.preset}` says why)")
    tty = sys.stderr.isatty()
    told = {"at": 0.0, "tenth": -1}

    def show(progress) -> None:
        import time as _time

        line = progress.line()
        if tty:
            print("\r" + line[:200].ljust(120), end="", file=sys.stderr, flush=True)
            return
        tenth = (progress.done_before + progress.done) * 10 // max(progress.total, 1)
        if not args.json and (tenth != told["tenth"] or _time.monotonic() - told["at"] > 30):
            told["tenth"], told["at"] = tenth, _time.monotonic()
            print(line, file=sys.stderr, flush=True)

    settings = RenderSettings(request=opened.request, seeds=seeds, prompts=prompts, out=args.out,
                              workers=args.workers, address=args.address, allow_drift=args.allow_drift,
                              cores_per_worker=args.cores_per_worker, keep_free=args.keep_free << 20,
                              preset_report=opened.report)
    try:
        summary = render(studio, settings, on_progress=show)
    finally:
        if tty:
            print(file=sys.stderr)
    if not args.json:
        for note in summary.get("notes", []):
            _note(note)
        if "message" in summary:
            print(summary["message"])
        else:
            print(f"rendered {summary['rendered']} images in {summary['seconds']:.0f} s "
                  f"({summary['images_per_min']} images/min); {summary['done_before']} were done before; "
                  f"{summary['total']} in all, listed in {summary['manifest']}")
            for w in summary["workers"]:
                print(f"  {w['worker']} on {w['host']}: {w['verdict']}, "
                      f"{'admitted' if w['admitted'] else 'refused'}, {w['images']} images "
                      f"({w['images_per_min']}/min)")
    return summary


COMMANDS = {"generate": cmd_generate, "plan": cmd_plan, "tokens": cmd_tokens, "models": cmd_models,
            "verify": cmd_verify, "preset": cmd_preset, "info": cmd_info, "styles": cmd_styles,
            "history": cmd_history, "loras": cmd_loras, "render": cmd_render}


def main(argv: list[str] | None = None) -> int:
    from studio.runtime import prepare_process

    prepare_process()
    for stream in (sys.stdout, sys.stderr):
        # A path or prompt from argv may hold bytes that are not UTF-8 (read as lone surrogates):
        # printed escaped instead of failing halfway through a listing.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return _main(argv)
    except BrokenPipeError:
        # `studio models | head`: the reader left; say nothing more (Python would print a traceback
        # when flushing stdout at exit, so stdout is pointed at /dev/null first).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
        return 141


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        output = COMMANDS[args.command](args)
    except StudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(output, ensure_ascii=False))
    elif args.command == "plan":
        print(json.dumps(output, indent=2, ensure_ascii=False))
    return 0

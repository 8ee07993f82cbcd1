"""The cross-machine report: a preset's Plan (made there) against the Plan re-made here.

Each difference has an effect: `none` (the image is the same), `drift` (small numeric drift,
within tolerance) or `different` (another image), and a fix. The worst effect is the verdict:
`identical`, `drift` or `different`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from studio.plan import Plan
from studio.settings import Preset

EFFECT_ORDER = {"none": 0, "drift": 1, "different": 2}
VERDICT = {0: "identical", 1: "drift", 2: "different"}


@dataclass
class Difference:
    field: str
    preset: Any
    here: Any
    effect: str
    fix: str


def _get(d: Optional[dict], dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _style_text(style: dict) -> str:
    return f"{style.get('prompt')!r} / negative {style.get('negative_prompt')!r}"


def _style_differences(preset: Preset, there: dict, here: Plan, add) -> None:
    from studio.styles import style_key

    recorded = _get(there, "prompt.styles")
    there_styles = {style_key(s["name"]): s for s in recorded if isinstance(s, dict) and isinstance(s.get("name"), str)} \
        if isinstance(recorded, list) else {}
    here_styles = {style_key(s.name): s.model_dump() for s in here.prompt.styles}
    for name in preset.request.styles:
        a, b = there_styles.get(style_key(name)), here_styles.get(style_key(name))
        field = f"prompt.styles.{name}"
        if b is None:
            add(field, _style_text(a) if a else "applied", "not here", "different",
                f"put a Fooocus-format style file holding style {name!r}"
                + (" with the preset's text" if a else "") + " in the styles folder (--styles-dir DIR)")
        elif a is not None and (a.get("prompt"), a.get("negative_prompt")) != (b["prompt"], b["negative_prompt"]):
            add(field, _style_text(a), _style_text(b) + f" (from {b['source']})", "different",
                f"style {name!r} has another text here: give the preset's text to a style of that name in the "
                "styles folder (--styles-dir DIR), which replaces this one")


def compare(preset: Preset, here: Plan, here_env: dict) -> dict:
    there = preset.plan or {}
    env = preset.made_on.model_dump() if preset.made_on else {}
    mine = here.to_json_dict()
    out: list[Difference] = []

    def add(field, a, b, effect, fix):
        out.append(Difference(field, a, b, effect, fix))

    # the weights
    if preset.model.sha256 and preset.model.sha256 != here.model.sha256:
        add("model.sha256", preset.model.sha256, here.model.sha256, "different",
            f"put the model with sha256 {preset.model.sha256[:10]}… in the models folder as {preset.model.file}")
    if preset.model.file != here.model.name:
        add("model.file", preset.model.file, here.model.name, "none", "the same weights under another name")
    # the seed
    if preset.request.seed_mode == "random" or preset.request.seed is None:
        add("request.seed_mode", preset.request.seed_mode, "a new seed each run", "different",
            "save the preset with a fixed seed (--seed N --seed-mode fixed)")
    # the prompt
    if preset.request.expansion:
        if preset.request.expanded_prompt is not None:
            add("request.expanded_prompt", "stored", "replayed verbatim", "none",
                "nothing: the stored expanded text is used, expansion does not run again")
        else:
            add("request.expanded_prompt", None, "expanded here from the seed", "drift",
                "save the preset from a run so it stores the expanded text")
    # the styles: the text each had there (recorded in the preset's plan) against the text here
    _style_differences(preset, there, here, add)
    # the LoRAs: the same bytes (by hash) at the same weights; a name that differs is only a name
    there_loras = {lora.get("sha256"): lora for lora in (_get(there, "loras") or []) if isinstance(lora, dict)}
    for lora in here.loras:
        was = there_loras.get(lora.sha256)
        if was is not None and was.get("file") != lora.file:
            add(f"loras.{lora.name}", was.get("file"), lora.file, "none",
                "nothing: the same LoRA (found by its hash) under another file name")
    # the input image: how it runs here (the inputs themselves are named by hash in the request)
    there_image, here_image = _get(there, "image"), mine.get("image")
    if isinstance(there_image, dict) and isinstance(here_image, dict):
        for key in ("strength", "steps_run", "method", "canvas_size", "crop", "area"):
            if key in there_image and there_image[key] != here_image.get(key):
                add(f"image.{key}", there_image[key], here_image.get(key), "different",
                    "the input image runs another way here (another studio version or model): the image will differ")
    # the noise
    there_gen, here_gen = _get(there, "noise.generator_device"), here.noise.generator_device
    if here.noise.source == "device" or (there_gen and there_gen != "cpu"):
        there_name = env.get("device_name")
        here_name = here_env.get("device_name")
        if there_gen != here_gen or there_name != here_name:
            add("noise.generator_device", f"{there_gen} ({there_name})", f"{here_gen} ({here_name})", "different",
                "use noise source cpu (--noise-source cpu, no -gpu sampler) on both machines")
    # the backend and the precision really in force
    for field in ("backend.name", "backend.mode", "backend.text_encoder"):
        a, b = _get(there, field), _get(mine, field)
        if field == "backend.text_encoder":
            a = a or "torch"  # plans made before the option ran it in PyTorch
        if there and a != b:
            add(field, a, b, "drift", f"use the same {field.split('.')[1]} as the preset ({a}) to reduce drift")
    weights_there, weights_here = _get(there, "backend.weights") or "full", here.backend.weights
    if there and weights_there != weights_here:
        add("backend.weights", weights_there, weights_here, "different",
            f"use the preset's OpenVINO weights here (--ov-weights {weights_there}): int8 weights change the image")
    for component in ("text", "unet", "vae"):
        a = _get(there, f"backend.precision.{component}")
        b = here.backend.precision.get(component)
        if there and a != b:
            add(f"backend.precision.{component}", a, b, "drift",
                f"run the {component} in {a} here, or both in fp32 (OpenVINO: accuracy mode)")
    # the machine
    packages = ("torch", "diffusers", "transformers", "openvino", "optimum_intel") + (("peft",) if here.loras else ())
    for package in packages:
        if env and env.get(package) != here_env.get(package):
            add(f"made_on.{package}", env.get(package), here_env.get(package), "drift",
                f"install {package.replace('_', '-')}=={env.get(package)} for bit-identical results")
    if env and env.get("device_name") != here_env.get("device_name") and not any(
            d.field == "noise.generator_device" for d in out):
        add("made_on.device_name", env.get("device_name"), here_env.get("device_name"), "drift",
            "another processor rounds differently; results stay within tolerance with fp32 and CPU noise")
    threads_there, threads_here = env.get("torch_threads"), here_env.get("torch_threads")
    if threads_there and threads_here and threads_there != threads_here and here.backend.device == "cpu":
        add("made_on.torch_threads", threads_there, threads_here, "drift",
            f"run with {threads_there} CPU threads (OMP_NUM_THREADS={threads_there}, or --cores-per-worker "
            f"{threads_there} for a render): torch's CPU results depend on its thread count")
    low = here.backend.name == "openvino" and here.backend.mode == "performance"
    if env and low and env.get("cpu_flags") != here_env.get("cpu_flags"):
        add("made_on.cpu_flags", env.get("cpu_flags"), here_env.get("cpu_flags"), "drift",
            "performance mode picks its precision from CPU features (bf16 with avx512_bf16/AMX): use accuracy mode")
    elif env and here.backend.mode == "inductor" and env.get("cpu_flags") != here_env.get("cpu_flags"):
        add("made_on.cpu_flags", env.get("cpu_flags"), here_env.get("cpu_flags"), "drift",
            "torch.compile generates kernels for this CPU's vector units: run eager torch (--compile none)")
    worst = max((EFFECT_ORDER[d.effect] for d in out), default=0)
    return {"expected": VERDICT[worst], "differences": [asdict(d) for d in out]}

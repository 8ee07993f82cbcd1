"""What every tab of the page shares: the service, the start values, the controls by name, and the
way a handler receives the controls (by name, never as a long positional list)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from studio.choices import mode_of, performance_of
from studio.controls import (CONTROL_ORDER, LORA_DEFAULT_WEIGHT, LORA_NONE, LORA_ORDER, LORA_SLOTS,
                             lora_slot_names)
from studio.errors import StudioError

# The Input image panel's files and switches (studio/ui/tabs/input_image.py): API parameters, not request fields
# (a request names the files by hash once they are in the inputs store).
IMAGE_ORDER = ("input_image", "uov_image", "inpaint_image", "mask_image", "outpaint_sides", "outpaint_pixels")
# Session state after the controls: Gradio keeps it out of the HTTP API, whose callers pass the controls only.
# lora_record is the opened request's own LoRA list (names, weights, hashes): the slots show names, and the
# record keeps each one's sha256 so that the same bytes are found again, under any name (and says which of
# more than LORA_SLOTS LoRAs did not fit the slots).
STATE_ORDER = ("replay", "live_preview", "lora_record")
# The parameters of /generate, /plan_preview and the other control calls: the request's controls, the Input
# image panel's, then the LoRA slots (lora_1_enabled, lora_1_name, lora_1_weight, ... studio/controls.py).
API_ORDER = CONTROL_ORDER + IMAGE_ORDER + LORA_ORDER
INPUT_ORDER = API_ORDER + STATE_ORDER


def _replay_texts(values: dict) -> list[str] | None:
    """A batch's stored expanded texts (from an opened preset), while they still belong to the settings.

    They were expanded from one prompt with one seed per image: once the prompt, the seed or the
    batch size changes, they are dropped and expansion runs anew.
    """
    replay = values.get("replay")
    if not isinstance(replay, dict) or not values["expansion"]:
        return None
    texts, batch = replay.get("texts"), values["batch"]
    # The batch is checked by the request model after this; a hostile one here only means "no replay".
    if not isinstance(texts, list) or not isinstance(batch, (int, float)) or isinstance(batch, bool):
        return None
    same = (replay.get("prompt") == (values["prompt"] or "") and replay.get("seed") == values["seed"]
            and len(texts) == batch)
    return list(texts) if same else None


def slot_loras(values: dict) -> list[dict]:
    """The request's ``loras`` from the slots: the enabled slots that name a LoRA, in slot order. A slot that
    still holds a name of the opened request's record takes its sha256 with it (a preset made elsewhere
    finds its LoRA by hash even where the file has another name)."""
    record = values.get("lora_record")
    # Page state, but an API caller can send anything in its place: a record that is not a list is none.
    record = [u for u in record if isinstance(u, dict) and u.get("sha256")] if isinstance(record, list) else []
    loras = []
    for slot in range(1, LORA_SLOTS + 1):
        enabled, name, weight = (values.get(n) for n in lora_slot_names(slot))
        if not enabled or name in (None, "", LORA_NONE):
            continue
        use = {"name": name, "weight": weight}  # checked by the request model: a bad one is a clear line there
        recorded = next((u for u in record if u.get("name") == name), None)
        if recorded is not None:
            use["sha256"] = recorded["sha256"]
        loras.append(use)
    return loras


def slot_values(request) -> dict:
    """The slots' values for ``request`` (the inverse of slot_loras): its first LORA_SLOTS LoRAs, the other
    slots empty and on (Fooocus's default); the full list goes to lora_record, which notes any left out."""
    values = {}
    for slot in range(1, LORA_SLOTS + 1):
        enabled, name, weight = lora_slot_names(slot)
        use = request.loras[slot - 1] if slot <= len(request.loras) else None
        values[enabled] = True
        values[name] = use.name if use else LORA_NONE
        values[weight] = use.weight if use else LORA_DEFAULT_WEIGHT
    values["lora_record"] = [u.model_dump(mode="json", exclude_none=True) for u in request.loras]
    return values


def request_values(values: dict, image: dict | None = None) -> dict:
    """UI control values → GenerationRequest fields; ``image`` is the request's image (input_image.request_image
    makes it: it needs the inputs store)."""
    # Numbers are passed as they came: the request model checks them (a NaN, a null or a text from a
    # hostile API call is a clear message there, where int()/float() here would raise).
    for name, label in (("width", "Width"), ("height", "Height")):
        # An empty or half-typed number field ("", "-") arrives as None: say so, never guess a size.
        if values[name] is None:
            raise StudioError(f"{label} is empty: type a multiple of 8 from 64 to 2048")
    seed = values["seed"]
    negative_seed = isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0
    return dict(
        prompt=values["prompt"] or "", negative_prompt=values["negative_prompt"] or "",
        seed=None if values["seed_mode"] == "random" or seed is None or negative_seed else seed,
        seed_mode=values["seed_mode"], batch=values["batch"], steps=values["steps"],
        cfg=values["cfg"], sampler=values["sampler"], width=values["width"],
        height=values["height"], model=values["model"], noise_source=values["noise_source"],
        deterministic=bool(values["deterministic"]), expansion=bool(values["expansion"]),
        precision={"text": values["text_dtype"], "unet": values["unet_dtype"], "vae": values["vae_dtype"]},
        backend={"name": values["backend"], "device": values["device"], "ov_mode": values["ov_mode"],
                 # the text-encoder choice is OpenVINO's; with torch it runs in torch whatever the radio says
                 "text_encoder": values["text_encoder"] if values["backend"] == "openvino" else "torch",
                 # each is one backend's own: the other backend's value of it is the default
                 "ov_weights": values["ov_weights"] if values["backend"] == "openvino" else "full",
                 "compile": values["compile"] if values["backend"] == "torch" else "none"},
        chunk_policy=values["chunk_policy"], clip_skip=values["clip_skip"], styles=values["styles"] or [],
        expanded_prompt=_replay_texts(values), image=image, loras=slot_loras(values),
        performance=mode_of(values["performance"]),
    )


def control_values(request, inputs=None) -> dict:
    """GenerationRequest → UI control values (the inverse of request_values); with ``inputs`` (the inputs store)
    the Input image panel gets the request's stored image and mask."""
    from studio.ui.tabs.input_image import image_values

    r = request
    if r.performance is not None:
        # The controls show what will run: a fast mode's steps, sampler and CFG (the plan sets them anyway), so
        # the steps control does not read as Custom and turn the mode off.
        from studio.performance import FAST_MODES, expand

        r = expand(r, FAST_MODES[r.performance])[0]
    return dict(**image_values(r, inputs), **slot_values(r),
        prompt=r.prompt, negative_prompt=r.negative_prompt, seed=-1 if r.seed is None else r.seed,
        seed_mode=r.seed_mode, batch=r.batch, steps=r.steps, cfg=r.cfg, sampler=r.sampler,
        width=r.width or 512, height=r.height or 512, model=r.model, noise_source=r.noise_source,
        deterministic=r.deterministic, text_dtype=r.precision.text, unet_dtype=r.precision.unet,
        vae_dtype=r.precision.vae, expansion=r.expansion, backend=r.backend.name, device=r.backend.device,
        ov_mode=r.backend.ov_mode, text_encoder=r.backend.text_encoder, ov_weights=r.backend.ov_weights,
        compile=r.backend.compile, chunk_policy=r.chunk_policy,
        clip_skip=r.clip_skip, styles=list(r.styles), performance=performance_of(r.steps, r.performance),
        replay={"prompt": r.prompt, "seed": r.seed, "texts": list(r.expanded_prompt)}
        if r.expansion and isinstance(r.expanded_prompt, list) else None,
        live_preview=True,
    )


@dataclass
class Page:
    """The page being built: tabs add their controls to ``c`` and read the service and start values."""

    studio: Any  # studio.service.Studio
    init: dict  # start value of every control
    c: dict = field(default_factory=dict)  # control name → component
    parts: dict = field(default_factory=dict)  # other shared components: error line, plan, gallery...
    wiring: list = field(default_factory=list)  # events that need every control: wired once all exist

    def later(self, wire) -> None:
        self.wiring.append(wire)

    def settings(self, values: dict, keep: bool = True):
        """The GenerationRequest of the page's values (its input image and mask put into the inputs store, or
        for a plan preview (``keep`` False) only held in memory) and notes on what reading them converted."""
        from studio.settings import build_request
        from studio.ui.tabs.input_image import request_image

        image, notes = request_image(self.studio, values, keep)
        return build_request(**request_values(values, image)), notes

    @property
    def inputs(self) -> list:
        return [self.c[name] for name in INPUT_ORDER]

    def takes_controls(self, leading: tuple[str, ...] = (), request: bool = False):
        """Give a handler ``fn(*leading, values, request=)`` the positional signature Gradio reads: one
        parameter per control, named as the request field it sets, with the page's start values as
        defaults (so scripts call ``/generate`` by name), then gr.Request, which Gradio recognises only
        among positional parameters."""
        import gradio as gr

        init = self.init

        def wrap(fn):
            is_gen = inspect.isgeneratorfunction(fn)

            def split(args):
                lead, rest = args[:len(leading)], args[len(leading):]
                values, extra = dict(zip(INPUT_ORDER, rest)), list(rest[len(INPUT_ORDER):])
                return lead, values, ({"request": extra.pop(0) if extra else None} if request else {})

            if is_gen:
                def inner(*args):
                    lead, values, kwargs = split(args)
                    yield from fn(*lead, values, **kwargs)
            else:
                def inner(*args):
                    lead, values, kwargs = split(args)
                    return fn(*lead, values, **kwargs)

            P = inspect.Parameter
            params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in leading]
            params += [P(n, P.POSITIONAL_OR_KEYWORD, default=init[n]) for n in INPUT_ORDER]
            if request:
                params.append(P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request))
            inner.__signature__ = inspect.Signature(params)
            inner.__annotations__ = {"request": gr.Request} if request else {}
            inner.__name__ = inner.__qualname__ = fn.__name__
            inner.__doc__ = fn.__doc__
            return inner

        return wrap

"""Model: the checkpoint list (with a refresh for files copied in while the app runs) and its warnings, and
Fooocus's LoRA slots (an enable switch, a LoRA of the LoRA folder and a weight each, with a refresh of the
folder)."""

from __future__ import annotations

from studio.controls import (LORA_NONE, LORA_SLOTS, LORA_WEIGHT_RANGE, LORA_WEIGHT_STEP, lora_slot_names)
from studio.models.demo import BUILTINS, UNTRAINED_NOTE
from studio.ui.widgets import widget


def model_note(name: str) -> str:
    return f"⚠️ **{name}** is a {UNTRAINED_NOTE}." if name in BUILTINS else ""


def lora_choices(names: list[str], *keep) -> list[str]:
    """A slot's choices: "None", the folder's LoRAs, and any name a slot already holds that the folder lacks
    (an opened preset's LoRA: shown as it was named; the plan then says whether it is found by hash)."""
    extra = [k for k in keep if isinstance(k, str) and k and k != LORA_NONE and k not in names]
    return [LORA_NONE, *names, *dict.fromkeys(extra)]


def lora_note(record) -> str:
    """What the slots could not show of an opened request's LoRAs: those past the fifth, and weights past the
    slider's range (kept as they are: the request takes -10..10)."""
    uses = [u for u in record or [] if isinstance(u, dict)]
    lines = []
    if len(uses) > LORA_SLOTS:
        left = ", ".join(f"{u.get('name')} ({u.get('weight')})" for u in uses[LORA_SLOTS:])
        lines.append(f"⚠️ The settings have {len(uses)} LoRAs; the {LORA_SLOTS} slots hold the first {LORA_SLOTS}. "
                     f"Left out: {left}. Add them to the prompt as `<lora:name:weight>` to keep them.")
    low, high = LORA_WEIGHT_RANGE
    for u in uses[:LORA_SLOTS]:
        weight = u.get("weight")
        if isinstance(weight, (int, float)) and not low <= weight <= high:
            lines.append(f"⚠️ LoRA {u.get('name')} has weight {weight:g}, past the slider's {low:g}..{high:g}: it "
                         "runs at that weight until the slider is moved.")
    return "\n\n".join(lines)


def overflow_note(values: dict) -> str:
    """For the plan preview: the opened request's LoRAs that did not fit the slots, while the slots still hold
    its first LORA_SLOTS (once they are changed, the note no longer describes them)."""
    from studio.ui.page import slot_loras

    record = values.get("lora_record")
    if not isinstance(record, list) or len(record) <= LORA_SLOTS:
        return ""
    held = [u["name"] for u in slot_loras(values)]
    if held != [u.get("name") if isinstance(u, dict) else None for u in record[:LORA_SLOTS]]:
        return ""
    return lora_note(record).split("\n\n")[0]  # the first paragraph: the LoRAs left out


def build(page) -> None:
    import gradio as gr

    registry = page.studio.registry
    loras = page.studio.engine.loras
    init, c = page.init, page.c
    c["model"] = widget("model", init["model"], choices=registry.available())
    refresh = gr.Button("Refresh the list", size="sm", elem_id="refresh-models")
    note = gr.Markdown(model_note(init["model"]), elem_id="model-note")

    def refresh_models(current):
        """The models folder read again: checkpoints copied in since the app started appear."""
        names = registry.available()
        return gr.update(choices=names, value=current if current in names else names[0])

    refresh.click(refresh_models, c["model"], c["model"], api_visibility="private")
    c["model"].change(model_note, c["model"], note, api_visibility="private", show_progress="hidden")

    low, high = LORA_WEIGHT_RANGE
    names = loras.names()
    slots = []
    with gr.Group(elem_id="lora-slots"):
        for slot in range(1, LORA_SLOTS + 1):
            on, name, weight = lora_slot_names(slot)
            with gr.Row(equal_height=True, elem_id=f"lora-{slot}"):
                c[on] = gr.Checkbox(bool(init[on]), label="Enable", scale=1, min_width=80,
                                    elem_id=f"lora-{slot}-enabled")
                # A custom value is allowed so an opened preset's LoRA stays named even where the folder lacks
                # it; a name that is nowhere is one line from planning.
                c[name] = gr.Dropdown(lora_choices(names, init[name]), value=init[name], label=f"LoRA {slot}",
                                      allow_custom_value=True, filterable=True, scale=5,
                                      elem_id=f"lora-{slot}-name")
                c[weight] = gr.Slider(low, high, value=init[weight], step=LORA_WEIGHT_STEP, label="Weight",
                                      scale=5, elem_id=f"lora-{slot}-weight")
            slots.append(c[name])
    refresh_loras = gr.Button("Refresh LoRAs", size="sm", elem_id="refresh-loras")
    c["lora_record"] = gr.State(init["lora_record"])
    loras_note = gr.Markdown(lora_note(init["lora_record"]), elem_id="lora-note")

    def reread(*current):
        """The LoRA folder read again: files copied in since the app started appear in every slot."""
        found = loras.names()
        return [gr.update(choices=lora_choices(found, value)) for value in current]

    refresh_loras.click(reread, slots, slots, api_visibility="private", show_progress="hidden")
    c["lora_record"].change(lora_note, c["lora_record"], loras_note, api_visibility="private",
                            show_progress="hidden")

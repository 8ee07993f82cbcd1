"""Gradio components made from the one control schema (studio/controls.py): label, choices, range, help."""

from __future__ import annotations

from studio.controls import BY_NAME


def widget(name: str, value, choices=None, **extra):
    """The component for control ``name``, starting at ``value``; ``choices`` overrides the schema's (the
    models folder's checkpoints, the devices really present)."""
    import gradio as gr

    control = BY_NAME[name]
    common = dict(label=control.label, info=control.help or None, elem_id=name.replace("_", "-"), **extra)
    if control.kind == "text":
        return gr.Textbox(value, lines=control.lines, **common)
    if control.kind == "check":
        return gr.Checkbox(bool(value), **common)
    if control.kind == "number":
        return gr.Number(value=value, precision=0, **common)
    if control.kind == "slider":
        low, high = control.bounds
        return gr.Slider(low, high, value=value, step=control.step, **common)
    if control.kind == "multi":
        return gr.Dropdown(list(choices or []), value=list(value or []), multiselect=True, filterable=True,
                           **common)
    options = list(choices if choices is not None else control.choices)
    if value not in options and value is not None:
        options.append(value)  # a value from a preset (a device, a checkpoint) is shown, not dropped
    if len(options) <= 4 and choices is None:
        return gr.Radio(options, value=value, **common)
    return gr.Dropdown(options, value=value, allow_custom_value=name == "device", **common)

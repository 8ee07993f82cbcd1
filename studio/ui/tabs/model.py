"""Model: the checkpoint list (with a refresh for files copied in while the app runs) and its warnings."""

from __future__ import annotations

from studio.models.demo import BUILTINS, UNTRAINED_NOTE
from studio.ui.widgets import widget


def model_note(name: str) -> str:
    return f"⚠️ **{name}** is a {UNTRAINED_NOTE}." if name in BUILTINS else ""


def build(page) -> None:
    import gradio as gr

    registry = page.studio.registry
    c = page.c
    c["model"] = widget("model", page.init["model"], choices=registry.available())
    refresh = gr.Button("Refresh the list", size="sm", elem_id="refresh-models")
    note = gr.Markdown(model_note(page.init["model"]), elem_id="model-note")

    def refresh_models(current):
        """The models folder read again: checkpoints copied in since the app started appear."""
        names = registry.available()
        return gr.update(choices=names, value=current if current in names else names[0])

    refresh.click(refresh_models, c["model"], c["model"], api_visibility="private")
    c["model"].change(model_note, c["model"], note, api_visibility="private", show_progress="hidden")

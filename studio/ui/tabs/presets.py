"""Presets: open a shipped preset or a file (the cross-machine report beside it), save the settings as one."""

from __future__ import annotations

from studio import presets
from studio.errors import StudioError
from studio.ui.views import public, report_markdown

MAX_PRESET_NAME = 100


def preset_stem(name: str) -> str:
    stem = (name or "").strip()
    if not stem or not all(ch.isalnum() or ch in "-_ ." for ch in stem) or stem.startswith(".") \
            or len(stem) > MAX_PRESET_NAME:
        raise StudioError(f"name the preset with up to {MAX_PRESET_NAME} letters, digits, spaces, '-', '_' or '.'")
    return stem


def read_preset(name, upload):
    """A shipped preset (by name) or an uploaded file, parsed: (preset, notes)."""
    from studio.untrusted import MAX_PRESET_BYTES, read_bounded

    if upload:
        return presets.parse(read_bounded(upload, MAX_PRESET_BYTES, "the uploaded preset"), "uploaded preset")
    if name in presets.shipped_names():
        return presets.load(name)
    raise StudioError("pick a preset or upload a preset file")


def opened_values(opened, inputs=None) -> dict:
    """Control values for settings opened from a preset or an image (its input image and mask from ``inputs``,
    the inputs store, where it holds them)."""
    from studio.ui.page import control_values

    request = opened.request
    values = control_values(request, inputs)
    if request.image is None:
        values.update(width=opened.plan.width, height=opened.plan.height)  # no size given: the model's own
    if request.expansion and isinstance(request.expanded_prompt, str):
        # Replayed verbatim: the stored expanded text goes into the prompt and expansion is not run again.
        # (A batch's list of texts stays in the hidden replay state: see page._replay_texts.)
        values.update(prompt=request.expanded_prompt, expansion=False)
    return values


def build(page) -> None:
    import gradio as gr

    from studio.ui.page import INPUT_ORDER
    from studio.ui.views import handler

    studio = page.studio
    error = page.parts["error"]
    preset_name = gr.Dropdown(presets.shipped_names(), value=None, label="Preset", elem_id="preset-name")
    preset_upload = gr.File(label="…or a preset file (.json)", file_types=[".json"], type="filepath",
                            elem_id="preset-file")
    open_button = gr.Button("Open preset", elem_id="open-preset")
    report_box = gr.Markdown("", elem_id="preset-report")
    save_name = gr.Textbox(label="Save the current settings as", placeholder="my-preset", elem_id="save-name")
    save_button = gr.Button("Save preset", elem_id="save-preset")
    saved_file = gr.File(label="Saved preset", interactive=False, elem_id="saved-preset")

    @handler(lambda e: [*[gr.update() for _ in INPUT_ORDER], e, ""])
    def open_preset(name, upload):
        """Load a shipped preset (by name) or an uploaded file, fill the controls, and report differences."""
        opened = studio.open_preset(*read_preset(name, upload))
        values = opened_values(opened, studio.engine.inputs)
        return [*[values[n] for n in INPUT_ORDER], "", public(report_markdown(opened.report, opened.notes))]

    @page.takes_controls(leading=("name",))
    @handler(lambda e: (e, None))
    def save_preset(name, values):
        """The current settings, planned here, as a preset file (with made_on) to download and share."""
        stem = preset_stem(name)
        _, path = studio.save_preset(page.settings(values)[0],
                                     studio.config.output_dir / "presets" / f"{stem}.json")
        return "", str(path)

    def wire():  # after every tab made its controls
        save_button.click(save_preset, [save_name, *page.inputs], [error, saved_file], api_name="save_preset")
        open_button.click(open_preset, [preset_name, preset_upload], [*page.inputs, error, report_box],
                          api_name="open_preset")

    page.later(wire)

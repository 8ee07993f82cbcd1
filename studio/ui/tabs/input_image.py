"""The Input image panel under the prompt (Fooocus's): a mode, and two tabs, Upscale or Variation and Inpaint or
Outpaint, with the mask painted on the image in Gradio's image editor (or given as a file).

The panel's images are files; a request names them by pixel hash once they are in the inputs store
(studio/image_input.py), so what the page sends, what a preset stores and what an image records agree.
"""

from __future__ import annotations

from typing import Optional

from studio.errors import StudioError
from studio.ui.widgets import widget

UOV_MODES = ("vary-subtle", "vary-strong", "upscale-1.5", "upscale-2")
MASK_MODES = ("inpaint", "outpaint")
MODE_LABELS = {"vary-subtle": "Vary (Subtle)", "vary-strong": "Vary (Strong)", "upscale-1.5": "Upscale (1.5x)",
               "upscale-2": "Upscale (2x)", "inpaint": "Inpaint", "outpaint": "Outpaint"}
SIDES = ("left", "right", "top", "bottom")
DEFAULT_OUTPAINT_PIXELS = 128


def _path(value) -> Optional[str]:
    """A file path from an image component's value (a path, or Gradio's file dict)."""
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, str) and value else None


def _painted_mask(editor: dict, size: tuple[int, int]):
    """The editor's painted layers as one L mask of ``size`` (their alpha: white = repaint), or None when
    nothing was painted."""
    import numpy as np
    from PIL import Image

    from studio.image_input import read_mask

    union = None
    for layer in editor.get("layers") or []:
        path = _path(layer)
        if path is not None:
            alpha = np.asarray(read_mask(path, size, "painted layer")[0])
            union = alpha if union is None else np.maximum(union, alpha)
    if union is None or not union.any():
        return None
    return Image.fromarray(union, "L")


def request_image(studio, values: dict, keep: bool = True) -> tuple[Optional[dict], list[str]]:
    """The request's ``image`` from the panel's values (its files put into the inputs store through the service;
    without ``keep``, for a plan preview, only held in memory), and notes on what was converted; (None, [])
    when the panel is off."""
    if not values.get("input_image"):
        return None, []
    mode = values.get("image_mode") or UOV_MODES[0]
    settings = {"mode": mode, "strength": values.get("strength") or None, "mask_blur": values.get("mask_blur"),
                "inpaint_area": values.get("inpaint_area"), "masked_padding": values.get("masked_padding")}
    if mode not in MASK_MODES:
        source = _path(values.get("uov_image"))
        if source is None:
            label = MODE_LABELS.get(mode, mode) if isinstance(mode, str) else str(mode)  # an API value may be odd
            raise StudioError(f"Input image is on with {label[:60]}: drop an image into Upscale or Variation (or "
                              "turn Input image off)")
        sha, notes = studio.put_input(source, keep=keep)
        return {**settings, "sha256": sha}, notes
    editor = values.get("inpaint_image") if isinstance(values.get("inpaint_image"), dict) else {}
    source = _path(editor.get("background"))
    if source is None:
        raise StudioError(f"Input image is on with {MODE_LABELS[mode]}: drop an image into Inpaint or Outpaint "
                          "(or turn Input image off)")
    sha, notes = studio.put_input(source, keep=keep)
    request = {**settings, "sha256": sha}
    if mode == "outpaint":
        sides = [s for s in values.get("outpaint_sides") or [] if s in SIDES]
        if not sides:
            raise StudioError("Outpaint: tick at least one direction (left, right, top, bottom)")
        pixels = values.get("outpaint_pixels") or DEFAULT_OUTPAINT_PIXELS
        return {**request, "outpaint": {side: pixels for side in sides}}, notes
    mask = _path(values.get("mask_image"))
    if mask is None:
        mask = _painted_mask(editor, studio.engine.inputs.get(sha).size)
        if mask is None:
            raise StudioError("Inpaint: paint the area to repaint on the image (white = repaint), or give a mask "
                              "file")
    mask_sha, mask_notes = studio.put_mask(mask, sha, keep=keep)
    return {**request, "mask_sha256": mask_sha}, notes + mask_notes


def image_values(request, store=None) -> dict:
    """The panel's values for ``request`` (the inverse of request_image): the settings, and the stored files
    where ``store`` holds them (a missing one stays empty; planning then says which hash is missing)."""
    image = request.image
    values = {"input_image": image is not None, "image_mode": image.mode if image else UOV_MODES[0],
              "strength": (image.strength or 0) if image else 0, "mask_blur": image.mask_blur if image else 0,
              "inpaint_area": image.inpaint_area if image else "whole",
              "masked_padding": image.masked_padding if image else 32, "uov_image": None, "inpaint_image": None,
              "mask_image": None, "outpaint_sides": [], "outpaint_pixels": DEFAULT_OUTPAINT_PIXELS}
    if image is None:
        return values
    found = store is not None and store.has(image.sha256)
    path = str(store.path(image.sha256)) if found else None
    if image.mode in MASK_MODES:
        values["inpaint_image"] = {"background": path, "layers": [], "composite": path} if path else None
        if image.mask_sha256 and store is not None and store.has(image.mask_sha256):
            values["mask_image"] = str(store.path(image.mask_sha256))
        sides = [s for s in SIDES if getattr(image.outpaint, s)]
        values["outpaint_sides"] = sides
        values["outpaint_pixels"] = max((getattr(image.outpaint, s) for s in sides), default=DEFAULT_OUTPAINT_PIXELS)
    else:
        values["uov_image"] = path
    return values


def build(page) -> None:
    """The switch's panel: the mode, the two tabs, and (in Advanced) the denoise and mask settings."""
    import gradio as gr

    init, c = page.init, page.c
    with gr.Column(visible=bool(init["input_image"]), elem_id="input-panel") as panel:
        c["image_mode"] = gr.Radio([(MODE_LABELS[m], m) for m in (*UOV_MODES, *MASK_MODES)],
                                   value=init["image_mode"], label="Input image mode", elem_id="image-mode")
        with gr.Tabs(selected="inpaint" if init["image_mode"] in MASK_MODES else "uov",
                     elem_id="input-tabs") as tabs:
            with gr.Tab("Upscale or Variation", id="uov", elem_id="tab-uov") as uov_tab:
                c["uov_image"] = gr.Image(init["uov_image"], type="filepath", label="Image", sources=["upload"],
                                          height=240, elem_id="uov-image")
            with gr.Tab("Inpaint or Outpaint", id="inpaint", elem_id="tab-inpaint") as inpaint_tab:
                c["inpaint_image"] = gr.ImageEditor(
                    init["inpaint_image"], type="filepath", format="png", label="Image (paint the area to repaint)",
                    sources=["upload"], height=300, elem_id="inpaint-image", transforms=(),
                    brush=gr.Brush(colors=["#FFFFFF"], default_color="#FFFFFF", color_mode="fixed",
                                   default_size=16),
                    eraser=gr.Eraser(default_size=16), layers=False)
                with gr.Row():
                    c["outpaint_sides"] = gr.CheckboxGroup(list(SIDES), value=init["outpaint_sides"],
                                                           label="Outpaint direction", elem_id="outpaint-sides")
                    c["outpaint_pixels"] = gr.Slider(8, 1024, value=init["outpaint_pixels"], step=8,
                                                     label="Outpaint pixels", elem_id="outpaint-pixels")
                c["mask_image"] = gr.Image(init["mask_image"], type="filepath", label="Mask file (optional; "
                                           "white = repaint)", sources=["upload"], height=120, elem_id="mask-image")
    page.parts["input_panel"] = panel

    def show(on):
        return gr.update(visible=bool(on))

    def tab_for(mode):
        """The tab that holds the mode's image."""
        return gr.update(selected="inpaint" if mode in MASK_MODES else "uov")

    def mode_for_tab(tab: str):
        def pick(mode):
            wanted = MASK_MODES if tab == "inpaint" else UOV_MODES
            return gr.update() if mode in wanted else wanted[0]
        return pick

    def wire():
        c["input_image"].change(show, c["input_image"], panel, api_visibility="private", show_progress="hidden")
        c["image_mode"].change(tab_for, c["image_mode"], tabs, api_visibility="private", show_progress="hidden")
        uov_tab.select(mode_for_tab("uov"), c["image_mode"], c["image_mode"], api_visibility="private",
                       show_progress="hidden")
        inpaint_tab.select(mode_for_tab("inpaint"), c["image_mode"], c["image_mode"], api_visibility="private",
                           show_progress="hidden")
        # Ticking a direction is asking for outpaint; clearing them all goes back to inpaint.
        c["outpaint_sides"].change(lambda sides, mode: ("outpaint" if sides else
                                                        ("inpaint" if mode == "outpaint" else gr.update())),
                                   [c["outpaint_sides"], c["image_mode"]], c["image_mode"],
                                   api_visibility="private", show_progress="hidden")

    page.later(wire)


def build_settings(page) -> None:
    """Denoise and the mask settings, in the Advanced tab."""
    import gradio as gr

    init, c = page.init, page.c
    with gr.Group(elem_id="input-settings"):
        c["strength"] = widget("strength", init["strength"])
        c["mask_blur"] = widget("mask_blur", init["mask_blur"])
        c["inpaint_area"] = widget("inpaint_area", init["inpaint_area"])
        c["masked_padding"] = widget("masked_padding", init["masked_padding"])

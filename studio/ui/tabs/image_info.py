"""Image info: drop a PNG, JPEG or WebP (studio's own, A1111/Forge/SD.Next infotext, Fooocus's JSON) to see
its settings and what will differ here; Apply fills the controls, Reuse seed fills just the seed."""

from __future__ import annotations

import html
from pathlib import Path

from studio.ui.views import public, report_markdown


def settings_markdown(info: dict) -> str:
    """An image's recovered settings as a short table."""
    request = info.get("request") or {}
    source = {"studio": "studio", "a1111": "A1111 / Forge / SD.Next infotext", "fooocus": "Fooocus"}[info["source"]]
    rows = [("read from", source), ("model", info.get("model") or "—")]
    for key in ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "width", "height", "batch",
                "clip_skip", "expansion"):
        if key in request and request[key] not in (None, ""):
            rows.append((key, request[key]))
    if isinstance(request.get("backend"), dict):
        rows.append(("backend", " ".join(str(v) for v in request["backend"].values())))
    body = "\n".join(f"| {k} | {html.escape(str(v))[:400]} |" for k, v in rows)
    return "| setting | value |\n|---|---|\n" + body


def build(page) -> None:
    import gradio as gr

    from studio.service import read_image_settings
    from studio.ui.page import INPUT_ORDER
    from studio.ui.tabs.presets import opened_values
    from studio.ui.views import handler

    studio = page.studio
    error = page.parts["error"]
    dropped = gr.File(label="Drop an image (PNG, JPEG, WebP)", file_types=[".png", ".jpg", ".jpeg", ".webp"],
                      type="filepath", elem_id="info-image")
    shown = gr.Markdown("", elem_id="image-info")
    report = gr.Markdown("", elem_id="image-report")
    with gr.Row():
        apply = gr.Button("Apply", elem_id="info-apply")
        reuse = gr.Button("Reuse seed", elem_id="info-reuse-seed")

    @handler(lambda e: (e, "", ""))
    def read_image(path, current_model):
        if not path:
            return "", "", ""
        opened = studio.open_image(Path(path), fallback_model=current_model)
        info = read_image_settings(Path(path))
        return "", public(settings_markdown(info)), public(report_markdown(opened.report, opened.notes))

    @handler(lambda e: [*[gr.update() for _ in INPUT_ORDER], e])
    def apply_image(path, current_model):
        """Every control from the image's settings (the model found here by name or hash; when it is not
        here, the model picked now stays, as the report beside it says)."""
        if not path:
            return [*[gr.update() for _ in INPUT_ORDER], "drop an image first"]
        values = opened_values(studio.open_image(Path(path), fallback_model=current_model), studio.engine.inputs)
        return [*[values[n] for n in INPUT_ORDER], ""]

    @handler(lambda e: (gr.update(), gr.update(), e))
    def reuse_seed(path):
        """Just the seed, locked (fixed), so the next run repeats the image's noise with your other settings."""
        if not path:
            return gr.update(), gr.update(), "drop an image first"
        seed = (read_image_settings(Path(path)).get("request") or {}).get("seed")
        if not isinstance(seed, int):
            return gr.update(), gr.update(), "the image records no seed"
        return seed, "fixed", ""

    def wire():
        dropped.change(read_image, [dropped, page.c["model"]], [error, shown, report], api_visibility="private")
        apply.click(apply_image, [dropped, page.c["model"]], [*page.inputs, error], api_name="apply_image")
        reuse.click(reuse_seed, dropped, [page.c["seed"], page.c["seed_mode"], error], api_name="reuse_seed")

    page.later(wire)

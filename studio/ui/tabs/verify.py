"""Verify: two images, or the current settings run twice, or against another backend/mode; the verdict,
the numbers and the amplified difference heatmap, as `studio verify` gives them."""

from __future__ import annotations

import io
from pathlib import Path

from studio.errors import StudioError

HOW = ["Two images", "Run twice", "Against another backend"]
AGAINST = ["torch", "openvino:accuracy", "openvino:performance"]


def verdict_markdown(result, compared: str) -> str:
    icon = {"identical": "✅", "within_tolerance": "≈", "different": "⚠️"}[result.verdict]
    psnr = "∞" if result.psnr_db is None else f"{result.psnr_db:.2f}"
    return (f"{icon} **{result.verdict}** ({compared})\n\n"
            f"| max diff | mean diff | PSNR (dB) | pixels differing | by more than 1/255 | tolerance |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {result.max_abs_diff:.3g} | {result.mean_abs_diff:.3g} | {psnr} | {result.pct_pixels_differ:.2f}% "
            f"| {result.pct_pixels_differ_1_255:.2f}% | {result.tolerance:.3g} |")


def heatmap_image(a, b):
    from PIL import Image

    from studio.repro.compare import heatmap_png

    return Image.open(io.BytesIO(heatmap_png(a, b)))


def verify(studio, how: str, image_a, image_b, against: str, tolerance, request):
    """(verdict markdown, heatmap image) for one of the three ways; ``request`` is the current settings."""
    from studio.repro.compare import ONE_LEVEL, compare_images

    tol = ONE_LEVEL if tolerance is None else float(tolerance)
    if not tol >= 0:
        raise StudioError("the tolerance must be 0 or more")
    if how == "Two images":
        if not image_a or not image_b:
            raise StudioError("drop two images to compare")
        result, a, b = compare_images(Path(image_a), Path(image_b), tol)
        compared = f"{Path(image_a).name} vs {Path(image_b).name}"
    elif how in HOW:
        result, a, b, compared, _ = studio.verify_runs(request, None if how == "Run twice" else against, tol)
    else:
        raise StudioError(f"pick one of: {', '.join(HOW)}")
    return verdict_markdown(result, compared), heatmap_image(a, b)


def build(page) -> None:
    import gradio as gr

    from studio.ui.views import handler

    studio = page.studio
    error = page.parts["error"]
    how = gr.Radio(HOW, value=HOW[0], label="Compare", elem_id="verify-how")
    with gr.Row():
        image_a = gr.File(label="Image A", file_types=[".png", ".jpg", ".jpeg", ".webp"], type="filepath",
                          elem_id="verify-a")
        image_b = gr.File(label="Image B", file_types=[".png", ".jpg", ".jpeg", ".webp"], type="filepath",
                          elem_id="verify-b")
    against = gr.Dropdown(AGAINST, value="openvino:accuracy", label="Against (with the current settings)",
                          elem_id="verify-against")
    tolerance = gr.Number(value=1 / 255, label="Tolerance (pixel values 0..1)", elem_id="verify-tolerance")
    run = gr.Button("Verify", elem_id="verify-run")
    verdict = gr.Markdown("", elem_id="verify-verdict")
    heatmap = gr.Image(label="Difference heatmap (amplified)", type="pil", interactive=False,
                       elem_id="verify-heatmap")

    @page.takes_controls(leading=("how", "image_a", "image_b", "against", "tolerance"))
    @handler(lambda e: (e, "", None))
    def verify_images(how, image_a, image_b, against, tolerance, values):
        request = page.settings(values)[0] if how != "Two images" else None
        text, picture = verify(studio, how, image_a, image_b, against, tolerance, request)
        return "", text, picture

    def wire():
        run.click(verify_images, [how, image_a, image_b, against, tolerance, *page.inputs],
                  [error, verdict, heatmap], api_name="verify")

    page.later(wire)

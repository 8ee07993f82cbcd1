"""Setting: performance, aspect ratio, image number, negative prompt, and the seed-lock panel."""

from __future__ import annotations

from studio.choices import CUSTOM, PERFORMANCE, aspect_ratios, parse_ratio, performance_of
from studio.ui.widgets import widget


def steps_for(performance: str, steps):
    """The steps a performance choice sets; Custom keeps what was typed."""
    return PERFORMANCE.get(performance, steps)


def size_for(label: str, width, height):
    """Width and height from an aspect-ratio choice (``W×H``); anything else keeps them."""
    size = parse_ratio(label)
    return size if size is not None else (width, height)


def ratio_label(width, height) -> str | None:
    return f"{width}×{height}" if width and height else None


def last_run_markdown(saved: list[dict]) -> str:
    """The seed-lock panel's record of the last run: each image's seed and initial-noise fingerprint."""
    if not saved:
        return "*No run yet.*"
    return "**Last run** (seed · noise fingerprint): " + ", ".join(
        f"`{s['seed']}` · `{s['noise_fingerprint']}`" for s in saved)


def build(page) -> None:
    import gradio as gr

    init, c = page.init, page.c
    performance = gr.Radio([*PERFORMANCE, CUSTOM], value=performance_of(init["steps"]), label="Performance",
                           elem_id="performance")
    c["steps"] = widget("steps", init["steps"])
    ratios = aspect_ratios(page.parts["default_size"](init["model"]))
    aspect = gr.Dropdown(ratios, value=ratio_label(init["width"], init["height"]), allow_custom_value=True,
                         label="Aspect ratio (W×H)", elem_id="aspect-ratio")
    with gr.Row():
        c["width"] = widget("width", init["width"])
        c["height"] = widget("height", init["height"])
    c["batch"] = widget("batch", init["batch"])
    c["negative_prompt"] = widget("negative_prompt", init["negative_prompt"])
    with gr.Group(elem_id="seed-lock"):
        gr.Markdown("**Seed lock**")
        c["seed"] = widget("seed", init["seed"])
        c["seed_mode"] = widget("seed_mode", init["seed_mode"])
        c["noise_source"] = widget("noise_source", init["noise_source"])
        c["deterministic"] = widget("deterministic", init["deterministic"])
        page.parts["last_run"] = gr.Markdown(last_run_markdown([]), elem_id="last-run")

    performance.change(steps_for, [performance, c["steps"]], c["steps"], api_visibility="private",
                       show_progress="hidden")
    c["steps"].change(performance_of, c["steps"], performance, api_visibility="private", show_progress="hidden")
    aspect.change(size_for, [aspect, c["width"], c["height"]], [c["width"], c["height"]], api_visibility="private",
                  show_progress="hidden")
    page.parts["aspect"] = aspect
    page.later(lambda: wire_model(page))


def ratios_for(page, model: str, width, height):
    """The aspect-ratio list of the chosen model's family (SDXL's 1024-class, SD1's 512-class, …)."""
    import gradio as gr

    return gr.update(choices=aspect_ratios(page.parts["default_size"](model)), value=ratio_label(width, height))


def wire_model(page) -> None:
    c = page.c
    c["model"].change(lambda m, w, h: ratios_for(page, m, w, h), [c["model"], c["width"], c["height"]],
                      page.parts["aspect"], api_visibility="private", show_progress="hidden")

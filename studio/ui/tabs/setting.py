"""Setting: performance, aspect ratio, image number, negative prompt, and the seed-lock panel."""

from __future__ import annotations

from studio.choices import FAST_LABELS, PERFORMANCE, PERFORMANCE_LABELS, aspect_ratios, parse_ratio, performance_of
from studio.controls import BY_NAME
from studio.performance import FAST_MODES
from studio.settings import GenerationRequest
from studio.ui.widgets import widget


def steps_for(performance: str, steps):
    """The steps a performance choice sets; Custom keeps what was typed."""
    if performance in FAST_LABELS:
        return FAST_MODES[FAST_LABELS[performance]].steps
    return PERFORMANCE.get(performance, steps)


def controls_for(performance: str, steps, sampler, cfg):
    """Steps, sampler and CFG after a Performance choice: a fast mode sets all three (the plan would anyway:
    the controls show what will run); Quality and Speed set the steps, and give back the sampler and CFG a
    fast mode had set, if they are still its, so leaving Extreme Speed does not keep running lcm at CFG 1."""
    if performance in FAST_LABELS:
        mode = FAST_MODES[FAST_LABELS[performance]]
        return mode.steps, mode.sampler, mode.cfg
    if any(sampler == m.sampler and cfg == m.cfg for m in FAST_MODES.values()):
        fields = GenerationRequest.model_fields
        sampler, cfg = fields["sampler"].default, fields["cfg"].default
    return steps_for(performance, steps), sampler, cfg


def performance_after_steps(steps, performance):
    """The Performance choice once the steps changed: a fast mode stays while the steps are its own (it set
    them); other step counts show Quality, Speed or Custom (and so turn a fast mode and its LoRA off)."""
    mode = FAST_LABELS.get(performance)
    if mode is not None and FAST_MODES[mode].steps == steps:
        return performance
    return performance_of(steps)


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
    # A radio of Fooocus's names (widget() would make five choices a dropdown); request_values maps them.
    performance = c["performance"] = gr.Radio(PERFORMANCE_LABELS, value=init["performance"],
                                              label=BY_NAME["performance"].label, info=BY_NAME["performance"].help,
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

    # On the user's edit only (input, not change): a Slider with two change listeners re-fires its change
    # without end in Gradio 6.31, a loop of plan previews that kept the CPU busy and wiped the page's
    # messages (Stop's "stopped" among them). Presets and images set the performance themselves.
    c["steps"].input(performance_after_steps, [c["steps"], performance], performance, api_visibility="private",
                     show_progress="hidden")
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
    # Wired once every tab is built: the sampler and CFG controls live in the Advanced tab. On the user's pick
    # only (input, not change): opening a preset sets the radio too, and must keep the preset's sampler and CFG.
    c["performance"].input(controls_for, [c["performance"], c["steps"], c["sampler"], c["cfg"]],
                            [c["steps"], c["sampler"], c["cfg"]], api_visibility="private", show_progress="hidden")
    c["model"].change(lambda m, w, h: ratios_for(page, m, w, h), [c["model"], c["width"], c["height"]],
                      page.parts["aspect"], api_visibility="private", show_progress="hidden")

"""The Gradio page. It builds requests and shows results; generation lives in the engine."""

from __future__ import annotations

import html

from studio.engine.samplers import DEFAULT_SAMPLER, SAMPLERS
from studio.errors import StudioError
from studio.settings import AppConfig


def build_app(config: AppConfig, model: str = "tiny"):
    import gradio as gr

    from studio.engine.engine import Engine
    from studio.models.demo import BUILTINS, UNTRAINED_NOTE
    from studio.outputs import save_result
    from studio.prompts.chunking import count_tokens
    from studio.settings import build_request

    engine = Engine(config)
    engine.registry.resolve(model)  # a missing model is a start-up error, not a first-click surprise

    def token_label(text: str) -> str:
        return count_tokens(text or "", engine.tokenizer()).label()

    def model_note(name: str) -> str:
        return f"⚠️ **{name}** is a {UNTRAINED_NOTE}." if name in BUILTINS else ""

    def generate(prompt, negative, seed, seed_mode, batch, steps, cfg, sampler, width, height, model_name,
                 progress=gr.Progress()):
        try:
            request = build_request(
                prompt=prompt or "", negative_prompt=negative or "",
                seed=None if seed_mode == "random" or seed is None or seed < 0 else int(seed), seed_mode=seed_mode, batch=int(batch),
                steps=int(steps), cfg=float(cfg), sampler=sampler, width=int(width), height=int(height),
                model=model_name,
            )
            plan = engine.plan(request)
            result = engine.run(plan, on_step=lambda i, n: progress(i / n, desc=f"step {i}/{n}"))
            saved = save_result(result, engine.config.output_dir)
        except StudioError as exc:
            return gr.update(), f'<div class="studio-error">error: {html.escape(exc.message)}</div>', gr.update(), gr.update()
        lines = [f"`{s['seed']}` · noise `{s['noise_fingerprint']}` · {s['path']}" for s in saved]
        risks = [f"- **{r.code}**: {r.why} — {r.fix}" for r in plan.risks]
        info = "\n".join(["**Images** (seed · initial-noise fingerprint · file)", *[f"- {ln}" for ln in lines]]
                         + (["", "**Reproducibility risks**", *risks] if risks else []))
        next_seed = engine.next_request(request, plan).seed
        next_seed = -1 if next_seed is None else next_seed
        return [s["path"] for s in saved], "", info, next_seed

    with gr.Blocks(title="studio") as app:
        gr.Markdown("# studio\nReproducible Stable Diffusion: same settings, same image.")
        note = gr.Markdown(model_note(model), elem_id="model-note")
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, height=420)
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                counter = gr.Markdown(token_label(""), elem_id="token-counter")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                error = gr.HTML("", elem_id="error")
                info = gr.Markdown("", elem_id="info")
            with gr.Column(scale=2):
                model_box = gr.Dropdown(engine.registry.available(), value=model, label="Model", elem_id="model")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 draws one)", elem_id="seed")
                seed_mode = gr.Radio(["fixed", "increment", "random"], value="fixed", label="Seed mode")
                sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler", elem_id="sampler")
                steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                cfg = gr.Slider(0, 30, value=7.0, step=0.5, label="CFG scale")
                batch = gr.Slider(1, 16, value=1, step=1, label="Images")
                width = gr.Number(value=64 if model in BUILTINS and model != "sd15-random" else 512, precision=0,
                                  label="Width", elem_id="width")
                height = gr.Number(value=64 if model in BUILTINS and model != "sd15-random" else 512, precision=0,
                                   label="Height", elem_id="height")
        prompt.change(token_label, prompt, counter, show_progress="hidden")
        model_box.change(model_note, model_box, note)
        run.click(generate, [prompt, negative, seed, seed_mode, batch, steps, cfg, sampler, width, height, model_box],
                  [gallery, error, info, seed])
    return app

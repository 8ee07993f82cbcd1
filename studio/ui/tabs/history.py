"""History: the images of past runs, newest first and across restarts (from the output folder's history),
each with its settings; Apply fills the controls, Reuse seed just the seed."""

from __future__ import annotations

import html

SHOWN = 48  # entries in the tab; older ones are in the day logs (<output>/log/)


def entry_markdown(entry, shown_path) -> str:
    r = entry.record
    rows = [("saved", r.time), ("file", shown_path(str(entry.path))), ("seed", r.seed),
            ("noise fingerprint", r.noise_fingerprint), ("prompt", r.prompt_final), ("negative", r.negative),
            ("model", f"{r.model.name}"), ("sampler", f"{r.sampler}, {r.steps} steps, CFG {r.cfg}"),
            ("size", f"{r.width}×{r.height}"), ("backend", f"{r.backend.name} on {r.backend.device}")]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {html.escape(str(v))[:400]} |" for k, v in rows if v != "")
    if entry.request is None:
        table += f"\n\n⚠️ Apply is not offered: {html.escape(entry.request_error or 'the settings no longer validate')}"
    return table


def build(page) -> None:
    import gradio as gr

    from studio import history
    from studio.ui.page import INPUT_ORDER, control_values
    from studio.ui.views import handler, public

    studio = page.studio
    out = studio.config.output_dir
    error = page.parts["error"]
    refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh")
    pictures = gr.Gallery(label="Past runs (newest first)", columns=4, height=260, elem_id="history-gallery",
                          allow_preview=False)
    details = gr.Markdown("", elem_id="history-info")
    with gr.Row():
        apply = gr.Button("Apply", elem_id="history-apply")
        reuse = gr.Button("Reuse seed", elem_id="history-reuse-seed")
    listed = gr.State([])  # the shown entries' image names, in gallery order
    chosen = gr.State(None)

    def listing(request: gr.Request = None):
        entries = history.entries(out, limit=SHOWN)
        paths = [str(e.path) for e in entries]
        page.parts["copies"]().shown(getattr(request, "session_hash", None), paths)
        return [(p, f"seed {e.record.seed}") for p, e in zip(paths, entries)], [e.record.image for e in entries], \
            None, ""

    listing.__annotations__ = {"request": gr.Request}

    def find(image_name):
        if not image_name:
            return None
        found = history.entries_for_image(out, image_name)
        return found[0] if found else None

    def select(names, evt: gr.SelectData):
        name = names[evt.index] if names and 0 <= evt.index < len(names) else None
        entry = find(name)
        return name, public(entry_markdown(entry, page.parts["shown_path"])) if entry else "that image is gone"

    @handler(lambda e: [*[gr.update() for _ in INPUT_ORDER], e])
    def apply_entry(name):
        entry = find(name)
        if entry is None or entry.request is None:
            return [*[gr.update() for _ in INPUT_ORDER], "pick a past run whose settings can be applied"]
        values = control_values(entry.request, page.studio.engine.inputs)
        return [*[values[n] for n in INPUT_ORDER], ""]

    def reuse_seed(name):
        entry = find(name)
        if entry is None:
            return gr.update(), gr.update(), "pick a past run first"
        return entry.record.seed, "fixed", ""

    select.__annotations__ = {"evt": gr.SelectData}
    refresh.click(listing, None, [pictures, listed, chosen, details], api_visibility="private")
    pictures.select(select, listed, [chosen, details], api_visibility="private")
    page.parts["history_refresh"] = (listing, [pictures, listed, chosen, details])

    def wire():
        apply.click(apply_entry, chosen, [*page.inputs, error], api_visibility="private")
        reuse.click(reuse_seed, chosen, [page.c["seed"], page.c["seed_mode"], error], api_visibility="private")

    page.later(wire)

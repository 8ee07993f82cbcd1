"""Render farm: the current settings × N seeds on local Ray workers (as `studio render`), followed here.

Each render goes to a folder under the output folder's renders/ named by its settings and seeds, with its
manifest.jsonl and workers.json; Stop ends it after the images in progress, and Start with the same settings
resumes it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from studio.errors import StudioError

MAX_SEEDS_FROM_THE_APP = 100_000


def farm_folder(output_dir: Path, request, count: int) -> Path:
    """The render's folder, named by its settings: Start again with the same settings and seeds resumes it."""
    import hashlib
    import json

    data = request.model_dump(mode="json")
    data.pop("batch", None)
    data.pop("seed_mode", None)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return Path(output_dir) / "renders" / f"{request.model}-{digest}-seed{request.seed}x{count}"


def progress_markdown(progress) -> str:
    rows = "\n".join(f"| {w.name} | {w.host} | {w.state} | {w.images} | {w.per_minute():.1f} |"
                     for w in progress.workers.values())
    table = f"\n\n| worker | host | state | images | per min |\n|---|---|---|---|---|\n{rows}" if rows else ""
    return f"`{progress.line()}`{table}"


def summary_markdown(summary: dict, folder: Path, shown_path) -> str:
    if "message" in summary:
        return f"✅ {summary['message']} · folder `{shown_path(str(folder))}`"
    lines = [f"✅ **done**: {summary['rendered']} images rendered in {summary['seconds']:.0f} s "
             f"({summary['images_per_min']} images/min), {summary['done_before']} done before, {summary['total']} in "
             f"all · folder `{shown_path(str(folder))}` (manifest.jsonl, workers.json)"]
    lines += [f"- {w['worker']} on {w['host']}: {w['verdict']}, {'admitted' if w['admitted'] else 'refused'}, "
              f"{w['images']} images" + (f" ({'; '.join(w['reasons'])})" if w["reasons"] else "")
              for w in summary["workers"]]
    lines += [f"- ⚠️ {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def build(page) -> None:
    import gradio as gr

    from studio.ui.views import error_html

    studio = page.studio
    stops: dict[str, threading.Event] = {}
    gr.Markdown("The current settings × N seeds (from the current seed on), one image per job, on local Ray "
                "workers, each proven to give the driver's images first. `studio render --address auto` does "
                "the same on a cluster.")
    with gr.Row():
        count = gr.Number(value=8, precision=0, minimum=1, maximum=MAX_SEEDS_FROM_THE_APP, label="Seeds",
                          elem_id="farm-seeds")
        workers = gr.Number(value=1, precision=0, minimum=1, maximum=64, label="Workers", elem_id="farm-workers")
    with gr.Row():
        start = gr.Button("Start render", variant="primary", elem_id="farm-start")
        stop = gr.Button("Stop render", variant="stop", elem_id="farm-stop")
    shown = gr.Markdown("", elem_id="farm-progress")
    failed = gr.HTML("", elem_id="farm-error")

    @page.takes_controls(leading=("count", "workers"), request=True)
    def run_farm(count, workers, values, request=None):
        from studio.render.farm import RenderSettings, render

        session = getattr(request, "session_hash", None) or ""
        try:
            n, w = int(count or 0), int(workers or 0)
            if not 1 <= n <= MAX_SEEDS_FROM_THE_APP:
                raise StudioError(f"give 1 to {MAX_SEEDS_FROM_THE_APP} seeds")
            if not 1 <= w <= 64:
                raise StudioError("give 1 to 64 workers")
            settings, _ = page.settings(values)
            if settings.seed is not None:
                first = settings.seed
            else:  # a seed still to be drawn (-1, or random mode): the render starts at one drawn now
                import secrets

                first = secrets.randbelow(2**32 - n)
            seeds = range(first, min(first + n, 2**32))
            settings = settings.model_copy(update={"seed": seeds.start})
            folder = farm_folder(studio.config.output_dir, settings, len(seeds))
        except (StudioError, ValueError, TypeError) as exc:
            yield "", error_html(getattr(exc, "message", None) or f"not a number: {exc}")
            return
        events: queue.Queue = queue.Queue()
        flag = stops[session] = threading.Event()

        def work():
            try:
                events.put(("done", render(studio, RenderSettings(request=settings, seeds=seeds, out=folder,
                                                                  workers=w),
                                           on_progress=lambda p: events.put(("progress", progress_markdown(p))),
                                           stop=flag)))
            except StudioError as exc:
                events.put(("failed", exc.message))
            except Exception as exc:  # a bug: logged whole, one line on the page
                import logging

                logging.getLogger("studio.app").exception("render failed")
                events.put(("failed", f"internal error ({type(exc).__name__}); the details are in the server's log"))

        threading.Thread(target=work, daemon=True, name="studio-render").start()
        yield f"starting local Ray and {w} worker(s) for {len(seeds)} seeds · folder `{folder.name}`", ""
        try:
            while True:
                kind, value = events.get()
                if kind == "progress":
                    yield value, ""
                elif kind == "done":
                    yield summary_markdown(value, folder, page.parts["shown_path"]), ""
                    return
                else:
                    yield gr.update(), error_html(value)
                    return
        finally:
            if stops.get(session) is flag:
                del stops[session]

    def stop_farm(request: gr.Request = None):
        flag = stops.get(getattr(request, "session_hash", None) or "")
        if flag is not None:
            flag.set()

    stop_farm.__annotations__ = {"request": gr.Request}  # `gr` is imported here: give the real class

    def wire():
        start.click(run_farm, [count, workers, *page.inputs], [shown, failed], api_name="render",
                    show_progress="minimal")
        stop.click(stop_farm, None, None, api_name="render_stop")

    page.later(wire)

"""The page, in Fooocus's shape: the gallery on top, the prompt with Generate, Stop and Skip beside it, and
an Advanced switch that opens a column of tabs (one module each, in studio/ui/tabs/).

Everything that decides or makes an image goes through studio.service; this module only lays out the page
and streams a run's progress, stages and live previews to it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from studio.controls import CONTROL_ORDER
from studio.errors import StudioError
from studio.settings import AppConfig
from studio.service import stages_text
from studio.ui.page import API_ORDER, INPUT_ORDER, STATE_ORDER, Page, _replay_texts, control_values, request_values
from studio.ui.views import (error_html, handler, lost_jobs_markdown, plan_markdown, public,
                             report_markdown)

__all__ = ["CONTROL_ORDER", "API_ORDER", "STATE_ORDER", "INPUT_ORDER", "build_app", "control_values", "request_values",
           "public", "plan_markdown", "report_markdown", "lost_jobs_markdown", "_replay_texts", "ServingParts"]

PREVIEW_EVERY = 2  # steps between live previews
UPDATE_EVERY_S = 0.25  # the page is sent at most this often while a run streams

# Ctrl+Enter (Cmd+Enter on a Mac) presses Generate from anywhere on the page, as in Fooocus and A1111.
# A gallery image dragged onto the Input image panel arrives as its URL, not a file (browsers drag an <img>
# that way): it is fetched from this server and handed to the panel's file input, as a dropped file would be.
KEYS_JS = """
() => {
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      const button = document.querySelector('#generate');
      if (button) { e.preventDefault(); button.click(); }
    }
  });
  document.addEventListener('drop', async (e) => {
    const target = e.target.closest && e.target.closest('#uov-image, #inpaint-image');
    const dt = e.dataTransfer;
    if (!target || !dt || (dt.files && dt.files.length)) return;
    const url = (dt.getData('text/uri-list') || dt.getData('text/plain') || '').split('\\n')[0].trim();
    if (!url || new URL(url, location.href).origin !== location.origin) return;
    e.preventDefault(); e.stopPropagation();
    const blob = await (await fetch(url)).blob();
    const input = target.querySelector('input[type=file]');
    if (!input) return;
    const files = new DataTransfer();
    files.items.add(new File([blob], 'gallery.png', {type: blob.type || 'image/png'}));
    input.files = files.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  }, true);
}
"""
CSS = """
#generate, #stop, #skip { min-height: 44px; }
#studio-title h2 { margin: 0; }
#status { min-height: 1.6em; }
"""


@dataclass
class ServingParts:
    """What the server adds around the page: the job journal and the gallery's cached copies."""

    journal: "JobJournal"
    copies: "GalleryCopies"
    lost: list = field(default_factory=list)

    def attach(self, blocks) -> None:
        self.journal.attach(blocks, ("generate",), CONTROL_ORDER)


def start_values(studio, model: str | None, preset: str | None) -> dict:
    """Every control's value when the page opens: the preset's (if given), ``model`` over it, and a size
    that fits the model."""
    from studio import presets
    from studio.models.demo import BUILTINS
    from studio.samplers import DEFAULT_SAMPLER
    from studio.settings import build_request

    start = {}
    if preset:
        loaded, _ = presets.load(preset)
        start = loaded.request.model_dump()
        start["model"] = model or presets.locate_model(loaded, studio.registry)[0]
    start["model"] = start.get("model") or model or "tiny"
    studio.registry.resolve(start["model"])  # a missing model is a start-up error, not a first-click surprise
    small = start["model"] in BUILTINS and start["model"] != "sd15-random"
    start.setdefault("sampler", DEFAULT_SAMPLER)
    start.setdefault("steps", 30)
    start["width"] = start.get("width") or (64 if small else 512)
    start["height"] = start.get("height") or (64 if small else 512)
    return control_values(build_request(**start))


def default_size(studio, name: str) -> int:
    """The side the model was trained at (its aspect ratios are scaled to it); 512 when it cannot be read."""
    from studio.models.registry import architecture

    try:
        source = studio.registry.resolve(name)
        studio.registry.ensure_built(source)
        return architecture(source, studio.config.cache_dir)["default_size"]
    except StudioError:
        return 512


class Switch:
    """The Stop or Skip of one session's running job: pressed from another request, and said on the page at
    once (the job itself only sees it at its next step, seconds later on a large image)."""

    def __init__(self, said: str):
        self.event, self.said, self.run = threading.Event(), said, None

    def press(self) -> None:
        self.event.set()
        if self.run is not None:
            self.run.events.put(("stage", self.said))


RUN_NICENESS = 10  # how far below the server and the browser a run's threads are scheduled


def _yield_cpu_to_the_page() -> None:
    """Lower this thread's CPU priority (and so that of the compute threads it starts): a run keeps every core
    busy, and on a small machine the page (the browser, the server's event loop) then lags seconds behind it,
    so progress, previews and Stop arrive late. The run is as fast when nothing else wants the CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RUN_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the run goes on at normal priority
        pass


class Run:
    """One streamed run: the service's job in a worker thread, its events read by the page's generator."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def start(self, work) -> None:
        def target():
            _yield_cpu_to_the_page()
            try:
                self.events.put(("done", work(self)))
            except BaseException as exc:  # handed to the page's thread, which shows it
                self.events.put(("failed", exc))

        threading.Thread(target=target, daemon=True, name="studio-run").start()

    def stream(self):
        """Batches of events, at most one batch per UPDATE_EVERY_S, until the run ends."""
        while True:
            batch = [self.events.get()]
            deadline = time.monotonic() + UPDATE_EVERY_S
            while batch[-1][0] not in ("done", "failed"):
                try:
                    batch.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            yield batch
            if batch[-1][0] in ("done", "failed"):
                return


def build_app(config: AppConfig, model: str | None = None, preset: str | None = None):
    """The app; its controls start from ``preset`` (a name or file) if given, with ``model`` over it."""
    import gradio as gr

    from studio.prompts.chunking import count_tokens
    from studio.service import Studio
    from studio.settings import build_request
    from studio.ui.gallery_copies import GalleryCopies
    from studio.ui.job_journal import JobJournal
    from studio.ui.tabs import (advanced, history as history_tab, image_info, input_image, model as model_tab,
                                presets as presets_tab, render_farm, setting, style, verify)

    studio = Studio(config)
    model = model and studio.registry.name_from_flag(model)  # the operator's --model may be a path
    journal = JobJournal(config.output_dir / ".studio")
    lost = journal.take_lost()
    stops: dict[str, Switch] = {}  # the Stop switch of each browser session's running job
    skips: dict[str, Switch] = {}
    page = Page(studio=studio, init=start_values(studio, model, preset))
    page.parts["default_size"] = lambda name: default_size(studio, name)
    page.parts["copies"] = lambda: copies  # made with the Blocks (it needs their cache folder)
    init, c = page.init, page.c

    def token_label(text: str) -> str:
        try:
            text = text or ""
            # an embedding's word counts as its vectors, as the plan counts it
            return count_tokens(text, studio.engine.tokenizer(), embeddings=studio.engine.embeddings.counts_in(text)
                                ).label()
        except StudioError as exc:  # e.g. a weight out of range: say so where the count would be
            return f"⚠️ {public(exc.message)}"

    @page.takes_controls()
    @handler(lambda e: (e, "", gr.update()))
    def preview_and_cache(values):
        """The plan of the current settings, before Generate, and the compile cache's view of it."""
        request, notes = page.settings(values, keep=False)  # a preview: its inputs are held, not written
        plan = studio.plan(request)
        # A seed still to be drawn (random mode, or -1) is drawn at Generate: do not show this plan's draw.
        drawn_later = request.seed is None
        shown = plan_markdown(plan, None if drawn_later else studio.engine.preview_fingerprints(plan), notes)
        left_out = model_tab.overflow_note(values)  # the Models tab is often closed: say it by the plan too
        if left_out:
            shown += "\n\n" + left_out
        return "", public(shown), public(advanced.cache_markdown(studio, plan))

    def preview(*values):
        """The API's /plan_preview: (error line, plan)."""
        return preview_and_cache(*values)[:2]

    def refresh_plan(*values):
        """The plan alone (after a run), leaving the run's own message in place."""
        _, plan, cache = preview_and_cache(*values)
        return plan or gr.update(), cache

    preview.__signature__ = refresh_plan.__signature__ = preview_and_cache.__signature__
    preview.__annotations__ = refresh_plan.__annotations__ = {}

    def shown_path(path: str) -> str:
        """A saved file as the user may see it: relative to the output folder, never the server's path."""
        try:
            return Path(path).resolve().relative_to(studio.config.output_dir.resolve()).as_posix()
        except ValueError:
            return Path(path).name

    page.parts["shown_path"] = shown_path

    @page.takes_controls(request=True)
    def generate(values, request=None):
        """Plan, run and save, streaming named stages, per-step progress and a live preview every few steps.

        Yields (gallery, error, info, next seed, live preview, status, last run): the first four are what
        an API caller reads."""
        keep = gr.update()
        session = getattr(request, "session_hash", None) or ""
        stop = stops[session] = Switch("stopping after the step in progress")
        skip = skips[session] = Switch("skipping this image after the step in progress")
        try:
            try:
                settings, _ = page.settings(values)
                plan = studio.plan(settings)
            except StudioError as exc:
                yield keep, error_html(exc.message), keep, keep, keep, "", keep
                return
            except Exception as exc:  # a bug: logged whole on the server, one line to the user
                import logging

                logging.getLogger("studio.app").exception("planning failed")
                yield (keep, error_html(f"internal error ({type(exc).__name__}); the details are in the server's "
                                        "log"), keep, keep, keep, "", keep)
                return
            live = values.get("live_preview") is not False
            run = Run()

            def work(run):
                return studio.run_job(
                    plan, on_step=lambda done, total: run.events.put(("step", done, total)), stop=stop.event,
                    skip=skip.event, on_stage=lambda name: run.events.put(("stage", name)),
                    on_preview=(lambda i, step, image: run.events.put(("preview", i, image))) if live else None,
                    preview_every=PREVIEW_EVERY if live else 0)

            stop.run = skip.run = run
            run.start(work)
            stage, step = "waiting for the device", ""
            for batch in run.stream():
                picture = None  # only a new preview is sent: resending one per update made the page lag
                for event in batch:
                    if event[0] == "stage":
                        stage = event[1]
                    elif event[0] == "step":
                        step = f" · step {event[1]}/{event[2]}"
                    elif event[0] == "preview":
                        # At the latent's size (an eighth of the image's): shown at the image's own size.
                        picture = event[2].resize((plan.width, plan.height))
                    elif event[0] == "failed":
                        exc = event[1]
                        message = exc.message if isinstance(exc, StudioError) else \
                            f"internal error ({type(exc).__name__}); the details are in the server's log"
                        if not isinstance(exc, StudioError):
                            import logging

                            logging.getLogger("studio.app").error("run failed", exc_info=exc)
                        yield keep, error_html(message), keep, keep, None, "", keep
                        return
                    elif event[0] == "done":
                        job = event[1]
                        saved = job.saved
                        copies.shown(session, [s["path"] for s in saved])
                        lines = [f"- `{s['seed']}` · noise `{s['noise_fingerprint']}` · {shown_path(s['path'])}"
                                 for s in saved]
                        if job.plan.prompt.expansion is not None:
                            lines += [f"- `{s['seed']}` expanded prompt: {s['prompt_final']}" for s in saved]
                        info = "\n".join(["**Images** (seed · initial-noise fingerprint · file)", *lines]
                                         + [f"- ⚠️ {n}" for n in job.notes]
                                         + [f"\n**Stages**: {stages_text(job.result.timings)}"])
                        next_seed = studio.next_seed(settings, job.plan)
                        yield ([s["path"] for s in saved], "", public(info),
                               -1 if next_seed is None else next_seed, None,
                               f"done: {len(saved)} image(s) saved", setting.last_run_markdown(saved))
                        return
                yield keep, "", keep, keep, picture if picture is not None else keep, f"{stage}{step}", keep
        finally:
            if stops.get(session) is stop:
                del stops[session]
            if skips.get(session) is skip:
                del skips[session]

    def stop_run(request: gr.Request = None):
        """Stop this browser session's running job after its current step (other sessions' jobs go on)."""
        stop = stops.get(getattr(request, "session_hash", None) or "")
        if stop is not None:
            stop.press()

    def skip_image(request: gr.Request = None):
        """Drop the image in progress of this session's batch and go on with the next one."""
        skip = skips.get(getattr(request, "session_hash", None) or "")
        if skip is not None:
            skip.press()

    @handler(lambda e: (gr.update(), gr.update(), gr.update(), e))
    def send_to_input(images, index, mode):
        """The picked gallery image (the first when none was picked) into the Input image panel's tab for the
        mode, with the panel turned on."""
        paths = [item[0] if isinstance(item, (list, tuple)) else item for item in images or []]
        paths = [p.get("path") if isinstance(p, dict) else p for p in paths]
        if not paths:
            return gr.update(), gr.update(), gr.update(), "generate an image first: the gallery is empty"
        path = paths[index if isinstance(index, int) and 0 <= index < len(paths) else 0]
        if mode in input_image.MASK_MODES:
            return True, gr.update(), {"background": path, "layers": [], "composite": path}, ""
        return True, path, gr.update(), ""

    def end_session(request: gr.Request = None):
        copies.end_session(getattr(request, "session_hash", None))

    # Gradio finds gr.Request by type hint; `gr` is imported here, not at module level, so the string
    # annotations would not resolve: give the real class.
    stop_run.__annotations__ = skip_image.__annotations__ = end_session.__annotations__ = {"request": gr.Request}

    # Gradio's own cache sweep: gallery copies older than a day go, and all of them at a restart.
    with gr.Blocks(title="studio", delete_cache=(3600, 86400)) as app:
        gr.Markdown(lost_jobs_markdown(lost), elem_id="lost-jobs")
        with gr.Row(elem_id="studio-main"):
            with gr.Column(scale=2, elem_id="main-column"):
                with gr.Row():
                    gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, height=330, scale=3,
                                         type="filepath", interactive=False)
                    live_image = gr.Image(label="Live preview", elem_id="live-preview", type="pil",
                                          interactive=False, height=330, scale=1)
                status = gr.Markdown("", elem_id="status")
                with gr.Row(equal_height=True):
                    c["prompt"] = gr.Textbox(init["prompt"], label="Prompt", show_label=False, lines=2, scale=6,
                                             elem_id="prompt",
                                             placeholder="Type a prompt here (Ctrl+Enter generates)")
                    with gr.Column(scale=1, min_width=150):
                        run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                        with gr.Row():
                            stop_button = gr.Button("Stop", variant="stop", elem_id="stop", min_width=60)
                            skip_button = gr.Button("Skip", elem_id="skip", min_width=60)
                with gr.Row():
                    counter = gr.Markdown(token_label(init["prompt"]), elem_id="token-counter")
                    advanced_switch = gr.Checkbox(False, label="Advanced", elem_id="advanced", container=False)
                    c["expansion"] = gr.Checkbox(init["expansion"], label="Prompt expansion", elem_id="expansion",
                                                 container=False)
                    live_switch = gr.Checkbox(True, label="Live preview", elem_id="live-switch", container=False)
                    c["input_image"] = gr.Checkbox(init["input_image"], label="Input image", elem_id="input-switch",
                                                   container=False)
                    send = gr.Button("Send to Input image", size="sm", min_width=150, elem_id="send-to-input")
                input_image.build(page)
                error = gr.HTML("", elem_id="error")
                page.parts["error"] = error
                info = gr.Markdown("", elem_id="info")
                plan_box = gr.Markdown("", elem_id="plan")
            with gr.Column(scale=1, visible=False, elem_id="advanced-column") as advanced_column:
                with gr.Tabs(elem_id="advanced-tabs"):
                    for label, tab in (("Setting", setting), ("Style", style), ("Model", model_tab),
                                       ("Advanced", advanced), ("Presets", presets_tab),
                                       ("Image info", image_info), ("Verify", verify), ("History", history_tab),
                                       ("Render farm", render_farm)):
                        with gr.Tab(label, elem_id="tab-" + label.lower().replace(" ", "-")):
                            tab.build(page)
        # An opened preset's per-image expanded texts, replayed while prompt, seed and batch stay as they were.
        c["replay"] = gr.State(init["replay"])
        # The live-preview switch is page state, not a request field: an API call (no page) gets previews on.
        c["live_preview"] = gr.State(True)
        live_switch.change(lambda on: on, live_switch, c["live_preview"], api_visibility="private",
                           show_progress="hidden")
        missing = [n for n in INPUT_ORDER if n not in c]
        assert not missing, f"controls without a component: {missing}"  # a schema entry no tab builds
        for wire in page.wiring:
            wire()
        controls = page.inputs

        advanced_switch.change(lambda on: gr.update(visible=on), advanced_switch, advanced_column,
                               api_visibility="private", show_progress="hidden")
        c["prompt"].change(token_label, c["prompt"], counter, show_progress="hidden", api_name="token_label")
        for control in controls:
            control.change(preview_and_cache, controls, [error, plan_box, page.parts["cache"]],
                           show_progress="hidden", api_visibility="private")
        app.load(preview, controls, [error, plan_box], api_name="plan_preview").then(
            refresh_plan, controls, [plan_box, page.parts["cache"]], show_progress="hidden",
            api_visibility="private")

        outputs = [gallery, error, info, c["seed"], live_image, status, page.parts["last_run"]]
        # One job at a time (Gradio's default concurrency of 1 for the event): the others wait in the queue,
        # their place shown on their page.
        listing, listing_outputs = page.parts["history_refresh"]
        run_button.click(generate, controls, outputs, api_name="generate", show_progress="minimal").then(
            refresh_plan, controls, [plan_box, page.parts["cache"]], show_progress="hidden",
            api_visibility="private").then(listing, None, listing_outputs, show_progress="hidden",
                                           api_visibility="private")
        app.load(listing, None, listing_outputs, api_visibility="private")
        chosen = gr.State(None)  # the gallery image last clicked (index)

        def pick(evt: gr.SelectData):
            return evt.index

        pick.__annotations__ = {"evt": gr.SelectData}  # `gr` is imported here: give the real class

        gallery.select(pick, None, chosen, api_visibility="private", show_progress="hidden")
        send.click(send_to_input, [gallery, chosen, c["image_mode"]],
                   [c["input_image"], c["uov_image"], c["inpaint_image"], error], api_visibility="private",
                   show_progress="hidden")
        stop_button.click(stop_run, None, None, api_name="stop")
        skip_button.click(skip_image, None, None, api_name="skip")
        app.unload(end_session)
    copies = GalleryCopies(config.output_dir, Path(app.GRADIO_CACHE))
    app.studio_parts = ServingParts(journal=journal, copies=copies, lost=lost)
    app.studio_launch = {"js": KEYS_JS, "css": CSS}
    # Every call goes through the queue: the direct REST routes (which skipped it) are closed.
    app.queue(api_open=False)
    return app

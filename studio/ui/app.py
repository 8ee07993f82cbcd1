"""The Gradio page. It builds requests and shows results; generation lives in the engine.

Controls are named once, in CONTROL_ORDER; event handlers receive them as a dict by name,
never as a long positional list.
"""

from __future__ import annotations

import functools
import html
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from studio.engine.samplers import DEFAULT_SAMPLER, GPU_SUFFIX, SAMPLERS
from studio.errors import StudioError
from studio.settings import AppConfig

MAX_PRESET_NAME = 100

# The order the controls reach handlers (and the HTTP API) in.
CONTROL_ORDER = ("prompt", "negative_prompt", "seed", "seed_mode", "batch", "steps", "cfg", "sampler", "width",
                 "height", "model", "noise_source", "deterministic", "text_dtype", "unet_dtype", "vae_dtype",
                 "expansion", "backend", "device", "ov_mode", "text_encoder", "chunk_policy")
# Session state after the controls: Gradio keeps it out of the HTTP API, whose callers pass the controls only.
STATE_ORDER = ("replay",)
INPUT_ORDER = CONTROL_ORDER + STATE_ORDER


def _replay_texts(values: dict) -> list[str] | None:
    """A batch's stored expanded texts (from an opened preset), while they still belong to the settings.

    They were expanded from one prompt with one seed per image: once the prompt, the seed or the
    batch size changes, they are dropped and expansion runs anew.
    """
    replay = values.get("replay")
    if not isinstance(replay, dict) or not values["expansion"]:
        return None
    texts, batch = replay.get("texts"), values["batch"]
    # The batch is checked by the request model after this; a hostile one here only means "no replay".
    if not isinstance(texts, list) or not isinstance(batch, (int, float)) or isinstance(batch, bool):
        return None
    same = (replay.get("prompt") == (values["prompt"] or "") and replay.get("seed") == values["seed"]
            and len(texts) == batch)
    return list(texts) if same else None


def request_values(values: dict) -> dict:
    """UI control values → GenerationRequest fields."""
    # Numbers are passed as they came: the request model checks them (a NaN, a null or a text from a
    # hostile API call is a clear message there, where int()/float() here would raise).
    for name, label in (("width", "Width"), ("height", "Height")):
        # An empty or half-typed number field ("", "-") arrives as None: say so, never guess a size.
        if values[name] is None:
            raise StudioError(f"{label} is empty: type a multiple of 8 from 64 to 2048")
    seed = values["seed"]
    negative_seed = isinstance(seed, (int, float)) and not isinstance(seed, bool) and seed < 0
    return dict(
        prompt=values["prompt"] or "", negative_prompt=values["negative_prompt"] or "",
        seed=None if values["seed_mode"] == "random" or seed is None or negative_seed else seed,
        seed_mode=values["seed_mode"], batch=values["batch"], steps=values["steps"],
        cfg=values["cfg"], sampler=values["sampler"], width=values["width"],
        height=values["height"], model=values["model"], noise_source=values["noise_source"],
        deterministic=bool(values["deterministic"]), expansion=bool(values["expansion"]),
        precision={"text": values["text_dtype"], "unet": values["unet_dtype"], "vae": values["vae_dtype"]},
        backend={"name": values["backend"], "device": values["device"], "ov_mode": values["ov_mode"],
                 # the text-encoder choice is OpenVINO's; with torch it runs in torch whatever the radio says
                 "text_encoder": values["text_encoder"] if values["backend"] == "openvino" else "torch"},
        chunk_policy=values["chunk_policy"], expanded_prompt=_replay_texts(values),
    )


def control_values(request) -> dict:
    """GenerationRequest → UI control values (the inverse of request_values)."""
    r = request
    return dict(
        prompt=r.prompt, negative_prompt=r.negative_prompt, seed=-1 if r.seed is None else r.seed,
        seed_mode=r.seed_mode, batch=r.batch, steps=r.steps, cfg=r.cfg, sampler=r.sampler,
        width=r.width or 512, height=r.height or 512, model=r.model, noise_source=r.noise_source,
        deterministic=r.deterministic, text_dtype=r.precision.text, unet_dtype=r.precision.unet,
        vae_dtype=r.precision.vae, expansion=r.expansion, backend=r.backend.name, device=r.backend.device,
        ov_mode=r.backend.ov_mode, text_encoder=r.backend.text_encoder, chunk_policy=r.chunk_policy,
        replay={"prompt": r.prompt, "seed": r.seed, "texts": list(r.expanded_prompt)}
        if r.expansion and isinstance(r.expanded_prompt, list) else None,
    )


def report_markdown(report: dict, notes: list[str]) -> str:
    """The cross-machine report shown when a preset is opened."""
    verdict = {"identical": "✅ expected: the same image as where it was made",
               "drift": "≈ expected: small numeric drift (within tolerance)",
               "different": "⚠️ expected: a different image"}[report["expected"]]
    lines = [f"**Preset report** — {verdict}"]
    lines += [f"- **{d['field']}**: {d['preset']} → {d['here']} *({d['effect']})*: {d['fix']}"
              for d in report["differences"]]
    lines += [f"- note: {n}" for n in notes]
    return "\n".join(lines)


log = logging.getLogger("studio.app")

# An absolute path (POSIX or Windows) in a message: a remote user sees only its last part.
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:/|[A-Za-z]:\\)(?:[^\s/\\:'\"()`]+[/\\])+([^\s/\\:'\"()`]*)")


def public(message: str) -> str:
    """``message`` without the server's absolute paths (each becomes its file or folder name)."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "…", message)


def error_html(message: str) -> str:
    return f'<div class="studio-error">error: {html.escape(public(message))}</div>'


def handler(on_error):
    """A Gradio handler whose failures are shown as ``on_error(error_html)``: a StudioError as its line,
    anything else as one line saying the details are in the server's log (never a traceback or a path)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StudioError as exc:
                return on_error(error_html(exc.message))
            except Exception as exc:  # a bug: logged whole on the server, one line to the user
                log.exception("handler %s failed", fn.__name__)
                return on_error(error_html(f"internal error ({type(exc).__name__}); the details are in the "
                                           "server's log"))

        return inner

    return wrap


@dataclass
class ServingParts:
    """What the server adds around the page: the job journal and the gallery's cached copies."""

    journal: "JobJournal"
    copies: "GalleryCopies"
    lost: list = field(default_factory=list)

    def attach(self, blocks) -> None:
        self.journal.attach(blocks, ("generate",), CONTROL_ORDER)


def lost_jobs_markdown(lost: list[dict]) -> str:
    if not lost:
        return ""
    lines = [f"⚠️ **{len(lost)} queued job(s) were lost** when the server last stopped before running them "
             "(listed in the output folder's `.studio/lost-jobs.json`):"]
    lines += [f"- {j.get('time', '?')} · seed `{j.get('seed')}` · {html.escape(str(j.get('prompt') or ''))}"
              for j in lost[:20]]
    return "\n".join(lines)


def plan_markdown(plan, fingerprints: list[str] | None) -> str:
    """What will run, shown before Generate: seeds, noise, fingerprints, and every reproducibility risk."""
    noise = plan.noise
    paragraphs = [
        f"**Will run:** {plan.model.name} (`{plan.model.short_hash}`) · {plan.backend.name} on "
        f"{plan.backend.device}" + (" (text encoder too)" if plan.backend.text_encoder == "openvino" else "")
        + f" · {plan.sampler} · {plan.width}×{plan.height}",
        f"**Noise:** {noise.source} (generators on {noise.generator_device}"
        + (", from the -gpu sampler name" if noise.from_sampler_alias else "") + ")"
        + (" · deterministic mode" if plan.determinism.get("deterministic") else ""),
    ]
    if plan.compile is not None:
        c = plan.compile
        paragraphs.append(f"⚙️ **Will compile** `{c.signature}`: {c.reason}"
                          + (f" (drops `{c.evicts}` from the cache)" if c.evicts else "")
                          if c.will_compile else f"✅ **Compiled variant cached:** `{c.signature}` (no recompile)")
        room = plan.prompt.chunk_count * 75 - max(plan.prompt.tokens, plan.prompt.negative_tokens)
        if plan.request.chunk_policy == "exact" and room <= 10:
            paragraphs.append(f"⚠️ {room} token{'s' * (room != 1)} to the next 75-token boundary: crossing it recompiles. "
                              "Chunk policy pad:2 keeps prompts up to 150 tokens on one compiled variant.")
    if plan.prompt.expansion is not None and fingerprints is not None:
        how = "replayed verbatim" if plan.prompt.expansion.get("replayed") else "seeded by each image's seed"
        paragraphs.append(f"**Expanded prompt** ({how}, stored with each image):\n"
                          + "\n".join(f"- `{seed}`: {plan.prompt.final_for(i)}" for i, seed in enumerate(plan.seeds)))
    if fingerprints is None:
        paragraphs.append("**Seeds:** drawn when you press Generate"
                          + (" (and the expanded prompt with them)" if plan.request.expansion else ""))
    else:
        paragraphs.append("**Seeds · initial-noise fingerprints:** "
                          + ", ".join(f"`{s}` · `{f}`" for s, f in zip(plan.seeds, fingerprints)))
    if plan.risks:
        paragraphs.append("**Reproducibility risks**\n"
                          + "\n".join(f"- ⚠️ **{r.code}**: {r.why}. *Fix:* {r.fix}" for r in plan.risks))
    else:
        paragraphs.append("✅ No reproducibility risks: these settings give the same image on any machine, "
                          "within tolerance.")
    return "\n\n".join(paragraphs)


def build_app(config: AppConfig, model: str | None = None, preset: str | None = None):
    """The app; its controls start from ``preset`` (a name or file) if given, with ``model`` over it."""
    import gradio as gr

    from studio import presets
    from studio.engine.engine import Engine
    from studio.models.demo import BUILTINS, UNTRAINED_NOTE
    from studio.repro import diff, environment
    from studio.outputs import save_result
    from studio.prompts.chunking import count_tokens
    from studio.settings import build_request

    from studio.ui.gallery_copies import GalleryCopies
    from studio.ui.job_journal import JobJournal

    engine = Engine(config)
    model = model and engine.registry.name_from_flag(model)  # the operator's --model may be a path
    journal = JobJournal(config.output_dir / ".studio")
    lost = journal.take_lost()
    stops: dict[str, threading.Event] = {}  # the Stop switch of each browser session's running job
    start = {}
    if preset:
        loaded, _ = presets.load(preset)
        start = loaded.request.model_dump()
        start["model"] = model or presets.locate_model(loaded, engine.registry)[0]
    start["model"] = start.get("model") or model or "tiny"
    engine.registry.resolve(start["model"])  # a missing model is a start-up error, not a first-click surprise
    small = start["model"] in BUILTINS and start["model"] != "sd15-random"
    start.setdefault("sampler", DEFAULT_SAMPLER)
    start.setdefault("steps", 20)
    start["width"] = start.get("width") or (64 if small else 512)
    start["height"] = start.get("height") or (64 if small else 512)
    init = control_values(build_request(**start))

    def token_label(text: str) -> str:
        try:
            return count_tokens(text or "", engine.tokenizer()).label()
        except StudioError as exc:  # e.g. a weight out of range: say so where the count would be
            return f"⚠️ {public(exc.message)}"

    def model_note(name: str) -> str:
        return f"⚠️ **{name}** is a {UNTRAINED_NOTE}." if name in BUILTINS else ""

    def takes_controls(leading: tuple[str, ...] = (), request: bool = False, progress: bool = False):
        """Give a handler ``fn(*leading, values, request=, progress=)`` the positional signature Gradio reads:
        one parameter per control, named as the request field it sets, with the page's start values as
        defaults (so scripts call ``/generate`` by name), then gr.Request and gr.Progress, which Gradio
        recognises only among positional parameters."""
        import inspect

        def wrap(fn):
            def inner(*args):
                lead, rest = args[:len(leading)], args[len(leading):]
                values, extra = dict(zip(INPUT_ORDER, rest)), list(rest[len(INPUT_ORDER):])
                kwargs = {}
                if request:
                    kwargs["request"] = extra.pop(0)
                if progress:
                    kwargs["progress"] = extra.pop(0)
                return fn(*lead, values, **kwargs)

            P = inspect.Parameter
            params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in leading]
            params += [P(n, P.POSITIONAL_OR_KEYWORD, default=init[n]) for n in INPUT_ORDER]
            if request:
                params.append(P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request))
            if progress:
                params.append(P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
            inner.__signature__ = inspect.Signature(params)
            inner.__annotations__ = {"request": gr.Request} if request else {}
            inner.__name__ = inner.__qualname__ = fn.__name__
            inner.__doc__ = fn.__doc__
            return inner

        return wrap

    @takes_controls()
    @handler(lambda error: (error, ""))
    def preview(values):
        request = build_request(**request_values(values))
        plan = engine.plan(request)
        # A seed still to be drawn (random mode, or -1) is drawn at Generate: do not show this plan's draw.
        drawn_later = request.seed is None
        return "", plan_markdown(plan, None if drawn_later else engine.preview_fingerprints(plan))

    def refresh_plan(*values):
        """The plan alone (after a run), leaving the run's own message in place."""
        return preview(*values)[1] or gr.update()

    refresh_plan.__signature__ = preview.__signature__

    @handler(lambda error: [*[gr.update() for _ in INPUT_ORDER], error, ""])
    def open_preset(name, upload):
        """Load a shipped preset (by name) or an uploaded file, fill the controls, and report differences."""
        from studio.untrusted import MAX_PRESET_BYTES, read_bounded

        if upload:
            preset, notes = presets.parse(read_bounded(upload, MAX_PRESET_BYTES, "the uploaded preset"),
                                          "uploaded preset")
        elif name in presets.shipped_names():
            preset, notes = presets.load(name)
        else:
            raise StudioError("pick a preset or upload a preset file")
        model, found = presets.locate_model(preset, engine.registry)
        request = preset.request.model_copy(update={"model": model})
        plan = engine.plan(request)
        here_env = environment.made_on(plan.backend.device, plan.backend.precision)
        report = diff.compare(preset, plan, here_env)
        values = control_values(request)
        values.update(width=plan.width, height=plan.height)  # a preset without a size: the model's own
        if request.expansion and isinstance(request.expanded_prompt, str):
            # Replayed verbatim: the stored expanded text goes into the prompt and expansion is not run again.
            # (A batch's list of texts stays in the hidden replay state: see _replay_texts.)
            values.update(prompt=request.expanded_prompt, expansion=False)
        return [*[values[n] for n in INPUT_ORDER], "", public(report_markdown(report, notes + found))]

    @takes_controls(leading=("name",))
    @handler(lambda error: (error, None))
    def save_preset(name, values):
        """The current settings, planned here, as a preset file (with made_on) to download and share."""
        from studio.settings import Preset

        stem = (name or "").strip()
        if not stem or not all(ch.isalnum() or ch in "-_ ." for ch in stem) or stem.startswith(".") \
                or len(stem) > MAX_PRESET_NAME:
            raise StudioError(f"name the preset with up to {MAX_PRESET_NAME} letters, digits, spaces, '-', '_' "
                              "or '.'")
        plan = engine.plan(build_request(**request_values(values)))
        preset = Preset(name=stem, model={"file": plan.model.name, "sha256": plan.model.sha256},
                        request=plan.request, plan=plan.to_json_dict(),
                        made_on=environment.made_on(plan.backend.device, plan.backend.precision))
        path = presets.save(preset, engine.config.output_dir / "presets" / f"{stem}.json")
        return "", str(path)

    @takes_controls(request=True, progress=True)
    @handler(lambda error: (gr.update(), error, gr.update(), gr.update()))
    def generate(values, request=None, progress=None):
        session = getattr(request, "session_hash", None) or ""
        stop = stops[session] = threading.Event()
        try:
            settings = build_request(**request_values(values))
            plan = engine.plan(settings)
            report = (lambda i, n: progress(i / n, desc=f"step {i}/{n}")) if progress is not None else None
            result = engine.run(plan, on_step=report, stop=stop)
            saved = save_result(result, engine.config.output_dir)
        finally:
            if stops.get(session) is stop:
                del stops[session]
        copies.shown(session, [s["path"] for s in saved])
        lines = [f"- `{s['seed']}` · noise `{s['noise_fingerprint']}` · {shown_path(s['path'])}" for s in saved]
        if plan.prompt.expansion is not None:
            lines += [f"- `{s['seed']}` expanded prompt: {s['prompt_final']}" for s in saved]
        info = "\n".join(["**Images** (seed · initial-noise fingerprint · file)", *lines]
                         + [f"- ⚠️ {n}" for n in result.notes])
        next_seed = engine.next_request(settings, plan).seed
        return [s["path"] for s in saved], "", public(info), (-1 if next_seed is None else next_seed)

    def stop_run(request: gr.Request = None):
        """Stop this browser session's running job after its current step (other sessions' jobs go on)."""
        stop = stops.get(getattr(request, "session_hash", None) or "")
        if stop is not None:
            stop.set()

    def shown_path(path: str) -> str:
        """A saved file as the user may see it: relative to the output folder, never the server's path."""
        try:
            return Path(path).resolve().relative_to(engine.config.output_dir.resolve()).as_posix()
        except ValueError:
            return Path(path).name

    def end_session(request: gr.Request = None):
        copies.end_session(getattr(request, "session_hash", None))

    # Gradio finds gr.Request by type hint; `gr` is imported here, not at module level, so the string
    # annotations would not resolve: give the real class.
    stop_run.__annotations__ = end_session.__annotations__ = {"request": gr.Request}

    # Gradio's own cache sweep: gallery copies older than a day go, and all of them at a restart.
    with gr.Blocks(title="studio", delete_cache=(3600, 86400)) as app:
        gr.Markdown("# studio\nReproducible Stable Diffusion: same settings, same image.")
        gr.Markdown(lost_jobs_markdown(lost), elem_id="lost-jobs")
        note = gr.Markdown(model_note(init["model"]), elem_id="model-note")
        c = {}
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, height=420)
                c["prompt"] = gr.Textbox(init["prompt"], label="Prompt", lines=3, elem_id="prompt")
                counter = gr.Markdown(token_label(""), elem_id="token-counter")
                c["negative_prompt"] = gr.Textbox(init["negative_prompt"], label="Negative prompt", lines=2,
                                                  elem_id="negative")
                c["expansion"] = gr.Checkbox(init["expansion"], label="Prompt expansion (seeded style words)",
                                             elem_id="expansion")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                error = gr.HTML("", elem_id="error")
                report_box = gr.Markdown("", elem_id="preset-report")
                plan_box = gr.Markdown("", elem_id="plan")
                info = gr.Markdown("", elem_id="info")
            with gr.Column(scale=2):
                c["model"] = gr.Dropdown(engine.registry.available(), value=init["model"], label="Model", elem_id="model")
                with gr.Group(elem_id="seed-lock"):
                    gr.Markdown("**Seed lock**")
                    c["seed"] = gr.Number(value=init["seed"], precision=0, label="Seed (-1 draws one)", elem_id="seed")
                    c["seed_mode"] = gr.Radio(["fixed", "increment", "random"], value=init["seed_mode"], label="After each run",
                                              elem_id="seed-mode")
                    c["noise_source"] = gr.Radio(["cpu", "device"], value=init["noise_source"], label="Noise drawn on",
                                                 elem_id="noise-source")
                    c["deterministic"] = gr.Checkbox(init["deterministic"], label="Deterministic mode", elem_id="deterministic")
                samplers = list(SAMPLERS) + [s + GPU_SUFFIX for s in SAMPLERS if SAMPLERS[s].stochastic]
                c["sampler"] = gr.Dropdown(samplers, value=init["sampler"], label="Sampler", elem_id="sampler")
                c["steps"] = gr.Slider(1, 150, value=init["steps"], step=1, label="Steps", elem_id="steps")
                c["cfg"] = gr.Slider(0, 30, value=init["cfg"], step=0.5, label="CFG scale", elem_id="cfg")
                c["batch"] = gr.Slider(1, 16, value=init["batch"], step=1, label="Images", elem_id="batch")
                c["width"] = gr.Number(value=init["width"], precision=0, label="Width", elem_id="width")
                c["height"] = gr.Number(value=init["height"], precision=0, label="Height", elem_id="height")
                with gr.Accordion("Presets", open=False, elem_id="presets"):
                    preset_name = gr.Dropdown(presets.shipped_names(), value=None, label="Preset",
                                              elem_id="preset-name")
                    preset_upload = gr.File(label="…or a preset file (.json)", file_types=[".json"],
                                            type="filepath", elem_id="preset-file")
                    open_button = gr.Button("Open preset", elem_id="open-preset")
                    save_name = gr.Textbox(label="Save the current settings as", placeholder="my-preset",
                                           elem_id="save-name")
                    save_button = gr.Button("Save preset", elem_id="save-preset")
                    saved_file = gr.File(label="Saved preset", interactive=False, elem_id="saved-preset")
                with gr.Accordion("Backend", open=False, elem_id="backend-settings"):
                    c["backend"] = gr.Radio(["torch", "openvino"], value=init["backend"], label="Backend", elem_id="backend")
                    c["device"] = gr.Textbox(value=init["device"], label="Device (torch: cpu, cuda; OpenVINO: CPU, GPU)",
                                             elem_id="device")
                    c["ov_mode"] = gr.Radio(["accuracy", "performance"], value=init["ov_mode"], label="OpenVINO mode",
                                            elem_id="ov-mode")
                    c["text_encoder"] = gr.Radio(["torch", "openvino"], value=init["text_encoder"],
                                                 label="OpenVINO text encoder: PyTorch on CPU, or compiled",
                                                 elem_id="text-encoder")
                    c["chunk_policy"] = gr.Dropdown(["exact", "pad:2", "pad:3", "pad:4"], value=init["chunk_policy"],
                                                    label="Chunk policy (pad prompts so length never recompiles)",
                                                    elem_id="chunk-policy")
                with gr.Accordion("Precision", open=False, elem_id="precision"):
                    for part in ("text", "unet", "vae"):
                        c[f"{part}_dtype"] = gr.Dropdown(["fp32", "bf16", "fp16"], value=init[f"{part}_dtype"],
                                                         label=f"{part.upper() if part != 'text' else 'Text encoder'}",
                                                         elem_id=f"{part}-dtype")
        # An opened preset's per-image expanded texts, replayed while prompt, seed and batch stay as they were.
        c["replay"] = gr.State(init["replay"])
        controls = [c[name] for name in INPUT_ORDER]
        c["prompt"].change(token_label, c["prompt"], counter, show_progress="hidden")
        c["model"].change(model_note, c["model"], note)
        for control in controls:
            control.change(preview, controls, [error, plan_box], show_progress="hidden")
        app.load(preview, controls, [error, plan_box], api_name="plan_preview")
        # After a run the plan is made again: what was compiled or the next seed changes it.
        run.click(generate, controls, [gallery, error, info, c["seed"]], api_name="generate").then(
            refresh_plan, controls, plan_box, show_progress="hidden")
        stop_button.click(stop_run, None, None, api_name="stop")
        app.unload(end_session)
        save_button.click(save_preset, [save_name, *controls], [error, saved_file], api_name="save_preset")
        open_button.click(open_preset, [preset_name, preset_upload], [*controls, error, report_box],
                          api_name="open_preset")
    copies = GalleryCopies(config.output_dir, Path(app.GRADIO_CACHE))
    app.studio_parts = ServingParts(journal=journal, copies=copies, lost=lost)
    # Every call goes through the queue: the direct REST routes (which skipped it) are closed.
    app.queue(api_open=False)
    return app

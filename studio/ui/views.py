"""What the page shows, as text: the plan before Generate, reports, errors. Plain functions of plain data."""

from __future__ import annotations

import functools
import html
import logging
import re

from studio.errors import StudioError
from studio.performance import performance_summary

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


def lost_jobs_markdown(lost: list[dict]) -> str:
    if not lost:
        return ""
    lines = [f"⚠️ **{len(lost)} queued job(s) were lost** when the server last stopped before running them "
             "(listed in the output folder's `.studio/lost-jobs.json`):"]
    lines += [f"- {j.get('time', '?')} · seed `{j.get('seed')}` · {html.escape(str(j.get('prompt') or ''))}"
              for j in lost[:20]]
    return "\n".join(lines)


def plan_markdown(plan, fingerprints: list[str] | None, input_notes: list[str] = ()) -> str:
    """What will run, shown before Generate: seeds, noise, fingerprints, and every reproducibility risk;
    ``input_notes`` say what reading the input image converted."""
    noise = plan.noise
    paragraphs = [
        f"**Will run:** {plan.model.name} (`{plan.model.short_hash}`) · {plan.backend.name} on "
        f"{plan.backend.device}" + (" (text encoder too)" if plan.backend.text_encoder == "openvino" else "")
        + f" · {plan.sampler} · {plan.width}×{plan.height}",
        f"**Noise:** {noise.source} (generators on {noise.generator_device}"
        + (", from the -gpu sampler name" if noise.from_sampler_alias else "") + ")"
        + (" · deterministic mode" if plan.determinism.get("deterministic") else ""),
    ]
    if plan.performance:
        paragraphs.append("**Performance:** " + html.escape(performance_summary(plan.performance)))
    if plan.image is not None:
        paragraphs.append("**Input image:** " + html.escape(plan.image.summary(plan.request.steps))
                          + "".join(f"\n- {html.escape(n)}" for n in (*input_notes, *plan.image.notes)))
    if plan.loras:
        paragraphs.append(lora_markdown(plan.loras))
    if plan.prompt.embeddings:
        paragraphs.append("**Embeddings:** " + ", ".join(
            f"{html.escape(e.name)} ({e.where}, {e.vectors} token{'s' * (e.vectors != 1)}) · `{e.short_hash}`"
            + (f" → file {html.escape(e.file)}" if e.file.rsplit('.', 1)[0] != e.name else "")
            for e in plan.prompt.embeddings))
    if plan.prompt.styles:
        paragraphs.append("**Styles:** " + ", ".join(html.escape(st.name) for st in plan.prompt.styles)
                          + f" → encoded prompt: {html.escape(plan.prompt.prompt_styled)}"
                          + (f" · negative: {html.escape(plan.prompt.negative)}" if plan.prompt.negative else ""))
    if plan.compile is not None:
        c = plan.compile
        paragraphs.append(f"⚙️ **Will compile** `{c.signature}`: {c.reason}"
                          + (f" (drops `{c.evicts}` from the cache)" if c.evicts else "")
                          if c.will_compile else f"✅ **Compiled variant cached:** `{c.signature}` (no recompile)")
        if c.export:
            paragraphs.append(f"📦 **First:** {html.escape(c.export)}")
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


LORA_SOURCES = {"request": "slot", "prompt": "prompt tag", "performance": "speed mode"}


def lora_markdown(loras) -> str:
    """The plan's LoRAs, in the order applied: name, weight, short hash, where each came from (a slot or a
    <lora:…> tag in the prompt), the file used when it is not the name asked for, and the resolver's notes."""
    lines = ["**LoRAs:**"]
    for lora in loras:
        source = LORA_SOURCES.get(lora.source, lora.source)
        used = "" if lora.file.rsplit(".", 1)[0] == lora.name else f" → file {html.escape(lora.file)}"
        lines.append(f"- {html.escape(lora.name)} × {lora.weight:g} · `{lora.short_hash}` · {source} "
                     f"({lora.format}){used}")
        lines += [f"  - ⚠️ {html.escape(note)}" for note in lora.notes]
    return "\n".join(lines)

"""The day's log page (``<output>/log/YYYY-MM-DD.html``), as Fooocus keeps a log.html per day: every
image of the day, newest first, with its prompt, negative, seed, noise fingerprint, settings, and the
command line that makes it again.

Every recorded text is untrusted (a prompt is anything anyone typed, and the history file may have been
edited): all of it goes through ``html.escape``, and none of it into a script.
"""

from __future__ import annotations

import json
import shlex
from html import escape
from pathlib import Path
from urllib.parse import quote

from studio import __version__
from studio.image_input import INPUTS_FOLDER

# Request fields that decide nothing the command line must repeat (lru: how many compiled variants are
# kept) or that the command line cannot give (no flag): the latter are named beside the command.
_NO_FLAG = {"clip_skip": 1, "comma_backtrack": 20}


def command_line(entry) -> tuple[str, list[str]]:
    """The ``studio generate`` line that makes ``entry``'s image again, and what it cannot say.

    The settings that decide the pixels are all spelled out (not left to defaults, which may change);
    the size is the one the image was made at.
    """
    r, rec = entry.request, entry.record
    # Texts as --flag=TEXT: a prompt starting with "-" would otherwise be read as a flag.
    args = ["studio", "generate", f"--prompt={r.prompt}"]
    if r.negative_prompt:
        args.append(f"--negative={r.negative_prompt}")
    args += ["--seed", str(r.seed), "--steps", str(r.steps), "--cfg", repr(float(r.cfg)), "--sampler", r.sampler]
    if r.image is None:
        args += ["--width", str(r.width or rec.width), "--height", str(r.height or rec.height)]
    else:  # the input decides the size
        args += _image_args(r.image, Path(entry.path).parent / INPUTS_FOLDER)
    args += ["--model", r.model, "--backend", r.backend.name, "--device", r.backend.device]
    if r.backend.name == "openvino":
        args += ["--ov-mode", r.backend.ov_mode, "--text-encoder", r.backend.text_encoder]
        if r.backend.ov_weights != "full":
            args += ["--ov-weights", r.backend.ov_weights]
    if r.backend.compile != "none":
        args += ["--compile", r.backend.compile]
    args += ["--noise-source", r.noise_source]
    for component in ("text", "unet", "vae"):
        args += ["--dtype", f"{component}={getattr(r.precision, component)}"]
    if r.deterministic:
        args.append("--deterministic")
    args += ["--expansion", "on" if r.expansion else "off"]
    if r.expansion:
        args += ["--expander", r.expander]
        if r.expansion_model:
            args += ["--expansion-model", r.expansion_model]
        if r.expansion_new_chunk:
            args.append("--expansion-new-chunk")
    if isinstance(r.expanded_prompt, str):
        args.append(f"--expanded-prompt={r.expanded_prompt}")
    if r.chunk_policy != "exact":
        args += ["--chunk-policy", r.chunk_policy]
    if r.batch != 1:
        args += ["--batch", str(r.batch)]
    if r.seed_mode != "fixed":
        args += ["--seed-mode", r.seed_mode]
    missing = [f"{field} is {getattr(r, field)} (no flag: use the request JSON as a preset)"
               for field, default in _NO_FLAG.items() if getattr(r, field) != default]
    if isinstance(r.expanded_prompt, list):
        missing.append("expanded_prompt is a list (no flag: use the request JSON as a preset)")
    return " ".join(shlex.quote(a) for a in args), missing


def _image_args(image, inputs: Path) -> list[str]:
    """The flags of an input image: the stored input (and mask) in the output folder's inputs store."""
    args = ["--image", str(inputs / f"{image.sha256}.png"), "--mode", image.mode]
    if image.strength is not None:
        args += ["--strength", repr(float(image.strength))]
    if image.mask_sha256:
        args += ["--mask", str(inputs / f"{image.mask_sha256}.png")]
    if image.mode in ("inpaint", "outpaint"):
        args += ["--mask-blur", str(image.mask_blur)]
    if image.mode == "inpaint" and image.inpaint_area == "masked":
        args += ["--inpaint-area", "masked", "--masked-padding", str(image.masked_padding)]
    if image.mode == "outpaint":
        args += ["--outpaint", image.outpaint.spec()]
    return args


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
article{display:flex;gap:1.2em;align-items:flex-start;background:#fff;border:1px solid #ddd;
  border-radius:6px;padding:1em;margin:0 0 1em}
article img{max-width:384px;height:auto;border:1px solid #ccc}
article>div{flex:1;min-width:0}
h2{font-size:1em;margin:0 0 .4em}
table{border-collapse:collapse;width:100%}
th{text-align:left;vertical-align:top;padding:.15em .8em .15em 0;white-space:nowrap;color:#555;font-weight:600}
td{padding:.15em 0;white-space:pre-wrap;overflow-wrap:anywhere}
textarea{width:100%;font-family:monospace;font-size:.85em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em}
.warn{color:#a40}
"""
# Static: no recorded text ever goes into a script; the button copies the textarea before it.
_COPY = "navigator.clipboard.writeText(this.previousElementSibling.value)"


def render_day(day: str, entries) -> str:
    """The whole page for ``day`` from its entries (newest first)."""
    body = "\n".join(_article(n, e) for n, e in enumerate(entries))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>studio log {escape(day)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>studio log {escape(day)}</h1>\n<p>{len(entries)} image(s), newest first. "
            f"Written by studio {escape(__version__)} from the output folder's .studio/history/"
            f"{escape(day)}.jsonl.</p>\n{body}\n</body>\n</html>\n")


def _row(name: str, value) -> str:
    return f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"


def _article(n: int, entry) -> str:
    rec = entry.record
    src = escape("../" + quote(rec.image))
    backend = rec.backend.name + (f" {rec.backend.mode}" if rec.backend.mode else "") + f" on {rec.backend.device}"
    precision = ", ".join(f"{k} {v}" for k, v in sorted(rec.backend.precision.items()))
    rows = [_row("Prompt", rec.prompt)]
    if rec.prompt_final != rec.prompt:
        rows.append(_row("Final prompt", rec.prompt_final))
    rows += [_row("Negative", rec.negative), _row("Seed", rec.seed), _row("Noise fingerprint", rec.noise_fingerprint),
             _row("Model", f"{rec.model.name} [{rec.model.short_hash}]"),
             _row("Sampler", f"{rec.sampler} ({rec.scheduler})"), _row("Steps", rec.steps), _row("CFG", rec.cfg),
             _row("Size", f"{rec.width}x{rec.height}"), _row("Backend", f"{backend}; {precision}"),
             _row("Batch", f"image {rec.index + 1} of {rec.batch}")]
    if rec.image_mode is not None:
        denoise = "?" if rec.denoise is None else f"{rec.denoise:g}"
        rows.append(_row("Input image", f"{rec.image_mode}, denoise {denoise}, input {(rec.input_sha256 or '?')[:12]}"))
    rows += [_row("Note", note) for note in rec.notes]
    if entry.request is not None:
        command, missing = command_line(entry)
        copy = (f'<p><b>Copy settings</b> (studio command line)</p>\n<textarea readonly rows="4">'
                f'{escape(command)}</textarea>\n<button type="button" onclick="{_COPY}">Copy</button>'
                + "".join(f'\n<p class="warn">{escape(m)}</p>' for m in missing))
    else:
        copy = f'<p class="warn">Cannot be applied: {escape(entry.request_error or "")}</p>'
    request = json.dumps(rec.request, ensure_ascii=False, indent=1)
    return (f'<article id="i{n}">\n<a href="{src}"><img src="{src}" alt="{escape(rec.image)}" loading="lazy" '
            f'width="{rec.width}" height="{rec.height}"></a>\n<div>\n<h2>{escape(rec.image)} '
            f'<small>{escape(rec.time)}</small></h2>\n<table>\n' + "\n".join(rows) + "\n</table>\n" + copy
            + f"\n<details><summary>Request (JSON)</summary><pre>{escape(request)}</pre></details>\n</div>\n</article>")

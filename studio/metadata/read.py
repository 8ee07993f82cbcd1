"""Read the metadata of a PNG, JPEG or WebP file: A1111 `parameters` text and the studio record.

Any file may be hostile: every failure is one StudioError line ("cannot read metadata from X: ..."),
never another exception. Pillow's own limits (text chunk size, text memory, decompression bombs)
stay as they are.
"""

from __future__ import annotations

import re

import warnings
from pathlib import Path

from PIL import Image

from studio.errors import StudioError
from studio.untrusted import check_regular_file, parse_json
from studio.metadata.exif import read_exif_text
from studio.metadata.text import describe, lone_surrogate

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TEXT_CHARS = 8 * 1024 * 1024  # a studio record is a few kB; Pillow allows up to 64 MiB of text in all
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


def parse_studio_json(text: str, where: str) -> dict:
    """The studio record: a JSON object, not too large nor too deep. StudioError otherwise."""
    if len(text) > MAX_TEXT_CHARS:
        raise StudioError(f"{where}: the studio record is {len(text)} characters, over the "
                          f"{MAX_TEXT_CHARS // (1024 * 1024)} MiB limit")
    record = parse_json(text, f"{where}: the studio record")
    if not isinstance(record, dict):
        raise StudioError(f"{where}: the studio record is JSON but not an object")
    _check_record_shape(record, where)
    bad = lone_surrogate(record)
    if bad is not None:
        raise StudioError(f"{where}: the studio record holds text that is not valid Unicode (a lone surrogate, in "
                          f"{describe(bad)}); it was not written by studio, or was changed")
    return record


def _check_record_shape(record: dict, where: str) -> None:
    """The parts of a studio record that readers use have the types they expect (a hostile file may lie)."""
    def refuse(what: str) -> None:
        raise StudioError(f"{where}: the studio record's {what}; it was not written by studio, or was changed")

    for key in ("plan", "image", "run"):
        if key in record and record[key] is not None and not isinstance(record[key], dict):
            refuse(f"{key!r} is not an object")
    plan = record.get("plan") or {}
    for key in ("request", "model"):  # what readers use (cli info and preset import)
        if key in plan and not isinstance(plan[key], dict):
            refuse(f"plan.{key} is not an object")
    model = plan.get("model") or {}
    if "name" in model and not isinstance(model["name"], str):
        refuse("plan.model.name is not text")
    sha = model.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        refuse("plan.model.sha256 is not 64 hex digits")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if "decompressed data too large" in low or "too much memory used in text chunks" in low:
        return f"a text chunk is larger than Pillow allows ({text})"
    if "truncated" in low:
        return f"the file is truncated or damaged ({text})"
    if isinstance(exc, Image.DecompressionBombError):
        return f"the image is too large ({text})"
    return f"damaged or unsupported file ({type(exc).__name__}: {text})"


def _unidentified(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = b""
    for name, ok in (("PNG", head.startswith(b"\x89PNG\r\n\x1a\n")), ("JPEG", head.startswith(b"\xff\xd8\xff")),
                     ("WebP", head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        if ok:
            return f"a damaged {name} file (Pillow cannot open it)"
    return "not a PNG, JPEG or WebP image"


def _open(path: Path, where: str) -> tuple[str, dict, dict]:
    """(format, PNG text chunks, EXIF texts). Wraps every Pillow failure."""
    try:
        with warnings.catch_warnings():
            # Pillow's notes on damaged EXIF ("Corrupt EXIF data ...") would print lines of their own:
            # what can be read is read, what cannot is a StudioError below.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(_FORMATS)) as im:
                fmt = _FORMATS[im.format]
                im.load()  # reads PNG chunks after the image data too; fails on truncated files
                text = {k: v for k, v in (getattr(im, "text", None) or {}).items() if isinstance(v, str)} \
                    if fmt == "png" else {}
                exif = read_exif_text(im)
    except StudioError:
        raise
    except Image.UnidentifiedImageError:
        raise StudioError(f"{where}: {_unidentified(path)}") from None
    except Image.DecompressionBombWarning as exc:
        raise StudioError(f"{where}: the image is too large ({exc})") from None
    except MemoryError:
        raise StudioError(f"{where}: not enough memory to read the file") from None
    except RecursionError:
        raise StudioError(f"{where}: damaged file (nested too deeply)") from None
    except Exception as exc:  # OSError, ValueError, SyntaxError, struct.error, zlib.error, EOFError ...
        raise StudioError(f"{where}: {_describe(exc)}") from None
    return fmt, text, exif


def read_metadata(path) -> dict:
    """{"format": "png"|"jpeg"|"webp", "parameters": str|None, "studio": dict|None}. Raises StudioError only."""
    try:
        path = Path(path)
    except TypeError:
        raise StudioError(f"cannot read metadata from {path!r}: not a file path") from None
    where = f"cannot read metadata from {path}"
    check_regular_file(path, MAX_FILE_BYTES, f"metadata from {path}")
    fmt, text, exif = _open(path, where)
    parameters = text.get("parameters")
    if parameters is None:
        parameters = exif["parameters"]
    if parameters is not None and len(parameters) > MAX_TEXT_CHARS:
        raise StudioError(f"{where}: the parameters text is {len(parameters)} characters, over the limit")
    studio = None
    if "studio" in text:
        studio = parse_studio_json(text["studio"], where)
    elif exif["studio"] is not None:
        studio = _exif_studio(exif["studio"], where)
    return {"format": fmt, "parameters": parameters, "studio": studio}


def _exif_studio(description: str, where: str) -> dict | None:
    """ImageDescription is a general EXIF field (cameras write to it): it is studio's only when it is a
    JSON object with a "plan"; text that starts as studio's record (`{"plan"`) must parse."""
    stripped = description.lstrip()
    if stripped.startswith('{"plan"'):
        return parse_studio_json(stripped, where)
    if not stripped.startswith("{"):
        return None
    try:
        record = parse_studio_json(stripped, where)
    except StudioError:
        return None
    return record if "plan" in record else None

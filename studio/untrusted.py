"""Parsing JSON that came from elsewhere (presets, image records, other tools' files)."""

from __future__ import annotations

import json
import os
import stat

from studio.errors import StudioError
from studio.metadata.text import describe, lone_surrogate

MAX_JSON_DEPTH = 64
# Every limit on what studio reads from outside, in one place (the README lists them).
MAX_PRESET_BYTES = 1 << 20  # a studio or Fooocus preset is a few kB
MAX_INFOTEXT_BYTES = 1 << 20  # an A1111 parameters text file
MAX_PROMPT_FILE_BYTES = 1 << 20
MAX_PROMPT_FILE_LINES = 1000  # prompts in one --prompt-file run
MAX_AUTH_FILE_BYTES = 64 << 10
MAX_STYLES_FILE_BYTES = 1 << 20  # one Fooocus style file; Fooocus's largest shipped one is ~100 kB
MAX_STYLE_FILES = 200  # *.json files read from a styles folder
MAX_STYLES = 5000  # styles in the library, the shipped ones included (Fooocus ships ~280)
MAX_STYLE_TEXT_CHARS = 4000  # one style's prompt template or negative part
MAX_REQUEST_STYLES = 16  # styles applied in one request
# The output folder's history (.studio/history/*.jsonl) may be edited or planted by anyone who can write there.
MAX_HISTORY_LINE_BYTES = 1 << 20  # one image's entry; studio's own stay under 0.7 MiB at the longest prompts
MAX_HISTORY_DAY_BYTES = 64 << 20  # of one day's file, only the newest part this size is read
MAX_HISTORY_DAYS = 3660  # day files looked at, newest first
MAX_HISTORY_LIMIT = 1000  # entries in one listing
# Input images and masks for image-to-image, inpaint and outpaint (studio/image_input.py).
MAX_INPUT_SIDE = 4096  # pixels per side of an input image or mask
MAX_INPUT_PIXELS = 4096 * 4096  # pixels in all of an input image or mask (16.8 megapixels)
MAX_INPUT_FILE_BYTES = 64 << 20  # an input image or mask file (4096×4096 RGB pixels uncompressed are 48 MiB)


def is_plain_name(name) -> bool:
    try:
        check_name(name)
    except StudioError:
        return False
    return True


def check_name(name: str, what: str = "model") -> str:
    """``name`` if it is a plain file or folder name; a StudioError if it could point anywhere else.

    Requests, presets and image records come from elsewhere: they name things, and each name is
    looked up in its own folder, so they can neither reach nor probe the rest of the disk.
    """
    if (not isinstance(name, str) or not name or name.startswith(("~", ".")) or "/" in name or "\\" in name
            or ":" in name or "\0" in name or len(name) > 255):
        raise StudioError(f"{what} {str(name)[:80]!r} must be a name in the {what}s folder, not a path")
    return name


def json_depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH):
    """The parsed JSON, or a StudioError: not valid JSON, nested too deeply, or text with a lone surrogate."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise StudioError(f"{what} is JSON nested too deeply") from None
    except ValueError as exc:  # also a bytes input that is not UTF-8
        raise StudioError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if json_depth(data) > max_depth:
        raise StudioError(f"{what} is JSON nested too deeply (over {max_depth} levels)")
    bad = lone_surrogate(data)
    if bad is not None:  # no file, terminal or tokenizer takes it: saving or printing it later would fail
        raise StudioError(f"{what} holds text that is not valid Unicode (a lone surrogate, in {describe(bad)})")
    return data


def check_regular_file(path, limit: int, what: str) -> int:
    """The size of ``path``; a StudioError if it is missing, not a regular file, or over ``limit`` bytes."""
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError) as exc:
        raise StudioError(f"cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StudioError(f"cannot read {what}: it is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise StudioError(f"cannot read {what}: not a regular file (a pipe, device or socket is never read)")
    if st.st_size > limit:
        raise StudioError(f"cannot read {what}: it is {_size(st.st_size)}, over the {_size(limit)} limit")
    return st.st_size


def read_bounded(path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused (StudioError) when over ``limit`` bytes.

    A FIFO, a device (/dev/zero) or a socket is refused before it is opened: reading one could block
    forever or never end. The size is checked again while reading, for a file that grows meanwhile.
    """
    check_regular_file(path, limit, what)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StudioError(f"cannot read {what}: not a regular file")
            data = f.read(limit + 1)
    except OSError as exc:
        raise StudioError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise StudioError(f"{what} is over the {_size(limit)} limit")
    return data


def _size(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def read_text_bounded(path, limit: int, what: str) -> str:
    """``read_bounded`` decoded as UTF-8 (a byte-order mark is dropped)."""
    try:
        return read_bounded(path, limit, what).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StudioError(f"cannot read {what}: not UTF-8 text") from None

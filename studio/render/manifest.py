"""A render's manifest.jsonl: one line per image saved, written whole or not at all, read back to resume.

A line is added only after its image file is in place (written to a temp file, then renamed), so a line
always names a whole file. A line cut short by a crash is dropped when the manifest is next opened; a line
whose file is gone or whose pixels changed no longer counts as done, and the image is rendered again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes, write_error

MANIFEST = "manifest.jsonl"
MAX_LINE_BYTES = 1 << 20  # a line holds a prompt (at most a few kB) and a few short fields
FIELDS = ("key", "seed", "prompt", "file", "sha256", "worker", "host", "fingerprint", "seconds")


def pixel_sha256(image) -> str:
    """The sha256 of an image's RGB pixels (its size first): the same for the same picture whatever the file's
    metadata or compression."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    digest = hashlib.sha256(f"{rgb.shape[1]}x{rgb.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def file_pixel_sha256(path: Path) -> Optional[str]:
    """The pixel hash of the image file at ``path``; None if it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return pixel_sha256(image)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


class Manifest:
    """The lines of ``folder/manifest.jsonl``, the last one of each key being the one that counts."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.lines: dict[str, dict] = {}
        self.dropped = 0  # lines that could not be read (cut short by a crash, or not ours)
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StudioError(f"cannot read {self.path} ({exc.strerror}): check the folder, or render into "
                              "another one (--out)") from exc
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw) if len(raw) <= MAX_LINE_BYTES else None
            except ValueError:
                line = None
            if not _well_formed(line):
                self.dropped += 1
                continue
            self.lines[line["key"]] = line
        if self.dropped or (data and not data.endswith(b"\n")) or len(self.lines) < data.count(b"\n"):
            self._rewrite()  # a torn or repeated line goes now, so the next append starts on a clean line

    def _rewrite(self) -> None:
        atomic_write_bytes(self.path, b"".join(_encode(line) for line in self.lines.values()))

    def done(self, key: str) -> Optional[dict]:
        """The line of ``key`` if its file is still there with the pixels it was saved with."""
        line = self.lines.get(key)
        if line is None:
            return None
        path = self.folder / line["file"]
        if file_pixel_sha256(path) != line["sha256"]:
            return None
        return line

    def add(self, line: dict) -> None:
        """Append ``line`` in one write and sync it: after a crash it is there whole or not at all."""
        data = _encode(line)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(fd, data)
                if written != len(data):  # the disk filled part-way: take the part back out
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(exc, self.path) from exc
        self.lines[line["key"]] = line

    def entries(self) -> Iterable[dict]:
        return self.lines.values()


def _well_formed(line) -> bool:
    return (isinstance(line, dict) and all(field in line for field in FIELDS)
            and isinstance(line["key"], str) and isinstance(line["file"], str) and isinstance(line["sha256"], str)
            and "/" not in line["file"] and "\\" not in line["file"] and not line["file"].startswith("."))


def _encode(line: dict) -> bytes:
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass")

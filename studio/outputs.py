"""Saving a Result: one PNG per image with its metadata, named uniquely, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

from studio import history
from studio.engine.engine import Result
from studio.fsutil import check_can_write, write_new_file
from studio.metadata.a1111 import infotext
from studio.metadata.exif import encode_with_exif
from studio.metadata.png import encode_png, studio_record


SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def encode(image, plan, index: int, fingerprint: str, notes: list[str], fmt: str) -> bytes:
    """The image file's bytes with its metadata: PNG text chunks, or EXIF for JPEG and WebP."""
    if fmt == "png":
        return encode_png(image, plan, index, fingerprint, notes)
    record = json.dumps(studio_record(plan, index, fingerprint, notes), ensure_ascii=True)
    return encode_with_exif(image, fmt, infotext(plan, index, fingerprint), record)


def check_output_folder(out_dir: Path) -> None:
    """Raise a clear StudioError now if images could not be saved in ``out_dir``: a read-only or
    not-permitted folder, or a file in its place, is found before the run rather than after it."""
    check_can_write(Path(out_dir))


def save_result(result: Result, out_dir: Path, fmt: str = "png") -> list[dict]:
    """Save the kept images of ``result`` (Skip may have dropped some), each with its own seed, fingerprint
    and text, in ``out_dir``, and record each in the history and the day's log.

    A history or log failure never costs an image: it becomes a note in ``result.notes`` (added after
    every image is encoded, so no image's own record carries it).
    """
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    saved, notes = [], []
    try:
        for image, index, fingerprint in zip(result.pil_images(), result.kept, result.fingerprints, strict=True):
            seed = result.plan.seeds[index]
            data = encode(image, result.plan, index, fingerprint, result.notes, fmt)
            path = write_new_file(Path(out_dir), f"{stamp}_{seed}", SUFFIXES[fmt], data)
            saved.append({"path": str(path), "seed": seed, "noise_fingerprint": fingerprint, "index": index,
                          "prompt_final": result.plan.prompt.final_for(index), "width": image.width,
                          "height": image.height})
            # Recorded as soon as saved: if a later image fails (disk full), the saved ones are in the history.
            notes += history.record_saved(out_dir, result.plan, index, fingerprint, path, result.notes, now)
    finally:
        if saved:
            notes += history.refresh_day_log(out_dir, history.day_of(now))
    result.notes.extend(n for n in dict.fromkeys(notes) if n not in result.notes)
    return saved

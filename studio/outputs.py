"""Saving a Result: one PNG per image with its metadata, named uniquely, written atomically."""

from __future__ import annotations

import time
from pathlib import Path

from studio.engine.engine import Result
from studio.fsutil import write_new_file
from studio.metadata.png import encode_png


def save_result(result: Result, out_dir: Path) -> list[dict]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved = []
    for i, image in enumerate(result.pil_images()):
        seed = result.plan.seeds[i]
        data = encode_png(image, result.plan, i, result.fingerprints[i], result.notes)
        path = write_new_file(Path(out_dir), f"{stamp}_{seed}", ".png", data)
        saved.append({"path": str(path), "seed": seed, "noise_fingerprint": result.fingerprints[i],
                      "width": image.width, "height": image.height})
    return saved

"""The named shortcuts a Fooocus user knows: performance (a step count) and aspect ratios (a size).

They only fill the request's own fields (steps; width and height): a request never stores the shortcut, so
a custom value keeps working and presets stay plain settings.
"""

from __future__ import annotations

from typing import Optional

PERFORMANCE = {"Quality": 60, "Speed": 30, "Extreme speed": 8}  # Fooocus's step counts
CUSTOM = "Custom"

# SDXL's trained buckets (about 1024² pixels each, sides multiples of 64), as Fooocus lists them.
SDXL_SIZES = [
    (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152), (896, 1152), (896, 1088),
    (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832),
    (1216, 832), (1280, 768), (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1536, 640), (1600, 640),
    (1664, 576), (1728, 576),
]


def performance_of(steps) -> str:
    """The performance name for ``steps``, or Custom."""
    return next((name for name, n in PERFORMANCE.items() if n == steps), CUSTOM)


def aspect_ratios(default_size: int) -> list[str]:
    """``W×H`` choices for a model trained at ``default_size``² pixels: SDXL's list for 1024, the same
    shapes at 512² for SD1 and 768² for SD2 (and at a tiny test model's own size), sides multiples of 8."""
    scale = default_size / 1024
    out = []
    for w, h in SDXL_SIZES:
        size = (max(64, round(w * scale / 8) * 8), max(64, round(h * scale / 8) * 8))
        label = f"{size[0]}×{size[1]}"
        if label not in out:
            out.append(label)
    return out


def parse_ratio(label: str) -> Optional[tuple[int, int]]:
    """(width, height) of a ``W×H`` label (``x`` accepted too), or None."""
    w, sep, h = str(label).replace("x", "×").partition("×")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        return None
    return int(w), int(h)

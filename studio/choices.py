"""The named shortcuts a Fooocus user knows: performance (a step count) and aspect ratios (a size).

They only fill the request's own fields (steps; width and height): a request never stores the shortcut, so
a custom value keeps working and presets stay plain settings. The fast modes (Extreme Speed, Lightning) are
not shortcuts: they add a LoRA, so the request names them (``performance``; studio/performance.py).
"""

from __future__ import annotations

from typing import Optional

from studio.performance import FAST_MODES

PERFORMANCE = {"Quality": 60, "Speed": 30}  # Fooocus's step counts
CUSTOM = "Custom"
FAST_LABELS = {mode.label: name for name, mode in FAST_MODES.items()}  # "Extreme Speed" → "extreme-speed"
PERFORMANCE_LABELS = [*PERFORMANCE, *FAST_LABELS, CUSTOM]  # the app's Performance radio, in Fooocus's order
# The CLI's --performance: the step counts by their lower-case names, and the fast modes by the request's.
PERFORMANCE_FLAGS = {**{name.lower(): steps for name, steps in PERFORMANCE.items()}, **{n: n for n in FAST_MODES}}

# SDXL's trained buckets (about 1024² pixels each, sides multiples of 64), as Fooocus lists them.
SDXL_SIZES = [
    (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152), (896, 1152), (896, 1088),
    (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832),
    (1216, 832), (1280, 768), (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1536, 640), (1600, 640),
    (1664, 576), (1728, 576),
]


def performance_of(steps, mode=None) -> str:
    """The Performance choice that shows a request's ``steps`` and fast ``mode`` (its ``performance``): the
    mode's label, else Quality or Speed by the step count, else Custom. Typing 8 steps never turns Extreme
    Speed on (that would add a LoRA): only picking it does."""
    if mode in FAST_MODES:
        return FAST_MODES[mode].label
    return next((name for name, n in PERFORMANCE.items() if n == steps), CUSTOM)


def mode_of(label):
    """A Performance choice → the request's ``performance``: a fast mode's name, or None (Quality, Speed, Custom:
    steps only). Anything else (from an API call) is passed on for the request model to refuse by name."""
    if label in FAST_LABELS:
        return FAST_LABELS[label]
    return None if label is None or label in PERFORMANCE or label == CUSTOM else label


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

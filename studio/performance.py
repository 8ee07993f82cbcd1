"""Fooocus's fast performance modes: Extreme Speed (the LCM LoRA) and Lightning (the SDXL-Lightning LoRA).

A request names the mode (``performance``); the plan expands it: the mode's steps, sampler and CFG replace
the request's (Fooocus's behaviour: the mode decides them) and its LoRA is applied at weight 1.0 with
source "performance". The plan says what it set and what it replaced, and writes the LoRA it found (name
and sha256) into its request, so a preset or an image replays the same bytes even under another name.

Quality and Speed are not modes: they are step counts (studio/choices.py), and a request stores the steps.
Nothing is downloaded: a missing LoRA file is a one-line error naming the file and the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from studio.errors import StudioError

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


@dataclass(frozen=True)
class SpeedLora:
    file: str  # Fooocus's file name for it, in the LoRA folder
    # Full sha256s of the published file, by which it is found under another name. Empty: no hash has been
    # checked against the published file here, and a wrong one would only send the lookup astray; the file
    # is then found by its name (and, once planned, by the hash the plan records).
    sha256s: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return Path(self.file).stem


@dataclass(frozen=True)
class FastMode:
    name: str  # the request's value (and the CLI's)
    label: str  # Fooocus's name (the app's Performance radio)
    steps: int
    sampler: str
    cfg: float
    lora_kind: str  # what the LoRA is called in messages
    loras: dict[str, SpeedLora] = field(default_factory=dict)  # by model family
    weight: float = 1.0


# The one table of the fast modes: Fooocus's settings (flags.py / async_worker) and its LoRA file names.
FAST_MODES: dict[str, FastMode] = {m.name: m for m in (
    FastMode("extreme-speed", "Extreme Speed", steps=8, sampler="lcm", cfg=1.0, lora_kind="LCM LoRA",
             loras={"sdxl": SpeedLora("sdxl_lcm_lora.safetensors"),
                    # latent-consistency's LCM-LoRA for SD1.5, under the name A1111 users give it
                    "sd1": SpeedLora("lcm-lora-sdv1-5.safetensors")}),
    # SDXL-Lightning was released for SDXL only.
    FastMode("lightning", "Lightning", steps=4, sampler="euler_sgm_uniform", cfg=1.0, lora_kind="Lightning LoRA",
             loras={"sdxl": SpeedLora("sdxl_lightning_4step_lora.safetensors")}),
)}


def speed_lora(mode: FastMode, family: str) -> SpeedLora:
    lora = mode.loras.get(family)
    if lora is None:
        made_for = " and ".join(FAMILY_NAMES.get(f, f) for f in mode.loras)
        raise StudioError(f"{mode.label} has no {mode.lora_kind} for {FAMILY_NAMES.get(family, family)} models (it "
                          f"is made for {made_for}): pick Quality or Speed, or a {made_for} model")
    return lora


def find_speed_lora(mode: FastMode, family: str, files, recorded=None):
    """The LoraUse of ``mode``'s LoRA for a ``family`` model: the one a plan recorded (``recorded``: found by
    name or hash when the plan runs), else the table's file by name, else by a known hash under any name.
    ``files`` is the LoRA folder (adapters.files.AdapterFolder). A StudioError names the file and folder."""
    from studio.settings import LoraUse

    lora = speed_lora(mode, family)
    if recorded is not None:
        return LoraUse(name=recorded.name, weight=mode.weight, sha256=recorded.sha256)
    if files.describe(lora.stem) is not None:
        return LoraUse(name=lora.stem, weight=mode.weight)
    if lora.sha256s:
        other = next((f for f in files.all() if f.sha256 in lora.sha256s), None)
        if other is not None:
            return LoraUse(name=other.name, weight=mode.weight, sha256=other.sha256)
    folder = files.folder if files.folder is not None else "the LoRA folder (none is set: --loras-dir)"
    raise StudioError(f"{mode.label} needs the {mode.lora_kind} {lora.file} in {folder}: copy it there "
                      "(nothing is downloaded)")


def expand(request, mode: FastMode) -> tuple[object, dict]:
    """``request`` with the mode's steps, sampler and CFG, and what the plan shows of it (without the LoRA)."""
    asked = {"steps": request.steps, "sampler": request.sampler, "cfg": request.cfg}
    chosen = {"steps": mode.steps, "sampler": mode.sampler, "cfg": mode.cfg}
    replaced = {k: v for k, v in asked.items() if v != chosen[k]}
    info = {"mode": mode.name, "label": mode.label, **chosen, "replaced": replaced}
    return request.model_copy(update=chosen), info


def performance_summary(info: dict) -> str:
    """One line of what a fast mode set (Plan.performance): its values, its LoRA, and what it replaced."""
    line = (f"{info['label']}: {info['steps']} steps · {info['sampler']} · CFG {info['cfg']:g} · LoRA "
            f"{info.get('lora', '?')} at {info.get('weight', 1.0):g}")
    replaced = info.get("replaced") or {}
    if replaced:
        line += " (in place of " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in replaced.items()) + ")"
    return line


def _check_table() -> None:
    import typing

    from studio.settings import FastModeName as Names

    if set(typing.get_args(Names)) != set(FAST_MODES):  # the request's names and the table are one list
        raise AssertionError("settings.FastModeName and performance.FAST_MODES differ")


_check_table()

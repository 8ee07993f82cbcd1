"""Offline architecture configs for SD 1.x, SD 2.x and SDXL.

The single-file loader needs a diffusers-layout folder that says what the architecture is;
we ship those configs (no weights) and add tokenizer files built from the CLIP BPE.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from studio.errors import StudioError
from studio.fsutil import atomic_dir
from studio.models.tokenizer import write_tokenizer_files

FAMILIES = ("sd1", "sd2", "sdxl")
_CONFIG_VERSION = "1"  # bump when a shipped config changes, so cached copies are rebuilt

# A key present only in that family's original (LDM) checkpoints.
_FAMILY_MARKERS = (
    ("sdxl", "conditioner.embedders.1.model."),
    ("sd2", "cond_stage_model.model."),
    ("sd1", "cond_stage_model.transformer."),
)
# Prefixes every checkpoint of a family must have; checked before loading, to name what is missing.
REQUIRED_PREFIXES = {
    "sd1": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."),
    "sd2": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."),
    "sdxl": ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.",
             "conditioner.embedders.1."),
}


def family_info(family: str) -> dict:
    return json.loads(_shipped(family).joinpath("family.json").read_text())


def _shipped(family: str):
    if family not in FAMILIES:
        raise StudioError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return resources.files("studio.models") / "configs" / family


def detect_family(keys) -> str:
    keys = list(keys)
    for family, marker in _FAMILY_MARKERS:
        if any(k.startswith(marker) for k in keys):
            return family
    raise StudioError(
        "cannot tell the model family from this checkpoint's keys (not an SD1.x, SD2.x or SDXL original-layout "
        "checkpoint); use a diffusers folder instead"
    )


def check_keys(family: str, keys) -> None:
    keys = list(keys)
    missing = [p for p in REQUIRED_PREFIXES[family] if not any(k.startswith(p) for k in keys)]
    if missing:
        raise StudioError(f"checkpoint is incomplete for {family}: no tensors under {', '.join(missing)}")


def config_dir(family: str, cache_dir: Path) -> Path:
    """A diffusers-layout folder (configs + tokenizers, no weights) for ``family``, built once in the cache."""
    target = Path(cache_dir) / "configs" / f"{family}-v{_CONFIG_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    info = family_info(family)
    with atomic_dir(target) as tmp:
        with resources.as_file(_shipped(family)) as src:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        for name, options in info["tokenizers"].items():
            write_tokenizer_files(tmp / name, pad_token=options["pad_token"])
    return target

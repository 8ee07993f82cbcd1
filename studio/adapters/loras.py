"""LoRAs: found in the LoRA folder by name or hash, checked against the model before anything runs, and
applied through diffusers' own LoRA support (PEFT adapters, never fused: removing one gives the base model's
image bit for bit, and two runs with the same set are the same)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.adapters.files import AdapterFile, AdapterFolder, read_header
from studio.errors import StudioError
from studio.plan import AppliedLora
from studio.settings import AppConfig, LoraUse

# kohya / A1111 (sd-scripts) and the diffusers / PEFT layouts, as diffusers' loaders read them.
_KOHYA = re.compile(r"^lora_(unet|te\d?)_.+\.(lora_down|lora_up|alpha|dora_scale)(\.weight)?$")
_DIFFUSERS = re.compile(r"^(unet|text_encoder(_2)?|transformer)\..+\.(lora_A|lora_B|lora\.down|lora\.up|"
                        r"lora_linear_layer\.(down|up))(\.[A-Za-z_]+)?\.weight$|.*\.alpha$")
FAMILY_WIDTH = {768: "SD1", 1024: "SD2", 2048: "SDXL"}


@dataclass(frozen=True)
class LoraInfo:
    format: str  # "kohya" or "diffusers"
    cross_attention_dim: Optional[int]  # the width its cross-attention key/value layers take (None: none)
    text_encoder_2: bool  # has layers for SDXL's second text encoder
    unknown: tuple[str, ...]  # keys that are neither layout's


def inspect(path: Path) -> LoraInfo:
    """What a LoRA file holds, from its header alone (no tensor is read)."""
    header = read_header(path)
    keys = [k for k in header if k != "__metadata__"]
    kohya = [k for k in keys if _KOHYA.match(k)]
    diffusers = [k for k in keys if _DIFFUSERS.match(k) and not _KOHYA.match(k)]
    if not kohya and not diffusers:
        first = ", ".join(keys[:2]) or "no tensors"
        raise StudioError(f"LoRA {path.name} has no LoRA layers studio knows ({first}…): it is not a LoRA in the "
                          "kohya/A1111 or diffusers format (LyCORIS LoHa/LoKr are not supported)")
    fmt = "kohya" if len(kohya) >= len(diffusers) else "diffusers"
    known = set(kohya) | set(diffusers)
    width = None
    for key in keys:  # the down (A) matrix of a cross-attention key or value projection: [rank, width]
        if re.search(r"attn2.*to_[kv].*(lora_down|lora_A|lora\.down|down)", key) and \
                isinstance(header[key], dict) and len(header[key].get("shape", [])) == 2:
            width = int(header[key]["shape"][1])
            break
    te2 = any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys)
    return LoraInfo(fmt, width, te2, tuple(k for k in keys if k not in known))


class LoraLibrary:
    def __init__(self, config: AppConfig):
        self.files = AdapterFolder(config.lora_folder, config.cache_dir, "LoRA", "--loras-dir",
                                   config.allow_unsafe_pickle)

    def names(self) -> list[str]:
        return self.files.names()

    def resolve(self, uses: list[tuple[LoraUse, str]], model_width: int, family: str) -> list[AppliedLora]:
        """The plan's LoRAs: each use (a request's slot or a prompt tag, by ``source``) found here by name or
        hash and checked against the model (its cross-attention width and family)."""
        applied: list[AppliedLora] = []
        seen: dict[str, str] = {}
        for use, source in uses:
            found = self.files.find(use.name, use.sha256)
            file = found.file
            self.files.check_loadable(file)
            if file.sha256 in seen:
                raise StudioError(f"LoRA {use.name!r} is applied twice ({seen[file.sha256]} and {source}): give it "
                                  "once, with the weight you want")
            seen[file.sha256] = source
            applied.append(self._check(use, source, file, found.note, model_width, family))
        return applied

    @staticmethod
    def _check(use: LoraUse, source: str, file: AdapterFile, note: Optional[str], model_width: int,
               family: str) -> AppliedLora:
        if file.pickle:
            fmt, notes = "pickle", [note] if note else []
        else:
            info = inspect(file.path)
            if info.text_encoder_2 and family != "sdxl":
                raise StudioError(f"LoRA {file.path.name} has layers for SDXL's second text encoder; this model is "
                                  f"{family}: pick a LoRA made for it")
            if info.cross_attention_dim is not None and info.cross_attention_dim != model_width:
                theirs = FAMILY_WIDTH.get(info.cross_attention_dim, f"cross-attention width {info.cross_attention_dim}")
                ours = FAMILY_WIDTH.get(model_width, f"cross-attention width {model_width}")
                raise StudioError(f"LoRA {file.path.name} is for {theirs} models; this model ({family}) is {ours}: "
                                  "pick a LoRA made for this model's family")
            fmt, notes = info.format, [note] if note else []
            if info.unknown:
                notes.append(f"LoRA {file.path.name}: {len(info.unknown)} key(s) of no known layout are not applied "
                             f"({info.unknown[0][:60]}…)")
        return AppliedLora(name=use.name, file=file.path.name, sha256=file.sha256, short_hash=file.short_hash,
                           weight=use.weight, source=source, format=fmt, notes=notes)

    def path(self, lora: AppliedLora) -> Path:
        """The file of a planned LoRA (found again by its hash: the folder may have changed since)."""
        found = self.files.find(lora.name, lora.sha256)
        return found.file.path


def adapter_name(lora: AppliedLora) -> str:
    """The PEFT adapter name of a LoRA: its hash, so the same bytes are one adapter whatever their name."""
    return "lora_" + lora.sha256[:16]


def load_state_dict(path: Path, allow_unsafe_pickle: bool = False) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # a truncated or corrupt file: name it
            raise StudioError(f"LoRA {path.name} cannot be read ({str(exc).splitlines()[0][:120]}); copy it "
                              "again") from None
    if not allow_unsafe_pickle:
        raise StudioError(f"LoRA {path.name} is a pickle; use a .safetensors file or --allow-unsafe-pickle")
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def apply_to_pipeline(pipe, loras: list[AppliedLora], paths: dict[str, Path], allow_unsafe_pickle: bool = False
                      ) -> None:
    """Make ``pipe``'s active LoRAs exactly ``loras`` at their weights. Adapters of earlier runs that this run
    does not use are removed (none left: the PEFT layers go too), so the result never depends on what ran
    before."""
    wanted = {adapter_name(lora): lora for lora in loras}
    loaded = set()
    if hasattr(pipe, "get_list_adapters"):
        for names in pipe.get_list_adapters().values():
            loaded.update(names)
    if not wanted:
        if loaded:
            pipe.unload_lora_weights()
        return
    stale = sorted(loaded - set(wanted))
    if stale:
        pipe.delete_adapters(stale)
    for name, lora in wanted.items():
        if name in loaded:
            continue
        state = load_state_dict(paths[lora.sha256], allow_unsafe_pickle)
        try:
            pipe.load_lora_weights(state, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
            if hasattr(pipe, "delete_adapters"):
                try:
                    pipe.delete_adapters([name])
                except Exception:
                    pass
            raise StudioError(f"LoRA {lora.file} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                              "pick a LoRA made for it") from None
    pipe.set_adapters(list(wanted), [lora.weight for lora in wanted.values()])

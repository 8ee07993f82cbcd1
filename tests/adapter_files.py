"""LoRA and embedding files written by the tests themselves for the tiny models (nothing is downloaded).

A LoRA here holds a random low-rank update for every attention projection of the UNet (and, optionally, of
the text encoders), written in the kohya/A1111 layout or in the diffusers/PEFT one."""

from __future__ import annotations

from pathlib import Path

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _targets(module, names):
    import torch

    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name.endswith("." + t) for t in names):
            yield name, layer


def lora_tensors(pipe, fmt: str = "kohya", rank: int = 4, seed: int = 0, scale: float = 0.2,
                 text_encoder: bool = True, alpha: float | None = None) -> dict:
    """The tensors of a LoRA for ``pipe``'s modules (the UNet, and the text encoders with ``text_encoder``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    parts = [("unet", pipe.unet, UNET_TARGETS, "lora_unet_")]
    if text_encoder:
        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        parts.append(("text_encoder", pipe.text_encoder, TEXT_TARGETS, "lora_te1_" if sdxl else "lora_te_"))
        if sdxl:
            parts.append(("text_encoder_2", pipe.text_encoder_2, TEXT_TARGETS, "lora_te2_"))
    out = {}
    for component, module, names, kohya_prefix in parts:
        for name, layer in _targets(module, names):
            down = torch.randn(rank, layer.in_features, generator=generator) * scale
            up = torch.randn(layer.out_features, rank, generator=generator) * scale
            if fmt == "kohya":
                key = kohya_prefix + name.replace(".", "_")
                out[f"{key}.lora_down.weight"] = down
                out[f"{key}.lora_up.weight"] = up
                out[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
            else:
                out[f"{component}.{name}.lora_A.weight"] = down
                out[f"{component}.{name}.lora_B.weight"] = up
    return out


def write_lora(path: Path, pipe, fmt: str = "kohya", metadata: dict | None = None, **options) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in lora_tensors(pipe, fmt, **options).items()}, str(path),
              metadata=metadata)
    return path


def write_embedding(path: Path, pipe, vectors: int = 2, fmt: str = "auto", seed: int = 0, scale: float = 1.0,
                    widths: tuple[int, ...] | None = None) -> Path:
    """A textual-inversion embedding of ``vectors`` random vectors for ``pipe``'s text encoders (or ``widths``).

    ``fmt``: "a1111" (``emb_params``, .safetensors), "sdxl" (``clip_l`` + ``clip_g``), "diffusers" (one
    ``{token: tensor}``), "pt" (A1111's pickle: ``string_to_param`` {'*': tensor}); "auto" is "sdxl" for a
    pipeline with two text encoders, else "a1111". The vectors are scaled well above CLIP's token embeddings,
    so an image with the embedding differs from one with the word."""
    import torch

    if widths is None:
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
        widths = tuple(te.config.hidden_size for te in encoders)
    if fmt == "auto":
        fmt = "sdxl" if len(widths) == 2 else "a1111"
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(vectors, width, generator=generator) * scale for width in widths]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensors[0]}, "name": path.stem,
                    "step": 100}, str(path))
        return path
    from safetensors.torch import save_file

    if fmt == "sdxl":
        content = {"clip_l": tensors[0], "clip_g": tensors[1]}
    elif fmt == "diffusers":
        content = {f"<{path.stem}>": tensors[0]}
    else:
        content = {"emb_params": tensors[0]}
    save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    return path

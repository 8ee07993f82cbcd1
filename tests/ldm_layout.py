"""Test helper: write a diffusers pipeline as an original-layout (LDM / A1111 / CompVis) checkpoint.

The installed diffusers only converts LDM -> diffusers (``loaders/single_file_utils.py``); this is the
inverse of that converter, so the tests can make single-file checkpoints of the built-in models and
check that loading them gives back the same weights.

Every diffusers tensor is mapped to exactly one LDM key (or, for OpenCLIP's fused attention, q/k/v
are joined into one); a tensor the mapping does not know raises ``KeyError`` rather than being dropped.
Block counts come from the model configs, not from the tiny sizes.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")


# -- UNet ---------------------------------------------------------------------------------------
_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}


def _resnet_param(rest: str) -> str:
    """``norm1.weight`` -> ``in_layers.0.weight`` (UNet resnet inner names)."""
    layer, _, param = rest.partition(".")
    for new, old in _UNET_RESNET:
        if layer == new:
            return f"{old}.{param}"
    raise KeyError(f"unknown UNet resnet parameter {rest!r}")


def unet_key_to_ldm(key: str, config) -> str:
    lpb = config["layers_per_block"]
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise NotImplementedError("per-block layers_per_block has no standard LDM layout")
        lpb = lpb[0]
    n_down = len(config["down_block_types"])

    module, _, param = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            if not rest.startswith("conv."):
                raise KeyError(key)
            index = 1 + block * (lpb + 1) + lpb
            return f"input_blocks.{index}.0.op.{rest[len('conv.'):]}"
        index = 1 + block * (lpb + 1) + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet_param(rest)}"
        return f"input_blocks.{index}.1.{rest}"

    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, layer, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_resnet_param(rest)}"
        return f"middle_block.{2 * layer + 1}.{rest}"

    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        up_type = config["up_block_types"][block]
        if kind == "upsamplers":
            if not rest.startswith("conv."):
                raise KeyError(key)
            index = block * (lpb + 1) + lpb
            slot = 2 if "CrossAttn" in up_type else 1
            return f"output_blocks.{index}.{slot}.conv.{rest[len('conv.'):]}"
        index = block * (lpb + 1) + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_resnet_param(rest)}"
        return f"output_blocks.{index}.1.{rest}"

    raise KeyError(f"no LDM name for UNet tensor {key!r} (n_down={n_down})")


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    config = unet.config
    return {UNET_PREFIX + unet_key_to_ldm(k, config): v for k, v in unet.state_dict().items()}


# -- VAE ----------------------------------------------------------------------------------------
_VAE_FIXED = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_resnet_param(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_key_to_ldm(key: str, config) -> str:
    n_up = len(config["up_block_types"])
    module, _, param = key.rpartition(".")
    if module in _VAE_FIXED:
        return f"{_VAE_FIXED[module]}.{param}"

    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"encoder.down.{block}.downsample.{rest}"
        return f"encoder.down.{block}.block.{layer}.{_vae_resnet_param(rest)}"

    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        ldm_block = n_up - 1 - block
        if kind == "upsamplers":
            return f"decoder.up.{ldm_block}.upsample.{rest}"
        return f"decoder.up.{ldm_block}.block.{layer}.{_vae_resnet_param(rest)}"

    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet_param(m[3])}"

    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key)
    if m and m[2] in _VAE_ATTN:
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"

    raise KeyError(f"no LDM name for VAE tensor {key!r}")


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in vae.state_dict().items():
        ldm = vae_key_to_ldm(key, vae.config)
        # The original VAE's mid-block attention uses 1x1 convolutions, not linear layers.
        if ".mid.attn_1." in ldm and ldm.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + ldm] = value
    return out


# -- text encoders ------------------------------------------------------------------------------
def _clip_state(text_encoder) -> dict[str, torch.Tensor]:
    """transformers' CLIP keys with the ``text_model.`` wrapper, whatever the transformers version."""
    state = text_encoder.state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue  # a buffer, not a weight
        if not (k.startswith("text_model.") or k.startswith("text_projection.")):
            k = "text_model." + k
        out[k] = v
    return out


def clip_to_ldm(text_encoder, prefix: str = SD1_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _clip_state(text_encoder).items()}


_OPENCLIP_FIXED = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(text_encoder, prefix: str = SDXL_OPENCLIP_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP layout (fused in_proj, transposed text_projection)."""
    state = _clip_state(text_encoder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in _OPENCLIP_FIXED:
            out[_OPENCLIP_FIXED[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            raise KeyError(f"no OpenCLIP name for text encoder tensor {key!r}")
        layer, module, param = int(m[1]), m[2], m[3]
        qm = re.fullmatch(r"self_attn\.([qkv])_proj", module)
        if qm:
            qkv.setdefault((layer, param), {})[qm[1]] = value
        elif module in _OPENCLIP_LAYER:
            out[f"transformer.resblocks.{layer}.{_OPENCLIP_LAYER[module]}.{param}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder tensor {key!r}")
    for (layer, param), parts in qkv.items():
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return {prefix + k: v for k, v in out.items()}


# -- whole pipelines ----------------------------------------------------------------------------
def pipeline_to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """All UNet, VAE and text-encoder tensors of ``pipe`` under their original-layout names."""
    state: dict[str, torch.Tensor] = {}
    parts = [unet_to_ldm(pipe.unet), vae_to_ldm(pipe.vae)]
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        parts.append(clip_to_ldm(pipe.text_encoder, SDXL_CLIP_PREFIX))
        parts.append(open_clip_to_ldm(pipe.text_encoder_2, SDXL_OPENCLIP_PREFIX))
    else:
        parts.append(clip_to_ldm(pipe.text_encoder, SD1_CLIP_PREFIX))
    for part in parts:
        for k, v in part.items():
            if k in state:
                raise KeyError(f"two tensors map to {k!r}")
            # safetensors wants contiguous tensors that share no storage
            state[k] = v.detach().to("cpu").clone().contiguous()
    return state


def write_checkpoint(pipe, path: Path) -> Path:
    """Write ``pipe`` as ``path`` (.safetensors, LDM layout) plus the ``<stem>.config/`` sidecar folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(pipeline_to_ldm_state_dict(pipe), str(path))

    sidecar = path.parent / (path.stem + ".config")
    if sidecar.exists():
        shutil.rmtree(sidecar)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        root = Path(tmp)
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".safetensors.index.json"):
                continue
            target = sidecar / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return path

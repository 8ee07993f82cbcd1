"""Built-in models with untrained weights, made offline and deterministically (fixed seed).

- ``tiny``: SD1.x architecture at diffusers' test sizes; what runs when no model is configured.
- ``tiny-sdxl``: SDXL architecture at diffusers' test sizes (two text encoders of different widths).
- ``sd15-random``: the full SD1.5 architecture (859.5M-parameter UNet) for benchmarks.

They make noise-like images: the UI and CLI say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.fsutil import atomic_dir

UNTRAINED_NOTE = "built-in model with untrained (random) weights: it makes noise-like images"


@dataclass(frozen=True)
class Builtin:
    family: str
    version: int  # bump when the recipe changes: the cache folder name follows it


BUILTINS = {
    "tiny": Builtin("sd1", 1),
    "tiny-sdxl": Builtin("sdxl", 1),
    "sd15-random": Builtin("sd1", 1),
}


def folder_name(name: str) -> str:
    return f"{name}-v{BUILTINS[name].version}"


def _clip_config(hidden: int, layers: int, heads: int, inter: int, act: str = "quick_gelu", proj: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_hidden_layers=layers,
        max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act=act, projection_dim=proj or hidden,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
    )


def _sd1_scheduler(cache_dir: Path):
    from diffusers import PNDMScheduler

    from studio.models.families import config_dir

    return PNDMScheduler.from_pretrained(str(config_dir("sd1", cache_dir)), subfolder="scheduler")


def _build_tiny(cache_dir: Path):
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from studio.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(0)
    vae = _tiny_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config(32, 5, 4, 37))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(str(cache_dir)), unet=unet,
        scheduler=_sd1_scheduler(cache_dir), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_sdxl(cache_dir: Path):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from studio.models.families import config_dir
    from studio.models.tokenizer import clip_tokenizer

    # Encoders of different widths (32 and 48): cross-attention sees their sum; the added
    # time embedding takes 6 size/crop values × 8 plus the second encoder's projection (32).
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=80, norm_num_groups=1,
    )
    torch.manual_seed(0)
    vae = _tiny_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config(32, 5, 4, 37, act="gelu"))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(48, 5, 4, 37, act="gelu", proj=32))
    scheduler = EulerDiscreteScheduler.from_pretrained(str(config_dir("sdxl", cache_dir)), subfolder="scheduler")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(str(cache_dir)),
        tokenizer_2=clip_tokenizer(str(cache_dir), pad_token="!"), unet=unet, scheduler=scheduler,
    )


def _build_sd15_random(cache_dir: Path):
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.models.families import config_dir
    from studio.models.tokenizer import clip_tokenizer

    cfg = config_dir("sd1", cache_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(cfg / "unet")))
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(cfg / "vae")))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(cfg / "text_encoder")))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(str(cache_dir)), unet=unet,
        scheduler=_sd1_scheduler(cache_dir), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


_RECIPES = {"tiny": _build_tiny, "tiny-sdxl": _build_tiny_sdxl, "sd15-random": _build_sd15_random}


def build(name: str, folder: Path, cache_dir: Path) -> Path:
    """Build built-in model ``name`` and save it as a diffusers folder (safetensors) at ``folder``."""
    pipe = _RECIPES[name](Path(cache_dir))
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    return folder

"""Per-component precision (text encoder, UNet, VAE), each component casting at its own border.

Components may run in different dtypes; the latents and the scheduler stay fp32. Each component
casts floating inputs to its own dtype on the way in and its outputs back to fp32 on the way out.
"""

from __future__ import annotations

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
COMPONENT_ATTRS = (("text", "text_encoder"), ("text", "text_encoder_2"), ("unet", "unet"), ("vae", "vae"))


def _cast(value, dtype):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _cast_output(output, dtype):
    """Cast an output (tensor, tuple, or diffusers/transformers output dataclass) in place where possible."""
    import torch

    if isinstance(output, torch.Tensor) or isinstance(output, (list, tuple)):
        return _cast(output, dtype)
    if hasattr(output, "keys"):  # ModelOutput / BaseOutput: dict-like dataclasses
        for key in list(output.keys()):
            output[key] = _cast(output[key], dtype)
    return output


def apply(pipe, precision: dict[str, str]) -> None:
    """Cast each component to its dtype and install the casting borders."""
    import torch

    for component, attr in COMPONENT_ATTRS:
        module = getattr(pipe, attr, None)
        if module is None:
            continue
        dtype = getattr(torch, TORCH_DTYPES[precision[component]])
        if module.dtype != dtype:
            module.to(dtype=dtype)
        if getattr(module, "_studio_borders", False) or all(d == "fp32" for d in precision.values()):
            continue  # all fp32: nothing to cast anywhere
        module.register_forward_pre_hook(lambda _m, args, kwargs, d=dtype: (_cast(args, d), _cast(kwargs, d)),
                                         with_kwargs=True)
        module.register_forward_hook(lambda _m, _args, output: _cast_output(output, torch.float32))
        if attr == "vae":
            module.decode = _guarded_decode(module, module.decode, dtype)
        module._studio_borders = True


def collapsed(sample) -> bool:
    """A decode that failed in low precision: NaN/inf, or a flat image (all values within 1e-3)."""
    import torch

    return not bool(torch.isfinite(sample).all()) or float(sample.max() - sample.min()) < 1e-3


def _guarded_decode(vae, decode, dtype):
    """vae.decode with casting borders (pipelines call decode(), not forward()) and the low-precision guard:
    a decode that collapsed is done again in fp32, and counted in ``vae._studio_upcasts``."""
    import torch

    vae._studio_upcasts = 0

    def decode_as(d, args, kwargs):
        return _cast_output(decode(*_cast(args, d), **_cast(kwargs, d)), torch.float32)

    def decode_guarded(*args, **kwargs):
        out = decode_as(dtype, args, kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if dtype != torch.float32 and collapsed(sample):
            vae.to(torch.float32)  # low-precision weights widen exactly, and narrow back exactly
            try:
                out = decode_as(torch.float32, args, kwargs)
            finally:
                vae.to(dtype)
            vae._studio_upcasts += 1
        return out

    return decode_guarded

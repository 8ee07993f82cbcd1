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
            # Pipelines call vae.decode(), not forward(): give it the same borders.
            decode = module.decode

            def decode_with_borders(*args, _decode=decode, _d=dtype, **kwargs):
                return _cast_output(_decode(*_cast(args, _d), **_cast(kwargs, _d)), torch.float32)

            module.decode = decode_with_borders
        module._studio_borders = True

"""What every backend hands an image-to-image or inpaint pipeline, built the same way for each.

The backend encodes the input with its own VAE encoder (PyTorch, or compiled OpenVINO) and passes the
encoded latents as the pipeline's ``image``: diffusers then skips its own encode, which would draw from the
image's generator, so the only draws are the noise (the same draw as text to image) and the sampler's.
"""

from __future__ import annotations

from typing import Callable

from studio.engine.image_modes import METHODS, Prepared
from studio.plan import Plan


def pixels(image):
    """A PIL RGB image as a float32 tensor 1×3×H×W in −1..1 (how diffusers feeds a VAE encoder)."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def repaint_mask(mask):
    """The mask as diffusers binarises it: 1 where the pipeline repaints (L ≥ 128), 1×1×H×W float32."""
    import numpy as np
    import torch

    return torch.from_numpy((np.asarray(mask.convert("L")) >= 128).astype(np.float32))[None, None]


def scale_latents(mean, vae_config):
    """The VAE posterior's mean in the UNet's latent scale (as diffusers' image-to-image pipelines scale it)."""
    import torch

    latents_mean = getattr(vae_config, "latents_mean", None)
    latents_std = getattr(vae_config, "latents_std", None)
    if latents_mean is not None and latents_std is not None:
        shape = (1, mean.shape[1], 1, 1)
        return ((mean - torch.tensor(latents_mean).view(shape)) * vae_config.scaling_factor
                / torch.tensor(latents_std).view(shape))
    return mean * vae_config.scaling_factor


def encode_image(vae, image):
    """Encode with a diffusers AutoencoderKL: the posterior's mean (no draw), scaled, fp32, on the CPU."""
    import torch

    with torch.no_grad():
        x = image if isinstance(image, torch.Tensor) else pixels(image)
        mean = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
    return scale_latents(mean.to(device="cpu", dtype=torch.float32), vae.config)


def image_kwargs(plan: Plan, inputs: Prepared, task: str, encode: Callable) -> dict:
    """The pipeline arguments of an input image: its latents, the strength, and for inpaint the mask, the
    size, and the masked image's latents (read by a 9-channel inpaint UNet only)."""
    x = pixels(inputs.image)
    latents = encode(x)
    kwargs = {"image": latents, "strength": plan.image.strength}
    if task == "inpaint":
        if plan.image.method == METHODS["inpaint_unet"]:
            masked = encode(x * (repaint_mask(inputs.mask) < 0.5))
        else:
            masked = latents  # a 4-channel UNet never reads it; passing it skips a second encode
        kwargs.update(mask_image=inputs.mask, masked_image_latents=masked, width=plan.width, height=plan.height)
    return kwargs


def watch_noise(scheduler, expected):
    """Check, on the scheduler the pipeline is about to use, that the first noise it adds to the encoded image
    is ``expected`` (the draw the fingerprint was made from). Returns a function that raises if it was not:
    the fingerprint promises which noise an image started from, so a pipeline that drew otherwise (a diffusers
    change in the order of its draws) must fail loudly, never save an image under a wrong fingerprint."""
    import torch

    seen: list[bool] = []
    add_noise = scheduler.add_noise

    def watched(original, noise, timesteps):
        if not seen:
            seen.append(noise.shape == expected.shape and torch.equal(noise.cpu().float(), expected.cpu().float()))
        return add_noise(original, noise, timesteps)

    scheduler.add_noise = watched

    def check() -> None:
        from studio.errors import StudioError

        # No call at all: a 9-channel inpaint UNet at denoise 1 starts from the noise alone, drawn the same way.
        if seen and not seen[0]:
            raise StudioError("the pipeline did not add the planned noise to the input image (its random draws "
                              "changed order); nothing was saved: report this with `studio info` of the plan")

    return check

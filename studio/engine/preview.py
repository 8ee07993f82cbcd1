"""Live previews: a small RGB image from the latents by a fixed linear map per model family.

Decoding with the VAE every few steps would cost as much as a step or more and would run the VAE
beside the run; a 3×4 matrix (and bias) per latent channel costs nothing and needs no extra model.
The map only reads the latents (a new tensor is made, nothing is written back, no random numbers are
drawn), so a run with previews gives the same images bit for bit as one without.

The factors are the widely used community approximations, fitted by least squares from latents to
RGB of decoded images; the values are those published in ComfyUI's comfy/latent_formats.py (SD15 and
SDXL latent_rgb_factors, SDXL's bias), transposed here to rows R, G, B. SD2 shares SD1's VAE, so its
latent space and factors.
"""

from __future__ import annotations

from typing import Any

# rows R, G, B; columns latent channels 0..3
_SD1 = ((0.3512, 0.3250, -0.2829, -0.2120),
        (0.2297, 0.4974, 0.1762, -0.2616),
        (0.3227, 0.2350, 0.2721, -0.7177))
_SDXL = ((0.3651, -0.2533, 0.1076, -0.3165),
         (0.4232, -0.0042, 0.1111, -0.2492),
         (0.4341, 0.1068, -0.0362, -0.2188))

FACTORS: dict[str, tuple[tuple, tuple]] = {
    "sd1": (_SD1, (0.0, 0.0, 0.0)),
    "sd2": (_SD1, (0.0, 0.0, 0.0)),
    "sdxl": (_SDXL, (0.1084, -0.0175, -0.0011)),
}

# Early in sampling the latents are mostly noise scaled by the sampler's sigma (about 14 at the start for
# Euler-type schedulers); the factors expect a clean latent's range (std about 1). Latents wider than this
# are brought back to std 1, so early previews show structure instead of saturated noise.
_CLEAN_STD = 1.5


def latents_to_rgb(latents, family: str):
    """A 3×H×W float tensor in 0..1 from one image's latents (C×H×W, or 1×C×H×W); a copy on the CPU."""
    import torch

    if family not in FACTORS:
        raise ValueError(f"no latent preview map for model family {family!r}")
    matrix, bias = FACTORS[family]
    with torch.no_grad():
        x = latents[0] if latents.dim() == 4 else latents
        x = x.detach().to("cpu", torch.float32)  # may be the very tensor: only read below
        if x.shape[0] != len(matrix[0]):
            raise ValueError(f"a {family} preview map takes {len(matrix[0])} latent channels, not {x.shape[0]}")
        std = float(x.std())
        if std > _CLEAN_STD:
            x = x / std
        rgb = torch.einsum("rc,chw->rhw", torch.tensor(matrix), x) + torch.tensor(bias).view(3, 1, 1)
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)  # the factors give -1..1, as the VAE's output


def latents_to_image(latents, family: str) -> Any:
    """A small PIL image (the latent size: the image's width and height / 8) of one image's latents."""
    import torch
    from PIL import Image

    rgb = latents_to_rgb(latents, family)
    pixels = (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels, "RGB")

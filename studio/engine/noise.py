"""Seeds, generators and initial noise: one generator per image, drawn on a stated device."""

from __future__ import annotations

import hashlib
import secrets

from studio.settings import MAX_SEED


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def image_seeds(first: int, batch: int) -> list[int]:
    """Image i of a batch gets seed+i (wrapping), so any image can be made again alone."""
    return [(first + i) % (MAX_SEED + 1) for i in range(batch)]


def make_generators(seeds: list[int], device: str):
    import torch

    # One generator per image, never one shared: a shared one makes image i depend on the batch.
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def initial_latents(generators, shape: tuple[int, int, int], device: str):
    """Per-image standard normal latents (fp32) from each image's own generator, moved to ``device``."""
    import torch

    parts = [torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.cat(parts).to(device)


def fingerprint(latents, salt: str = "") -> str:
    """sha256 over the latents as contiguous little-endian fp32, prefixed by their shape; then ``salt``
    (what else decides where the noise lands: an input image's hash and the step it is added at)."""
    import torch

    t = latents.detach().to(device="cpu", dtype=torch.float32).contiguous()
    h = hashlib.sha256(("x".join(str(d) for d in t.shape) + ";").encode())
    h.update(t.numpy().astype("<f4", copy=False).tobytes())
    if salt:
        h.update(b";" + salt.encode())
    return h.hexdigest()


def image_fingerprints(latents, salt: str = "") -> list[str]:
    """The first 16 hex digits of each image's own fingerprint (shape 1×C×H×W)."""
    return [fingerprint(latents[i : i + 1], salt)[:16] for i in range(latents.shape[0])]

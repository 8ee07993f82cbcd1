"""Comparing two images (or two latent tensors, or two runs) with numbers and a heatmap."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes

ONE_LEVEL = 1 / 255  # one 8-bit step: the default tolerance


@dataclass
class Comparison:
    verdict: str  # identical | within_tolerance | different
    max_abs_diff: float
    mean_abs_diff: float
    psnr_db: Optional[float]  # None when identical (infinite)
    pct_pixels_differ: float  # share of pixels with any channel different at all
    pct_pixels_differ_1_255: float  # ... by more than one 8-bit level
    tolerance: float
    heatmap: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def compare_arrays(a, b, tolerance: float = ONE_LEVEL, data_range: float = 1.0) -> Comparison:
    """Metrics between two arrays of equal shape: images H×W×C or N×H×W×C in 0..1, or latents."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise StudioError(f"cannot compare arrays of shapes {a.shape} and {b.shape}; they must be the same")
    diff = np.abs(a - b)
    per_pixel = diff.max(axis=-1) if diff.ndim >= 3 else diff
    max_abs = float(diff.max()) if diff.size else 0.0
    mse = float((diff**2).mean()) if diff.size else 0.0
    verdict = "identical" if max_abs == 0 else "within_tolerance" if max_abs <= tolerance else "different"
    return Comparison(
        verdict=verdict,
        max_abs_diff=max_abs,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        psnr_db=None if mse == 0 else round(10 * math.log10(data_range**2 / mse), 4),
        pct_pixels_differ=100 * float((per_pixel > 0).mean()),
        pct_pixels_differ_1_255=100 * float((per_pixel > ONE_LEVEL + 1e-12).mean()),
        tolerance=tolerance,
    )


MAX_IMAGE_BYTES = 256 * 1024 * 1024


def load_image(path: Path) -> np.ndarray:
    """An image file as float RGB in 0..1, or a StudioError saying why it cannot be read.

    Only a regular file is opened (a FIFO would block the open forever); Pillow's decompression-bomb
    limit is an error here, and any other failure of a damaged file is one StudioError line.
    """
    import warnings

    from PIL import Image

    from studio.untrusted import check_regular_file

    check_regular_file(path, MAX_IMAGE_BYTES, f"image {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged metadata; the pixels decide
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except MemoryError:
        raise StudioError(f"cannot read image {path}: not enough memory for an image this large") from None
    except Exception as exc:  # OSError, UnidentifiedImageError, DecompressionBomb*, SyntaxError, struct.error ...
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip() or type(exc).__name__
        raise StudioError(f"cannot read image {path}: {text.splitlines()[0]}") from None


def compare_images(path_a: Path, path_b: Path, tolerance: float = ONE_LEVEL) -> tuple[Comparison, np.ndarray, np.ndarray]:
    a, b = load_image(path_a), load_image(path_b)
    if a.shape != b.shape:
        raise StudioError(f"the images differ in size: {Path(path_a).name} is {a.shape[1]}x{a.shape[0]}, "
                          f"{Path(path_b).name} is {b.shape[1]}x{b.shape[0]}; compare images of the same size")
    return compare_arrays(a, b, tolerance), a, b


def heatmap_png(a, b) -> bytes:
    """The per-pixel difference (largest channel), amplified so the largest shows at full scale.

    Black is equal; then red, yellow and white as the difference grows. Several images (N×H×W×C)
    are laid side by side.
    """
    from PIL import Image

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 4:
        a, b = np.concatenate(list(a), axis=1), np.concatenate(list(b), axis=1)
    d = np.abs(a - b).max(axis=-1)
    peak = d.max()
    v = d / peak if peak > 0 else d
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_heatmap(a, b, path: Path) -> str:
    atomic_write_bytes(Path(path), heatmap_png(a, b))
    return str(path)

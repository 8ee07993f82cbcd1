"""Input images and masks for image-to-image, inpaint and outpaint, before any model runs.

Reading (any file, bytes, PIL image or uint8 array becomes an 8-bit RGB image, or an 8-bit L mask,
with a short note for every conversion made), the inputs store (images kept by the hash of their
pixels, so a request, preset or image record names an input by hash and never by path), and the
pixel arithmetic around a run: sizes, outpaint canvases, mask boxes and the final composite, which
keeps every pixel the mask keeps exactly as it was.

Pure PIL + numpy: nothing here imports torch or diffusers.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import threading
import typing
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from studio.errors import StudioError
from studio.settings import ImageMode
from studio.fsutil import atomic_write_bytes
from studio.untrusted import MAX_INPUT_FILE_BYTES, MAX_INPUT_PIXELS, MAX_INPUT_SIDE, read_bounded

INPUTS_FOLDER = "inputs"  # the inputs store: this folder of the output folder
MODES = typing.get_args(ImageMode)  # the request's modes (settings.ImageMode)
DEFAULT_STRENGTH = {"vary-subtle": 0.5, "vary-strong": 0.85, "upscale-1.5": 0.382, "upscale-2": 0.382,
                    "inpaint": 1.0, "outpaint": 1.0}  # Fooocus's values
UPSCALE_FACTOR = {"upscale-1.5": 1.5, "upscale-2": 2.0}

# Only these decoders ever see an input file: Pillow has many more (EPS runs Ghostscript, for one).
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "AVIF")
_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF, TIFF or AVIF"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
_ORIENTATION = {  # EXIF orientation → the transpose that turns the picture upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_TRANSPARENCY_MODES = ("1", "L", "P", "RGB")  # modes whose transparency can be a tRNS colour in info
_SHA = re.compile(r"[0-9a-f]{64}")
_AGAIN = "open the original image again (studio generate --image FILE)"


# --- reading -------------------------------------------------------------------------------------

def read_image(source, what: str = "input image") -> tuple[Image.Image, list[str]]:
    """``source`` (a file's Path or str, bytes, a PIL image, or a uint8 H×W, H×W×3 or H×W×4 array) as
    an 8-bit RGB image, with one short note for each conversion made (none for a plain 8-bit RGB image).

    Not an image, unreadable, damaged, empty, too large (MAX_INPUT_SIDE, MAX_INPUT_PIXELS) or a file
    over MAX_INPUT_FILE_BYTES or not a regular file: a StudioError.
    """
    image, label, notes = _open(source, what)
    return _clean(_to_rgb(image, notes, label)), notes


def read_mask(source, size: tuple[int, int], what: str = "mask") -> tuple[Image.Image, list[str]]:
    """The mask in ``source`` as an 8-bit L image of exactly ``size`` (W, H), with notes as read_image.

    White (255) is repainted, black kept, greys kept as greys. An image with an alpha channel that is
    not fully opaque (a layer painted in an editor) gives its alpha; any other becomes L by luminance.
    A mask of another size is resized (Lanczos) to ``size``. Refused as read_image refuses.
    """
    width, height = _check_target_size(size)
    image, label, notes = _open(source, what)
    mask = _to_mask(image, notes, label)
    if mask.size != (width, height):
        notes.append(f"{what} was {mask.width}×{mask.height}, resized to the image's {width}×{height}")
        mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    return _clean(mask), notes


def pixel_sha256(image) -> str:
    """The sha256 (hex) of ``image``'s mode, size and pixels: the same picture has the same hash
    whichever file or encoder it came from (PNG or lossless WebP, say), on every machine."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height};".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _open(source, what: str) -> tuple[Image.Image, str, list[str]]:
    """``source`` as a loaded PIL image in its own mode, turned upright; its label for messages; notes."""
    notes: list[str] = []
    if isinstance(source, Image.Image):
        label, image = what, source
        _check_size(image.size, label)
        try:
            image.load()
        except Exception as exc:  # a lazily opened image whose file is damaged
            raise StudioError(f"{label} is damaged or cut short ({_brief(exc)}): save it again or choose "
                              "another image") from None
    elif isinstance(source, np.ndarray):
        label, image = what, _from_array(source, what)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label, data = what, bytes(source)
        if len(data) > MAX_INPUT_FILE_BYTES:
            raise StudioError(f"{label} is {len(data) / 2**20:.1f} MiB, over the {MAX_INPUT_FILE_BYTES >> 20} MiB "
                              "limit: make it smaller first")
        image = _decode(data, label, notes=notes)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"{what} {path.name or source}"
        data = read_bounded(path, MAX_INPUT_FILE_BYTES, label)
        image = _decode(data, label, notes=notes)
    else:
        raise StudioError(f"{what} must be an image file, not a {type(source).__name__}")
    return _upright(image, notes), label, notes


def _decode(data: bytes, label: str, formats=_FORMATS, notes: Optional[list[str]] = None) -> Image.Image:
    """The image in ``data``, loaded (its first frame); its size is checked from the header before any
    pixel is decoded."""
    if not data:
        raise StudioError(f"{label} is an empty file: choose an image file")
    Image.init()
    try:
        with warnings.catch_warnings():
            # Pillow's own decompression-bomb check (far above ours) only ever warns or fails here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[f for f in formats if f in Image.OPEN])
            _check_size(image.size, label)
            animated = False
            if image.format != "MPO":  # a camera's MPO holds a preview as its second frame, not animation
                try:
                    animated = bool(getattr(image, "is_animated", False))
                    if animated:
                        image.seek(0)
                except (EOFError, OSError, ValueError):
                    pass
            image.load()
    except StudioError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise StudioError(f"{label} is far larger than the largest input, {MAX_INPUT_SIDE} pixels per side "
                          f"({MAX_INPUT_PIXELS / 1e6:.1f} megapixels): make it smaller first") from None
    except UnidentifiedImageError:
        raise StudioError(f"{label} is not an image studio can read ({_FORMAT_NAMES}): choose an image file") from None
    except MemoryError:
        raise StudioError(f"{label} could not be read: not enough memory") from None
    except Exception as exc:  # a damaged file: Pillow's decoders raise OSError, SyntaxError, ValueError...
        raise StudioError(f"{label} is damaged or cut short ({_brief(exc)}): save it again or choose "
                          "another file") from None
    if animated and notes is not None:
        notes.append("used the first frame of an animated image")
    return image


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise StudioError(f"{what} must have 8-bit (uint8) pixels, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise StudioError(f"{what} must be an H×W, H×W×3 or H×W×4 array, not {'×'.join(map(str, array.shape))}")
    _check_size((array.shape[1], array.shape[0]), what)
    return Image.fromarray(np.ascontiguousarray(array))


def _check_size(size, label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise StudioError(f"{label} is empty ({width}×{height} pixels): choose another image")
    if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        raise StudioError(f"{label} is {width}×{height}; the largest is {MAX_INPUT_SIDE} pixels per side "
                          f"({MAX_INPUT_PIXELS / 1e6:.1f} megapixels): make it smaller first")


def _check_target_size(size) -> tuple[int, int]:
    try:
        width, height = (int(side) for side in size)
    except (TypeError, ValueError):
        raise ValueError(f"a mask size is (width, height), not {size!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"a mask size must be positive, not {width}×{height}")
    return width, height


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:120] if text else type(exc).__name__) or type(exc).__name__


def _upright(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` turned as its EXIF orientation says (a broken EXIF block is ignored)."""
    try:
        method = _ORIENTATION.get(int(image.getexif().get(0x0112, 1)))
    except Exception:  # no, or unreadable, EXIF: the picture is taken as it is stored
        method = None
    if method is None:
        return image
    notes.append("turned upright as its EXIF orientation says")
    return image.transpose(method)


def _clean(image: Image.Image) -> Image.Image:
    """A plain, loaded Image with no file behind it and no metadata (EXIF, ICC, text) carried along."""
    out = image.copy()
    out.info = {}
    return out


def _to_8bit(image: Image.Image, notes: list[str]) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit L, by a fixed mapping (never the image's own range)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and float(values.max()) <= 1.0:
            notes.append("floating-point values 0..1 scaled to 8 bits (× 255)")
            values = values * np.float32(255)
        else:
            notes.append("floating-point values clipped to 0..255 as 8 bits")
        out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        wide = values.astype(np.int64)
        out = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)  # value ÷ 257, rounded
        if image.mode == "I":
            notes.append("32-bit integer values scaled to 8 bits (value ÷ 257, clipped to 0..255)")
        else:
            notes.append("16-bit values scaled to 8 bits (value ÷ 257: 0..65535 → 0..255)")
    return Image.fromarray(out)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in _TRANSPARENCY_MODES and "transparency" in image.info)


def _as_rgba(image: Image.Image) -> Image.Image:
    if image.mode == "La":
        image = image.convert("LA")
    return image if image.mode == "RGBA" else image.convert("RGBA")


def _convert(image: Image.Image, mode: str, label: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:
        try:
            return image.convert("RGB").convert(mode)
        except ValueError:
            raise StudioError(f"{label} has colour mode {image.mode}, which studio cannot convert: save it "
                              "as an 8-bit RGB PNG or JPEG") from None


def _to_rgb(image: Image.Image, notes: list[str], label: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _HIGH_BIT:
        gray = _to_8bit(image, notes)
        notes.append("grayscale made RGB")
        return gray.convert("RGB")
    if _has_alpha(image):
        if mode in ("P", "PA"):
            notes.append("palette (indexed) colours made RGB")
        rgba = np.asarray(_as_rgba(image))
        alpha = rgba[:, :, 3]
        if alpha.min() == 255:  # nothing changes: no note (an image editor stores every picture as RGBA)
            out = np.ascontiguousarray(rgba[:, :, :3])
        else:
            notes.append("transparent areas composited onto white")
            a = alpha.astype(np.float32)[:, :, None] / np.float32(255)
            blend = rgba[:, :, :3].astype(np.float32) * a + np.float32(255) * (np.float32(1) - a)
            out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        if mode in ("LA", "La") or (mode in ("1", "L")):
            notes.append("grayscale made RGB")
        return Image.fromarray(out)
    notes.append({"1": "black-and-white (1-bit) made RGB", "L": "grayscale made RGB",
                  "P": "palette (indexed) colours made RGB", "CMYK": "CMYK colours converted to RGB",
                  }.get(mode, f"{mode} colours converted to RGB"))
    return _convert(image, "RGB", label)


def _to_mask(image: Image.Image, notes: list[str], label: str) -> Image.Image:
    mode = image.mode
    if mode in _HIGH_BIT:
        return _to_8bit(image, notes)
    if _has_alpha(image):
        alpha = _as_rgba(image).getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("took the mask from the alpha channel")
            return alpha
        if mode in ("LA", "La") or (mode == "L"):
            notes.append("dropped its alpha channel (fully opaque)")
        else:
            notes.append("made grayscale by luminance (its alpha channel is fully opaque)")
        return _convert(_as_rgba(image) if mode in ("RGBa", "La", "PA", "P") else image, "L", label)
    if mode == "L":
        return image
    if mode == "1":
        notes.append("black-and-white (1-bit) mask made 8-bit")
    else:
        notes.append("made grayscale by luminance")
    return _convert(image, "L", label)


# --- the inputs store ----------------------------------------------------------------------------

class InputStore:
    """Input images and masks kept by the hash of their pixels, as ``<sha>.png``, in one folder (the
    output folder's ``inputs/``), so a request, preset or image's metadata names an input by hash and
    never by path."""

    HELD = 8  # inputs a plan preview may name before a run stores them (held in memory, newest kept)

    def __init__(self, root: Path):
        self.root = Path(root)
        # The app previews a plan on every change, a stroke of the mask brush included: what it previews is held
        # here, so only the inputs of runs (and of the CLI) become files.
        self._held: "OrderedDict[str, Image.Image]" = OrderedDict()
        self._lock = threading.Lock()

    def path(self, sha: str) -> Path:
        _check_sha(sha)
        return self.root / f"{sha}.png"

    def has(self, sha: str) -> bool:
        """Whether a file is stored under ``sha`` (its pixels are not checked: see get)."""
        return self.path(sha).is_file()

    @staticmethod
    def _storable(image) -> str:
        if not isinstance(image, Image.Image) or image.mode not in ("RGB", "L"):
            kind = image.mode if isinstance(image, Image.Image) else type(image).__name__
            raise StudioError(f"only an RGB image or an L mask goes in the inputs store, not {kind}")
        _check_size(image.size, "input image")
        return pixel_sha256(image)

    def hold(self, image) -> str:
        """Keep an RGB image or an L mask in memory only, named by its pixel_sha256 (which it returns): get()
        finds it, nothing is written. The HELD most recent are kept."""
        sha = self._storable(image)
        with self._lock:
            self._held[sha] = Image.frombytes(image.mode, image.size, image.tobytes())
            self._held.move_to_end(sha)
            while len(self._held) > self.HELD:
                self._held.popitem(last=False)
        return sha

    def put(self, image) -> str:
        """Store an RGB image or an L mask (unless a valid copy is there already); its pixel_sha256."""
        sha = self._storable(image)
        if self.path(sha).exists():
            try:
                self.get(sha)
                return sha
            except StudioError:
                pass  # damaged or changed since: written again
        plain = Image.frombytes(image.mode, image.size, image.tobytes())  # no metadata of any kind
        buffer = io.BytesIO()
        plain.save(buffer, format="PNG")
        atomic_write_bytes(self.path(sha), buffer.getvalue())
        return sha

    def get(self, sha: str) -> Image.Image:
        """The image stored under ``sha``, loaded, its pixels checked against ``sha``."""
        path = self.path(sha)
        label = f"input image {sha[:12]}"
        where = f"the inputs store ({self.root.name}/)"
        if not path.exists():
            with self._lock:
                held = self._held.get(sha)
            if held is not None:
                return held.copy()
            raise StudioError(f"{label} is not in {where}: {_AGAIN}")
        try:
            image = _decode(read_bounded(path, MAX_INPUT_FILE_BYTES, label), label, formats=("PNG",))
        except StudioError:
            raise StudioError(f"{label} in {where} is damaged or was changed since it was stored: {_AGAIN}") from None
        if image.mode not in ("RGB", "L") or pixel_sha256(image) != sha:
            raise StudioError(f"{label} in {where} was changed since it was stored (its pixels no longer "
                              f"match its name): {_AGAIN}")
        return _clean(image)

    def find(self, sha: str, folders: list[Path]) -> Optional[Path]:
        """An image file in ``folders`` (not their subfolders) whose pixels have hash ``sha``, or None.

        A file matches when its read_image RGB, its read_mask L (before any resize) or its plain
        ``.convert("L")`` has that hash, so a stored input is found under any name or format. Files
        that are not images, or over MAX_INPUT_FILE_BYTES, are skipped.
        """
        _check_sha(sha)
        for folder in folders:
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: (e.name != f"{sha}.png", e.name))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                try:
                    if not entry.is_file() or entry.stat().st_size > MAX_INPUT_FILE_BYTES:
                        continue
                except OSError:
                    continue
                if sha in _file_hashes(Path(entry.path)):
                    return Path(entry.path)
        return None


def _check_sha(sha) -> None:
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise StudioError(f"input image {str(sha)[:80]!r} is not named by its content hash "
                          "(64 lowercase hex digits)")


def _file_hashes(path: Path) -> set[str]:
    """The hashes ``path``'s picture can be stored under (none if it cannot be read)."""
    try:
        image, label, _ = _open(path, "input image")
    except StudioError:
        return set()
    hashes = set()
    for convert in (_to_rgb, _to_mask):
        try:
            hashes.add(pixel_sha256(convert(image, [], label)))
        except StudioError:
            pass
    try:
        hashes.add(pixel_sha256(image.convert("L")))
    except ValueError:
        pass
    return hashes


# --- sizes -----------------------------------------------------------------------------------------

def round_to(value: float, multiple: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (halves up), at least ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def upscaled_size(width: int, height: int, factor: float, multiple: int = 8) -> tuple[int, int]:
    return round_to(width * factor, multiple), round_to(height * factor, multiple)


def fit_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """Each side rounded down to a multiple (at least ``multiple``): the size an input runs at in vary/inpaint."""
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized (Lanczos) to ``size``; the same object if it is that size already."""
    size = (int(size[0]), int(size[1]))
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def work_size(box_w: int, box_h: int, target_area: int, multiple: int = 8, max_side: int = 2048) -> tuple[int, int]:
    """The size an "only masked area" crop of box_w×box_h runs at: about ``target_area`` pixels, its
    aspect kept, each side a multiple of ``multiple`` between ``multiple`` and ``max_side``."""
    if box_w <= 0 or box_h <= 0 or target_area <= 0:
        raise ValueError(f"work_size needs a positive box and area, not {box_w}×{box_h} and {target_area}")
    scale = math.sqrt(target_area / (box_w * box_h))
    width, height = box_w * scale, box_h * scale
    longest = max(width, height)
    if longest > max_side:
        width, height = width * max_side / longest, height * max_side / longest
    top = max(multiple, max_side // multiple * multiple)
    return min(top, round_to(width, multiple)), min(top, round_to(height, multiple))


# --- masks and canvases ----------------------------------------------------------------------------

def outpaint_canvas(image: Image.Image, left: int, right: int, top: int,
                    bottom: int) -> tuple[Image.Image, Image.Image]:
    """``image`` on a canvas grown by the given pixels on each side, the new area filled by repeating
    the edge pixels (as Fooocus fills it), and an L mask: 255 over the new area, 0 over the original."""
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"outpaint margins cannot be negative: {left}, {right}, {top}, {bottom}")
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top:top + image.height, left:left + image.width] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """``mask`` blurred (Gaussian, ``radius``); unchanged for radius 0."""
    if radius < 0:
        raise ValueError(f"a blur radius cannot be negative: {radius}")
    if radius == 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur(radius))


def masked_box(mask: Image.Image, padding: int, multiple: int = 8) -> Optional[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the pixels with mask > 0, grown by ``padding``, clamped to the image, then
    grown (still clamped) so each side is a multiple of ``multiple`` where the image allows it (a side
    the image cannot fit a multiple around is the whole side); None for an empty mask."""
    if padding < 0:
        raise ValueError(f"a mask box's padding cannot be negative: {padding}")
    selected = np.asarray(mask) > 0
    if selected.ndim == 3:
        selected = selected.any(axis=2)
    rows, cols = np.flatnonzero(selected.any(axis=1)), np.flatnonzero(selected.any(axis=0))
    if rows.size == 0:
        return None
    height, width = selected.shape
    x0, x1 = _grow(int(cols[0]) - padding, int(cols[-1]) + 1 + padding, width, multiple)
    y0, y1 = _grow(int(rows[0]) - padding, int(rows[-1]) + 1 + padding, height, multiple)
    return x0, y0, x1, y1


def _grow(lo: int, hi: int, limit: int, multiple: int) -> tuple[int, int]:
    lo, hi = max(0, lo), min(limit, hi)
    target = -(-(hi - lo) // multiple) * multiple
    if target > limit:
        return 0, limit
    extra = target - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        lo, hi = 0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return lo, hi


def composite(generated, original, mask) -> np.ndarray:
    """``generated`` (float32 H×W×3 in 0..1) where the mask repaints, ``original`` (RGB, same size)
    where it keeps: generated·m + original/255·(1−m), m = mask/255. Where m is 0 the result is exactly
    original/255 (so (x·255).round() gives back the input's bytes), where m is 1 exactly generated."""
    gen = np.asarray(generated, dtype=np.float32)
    orig = _rgb_array(original) / np.float32(255)
    m = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) and mask.mode != "L" else mask,
                   dtype=np.float32) / np.float32(255)
    if gen.shape != orig.shape or m.shape != orig.shape[:2]:
        raise ValueError(f"composite needs one size: generated {gen.shape}, original {orig.shape}, mask {m.shape}")
    weight = m[:, :, None]
    out = gen * weight
    out += orig * (np.float32(1) - weight)
    keep = m == 0
    out[keep] = orig[keep]  # exact even where generated is not finite (NaN·0 is NaN); where m is 1, g·1 + o·0 is g
    return out


def paste_crop(base, crop_generated, box: tuple[int, int, int, int], mask) -> np.ndarray:
    """The full picture after an "only masked area" run: ``crop_generated`` (float32, the crop's work
    size) resized (Lanczos, in float) to ``box``, put into ``base`` (the RGB original) at ``box``, and
    composited with the full-size ``mask`` (where it is 0: exactly base/255)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    base_pixels = _rgb_array(base)
    height, width = base_pixels.shape[:2]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {box} is not inside the {width}×{height} image")
    crop = np.asarray(crop_generated, dtype=np.float32)
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"a generated crop is H×W×3, not {crop.shape}")
    if crop.shape[:2] != (y1 - y0, x1 - x0):
        crop = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(crop[:, :, c]))
                                    .resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), dtype=np.float32)
                         for c in range(3)], axis=2)
        crop = np.clip(crop, 0, 1)
    full = base_pixels / np.float32(255)
    full[y0:y1, x0:x1] = crop
    return composite(full, base_pixels, mask)


def _rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(image, dtype=np.float32)
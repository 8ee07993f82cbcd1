"""JPEG and WebP metadata through EXIF, the way A1111 writes it (read by A1111, Forge, civitai).

- The A1111 infotext goes to UserComment (0x9286, Exif IFD) as ``b"UNICODE\\0"`` + UTF-16 (big-endian,
  as piexif writes it).
- The studio record (JSON, ASCII-only) goes to ImageDescription (0x010E, IFD0).
"""

from __future__ import annotations

import io

from PIL import Image, TiffImagePlugin, TiffTags

from studio.errors import StudioError

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
IMAGE_DESCRIPTION = 0x010E
UNICODE_PREFIX = b"UNICODE\0"
ASCII_PREFIX = b"ASCII\0\0\0"
JIS_PREFIX = b"JIS\0\0\0\0\0"
UNDEFINED_PREFIX = b"\0" * 8
JPEG_EXIF_LIMIT = 65533  # one APP1 segment; Pillow writes EXIF in one
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def user_comment_bytes(text: str) -> bytes:
    return UNICODE_PREFIX + text.encode("utf-16-be", errors="surrogatepass")


def exif_bytes(infotext: str, studio_json: str | None) -> bytes:
    """EXIF (``Exif\\0\\0`` + TIFF) holding UserComment and ImageDescription.

    Written with Pillow's TIFF directory writer rather than ``Image.Exif.tobytes()``: that one types a
    bytes value as BYTE, and piexif (A1111's reader) turns a BYTE UserComment into a tuple of ints
    and fails on it. Here UserComment is UNDEFINED, as the EXIF standard and piexif have it.
    """
    if studio_json is not None and not studio_json.isascii():
        raise StudioError("studio JSON for EXIF must be ASCII (json.dumps(..., ensure_ascii=True))")
    head = b"MM\x00\x2a\x00\x00\x00\x08"  # big-endian TIFF, IFD0 right after the header
    ifd0 = TiffImagePlugin.ImageFileDirectory_v2(head)
    if studio_json is not None:
        ifd0[IMAGE_DESCRIPTION] = studio_json
    ifd0.tagtype[EXIF_IFD] = TiffTags.LONG
    ifd0[EXIF_IFD] = 0
    exif_offset = 8 + len(ifd0.tobytes(8))  # the pointer's value does not change IFD0's length
    ifd0[EXIF_IFD] = exif_offset
    sub = TiffImagePlugin.ImageFileDirectory_v2(head, group=EXIF_IFD)
    sub.tagtype[USER_COMMENT] = TiffTags.UNDEFINED
    sub[USER_COMMENT] = user_comment_bytes(infotext)
    return b"Exif\x00\x00" + head + ifd0.tobytes(8) + sub.tobytes(exif_offset)


def encode_with_exif(image: Image.Image, fmt: str, infotext: str, studio_json: str | None,
                     quality: int = 95) -> bytes:
    """The image as JPEG or WebP bytes with the infotext in UserComment and the studio JSON in ImageDescription."""
    pil_format = FORMATS.get(fmt.lower())
    if pil_format is None:
        raise StudioError(f"EXIF metadata is for jpeg or webp, not {fmt!r}")
    exif = exif_bytes(infotext, studio_json)
    if pil_format == "JPEG" and len(exif) > JPEG_EXIF_LIMIT:
        raise StudioError(f"metadata is {len(exif)} bytes, over JPEG's {JPEG_EXIF_LIMIT}-byte EXIF limit; "
                          "save as PNG")
    if pil_format == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    options = {"quality": quality}
    if pil_format == "WEBP" and quality >= 100:
        options = {"lossless": True}
    image.save(buf, format=pil_format, exif=exif, **options)
    return buf.getvalue()


def decode_user_comment(raw) -> str | None:
    """UserComment bytes → text: UNICODE (UTF-16, either byte order), ASCII, JIS, undefined or no prefix."""
    if raw is None:
        return None
    if isinstance(raw, str):  # some writers (Fooocus) store it as a plain string
        return raw.rstrip("\0")
    if not isinstance(raw, (bytes, bytearray)):
        return None
    raw = bytes(raw)
    if raw.startswith(UNICODE_PREFIX):
        return _utf16(raw[len(UNICODE_PREFIX):])
    if raw.startswith(ASCII_PREFIX):
        return raw[len(ASCII_PREFIX):].decode("utf-8", errors="replace").rstrip("\0")
    if raw.startswith(JIS_PREFIX):
        return raw[len(JIS_PREFIX):].decode("shift_jis", errors="replace").rstrip("\0")
    if raw.startswith(UNDEFINED_PREFIX):
        raw = raw[len(UNDEFINED_PREFIX):]
    return raw.decode("utf-8", errors="replace").rstrip("\0")


def _utf16(data: bytes) -> str:
    """piexif writes big-endian; some writers use little-endian. A BOM decides, else where the zero bytes sit
    (Latin text in UTF-16BE has its zero bytes at even offsets)."""
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", errors="replace").rstrip("\0")
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", errors="replace").rstrip("\0")
    if len(data) % 2:
        data = data[:-1]
    sample = data[:4096]
    even_zeros = sample[0::2].count(0)
    odd_zeros = sample[1::2].count(0)
    orders = ("utf-16-le", "utf-16-be") if odd_zeros > even_zeros else ("utf-16-be", "utf-16-le")
    for order in orders:
        try:
            return data.decode(order).rstrip("\0")
        except UnicodeDecodeError:
            continue
    return data.decode(orders[0], errors="replace").rstrip("\0")


def _text(value) -> str | None:
    if isinstance(value, str):
        return value.rstrip("\0")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace").rstrip("\0")
    return None


def read_exif_text(image: Image.Image) -> dict:
    """{"parameters": UserComment text or None, "studio": ImageDescription text or None}."""
    exif = image.getexif()
    comment = None
    try:
        comment = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # a damaged Exif IFD pointer: treat as absent
        comment = None
    if comment is None:
        comment = exif.get(USER_COMMENT)  # Fooocus puts it in IFD0
    parameters = decode_user_comment(comment)
    return {"parameters": parameters if parameters else None,
            "studio": _text(exif.get(IMAGE_DESCRIPTION)) or None}

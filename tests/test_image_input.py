"""studio.image_input: reading input images and masks, the inputs store, and the pixel arithmetic
around image-to-image, inpaint and outpaint. Every file is written here, by PIL, in tmp_path."""

import hashlib
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio import image_input
from studio.errors import StudioError
from studio.image_input import (
    DEFAULT_STRENGTH, MODES, UPSCALE_FACTOR, InputStore, blur_mask, composite, fit_size, masked_box,
    outpaint_canvas, paste_crop, pixel_sha256, read_image, read_mask, resize, round_to, upscaled_size,
    work_size,
)
from studio.untrusted import MAX_INPUT_FILE_BYTES, MAX_INPUT_PIXELS, MAX_INPUT_SIDE


def noise(width=30, height=20, channels=3, seed=0):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


RGB = noise()


def save(tmp_path, name, image, fmt=None, **params):
    path = tmp_path / name
    image.save(path, fmt, **params)
    return path


def refusal(source, **kwargs) -> str:
    reader = kwargs.pop("reader", read_image)
    with pytest.raises(StudioError) as info:
        reader(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def png_header_only(width, height) -> bytes:
    """A PNG that claims width×height grey pixels but holds almost none (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# --- read_image ----------------------------------------------------------------------------------

def test_an_rgb_png_is_read_as_it_is_with_no_notes(tmp_path):
    text = PngInfo()
    text.add_text("parameters", "a prompt")
    image, notes = read_image(save(tmp_path, "photo.png", Image.fromarray(RGB), pnginfo=text))
    assert notes == []
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), RGB)
    assert image.info == {}  # nothing of the file (text, EXIF, ICC) carried along


@pytest.mark.parametrize("kind", ["cmyk-jpeg", "palette", "palette-transparent", "rgba", "rgba-opaque", "la",
                                  "i16", "grayscale", "bilevel", "rgb-trns"])
def test_each_conversion_gives_8_bit_rgb_and_says_so(tmp_path, kind):
    rgb = Image.fromarray(RGB)
    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    alpha = np.tile(np.array([0, 128, 255], dtype=np.uint8), (20, 10))  # three kinds of column
    if kind == "cmyk-jpeg":
        path = save(tmp_path, "x.jpg", rgb.convert("CMYK"), "JPEG", quality=95)
        expected, notes = None, ["CMYK colours converted to RGB"]
    elif kind == "palette":
        palette = rgb.convert("P")
        path = save(tmp_path, "x.png", palette)
        expected, notes = np.asarray(palette.convert("RGB")), ["palette (indexed) colours made RGB"]
    elif kind == "palette-transparent":
        palette = rgb.convert("P")
        index = palette.getpixel((0, 0))
        path = save(tmp_path, "x.png", palette, transparency=index)
        expected = np.asarray(palette.convert("RGB")).copy()
        expected[np.asarray(palette) == index] = 255
        notes = ["palette (indexed) colours made RGB", "transparent areas composited onto white"]
    elif kind in ("rgba", "rgba-opaque"):
        a = alpha if kind == "rgba" else np.full_like(alpha, 255)
        path = save(tmp_path, "x.png", Image.fromarray(np.dstack([RGB, a])))
        w = a[:, :, None] / 255.0
        expected = np.rint(RGB * w + 255 * (1 - w)).astype(np.uint8)
        notes = (["transparent areas composited onto white"] if kind == "rgba"
                 else [])
    elif kind == "la":
        path = save(tmp_path, "x.png", Image.fromarray(np.dstack([gray, alpha]), "LA"))
        w = alpha / 255.0
        expected = np.repeat(np.rint(gray * w + 255 * (1 - w)).astype(np.uint8)[:, :, None], 3, axis=2)
        notes = ["transparent areas composited onto white", "grayscale made RGB"]
    elif kind == "i16":
        wide = (gray.astype(np.uint16) * 257)
        wide[0, :3] = [0, 128, 65535]  # 128 / 257 rounds to 0, 65535 / 257 is 255
        path = save(tmp_path, "x.png", Image.fromarray(wide))
        with Image.open(path) as stored:
            assert stored.mode.startswith("I")  # Pillow reads it as 16-bit, not 8
        expected8 = gray.copy()
        expected8[0, :3] = [0, 0, 255]
        expected = np.repeat(expected8[:, :, None], 3, axis=2)
        notes = ["16-bit values scaled to 8 bits (value ÷ 257: 0..65535 → 0..255)", "grayscale made RGB"]
    elif kind == "grayscale":
        path = save(tmp_path, "x.png", Image.fromarray(gray))
        expected, notes = np.repeat(gray[:, :, None], 3, axis=2), ["grayscale made RGB"]
    elif kind == "bilevel":
        path = save(tmp_path, "x.png", Image.fromarray(gray).convert("1"))
        expected = None
        notes = ["black-and-white (1-bit) made RGB"]
    else:  # an RGB PNG whose tRNS chunk makes one colour transparent
        path = save(tmp_path, "x.png", rgb, transparency=tuple(RGB[0, 0]))
        expected = RGB.copy()
        expected[(RGB == RGB[0, 0]).all(axis=2)] = 255
        notes = ["transparent areas composited onto white"]
    image, got = read_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)
    assert got == notes
    pixels = np.asarray(image)
    if expected is not None:
        assert np.array_equal(pixels, expected)
    if kind == "cmyk-jpeg":
        assert np.abs(pixels.astype(int) - RGB).mean() < 30  # the colours, not inverted ones
    if kind == "bilevel":
        assert set(np.unique(pixels)) == {0, 255}


def test_32_bit_and_float_images_use_a_fixed_mapping_to_8_bits(tmp_path):
    ints = np.array([[-5, 257 * 100, 70000]], dtype=np.int32)
    image, notes = read_image(save(tmp_path, "i.tif", Image.fromarray(ints)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 255]
    assert notes[0] == "32-bit integer values scaled to 8 bits (value ÷ 257, clipped to 0..255)"
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    image, notes = read_image(save(tmp_path, "f1.tif", Image.fromarray(unit)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]
    assert notes[0] == "floating-point values 0..1 scaled to 8 bits (× 255)"
    wide = np.array([[-3.0, 100.4, 300.0, np.nan]], dtype=np.float32)
    image, notes = read_image(save(tmp_path, "f2.tif", Image.fromarray(wide)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 255, 0]
    assert notes[0] == "floating-point values clipped to 0..255 as 8 bits"


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown turned 90° clockwise
    path = save(tmp_path, "phone.png", Image.fromarray(RGB), exif=exif)
    image, notes = read_image(path)
    assert notes == ["turned upright as its EXIF orientation says"]
    assert image.size == (20, 30)
    assert np.array_equal(np.asarray(image), np.asarray(Image.fromarray(RGB).transpose(Image.Transpose.ROTATE_270)))


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    first = Image.fromarray(RGB).convert("P")
    path = save(tmp_path, "anim.gif", first, save_all=True, append_images=[first.rotate(180)])
    image, notes = read_image(path)
    assert notes == ["used the first frame of an animated image", "palette (indexed) colours made RGB"]
    assert np.array_equal(np.asarray(image), np.asarray(first.convert("RGB")))


def test_bytes_pil_images_and_arrays_are_read_too():
    data = io.BytesIO()
    Image.fromarray(RGB).save(data, "PNG")
    image, notes = read_image(data.getvalue())
    assert notes == [] and np.array_equal(np.asarray(image), RGB)
    image, notes = read_image(Image.fromarray(RGB).convert("L"))
    assert notes == ["grayscale made RGB"] and image.mode == "RGB"
    assert read_image(RGB)[1] == [] and np.array_equal(np.asarray(read_image(RGB)[0]), RGB)
    rgba = np.dstack([RGB, np.zeros((20, 30), np.uint8)])
    image, notes = read_image(rgba)
    assert notes == ["transparent areas composited onto white"] and np.asarray(image).min() == 255
    assert read_image(RGB[:, :, 0])[1] == ["grayscale made RGB"]
    assert "uint8" in refusal(RGB.astype(np.float32) / 255)
    assert "H×W×3" in refusal(np.zeros((4, 4, 2), np.uint8))
    assert "empty" in refusal(np.zeros((0, 4, 3), np.uint8))
    assert "empty" in refusal(Image.new("RGB", (0, 0)))


# --- refusals --------------------------------------------------------------------------------------

def test_what_is_not_an_image_is_refused_in_one_line_naming_only_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    message = refusal(text)
    assert message.startswith("input image notes.png is not an image studio can read")
    assert str(tmp_path) not in message

    full = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(full, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    message = refusal(cut)
    assert message.startswith("input image cut.png is damaged or cut short") and str(tmp_path) not in message

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert refusal(empty) == "input image empty.png is an empty file: choose an image file"

    assert "No such file" in refusal(tmp_path / "missing.png")
    os.mkfifo(tmp_path / "pipe.png")  # never opened: reading one could block forever
    assert refusal(tmp_path / "pipe.png").startswith("cannot read input image pipe.png: not a regular file")
    assert "folder" in refusal(tmp_path)
    # A format Pillow could open but studio never hands to a decoder.
    assert "is not an image studio can read" in refusal(save(tmp_path, "x.ppm", Image.fromarray(RGB)))


def test_too_large_an_image_is_refused_by_our_limit_naming_it(tmp_path):
    wide = save(tmp_path, "wide.png", Image.new("1", (5000, 10)))
    message = refusal(wide)
    assert message == ("input image wide.png is 5000×10; the largest is 4096 pixels per side "
                       "(16.8 megapixels): make it smaller first")
    assert MAX_INPUT_SIDE == 4096 and MAX_INPUT_PIXELS == 4096 * 4096 and MAX_INPUT_FILE_BYTES == 64 << 20
    # A mask is held to the same limits.
    message = refusal(wide, reader=read_mask, size=(8, 8))
    assert message.startswith("mask wide.png is 5000×10; the largest is 4096 pixels per side")


@pytest.mark.parametrize("side", [10000, 20000])  # past Pillow's own warning, and past its error
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = refusal(path)
    assert "4096 pixels per side" in message and "make it smaller first" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_file_over_the_byte_limit_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", Image.fromarray(noise(64, 64)))
    monkeypatch.setattr(image_input, "MAX_INPUT_FILE_BYTES", 1000)
    message = refusal(path)
    assert message.startswith("cannot read input image big.png: it is") and "over the 1000 bytes limit" in message
    assert "limit" in refusal(b"x" * 1001)


# --- read_mask ---------------------------------------------------------------------------------------

def test_a_mask_of_another_size_is_resized_with_a_note(tmp_path):
    mask = np.zeros((200, 300), np.uint8)
    mask[50:150, 100:200] = 255
    out, notes = read_mask(save(tmp_path, "m.png", Image.fromarray(mask)), (512, 512))
    assert notes == ["mask was 300×200, resized to the image's 512×512"]
    assert out.mode == "L" and out.size == (512, 512)
    pixels = np.asarray(out)
    assert pixels[256, 256] == 255 and pixels[10, 10] == 0
    assert ((pixels > 0) & (pixels < 255)).any()  # Lanczos edges are kept as greys


def test_a_same_size_l_mask_is_kept_exactly_with_greys():
    mask = noise(32, 16, channels=1)
    out, notes = read_mask(Image.fromarray(mask), (32, 16))
    assert notes == [] and np.array_equal(np.asarray(out), mask)


def test_the_alpha_channel_of_a_painted_layer_is_the_mask(tmp_path):
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[..., :3] = 200  # the colour painted with does not matter
    layer[4:8, 4:8, 3] = 255
    layer[8:10, 8:10, 3] = 100
    out, notes = read_mask(save(tmp_path, "layer.png", Image.fromarray(layer)), (16, 16))
    assert notes == ["took the mask from the alpha channel"]
    assert np.array_equal(np.asarray(out), layer[..., 3])


def test_an_opaque_colour_mask_is_taken_by_luminance(tmp_path):
    colour = np.zeros((16, 16, 4), np.uint8)
    colour[..., 3] = 255
    colour[2:6, 2:6, :3] = 255
    out, notes = read_mask(save(tmp_path, "m.png", Image.fromarray(colour)), (16, 16))
    assert notes == ["made grayscale by luminance (its alpha channel is fully opaque)"]
    assert np.array_equal(np.asarray(out) == 255, colour[..., 0] == 255)
    out, notes = read_mask(Image.fromarray(colour[..., :3]), (16, 16))
    assert notes == ["made grayscale by luminance"] and np.asarray(out).max() == 255


def test_a_mask_is_refused_like_an_image(tmp_path):
    text = tmp_path / "mask.txt"
    text.write_text("no")
    assert refusal(text, reader=read_mask, size=(8, 8)).startswith("mask mask.txt is not an image")


# --- the inputs store ------------------------------------------------------------------------------

def test_store_round_trip_for_an_image_and_a_mask(tmp_path):
    store = InputStore(tmp_path / "inputs")
    image = Image.fromarray(RGB)
    mask = Image.fromarray(noise(30, 20, channels=1, seed=1))
    for picture in (image, mask):
        sha = pixel_sha256(picture)
        assert not store.has(sha)
        assert store.put(picture) == sha
        assert store.has(sha) and store.path(sha) == tmp_path / "inputs" / f"{sha}.png"
        back = store.get(sha)
        assert back.mode == picture.mode and np.array_equal(np.asarray(back), np.asarray(picture))
    assert pixel_sha256(image) != pixel_sha256(image.convert("L").convert("RGB"))
    assert pixel_sha256(mask) != pixel_sha256(Image.frombytes("L", (20, 30), mask.tobytes()))  # size counts


def test_the_same_picture_has_one_hash_whatever_its_file(tmp_path):
    picture = Image.fromarray(RGB)
    png, _ = read_image(save(tmp_path, "a.png", picture))
    webp, _ = read_image(save(tmp_path, "a.webp", picture, lossless=True))
    assert pixel_sha256(png) == pixel_sha256(webp) == pixel_sha256(picture)
    assert pixel_sha256(picture) == hashlib.sha256(b"RGB:30x20;" + RGB.tobytes()).hexdigest()


def test_the_store_writes_no_metadata_and_repairs_a_changed_file(tmp_path):
    store = InputStore(tmp_path / "inputs")
    picture = Image.fromarray(RGB)
    picture.info["icc_profile"] = b"not really a profile"
    sha = store.put(picture)
    with Image.open(store.path(sha)) as stored:
        assert "icc_profile" not in stored.info
    store.path(sha).write_bytes(b"junk")
    assert store.put(picture) == sha  # the damaged file is written again
    assert np.array_equal(np.asarray(store.get(sha)), RGB)


def test_a_changed_or_damaged_stored_file_is_refused(tmp_path):
    store = InputStore(tmp_path / "inputs")
    sha = store.put(Image.fromarray(RGB))
    Image.fromarray(noise(seed=5)).save(store.path(sha))  # other pixels under the same name
    message = refusal(sha, reader=store.get)
    assert message.startswith(f"input image {sha[:12]} in the inputs store (inputs/) was changed since it was stored")
    store.path(sha).write_bytes(b"\x89PNG junk")
    assert "damaged or was changed" in refusal(sha, reader=store.get)


def test_a_missing_sha_says_what_to_do(tmp_path):
    store = InputStore(tmp_path / "inputs")
    sha = "ab" * 32
    assert refusal(sha, reader=store.get) == (
        f"input image {sha[:12]} is not in the inputs store (inputs/): open the original image again "
        "(studio generate --image FILE)")


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "../" + "a" * 61, "ab" * 32 + "\n", "", None, 7])
def test_a_bad_sha_is_refused(tmp_path, bad):
    store = InputStore(tmp_path / "inputs")
    for call in (store.path, store.has, store.get, lambda s: store.find(s, [tmp_path])):
        assert "64 lowercase hex digits" in refusal(bad, reader=call)


def test_put_takes_only_rgb_or_l(tmp_path):
    store = InputStore(tmp_path / "inputs")
    assert "not RGBA" in refusal(Image.new("RGBA", (4, 4)), reader=store.put)
    assert not (tmp_path / "inputs").exists()


def test_find_locates_a_renamed_copy_and_a_mask(tmp_path):
    store = InputStore(tmp_path / "inputs")
    picture = Image.fromarray(RGB)
    sha = store.put(picture)
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "a-notes.txt").write_text("not an image")
    (elsewhere / "z.png").write_bytes(b"\x89PNG broken")
    save(elsewhere, "other.png", Image.fromarray(noise(seed=3)))
    assert store.find(sha, [elsewhere]) is None
    copy = save(elsewhere, "holiday.webp", picture, lossless=True)
    assert store.find(sha, [tmp_path / "nowhere", elsewhere]) == copy
    # A painted layer is found by the mask read_mask made of it; a grey mask by its L pixels.
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:10, 5:10, 3] = 255
    mask, _ = read_mask(Image.fromarray(layer), (30, 20))
    layer_path = save(elsewhere, "layer.png", Image.fromarray(layer))
    assert store.find(store.put(mask), [elsewhere]) == layer_path
    grey = Image.fromarray(RGB).convert("L")
    grey_path = save(elsewhere, "grey.png", Image.fromarray(RGB))  # found by its .convert("L")
    assert store.find(pixel_sha256(grey), [elsewhere]) == grey_path


def test_find_does_not_look_in_subfolders(tmp_path):
    picture = Image.fromarray(RGB)
    (tmp_path / "deeper").mkdir()
    save(tmp_path / "deeper", "x.png", picture)
    store = InputStore(tmp_path / "inputs")
    assert store.find(pixel_sha256(picture), [tmp_path]) is None
    assert store.find(pixel_sha256(picture), [tmp_path / "deeper"]) == tmp_path / "deeper" / "x.png"


# --- sizes ----------------------------------------------------------------------------------------

def test_round_to_upscaled_size_and_fit_size():
    assert [round_to(v) for v in (0, 3, 11.9, 12, 13, 512, 767.9)] == [8, 8, 8, 16, 16, 512, 768]
    assert round_to(100, 64) == 128 and round_to(95, 64) == 64
    assert upscaled_size(512, 768, 1.5) == (768, 1152)
    assert upscaled_size(1000, 333, 1.5) == (1504, 496)
    assert upscaled_size(832, 1216, 2.0) == (1664, 2432)
    assert fit_size(513, 7) == (512, 8) and fit_size(1024, 1023) == (1024, 1016) and fit_size(70, 70, 64) == (64, 64)


def test_work_size():
    assert work_size(100, 100, 1024 * 1024) == (1024, 1024)
    assert work_size(2000, 2000, 1024 * 1024) == (1024, 1024)  # scaled down as well as up
    w, h = work_size(300, 100, 1024 * 1024)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 3) < 0.05 and abs(w * h - 1024 * 1024) < 0.03 * 1024 * 1024
    assert work_size(4000, 100, 1024 * 1024) == (2048, 48)  # the long side capped, aspect kept
    assert work_size(5000, 1, 1024 * 1024) == (2048, 8)
    assert work_size(64, 64, 1024 * 1024, max_side=512) == (512, 512)


def test_resize_and_blur_mask():
    image = Image.fromarray(RGB)
    assert resize(image, (30, 20)) is image
    bigger = resize(image, (60, 40))
    assert bigger.size == (60, 40) and bigger.mode == "RGB"
    dot = np.zeros((64, 64), np.uint8)
    dot[32, 32] = 255
    mask = Image.fromarray(dot)
    assert blur_mask(mask, 0) is mask
    blurred = np.asarray(blur_mask(mask, 3))
    assert blurred[32, 33] > 0 and blurred[32, 32] < 255 and blurred[0, 0] == 0 and blurred[32, 52] == 0


# --- canvases, boxes and composites --------------------------------------------------------------

def test_outpaint_canvas_sizes_mask_and_edge_fill():
    image = Image.fromarray(RGB)
    canvas, mask = outpaint_canvas(image, left=5, right=7, top=3, bottom=0)
    assert canvas.size == (42, 23) and mask.size == (42, 23) and canvas.mode == "RGB" and mask.mode == "L"
    pixels, m = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(pixels[3:, 5:35], RGB)
    assert (m[3:, 5:35] == 0).all() and (m[:3] == 255).all() and (m[:, :5] == 255).all() and (m[:, 35:] == 255).all()
    assert np.array_equal(pixels[3:, 0], RGB[:, 0]) and np.array_equal(pixels[3:, 41], RGB[:, -1])
    assert np.array_equal(pixels[0, 5:35], RGB[0]) and (pixels[0, 0] == RGB[0, 0]).all()
    same, none = outpaint_canvas(image, 0, 0, 0, 0)
    assert same.size == (30, 20) and np.asarray(none).max() == 0


def test_masked_box_pads_clamps_and_rounds_to_multiples():
    mask = np.zeros((64, 64), np.uint8)
    mask[10, 10] = 255  # 10..11 padded by 4 is 6..15 (9 wide), grown evenly to 16: 3..19
    assert masked_box(Image.fromarray(mask), 4) == (3, 3, 19, 19)
    mask[:] = 0
    mask[1, 62] = 1  # any value over 0 counts
    assert masked_box(Image.fromarray(mask), 10) == (48, 0, 64, 16)  # clamped, then grown inward
    wide = np.zeros((30, 100), np.uint8)
    wide[2:28, 40:41] = 255
    x0, y0, x1, y1 = masked_box(Image.fromarray(wide), 0)
    assert (y0, y1) == (0, 30)  # 32 does not fit in 30 rows: the whole side
    assert (x1 - x0) == 8 and x0 <= 40 and x1 >= 41
    assert masked_box(Image.fromarray(np.zeros((16, 16), np.uint8)), 8) is None
    with pytest.raises(ValueError):
        masked_box(Image.fromarray(mask), -1)


def test_composite_keeps_unmasked_pixels_bit_for_bit():
    rng = np.random.default_rng(2)
    original = Image.fromarray(noise(40, 24, seed=4))
    generated = rng.random((24, 40, 3), dtype=np.float32)
    generated[0, 0] = np.nan  # even a broken generated pixel cannot leak where the mask keeps
    m = np.zeros((24, 40), np.uint8)
    m[:, 20:] = 255
    m[:, 18:20] = 128
    out = composite(generated, original, Image.fromarray(m))
    assert out.dtype == np.float32 and out.shape == (24, 40, 3)
    quantised = (out * 255).round().astype(np.uint8)
    assert np.array_equal(quantised[:, :18], np.asarray(original)[:, :18])
    assert np.array_equal(out[:, 20:], generated[:, 20:])
    half = out[:, 18:20]
    expected = generated[:, 18:20] * (128 / 255) + np.asarray(original)[:, 18:20] / 255 * (127 / 255)
    assert np.allclose(half, expected, atol=1e-6)


def test_paste_crop_puts_the_resized_crop_back_and_keeps_the_rest():
    base = Image.fromarray(noise(64, 48, seed=6))
    m = np.zeros((48, 64), np.uint8)
    m[20:30, 20:40] = 255
    box = masked_box(Image.fromarray(m), 4)
    assert box == (14, 13, 46, 37)  # 16..44 × 16..34 padded, grown evenly to 32 × 24
    crop = np.full((96, 128, 3), 0.25, dtype=np.float32)  # the work size: 4× the box
    crop[:, :, 1] = 0.75
    out = paste_crop(base, crop, box, Image.fromarray(m))
    assert out.shape == (48, 64, 3) and out.dtype == np.float32
    keep = m == 0
    assert np.array_equal((out * 255).round().astype(np.uint8)[keep], np.asarray(base)[keep])
    assert np.allclose(out[20:30, 20:40, 0], 0.25, atol=1e-4) and np.allclose(out[20:30, 20:40, 1], 0.75, atol=1e-4)
    with pytest.raises(ValueError):
        paste_crop(base, crop, (60, 0, 70, 8), Image.fromarray(m))


def test_modes_and_their_defaults():
    assert MODES == ("vary-subtle", "vary-strong", "upscale-1.5", "upscale-2", "inpaint", "outpaint")
    assert set(DEFAULT_STRENGTH) == set(MODES)
    assert DEFAULT_STRENGTH["vary-subtle"] == 0.5 and DEFAULT_STRENGTH["vary-strong"] == 0.85
    assert DEFAULT_STRENGTH["upscale-2"] == 0.382 and DEFAULT_STRENGTH["inpaint"] == 1.0
    assert UPSCALE_FACTOR == {"upscale-1.5": 1.5, "upscale-2": 2.0}


def test_the_module_imports_neither_torch_nor_diffusers():
    code = ("import sys, studio.image_input; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_held_inputs_are_found_but_never_written(tmp_path):
    store = InputStore(tmp_path / "inputs")
    shas = [store.hold(Image.new("L", (8, 8), v)) for v in range(store.HELD + 1)]
    assert not (tmp_path / "inputs").exists()
    assert store.get(shas[-1]).getpixel((0, 0)) == store.HELD
    with pytest.raises(StudioError, match="not in the inputs store"):
        store.get(shas[0])  # only the newest HELD are kept
    assert store.put(Image.new("L", (8, 8), 1)) == shas[1] and store.has(shas[1])

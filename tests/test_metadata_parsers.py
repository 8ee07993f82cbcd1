"""Metadata readers: A1111 infotext, Fooocus presets, EXIF (JPEG/WebP), and reading files that may be hostile."""

import io
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.errors import StudioError
from studio.metadata.a1111 import infotext, parse_infotext, to_request_values
from studio.metadata.exif import decode_user_comment, encode_with_exif, exif_bytes, read_exif_text
from studio.metadata.fooocus import FooocusImport, import_fooocus, load_fooocus_preset
from studio.metadata.read import read_metadata
from studio.settings import build_request

REFERENCE_LINE = ("prompt\nNegative prompt: ugly\n"
                  "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b")


# ---------------------------------------------------------------------------------------------- A1111


def test_reference_infotext():
    parsed = parse_infotext(REFERENCE_LINE)
    assert parsed["prompt"] == "prompt"
    assert parsed["negative_prompt"] == "ugly"
    assert list(parsed["fields"]) == ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash"]
    assert parsed["request"] == {"prompt": "prompt", "negative_prompt": "ugly", "steps": 20, "sampler": "euler_a",
                                 "cfg": 7.0, "seed": 965400086, "width": 512, "height": 512}
    assert parsed["model_hash"] == "45dee52b"
    assert parsed["unknown"] == {}
    build_request(**to_request_values(parsed))


def test_multiline_prompt_and_negative():
    text = ("masterpiece, a castle,\nat night\n\nwith stars\nNegative prompt: lowres,\nblurry\nbad hands\n"
            "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 42, Size: 768x512")
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "masterpiece, a castle,\nat night\n\nwith stars"
    assert parsed["negative_prompt"] == "lowres,\nblurry\nbad hands"
    assert parsed["request"]["sampler"] == "dpmpp_2m_karras"
    assert (parsed["request"]["width"], parsed["request"]["height"]) == (768, 512)
    assert parsed["request"]["cfg"] == 5.5


def test_quoted_values_unknown_fields_and_order():
    text = ('a cat\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 512x768, '
            'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", '
            'Hires prompt: "line one\\nline two, \\"quoted\\"", Hashes: {"vae": "c6a580b13a", "model": "6ce0161689"}, '
            'ADetailer model: face_yolov8n.pt, Clip skip: 2, RNG: CPU, Version: v1.7.0')
    parsed = parse_infotext(text)
    fields = parsed["fields"]
    assert fields["Lora hashes"] == "a: 1, b: 2"
    assert fields["Hires prompt"] == 'line one\nline two, "quoted"'
    assert json.loads(fields["Hashes"]) == {"vae": "c6a580b13a", "model": "6ce0161689"}
    assert list(fields)[-3:] == ["Clip skip", "RNG", "Version"]
    req = parsed["request"]
    assert req["sampler"] == "dpmpp_2m_sde_karras" and req["clip_skip"] == 2 and req["noise_source"] == "cpu"
    assert req["model"] == "v1-5-pruned-emaonly" and parsed["model_hash"] == "6ce0161689"
    assert set(parsed["unknown"]) == {"Lora hashes", "Hires prompt", "Hashes", "ADetailer model", "Version"}


@pytest.mark.parametrize("sampler, schedule, ours", [
    ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
    ("DPM++ 2M", "Automatic", "dpmpp_2m_karras"),  # A1111 ≥ 1.9: DPM++ 2M's own default is karras
    ("DPM++ 2M SDE", "Karras", "dpmpp_2m_sde_karras"),
    ("Euler a", "Automatic", "euler_a"),
    ("Euler", "Uniform", "euler"),
    ("UniPC", "Automatic", "uni_pc"),
    ("DDIM", None, "ddim"), ("LMS", None, "lms"), ("Heun", None, "heun"), ("Euler", None, "euler"),
    ("DPM++ SDE", None, "dpmpp_sde"), ("DPM++ 2M SDE", None, "dpmpp_2m_sde"), ("DPM++ 2M", None, "dpmpp_2m"),
    ("DPM++ 2M Karras", "Karras", "dpmpp_2m_karras"),
])
def test_samplers_and_schedule_type(sampler, schedule, ours):
    sched = f", Schedule type: {schedule}" if schedule else ""
    parsed = parse_infotext(f"p\nSteps: 20, Sampler: {sampler}{sched}, CFG scale: 7, Seed: 1, Size: 512x512")
    assert parsed["request"]["sampler"] == ours
    assert "Sampler" not in parsed["unknown"] and "Schedule type" not in parsed["unknown"]


@pytest.mark.parametrize("sampler, schedule", [("DPM++ 2M", "Exponential"), ("DPM++ 2M SDE", "Automatic"),
                                               ("Euler", "Karras"), ("DPM2 a", None), ("Restart", None)])
def test_samplers_without_equivalent_stay_unknown(sampler, schedule):
    sched = f", Schedule type: {schedule}" if schedule else ""
    parsed = parse_infotext(f"p\nSteps: 20, Sampler: {sampler}{sched}, CFG scale: 7, Seed: 1, Size: 512x512")
    assert "sampler" not in parsed["request"]
    assert parsed["unknown"]["Sampler"] == sampler
    assert parsed["notes"]


def test_bad_and_out_of_range_values_stay_out_of_request():
    parsed = parse_infotext("p\nSteps: lots, Sampler: Euler, CFG scale: 31, Seed: -1, Size: 500x500, "
                            "Clip skip: 13, RNG: NV")
    assert parsed["request"] == {"prompt": "p", "sampler": "euler", "noise_source": "device"}
    assert set(parsed["unknown"]) == {"Steps", "CFG scale", "Seed", "Size", "Clip skip"}
    assert parsed["fields"]["Steps"] == "lots"


def test_text_without_parameters_is_prompt():
    assert parse_infotext("just a prompt")["request"] == {"prompt": "just a prompt"}
    # three `key: value` pairs but none of A1111's fields: a prompt, not parameters
    parsed = parse_infotext("style: anime, mood: dark, light: soft")
    assert parsed["prompt"] == "style: anime, mood: dark, light: soft" and parsed["fields"] == {}
    assert parse_infotext("")["prompt"] == ""


def test_too_long_is_a_studio_error():
    with pytest.raises(StudioError, match="infotext too long"):
        parse_infotext("x" * (64 * 1024 + 1))
    parse_infotext("é" * (32 * 1024))  # exactly 64 KiB of UTF-8 is fine


def test_studio_infotext_round_trip(engine, tiny_request):
    request = tiny_request(prompt="a castle: at night, with stars\nsecond line", negative_prompt="ugly,\nblurry",
                           sampler="dpmpp_2m_sde_karras", steps=7, cfg=6.5, seed=4242, width=64, height=96,
                           clip_skip=2)
    plan = engine.plan(request)
    parsed = parse_infotext(infotext(plan, 0, "fp123"))
    req = parsed["request"]
    assert req["steps"] == 7 and req["sampler"] == "dpmpp_2m_sde_karras" and req["cfg"] == 6.5
    assert req["seed"] == 4242 and (req["width"], req["height"]) == (64, 96) and req["clip_skip"] == 2
    assert req["model"] == plan.model.name and parsed["model_hash"] == plan.model.short_hash
    assert parsed["prompt"] == plan.prompt.prompt_final and parsed["negative_prompt"] == "ugly,\nblurry"
    assert parsed["fields"]["Noise fingerprint"] == "fp123"
    again = engine.plan(build_request(**to_request_values(parsed)))
    assert (again.request.steps, again.sampler, again.request.cfg, again.seeds, again.width, again.height) == \
        (plan.request.steps, plan.sampler, plan.request.cfg, plan.seeds, plan.width, plan.height)


# ---------------------------------------------------------------------------------------------- Fooocus

PRESET = {
    "default_model": "juggernautXL_v8Rundiffusion.safetensors",
    "default_refiner": "None",
    "default_refiner_switch": 0.5,
    "default_loras": [[True, "sd_xl_offset_example-lora_1.0.safetensors", 0.1], [True, "None", 1.0],
                      [False, "None", 1.0]],
    "default_cfg_scale": 4.0,
    "default_sample_sharpness": 2.0,
    "default_sampler": "dpmpp_2m_sde_gpu",
    "default_scheduler": "karras",
    "default_performance": "Speed",
    "default_prompt": "a lighthouse",
    "default_prompt_negative": "lowres",
    "default_styles": ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"],
    "default_aspect_ratio": "1152*896",
    "default_overwrite_step": -1,
    "checkpoint_downloads": {
        "juggernautXL_v8Rundiffusion.safetensors":
            "https://huggingface.co/lllyasviel/fav_models/resolve/main/fav/juggernautXL_v8Rundiffusion.safetensors"},
    "embeddings_downloads": {"easyneg.pt": "https://example.com/embeddings/easyneg.pt"},
    "lora_downloads": {
        "sd_xl_offset_example-lora_1.0.safetensors":
            "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
            "sd_xl_offset_example-lora_1.0.safetensors"},
    "previous_default_models": ["juggernautXL_version8Rundiffusion.safetensors"],
    "default_inpaint_engine_version": "v2.6",
}


def test_fooocus_realistic_preset():
    result = import_fooocus(PRESET)
    assert isinstance(result, FooocusImport)
    # 'Fooocus V2' is the expansion toggle; Fooocus's own style names are not studio's (noted, left out)
    assert result.request_values == {"prompt": "a lighthouse", "negative_prompt": "lowres", "cfg": 4.0,
                                     "sampler": "dpmpp_2m_sde_karras-gpu", "steps": 30, "width": 1152,
                                     "height": 896, "expansion": True,
                                     "loras": [{"name": "sd_xl_offset_example-lora_1.0", "weight": 0.1}]}
    assert result.model_file == "juggernautXL_v8Rundiffusion.safetensors"
    assert result.downloads == [PRESET["checkpoint_downloads"]["juggernautXL_v8Rundiffusion.safetensors"],
                                "https://example.com/embeddings/easyneg.pt",
                                PRESET["lora_downloads"]["sd_xl_offset_example-lora_1.0.safetensors"]]
    assert result.unknown_keys == ["default_inpaint_engine_version"]
    assert set(result.ignored) >= {"default_refiner", "default_refiner_switch",
                                   "default_sample_sharpness", "previous_default_models"}
    assert any("Fooocus V2" in n for n in result.notes)
    assert any("'Fooocus Enhance', 'Fooocus Sharp' are not here" in n for n in result.notes)
    build_request(**result.request_values)


@pytest.mark.parametrize("sampler, scheduler, ours", [
    ("euler", "normal", "euler"), ("euler_ancestral", "normal", "euler_a"), ("heun", "normal", "heun"),
    ("dpmpp_2m", "karras", "dpmpp_2m_karras"), ("dpmpp_2m", "normal", "dpmpp_2m"),
    ("dpmpp_2m_sde", "karras", "dpmpp_2m_sde_karras"), ("dpmpp_2m_sde_gpu", "karras", "dpmpp_2m_sde_karras-gpu"),
    ("dpmpp_sde_gpu", "normal", "dpmpp_sde-gpu"), ("ddim", "normal", "ddim"), ("uni_pc", "normal", "uni_pc"),
    ("lms", "normal", "lms"), ("lcm", "lcm", None), ("euler", "karras", None), ("dpmpp_3m_sde_gpu", "karras", None),
])
def test_fooocus_samplers(sampler, scheduler, ours):
    result = import_fooocus({"default_sampler": sampler, "default_scheduler": scheduler})
    assert result.request_values.get("sampler") == ours
    if ours is None:
        assert any(sampler in n for n in result.notes)


def test_fooocus_steps_and_sizes():
    assert import_fooocus({"default_performance": "Quality"}).request_values == {"steps": 60}
    lightning = import_fooocus({"default_performance": "Lightning"})
    assert lightning.request_values == {"steps": 4} and lightning.notes
    over = import_fooocus({"default_performance": "Speed", "default_overwrite_step": 12})
    assert over.request_values == {"steps": 12} and "default_performance" in over.ignored
    assert import_fooocus({"default_aspect_ratio": "896×1152"}).request_values == {"width": 896, "height": 1152}
    assert import_fooocus({"default_aspect_ratio": "1152*896 | 9:7"}).request_values == {"width": 1152, "height": 896}


def test_fooocus_wrong_types_are_notes():
    result = import_fooocus({"default_cfg_scale": "abc", "default_sampler": 3, "default_performance": ["Speed"],
                             "default_aspect_ratio": 1152, "default_overwrite_step": "10",
                             "default_prompt": None, "checkpoint_downloads": ["http://x"],
                             "lora_downloads": {"a": 5}, "default_cfg_scale_typo": 1, "default_clip_skip": True})
    assert result.request_values == {}
    text = " | ".join(result.notes)
    for key in ("default_cfg_scale: expected a number", "default_sampler", "default_performance",
                "default_aspect_ratio", "default_overwrite_step", "default_prompt", "checkpoint_downloads",
                "lora_downloads[a]", "default_clip_skip"):
        assert key in text
    assert result.unknown_keys == ["default_cfg_scale_typo"]
    assert result.downloads == []
    big = import_fooocus({"default_cfg_scale": 99, "default_overwrite_step": 10**40, "default_aspect_ratio": "1000*999"})
    assert big.request_values == {} and len(big.notes) == 3


def test_fooocus_not_an_object(tmp_path):
    for bad in ([], "preset", None, 3):
        with pytest.raises(StudioError, match="JSON object"):
            import_fooocus(bad)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PRESET))
    assert load_fooocus_preset(path).model_file == PRESET["default_model"]
    for text, message in (("{", "not valid JSON"), ("[" * 100000, "nested too deeply"),
                          ('{"a":' * 100 + "1" + "}" * 100, "nested too deeply")):
        path.write_text(text)
        with pytest.raises(StudioError, match=message):
            load_fooocus_preset(path)


# ---------------------------------------------------------------------------------------------- EXIF / files

INFOTEXT = "東京 café, night\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
RECORD = {"plan": {"prompt": "東京 café"}, "image": {"index": 0, "seed": 5}}


def _image():
    return Image.new("RGB", (32, 24), (200, 30, 60))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_exif_round_trip(fmt, tmp_path):
    data = encode_with_exif(_image(), fmt, INFOTEXT, json.dumps(RECORD, ensure_ascii=True))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == fmt.upper()
        texts = read_exif_text(im)
    assert texts["parameters"] == INFOTEXT
    assert json.loads(texts["studio"]) == RECORD
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(data)
    assert read_metadata(path) == {"format": fmt, "parameters": INFOTEXT, "studio": RECORD}
    assert parse_infotext(read_metadata(path)["parameters"])["prompt"] == "東京 café, night"


def test_user_comment_is_undefined_type():
    """piexif (A1111's reader) needs UserComment typed UNDEFINED (7); as BYTE it reads a tuple and fails."""
    tiff = exif_bytes("Steps: 1 東京", "{}")[6:]
    order = ">" if tiff[:2] == b"MM" else "<"

    def entries(offset):
        count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
        return {tag: (typ, value) for tag, typ, _, value in
                (struct.unpack(order + "HHII", tiff[offset + 2 + 12 * i: offset + 14 + 12 * i]) for i in range(count))}

    ifd0 = entries(struct.unpack(order + "I", tiff[4:8])[0])
    assert ifd0[0x010E][0] == 2  # ImageDescription: ASCII
    assert entries(ifd0[0x8769][1])[0x9286][0] == 7


def test_user_comment_encodings():
    assert decode_user_comment(b"UNICODE\0" + "Steps: 2 東京".encode("utf-16-be")) == "Steps: 2 東京"
    assert decode_user_comment(b"UNICODE\0" + "Steps: 2 東京".encode("utf-16-le")) == "Steps: 2 東京"
    assert decode_user_comment(b"ASCII\0\0\0Steps: 2") == "Steps: 2"
    assert decode_user_comment(b"Steps: 2") == "Steps: 2"
    assert decode_user_comment("Steps: 2") == "Steps: 2"
    assert decode_user_comment(None) is None


def test_exif_without_studio_record(tmp_path):
    # a camera's ImageDescription is not a studio record
    exif = Image.Exif()
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"
    path = tmp_path / "camera.jpg"
    _image().save(path, exif=exif)
    assert read_metadata(path) == {"format": "jpeg", "parameters": None, "studio": None}


def _png(path, **chunks):
    info = PngInfo()
    for key, (value, zipped) in chunks.items():
        info.add_itxt(key, value, zip=zipped)
    _image().save(path, format="PNG", pnginfo=info)
    return path


def test_read_png(tmp_path):
    path = _png(tmp_path / "a.png", parameters=(INFOTEXT, False), studio=(json.dumps(RECORD), True))
    assert read_metadata(path) == {"format": "png", "parameters": INFOTEXT, "studio": RECORD}
    plain = tmp_path / "plain.png"
    _image().save(plain)
    assert read_metadata(plain) == {"format": "png", "parameters": None, "studio": None}


def test_hostile_files(tmp_path):
    def refused(path, message):
        with pytest.raises(StudioError, match=message) as info:
            read_metadata(path)
        assert "\n" not in str(info.value) and str(info.value).startswith("cannot read metadata from")

    # a 2 MB text chunk, compressed: Pillow refuses to decompress it past its 1 MiB text-chunk limit
    bomb = _png(tmp_path / "bomb.png", parameters=("A" * (2 * 1024 * 1024), True))
    refused(bomb, "text chunk is larger than Pillow allows")
    noise = tmp_path / "noise.png"
    noise.write_bytes(bytes(range(256)) * 40)
    refused(noise, "not a PNG, JPEG or WebP")
    good = _png(tmp_path / "good.png", parameters=(INFOTEXT, False)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) - 30])
    refused(tmp_path / "cut.png", "truncated or damaged")
    (tmp_path / "cut.jpg").write_bytes(encode_with_exif(_image(), "jpeg", INFOTEXT, "{}")[:400])
    refused(tmp_path / "cut.jpg", "cannot read metadata")
    refused(_png(tmp_path / "badjson.png", studio=("{not json", False)), "not valid JSON")
    refused(_png(tmp_path / "list.png", studio=("[1, 2]", False)), "not an object")
    refused(_png(tmp_path / "deep.png", studio=("[" * 50000 + "]" * 50000, True)), "nested too deeply")
    refused(_png(tmp_path / "deep2.png", studio=('{"a":' * 200 + "1" + "}" * 200, False)), "nested too deeply")
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.write(good)
        f.truncate(65 * 1024 * 1024)  # sparse: no disk used
    refused(huge, "over the 64 MiB limit")
    refused(tmp_path / "missing.png", "No such file")
    refused(tmp_path, "folder, not a file")
    gif = tmp_path / "x.gif"
    _image().save(gif)
    refused(gif, "not a PNG, JPEG or WebP")
    # a damaged compressed iTXt chunk
    raw = bytearray(_png(tmp_path / "z.png", studio=(json.dumps(RECORD), True)).read_bytes())
    at = raw.find(b"iTXt")
    raw[at + 30: at + 34] = b"\xff\xff\xff\xff"
    (tmp_path / "z2.png").write_bytes(bytes(raw))
    refused(tmp_path / "z2.png", "damaged PNG")  # Pillow's CRC check refuses it
    (tmp_path / "head.png").write_bytes(good[:60])
    refused(tmp_path / "head.png", "damaged")


def test_lone_surrogates_are_refused(tmp_path):
    """Found by bench/fuzz.py: JSON may spell a lone surrogate ("\\ud800"). Read from an image or a Fooocus preset,
    it crashed `studio info --json` (printing), `studio preset import` (saving) and the tokenizer; the readers
    refuse it with one line."""
    from studio.metadata.fooocus_image import parse_fooocus_json

    record = json.dumps({"plan": {"request": {"prompt": "a \ud800"}}, "image": {"seed": 1}})
    assert "\\ud800" in record  # as a file holds it: ASCII JSON
    refusals = [lambda: read_metadata(_png(tmp_path / "s.png", studio=(record, True))),
                lambda: parse_fooocus_json('{"prompt": "a", "styles": ["\\udcff"]}'),
                lambda: import_fooocus({"default_prompt": "\ud800"}),
                lambda: import_fooocus({"\udfff": 1})]
    preset = tmp_path / "fooocus.json"
    preset.write_text('{"default_prompt_negative": "\\ud800"}')
    refusals.append(lambda: load_fooocus_preset(preset))
    for refusal in refusals:
        with pytest.raises(StudioError, match="not valid Unicode") as info:
            refusal()
        assert "\n" not in str(info.value) and str(info.value).isascii()
    # a valid pair is text, and stays
    assert import_fooocus(json.loads('{"default_prompt": "\\ud83e\\udd8a"}')).request_values["prompt"] == "\U0001f98a"


def test_damaged_exif_prints_no_warnings(tmp_path, recwarn):
    """Found by bench/fuzz.py: Pillow's "Truncated File Read" / "Corrupt EXIF data" warnings printed lines of their
    own around `studio info`'s one line."""
    exif = bytearray(exif_bytes("Steps: 1", '{"plan": {}}'))
    struct.pack_into(">I", exif, 6 + 10 + 4, 0xFFFF)  # ImageDescription's count, far past the data
    path = tmp_path / "damaged.jpg"
    _image().save(path, format="JPEG", exif=bytes(exif))
    assert read_metadata(path)["format"] == "jpeg"
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# ---------------------------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_INFOTEXTS = [
    REFERENCE_LINE,
    'a\nb\nNegative prompt: c\nd\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, '
    'Size: 512x512, Lora hashes: "a: 1, b: 2", Hashes: {"model": "x"}, RNG: GPU, Version: v1.9.4',
    INFOTEXT,
]


@st.composite
def mutated_infotext(draw):
    text = draw(st.sampled_from(VALID_INFOTEXTS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.text(alphabet=st.sampled_from(list(',:"\\\n{}[] xSteps0123456789aé東\r')), max_size=8)
                     | st.text(max_size=8))
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + len(piece) + 1:]
        else:
            text = text[:at] + piece + text[at + len(piece):]
    return text


def _check_infotext(text):
    try:
        parsed = parse_infotext(text)
    except StudioError:
        return
    assert set(parsed) >= {"prompt", "negative_prompt", "fields", "request", "model_hash", "unknown"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed["fields"].items())
    assert set(parsed["unknown"]) <= set(parsed["fields"])
    build_request(**to_request_values(parsed))  # what `request` holds is always valid together


@PROPERTY
@given(st.text(max_size=300))
def test_parse_infotext_random_text(text):
    _check_infotext(text)


@PROPERTY
@given(mutated_infotext())
def test_parse_infotext_mutated(text):
    _check_infotext(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)


def _check_fooocus(data):
    try:
        result = import_fooocus(data)
    except StudioError:
        return
    assert isinstance(result, FooocusImport)
    assert all(isinstance(url, str) for url in result.downloads)
    build_request(**result.request_values)


@PROPERTY
@given(json_values)
def test_import_fooocus_random_json(data):
    _check_fooocus(data)


@st.composite
def mutated_preset(draw):
    preset = dict(PRESET)
    keys = list(PRESET)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        key = draw(st.sampled_from(keys))
        if op == "replace":
            preset[key] = draw(json_values)
        elif op == "delete":
            preset.pop(key, None)
        else:
            preset[draw(st.text(max_size=12))] = draw(json_values)
    return preset


@PROPERTY
@given(mutated_preset())
def test_import_fooocus_mutated(data):
    _check_fooocus(data)


@pytest.fixture(scope="module")
def valid_files():
    record = json.dumps(RECORD, ensure_ascii=True)
    info = PngInfo()
    info.add_itxt("parameters", INFOTEXT)
    info.add_itxt("studio", record, zip=True)
    png = io.BytesIO()
    _image().save(png, format="PNG", pnginfo=info)
    return [png.getvalue(), encode_with_exif(_image(), "jpeg", INFOTEXT, record),
            encode_with_exif(_image(), "webp", INFOTEXT, record)]


@PROPERTY
@given(which=st.integers(0, 2), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 10**6))
def test_read_metadata_damaged_files(valid_files, tmp_path_factory, which, flips, cut):
    data = bytearray(valid_files[which])
    for at, value in flips:
        data[at % len(data)] = value
    data = data[: max(1, cut % (len(data) + 50))]
    path = tmp_path_factory.getbasetemp() / "fuzzed.bin"
    path.write_bytes(bytes(data))
    try:
        result = read_metadata(path)
    except StudioError as exc:
        assert "\n" not in str(exc)
        return
    assert result["format"] in ("png", "jpeg", "webp")
    assert result["studio"] is None or isinstance(result["studio"], dict)


def _check_fooocus_image(data):
    from studio.metadata.fooocus_image import parse_fooocus_json

    try:
        text = json.dumps(data)
    except (ValueError, TypeError):
        return
    try:
        parsed = parse_fooocus_json(text)
    except StudioError:
        return
    assert isinstance(data, dict)
    assert all(isinstance(k, str) for k in parsed["unknown"])
    build_request(**parsed["request"])  # what `request` holds is always valid together


@PROPERTY
@given(json_values)
def test_fooocus_image_json_random(data):
    _check_fooocus_image(data)


FOOOCUS_IMAGE = {"prompt": "a fox", "negative_prompt": "", "steps": 30, "guidance_scale": 4.0,
                 "resolution": "(1152, 896)", "seed": "99", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
                 "styles": "['Fooocus V2']", "prompt_expansion": "a fox, intricate", "base_model": "m",
                 "base_model_hash": "0" * 64, "loras": [], "version": "Fooocus v2.5.5"}


@PROPERTY
@given(st.data())
def test_fooocus_image_json_mutated(data):
    meta = dict(FOOOCUS_IMAGE)
    for _ in range(data.draw(st.integers(1, 5))):
        key = data.draw(st.sampled_from(list(FOOOCUS_IMAGE)))
        if data.draw(st.booleans()):
            meta[key] = data.draw(json_values)
        else:
            meta.pop(key, None)
    _check_fooocus_image(meta)

"""`studio info` and `studio preset import`: settings back out of images, Fooocus presets and A1111 text."""

import json

import pytest
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.cli import main

A1111 = ("a castle on a hill, (sunset:1.2)\nNegative prompt: blurry, lowres\n"
         "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 965400086, Size: 512x768, "
         "Model hash: 45dee52b, Model: dreamshaper_8, Clip skip: 2, Lora hashes: \"a: 1, b: 2\", "
         "Version: v1.9.4")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png_with(tmp_path, text):
    info = PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_info_recovers_our_own_settings(capsys, cache_dir, tmp_path, fmt):
    code, out, err = run(capsys, "generate", "--prompt", "東京 café", "--seed", "21", "--steps", "2", "--width", "64",
                         "--height", "64", "--format", fmt, "--out", tmp_path, "--json")
    assert code == 0, err
    image = json.loads(out)["jobs"][0]["images"][0]
    code, out, err = run(capsys, "info", image["path"], "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "studio" and doc["format"] == fmt
    assert doc["request"]["prompt"] == "東京 café" and doc["request"]["seed"] == 21
    assert doc["image"]["noise_fingerprint"] == image["noise_fingerprint"]
    assert doc["parameters"].startswith("東京 café\nSteps: 2, Sampler: DPM++ 2M SDE Karras")


def test_info_parses_a1111_infotext(capsys, tmp_path):
    code, out, err = run(capsys, "info", png_with(tmp_path, A1111), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "a1111"
    r = doc["request"]
    assert (r["prompt"], r["negative_prompt"], r["steps"], r["cfg"], r["seed"], r["width"], r["height"]) == \
        ("a castle on a hill, (sunset:1.2)", "blurry, lowres", 25, 6.5, 965400086, 512, 768)
    assert r["sampler"] == "dpmpp_2m_karras" and r["clip_skip"] == 2
    assert doc["model_hash"] == "45dee52b" and doc["unknown"]["Lora hashes"] == "a: 1, b: 2"


def test_info_bad_images(capsys, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, _, err = run(capsys, "info", plain, "--json")
    assert code == 2 and err.startswith("error: no generation settings found")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, out, err = run(capsys, "info", junk, "--json")
    assert code == 2 and out == "" and err.startswith("error: cannot read metadata from") and "\n" == err[-1]
    hostile = tmp_path / "hostile.png"
    info = PngInfo()
    info.add_text("parameters", "x" * (2 << 20), zip=True)  # a 2 MB text chunk (compressed to a few kB)
    Image.new("RGB", (8, 8)).save(hostile, pnginfo=info)
    code, out, err = run(capsys, "info", hostile, "--json")
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_import_fooocus_preset(capsys, cache_dir, tmp_path):
    fooocus = {
        "default_model": "juggernautXL_v8Rundiffusion.safetensors", "default_refiner": "None",
        "default_refiner_switch": 0.5, "default_loras": [[True, "None", 1.0]], "default_cfg_scale": 4.0,
        "default_sample_sharpness": 2.0, "default_sampler": "dpmpp_2m_sde_gpu", "default_scheduler": "karras",
        "default_performance": "Speed", "default_prompt": "a fox", "default_prompt_negative": "ugly",
        "default_styles": ["Fooocus V2", "Fooocus Enhance"], "default_aspect_ratio": "1152*896",
        "default_overwrite_step": -1,
        "checkpoint_downloads": {"juggernautXL_v8Rundiffusion.safetensors": "https://example.invalid/j.safetensors"},
        "embeddings_downloads": {}, "lora_downloads": {}, "previous_default_models": [], "made_up_key": 1,
    }
    src = tmp_path / "fooocus.json"
    src.write_text(json.dumps(fooocus))
    out_path = tmp_path / "imported.json"
    code, out, err = run(capsys, "preset", "import", src, "--from", "fooocus", "--out", out_path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    preset = json.loads(out_path.read_text())
    assert preset["model"]["file"] == "juggernautXL_v8Rundiffusion.safetensors"
    r = preset["request"]
    assert (r["sampler"], r["cfg"], r["width"], r["height"], r["steps"], r["prompt"], r["negative_prompt"]) == \
        ("dpmpp_2m_sde_karras-gpu", 4.0, 1152, 896, 30, "a fox", "ugly")
    assert doc["report"]["downloads"] == ["https://example.invalid/j.safetensors"]
    assert "made_up_key" in doc["report"]["unknown_keys"]
    assert any("'Fooocus Enhance' are not here" in n and "--styles-dir" in n for n in doc["report"]["notes"])
    assert r["expansion"] is True  # 'Fooocus V2' is studio's expansion toggle
    # the imported preset is a valid studio preset; its model is not here, which the loader says
    code, _, err = run(capsys, "plan", "--preset", out_path, "--json")
    assert code == 2 and "juggernautXL_v8Rundiffusion.safetensors" in err and "not here" in err


def test_import_a1111_text_and_image(capsys, cache_dir, tmp_path):
    txt = tmp_path / "params.txt"
    txt.write_text(A1111)
    for src, kind in ((txt, "a1111"), (png_with(tmp_path, A1111), "image")):
        out_path = tmp_path / f"{kind}.json"
        code, out, err = run(capsys, "preset", "import", src, "--from", kind, "--out", out_path, "--json")
        assert code == 0, err
        preset = json.loads(out_path.read_text())
        assert preset["model"]["file"] == "dreamshaper_8" and preset["request"]["seed"] == 965400086
        assert any("short model hash (45dee52b)" in n for n in json.loads(out)["report"]["notes"])


def test_import_refuses_what_it_cannot_read(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    out_path = tmp_path / "out.json"
    code, out, err = run(capsys, "preset", "import", bad, "--from", "fooocus", "--out", out_path, "--json")
    assert code == 2 and out == "" and err.startswith("error: ") and not out_path.exists()


# Fooocus's own scheme: a JSON object in `parameters` (keys as Fooocus 2.5 writes them), `fooocus_scheme` beside it.
FOOOCUS_META = {
    "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion",
    "base_model_hash": "aeb7e9e6897a1e58b10494bd989d001e3d4bc9b634633cd7b559838f612c2867",
    "full_negative_prompt": ["unrealistic, saturated"], "full_prompt": ["a red fox in snow", "a red fox in snow, "
                                                                        "intricate, elegant"],
    "guidance_scale": 4.0, "loras": [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]],
    "metadata_scheme": "fooocus", "negative_prompt": "unrealistic", "performance": "Speed",
    "prompt": "a red fox in snow", "prompt_expansion": "a red fox in snow, intricate, elegant",
    "refiner_model": "None", "resolution": "(1152, 896)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
    "seed": "1234567", "sharpness": 2.0, "steps": 30, "styles": "['Fooocus V2', 'Fooocus Enhance']",
    "vae": "Default (model)", "version": "Fooocus v2.5.5", "some_new_key": 1,
}


def fooocus_png(tmp_path, meta=FOOOCUS_META):
    info = PngInfo()
    info.add_text("parameters", json.dumps(meta, sort_keys=True))
    info.add_text("fooocus_scheme", "fooocus")
    path = tmp_path / "fooocus.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_info_reads_fooocus_json_metadata(capsys, tmp_path):
    code, out, err = run(capsys, "info", fooocus_png(tmp_path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "fooocus"
    assert doc["request"] == {"prompt": "a red fox in snow", "negative_prompt": "unrealistic", "steps": 30,
                              "cfg": 4.0, "width": 1152, "height": 896, "seed": 1234567,
                              "sampler": "dpmpp_2m_sde_karras-gpu", "expansion": True,
                              "expanded_prompt": "a red fox in snow, intricate, elegant",
                              "loras": [{"name": "sd_xl_offset_example-lora_1.0", "weight": 0.1,
                                         "sha256": "4852686128"}]}
    assert doc["model"] == "juggernautXL_v8Rundiffusion" and doc["model_sha256"] == FOOOCUS_META["base_model_hash"]
    assert doc["unknown"] == ["some_new_key"]
    assert {"sharpness", "adm_guidance"} <= set(doc["ignored"])
    assert any("Fooocus Enhance" in n for n in doc["notes"])


def test_import_fooocus_image_as_preset(capsys, cache_dir, tmp_path):
    out_path = tmp_path / "fox.json"
    code, out, err = run(capsys, "preset", "import", fooocus_png(tmp_path), "--from", "image", "--out", out_path,
                         "--json")
    assert code == 0, err
    preset = json.loads(out_path.read_text())
    assert preset["model"] == {"file": "juggernautXL_v8Rundiffusion", "sha256": FOOOCUS_META["base_model_hash"]}
    assert preset["request"]["seed"] == 1234567 and preset["request"]["expanded_prompt"].endswith("elegant")
    assert preset["request"]["loras"] == [{"name": "sd_xl_offset_example-lora_1.0", "weight": 0.1,
                                           "sha256": "4852686128"}]
    code, out, err = run(capsys, "plan", "--preset", out_path, "--model", "tiny", "--json")
    assert code == 2 and "sd_xl_offset_example-lora_1.0" in err and "4852686128" in err
    del preset["request"]["loras"]  # this machine has no such LoRA: the rest of the preset is checked without it
    out_path.write_text(json.dumps(preset))
    # the imported preset replays the stored expansion text verbatim
    code, out, err = run(capsys, "plan", "--preset", out_path, "--model", "tiny", "--width", "64", "--height", "64",
                         "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["prompt"]["prompt_final"] == "a red fox in snow, intricate, elegant"
    assert plan["prompt"]["expansion"]["replayed"] is True


def test_fooocus_seeds_beyond_32_bits_and_odd_values(capsys, tmp_path):
    meta = {"prompt": "x", "seed": str(2**40), "resolution": "(1150, 896)", "steps": "many",
            "sampler": "dpmpp_3m_sde", "scheduler": "exponential", "styles": "not a list"}
    code, out, err = run(capsys, "info", fooocus_png(tmp_path, meta), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["request"] == {"prompt": "x"}
    notes = " ".join(doc["notes"])
    assert "32-bit" in notes and "multiples of 8" in notes and "steps: expected a whole number" in notes
    assert "no studio equivalent" in notes


def test_a1111_prompt_starting_with_a_brace_is_still_a1111(capsys, tmp_path):
    path = png_with(tmp_path, "{red|blue} car\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64")
    code, out, err = run(capsys, "info", path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "a1111" and doc["request"]["prompt"] == "{red|blue} car"


def _png_with_record(path, record: str):
    info = PngInfo()
    info.add_text("studio", record)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


@pytest.mark.parametrize("record,needle", [
    ({"plan": [1]}, "'plan' is not an object"),
    ({"plan": "x"}, "'plan' is not an object"),
    ({"plan": {"request": "abc"}}, "plan.request is not an object"),
    ({"plan": {"model": {"name": 5}}}, "plan.model.name is not text"),
    ({"plan": {"model": {"name": "tiny", "sha256": "nothex"}, "request": {}}}, "plan.model.sha256 is not 64 hex"),
])
def test_hostile_studio_records_are_one_clear_line(capsys, cache_dir, tmp_path, record, needle):
    path = tmp_path / "hostile.png"
    _png_with_record(path, json.dumps(record))
    for argv in (["info", str(path), "--json"],
                 ["preset", "import", str(path), "--from", "image", "--out", str(tmp_path / "p.json"), "--json"]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)
    assert not (tmp_path / "p.json").exists()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["tiny", "a" * 64, "euler", "dpmpp_2m"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["plan", "request", "model", "name", "sha256", "seed", "prompt", "steps", "image", "run",
                         "backend", "sampler", "width", "x"]), inner, max_size=5),
    max_leaves=20)


def test_random_studio_records_never_crash(cache_dir, tmp_path):
    """Seeded fuzzing: whatever the record holds, info and import answer with JSON or one error line."""
    import contextlib
    import io

    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(record=_json)
    def check(record):
        path = tmp_path / "fuzz.png"
        _png_with_record(path, json.dumps({"plan": record} if not isinstance(record, dict) else record))
        for argv in (["info", str(path), "--json"],
                     ["preset", "import", str(path), "--from", "image", "--out", str(tmp_path / "f.json"), "--json"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            assert code in (0, 2), (argv, record, err.getvalue())
            if code == 2:
                lines = err.getvalue().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), (record, err.getvalue())
            else:
                json.loads(out.getvalue())

    check()

"""The page's handlers are plain functions: tested here without a server or a browser."""

from pathlib import Path

import pytest

from studio.errors import StudioError


def test_performance_sets_the_steps_and_a_custom_value_keeps_working():
    from studio.choices import CUSTOM, performance_of
    from studio.ui.tabs.setting import steps_for

    assert [steps_for(p, 17) for p in ("Quality", "Speed", "Extreme Speed", "Lightning", CUSTOM)] == [60, 30, 8, 4, 17]
    assert performance_of(30) == "Speed" and performance_of(31) == CUSTOM
    assert performance_of(8) == CUSTOM  # typing 8 steps is not Extreme Speed: that adds a LoRA


def test_aspect_ratios_follow_the_model_family():
    from studio.choices import aspect_ratios
    from studio.ui.tabs.setting import size_for

    sdxl, sd1, sd2 = aspect_ratios(1024), aspect_ratios(512), aspect_ratios(768)
    assert "1024×1024" in sdxl and "832×1216" in sdxl and len(sdxl) == 26
    assert "512×512" in sd1 and all(int(w) * int(h) <= 700 * 700 for w, h in (r.split("×") for r in sd1))
    assert "768×768" in sd2
    assert all(int(side) % 8 == 0 for r in sd1 + sd2 + sdxl for side in r.split("×"))
    assert size_for("832×1216", 64, 64) == (832, 1216) and size_for("custom", 64, 72) == (64, 72)


def test_a_style_shows_its_template_and_the_folder_problems(tmp_path):
    from studio.styles import load_library
    from studio.ui.tabs.style import styles_markdown

    (tmp_path / "broken.json").write_text("{not json")
    library = load_library(tmp_path)
    shown = styles_markdown(library, ["Photograph"])
    assert "**Photograph**" in shown and "{prompt}" in shown
    assert "broken.json" in shown  # the folder's problem is said, not hidden


def _saved_image(engine, config, seed):
    from studio.service import Studio
    from studio.settings import build_request

    studio = Studio(config)
    plan = studio.plan(build_request(prompt="a red cube", seed=seed, steps=2, sampler="euler", width=64, height=64,
                                     model="tiny"))
    return studio, Path(studio.run_job(plan).saved[0]["path"])


def test_image_info_reads_an_image_and_apply_gives_its_controls(engine, config):
    from studio.service import read_image_settings
    from studio.ui.tabs.image_info import settings_markdown
    from studio.ui.tabs.presets import opened_values

    studio, image = _saved_image(engine, config, 4040)
    shown = settings_markdown(read_image_settings(image))
    assert "| seed | 4040 |" in shown and "a red cube" in shown and "read from | studio" in shown
    values = opened_values(studio.open_image(image))
    assert (values["seed"], values["steps"], values["prompt"], values["width"]) == (4040, 2, "a red cube", 64)


def test_verify_two_images_and_two_runs(engine, config, tmp_path):
    from PIL import Image

    from studio.settings import build_request
    from studio.ui.tabs.verify import verify

    studio, a = _saved_image(engine, config, 5)
    _, b = _saved_image(engine, config, 6)
    text, heatmap = verify(studio, "Two images", str(a), str(b), None, None, None)
    assert "**different**" in text and heatmap.size == (64, 64)
    text, _ = verify(studio, "Two images", str(a), str(a), None, None, None)
    assert "**identical**" in text and "∞" in text
    request = build_request(prompt="x", seed=9, steps=2, width=64, height=64, model="tiny")
    text, _ = verify(studio, "Run twice", None, None, None, 0.0, request)
    assert "**identical**" in text and "two runs of torch on cpu" in text
    with pytest.raises(StudioError, match="drop two images"):
        verify(studio, "Two images", str(a), None, None, None, None)
    with pytest.raises(StudioError, match="tolerance"):
        verify(studio, "Run twice", None, None, None, -1, request)
    Image.open(a).verify()


def test_the_cache_panel_says_what_the_next_run_compiles(config):
    from studio.service import Studio
    from studio.settings import build_request
    from studio.ui.tabs.advanced import cache_markdown, device_choices

    studio = Studio(config)
    assert "cpu" in device_choices(studio, "torch") and "CPU" in device_choices(studio, "openvino")
    plan = studio.plan(build_request(prompt="x", seed=1, steps=1, width=64, height=64, model="tiny",
                                     backend={"name": "openvino", "device": "CPU"}))
    shown = cache_markdown(studio, plan)
    assert "none yet" in shown and "Next run compiles" in shown and "64" in shown
    torch_plan = studio.plan(build_request(prompt="x", seed=1, steps=1, width=64, height=64, model="tiny"))
    assert "runs eagerly" in cache_markdown(studio, torch_plan)


def test_history_entry_shows_its_settings_and_says_when_apply_is_not_offered(engine, config):
    from studio import history
    from studio.ui.tabs.history import entry_markdown

    _, image = _saved_image(engine, config, 8080)
    entry = history.entries_for_image(config.output_dir, image.name)[0]
    shown = entry_markdown(entry, lambda p: Path(p).name)
    assert "| seed | 8080 |" in shown and image.name in shown and "Apply is not offered" not in shown


def test_an_image_whose_model_is_not_here_opens_on_the_current_model(tmp_path, config):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from studio.service import Studio
    from studio.ui.tabs.presets import opened_values

    info = PngInfo()
    info.add_text("parameters", "a castle\nNegative prompt: fog\nSteps: 12, Sampler: Euler a, CFG scale: 6, "
                                "Seed: 123, Size: 64x64, Model: someone-elses-model")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    studio = Studio(config)
    with pytest.raises(StudioError, match="is not here"):
        studio.open_image(path)
    opened = studio.open_image(path, fallback_model="tiny")
    values = opened_values(opened)
    assert (values["prompt"], values["seed"], values["steps"], values["model"]) == ("a castle", 123, 12, "tiny")
    assert any("someone-elses-model" in n and "tiny" in n for n in opened.notes)


def test_the_input_image_panel_makes_the_request_image_and_back(tmp_path):
    import numpy as np
    from PIL import Image

    from studio.image_input import InputStore
    from studio.service import Studio
    from studio.settings import AppConfig, build_request
    from studio.ui.page import control_values
    from studio.ui.tabs.input_image import request_image
    from tests.conftest import make_picture

    studio = Studio(AppConfig.from_env(output_dir=tmp_path, models_dir=tmp_path / "models"))
    store = studio.engine.inputs
    picture = tmp_path / "in.png"
    make_picture(64, 48).save(picture)
    assert request_image(studio, {"input_image": False}) == (None, [])
    with pytest.raises(StudioError, match="drop an image into Upscale or Variation"):
        request_image(studio, {"input_image": True, "image_mode": "vary-strong"})
    image, notes = request_image(studio, {"input_image": True, "image_mode": "upscale-2", "uov_image": str(picture),
                                         "strength": 0, "mask_blur": 0, "inpaint_area": "whole",
                                         "masked_padding": 32})
    assert image["mode"] == "upscale-2" and image["strength"] is None and store.has(image["sha256"]) and not notes
    # Inpaint: the painted layers' alpha is the mask; nothing painted is a clear message.
    layer = np.zeros((48, 64, 4), np.uint8)
    editor = {"background": str(picture), "layers": [], "composite": None}
    base = {"input_image": True, "image_mode": "inpaint", "inpaint_image": editor, "strength": 0.8, "mask_blur": 2,
            "inpaint_area": "whole", "masked_padding": 32}
    with pytest.raises(StudioError, match="paint the area"):
        request_image(studio, base)
    layer[10:20, 30:40] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    editor["layers"] = [str(tmp_path / "layer.png")]
    # A plan preview (every brush stroke makes one) holds its inputs in memory: planning finds them, no file.
    held, _ = request_image(studio, base, keep=False)
    assert store.get(held["mask_sha256"]).size == (64, 48) and not store.has(held["mask_sha256"])
    image, _ = request_image(studio, base)
    assert image == held and store.has(image["mask_sha256"])  # Generate stores them
    mask = np.asarray(store.get(image["mask_sha256"]))
    assert mask[10:20, 30:40].min() == 255 and mask.sum() == 255 * 100
    with pytest.raises(StudioError, match="at least one direction"):
        request_image(studio, {**base, "image_mode": "outpaint"})
    out, _ = request_image(studio, {**base, "image_mode": "outpaint", "outpaint_sides": ["left", "top"],
                                   "outpaint_pixels": 64})
    assert out["outpaint"] == {"left": 64, "top": 64} and "mask_sha256" not in out
    # Apply (history, image info, presets) puts the stored files back into the panel.
    values = control_values(build_request(image=image), store)
    assert values["input_image"] and values["image_mode"] == "inpaint" and values["strength"] == 0.8
    assert values["inpaint_image"]["background"] == str(store.path(image["sha256"]))
    assert values["mask_image"] == str(store.path(image["mask_sha256"]))
    gone = control_values(build_request(image=image), InputStore(tmp_path / "elsewhere"))
    assert gone["input_image"] and gone["inpaint_image"] is None  # planning then names the missing hash

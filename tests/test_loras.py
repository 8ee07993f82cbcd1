"""LoRAs on the torch backend: found by name or hash, checked against the model, applied through diffusers'
PEFT adapters and taken off again exactly; recorded in plans, images and presets."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapter_files import write_lora
from studio.errors import StudioError


@pytest.fixture(scope="module")
def loras(engine, config):
    """LoRA files for the tiny models, in both layouts (names unique to this module)."""
    tiny = engine.registry.load(engine.registry.resolve("tiny"))
    sdxl = engine.registry.load(engine.registry.resolve("tiny-sdxl"))
    folder = config.lora_folder
    return {
        "kohya": write_lora(folder / "t-kohya.safetensors", tiny, "kohya", seed=1),
        "peft": write_lora(folder / "t-peft.safetensors", tiny, "diffusers", seed=2),
        "unet-only": write_lora(folder / "t-unet.safetensors", tiny, "kohya", seed=3, text_encoder=False),
        "sdxl": write_lora(folder / "t-sdxl.safetensors", sdxl, "kohya", seed=4),
    }


@pytest.fixture(scope="module")
def run(engine, loras):
    def run(**overrides):
        from studio.settings import build_request

        values = dict(prompt="a photograph of an astronaut", seed=99, steps=3, width=64, height=64,
                      sampler="euler", model="tiny")
        values.update(overrides)
        plan = engine.plan(build_request(**values))
        return plan, engine.run(plan).images

    return run


@pytest.fixture(scope="module")
def base(run):
    return run()[1]


def test_each_layout_changes_the_image_and_weight_zero_is_the_base(run, base):
    for name in ("t-kohya", "t-peft", "t-unet"):
        plan, image = run(loras=[{"name": name, "weight": 0.8}])
        assert [lora.file for lora in plan.loras] == [f"{name}.safetensors"]
        assert np.abs(image - base).max() > 1e-3, f"{name} left the image as it was"
    _, zero = run(loras=[{"name": "t-kohya", "weight": 0.0}])
    assert np.array_equal(zero, base)


def test_removing_a_lora_gives_the_base_image_bit_for_bit_and_a_repeat_is_identical(run, base):
    _, first = run(loras=[{"name": "t-kohya", "weight": 0.7}, {"name": "t-peft", "weight": 0.4}])
    _, without = run()
    assert np.array_equal(without, base), "a LoRA was left on the model (fused, or an adapter still active)"
    _, again = run(loras=[{"name": "t-kohya", "weight": 0.7}, {"name": "t-peft", "weight": 0.4}])
    assert np.array_equal(again, first)
    _, other_weight = run(loras=[{"name": "t-kohya", "weight": 0.3}, {"name": "t-peft", "weight": 0.4}])
    assert not np.array_equal(other_weight, first)


def test_a_prompt_tag_is_the_same_lora_and_is_not_counted_as_tokens(run, engine):
    from studio.prompts.chunking import count_tokens

    slot_plan, slot = run(loras=[{"name": "t-kohya", "weight": 0.8}])
    tag_plan, tag = run(prompt="a photograph of an astronaut <lora:t-kohya:0.8>")
    assert np.array_equal(tag, slot)
    assert tag_plan.prompt.prompt_final == "a photograph of an astronaut "
    assert tag_plan.prompt.tokens == slot_plan.prompt.tokens
    assert [(lora.source, lora.weight) for lora in tag_plan.loras] == [("prompt", 0.8)]
    assert tag_plan.request.lora_hashes == {"t-kohya": tag_plan.loras[0].sha256}
    assert slot_plan.request.loras[0].sha256 == slot_plan.loras[0].sha256
    tok = engine.tokenizer()
    assert count_tokens("a cat <lora:t-kohya:0.8>", tok).tokens == count_tokens("a cat", tok).tokens


def test_an_sdxl_lora_with_both_text_encoders_on_sdxl(run):
    _, base = run(model="tiny-sdxl")
    plan, image = run(model="tiny-sdxl", loras=[{"name": "t-sdxl", "weight": 0.6}])
    assert plan.loras[0].format == "kohya"
    assert np.abs(image - base).max() > 1e-3
    _, again = run(model="tiny-sdxl")
    assert np.array_equal(again, base)


@pytest.mark.parametrize("prompt, words", [
    ("a cat <lora:t-kohya:strong>", "is not a number"),
    ("a cat <lora:nothing-here:0.5>", "is not in"),
    ("a cat <lora:t-kohya:0.5> <lora:t-kohya:0.2>", "applied twice"),
    ("a cat <hypernet:x:1>", "hypernetworks"),
    ("a cat <lora:t-kohya:99>", "between -10 and 10"),
])
def test_bad_tags_are_one_clear_line(engine, tiny_request, prompt, words):
    with pytest.raises(StudioError) as err:
        engine.plan(tiny_request(prompt=prompt))
    assert words in err.value.message and "\n" not in err.value.message


def test_a_lora_for_another_model_or_of_unknown_keys_is_refused_naming_the_file(engine, tiny_request, config):
    with pytest.raises(StudioError) as err:
        engine.plan(tiny_request(loras=[{"name": "t-sdxl"}]))
    assert "t-sdxl.safetensors" in err.value.message and "SDXL" in err.value.message
    import torch
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.weight": torch.zeros(2, 2)}, str(config.lora_folder / "t-junk.safetensors"))
    with pytest.raises(StudioError) as err:
        engine.plan(tiny_request(loras=[{"name": "t-junk"}]))
    assert "t-junk.safetensors" in err.value.message and "not a LoRA" in err.value.message
    torch.save({"x": torch.zeros(1)}, str(config.lora_folder / "t-pickle.pt"))
    with pytest.raises(StudioError) as err:
        engine.plan(tiny_request(loras=[{"name": "t-pickle"}]))
    assert "pickle" in err.value.message and "--allow-unsafe-pickle" in err.value.message


def test_infotext_and_studio_record_carry_the_lora_and_its_hash(config, loras):
    from studio.metadata.a1111 import parse_infotext
    from studio.metadata.png import read_text_chunks
    from studio.service import Studio
    from studio.settings import build_request

    studio = Studio(config)
    plan = studio.plan(build_request(prompt="a red cube <lora:t-peft:0.5>", seed=5, steps=2, sampler="euler",
                                     width=64, height=64, model="tiny", loras=[{"name": "t-kohya", "weight": 0.8}]))
    path = Path(studio.run_job(plan).saved[0]["path"])
    text = read_text_chunks(path)["parameters"]
    first, fields = text.splitlines()[0], text.splitlines()[-1]
    assert "<lora:t-kohya:0.8>" in first and "<lora:t-peft:0.5>" in first
    kohya, peft = plan.loras
    assert f'Lora hashes: "t-kohya: {kohya.short_hash}, t-peft: {peft.short_hash}"' in fields
    parsed = parse_infotext(text)
    assert parsed["request"]["lora_hashes"] == {"t-kohya": kohya.short_hash, "t-peft": peft.short_hash}
    opened = studio.open_image(path)
    assert [(u.name, u.weight, u.sha256) for u in opened.request.loras] == [("t-kohya", 0.8, kohya.sha256)]
    assert [lora.file for lora in opened.plan.loras] == ["t-kohya.safetensors", "t-peft.safetensors"]
    assert opened.report["expected"] == "identical", opened.report


def test_a_preset_opened_on_another_models_folder_finds_its_lora_by_hash(config, loras, tmp_path):
    import shutil

    from studio import presets
    from studio.service import Studio
    from studio.settings import AppConfig, build_request

    here = Studio(config)
    preset, path = here.save_preset(build_request(prompt="a cube <lora:t-peft:0.5>", seed=5, steps=2, sampler="euler",
                                                  width=64, height=64, model="tiny",
                                                  loras=[{"name": "t-kohya", "weight": 0.8}]), tmp_path / "p.json")
    saved = json.loads(Path(path).read_text())
    assert saved["request"]["loras"][0]["sha256"] == preset.plan["loras"][0]["sha256"]
    assert saved["made_on"]["adapters"] == {f"loras/{lora['file']}": lora["sha256"] for lora in preset.plan["loras"]}
    assert saved["made_on"]["peft"]
    other = AppConfig(cache_dir=config.cache_dir, output_dir=tmp_path / "out", models_dir=tmp_path / "models")
    (tmp_path / "models" / "loras").mkdir(parents=True)
    shutil.copy(loras["kohya"], tmp_path / "models" / "loras" / "renamed.safetensors")
    shutil.copy(loras["peft"], tmp_path / "models" / "loras" / "other-name.safetensors")
    opened = Studio(other).open_preset(*presets.load(Path(path)))
    assert [lora.file for lora in opened.plan.loras] == ["renamed.safetensors", "other-name.safetensors"]
    assert any("renamed.safetensors" in n for lora in opened.plan.loras for n in lora.notes)
    fields = {d["field"]: d for d in opened.report["differences"]}
    assert fields["loras.t-kohya"]["effect"] == "none"
    # without the files: the report says what is missing (the preset still opens)
    (tmp_path / "models" / "loras" / "renamed.safetensors").unlink()
    opened = Studio(other).open_preset(*presets.load(Path(path)))
    assert opened.report["expected"] == "different"
    assert any("t-kohya" in line for line in opened.report["missing_loras"])
    assert [lora.file for lora in opened.plan.loras] == ["other-name.safetensors"]


def test_fooocus_preset_and_image_loras_are_applied():
    from studio.metadata.fooocus import import_fooocus
    from studio.metadata.fooocus_image import parse_fooocus_json

    out = import_fooocus({"default_loras": [[True, "t-kohya.safetensors", 0.6], [False, "x.safetensors", 1.0],
                                            [True, "None", 1.0]]})
    assert out.request_values["loras"] == [{"name": "t-kohya", "weight": 0.6}]
    parsed = parse_fooocus_json(json.dumps({"prompt": "a cat", "loras": [["sub/t-peft.safetensors", 0.4]],
                                            "metadata_scheme": "fooocus"}))
    assert parsed["request"]["loras"] == [{"name": "t-peft", "weight": 0.4}]

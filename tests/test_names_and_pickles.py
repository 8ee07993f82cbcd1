"""Requests, presets and image records name things and never point at the disk; every pickle
(a checkpoint, a diffusers folder's .bin weights, an expansion model) goes through the one switch."""

import json
import shutil

import pytest

from conftest import build_tiny_lm
from studio import presets
from studio.engine.engine import Engine
from studio.errors import StudioError
from studio.models.registry import EXPANSION_FOLDER, ModelRegistry
from studio.settings import AppConfig, build_request

PATHS = ["/etc/passwd", "../models/x.safetensors", "sub/x.safetensors", "~root", ".hidden", "C:\\x.ckpt",
         "..", "a\\b", "x\0y"]


@pytest.mark.parametrize("path", PATHS)
def test_a_request_names_a_model_never_a_path(path):
    for field in ("model", "expansion_model"):
        with pytest.raises(StudioError, match="must be a name in the .* folder, not a path"):
            build_request(**{field: path})


@pytest.mark.parametrize("field,value", [("model", "/root"), ("expansion_model", "/root")])
def test_a_preset_cannot_point_anywhere(field, value):
    preset = {"schema_version": 1, "model": {"file": "tiny"}, "request": {"steps": 4}}
    if field == "model":
        preset["model"]["file"] = value
    else:
        preset["request"].update(expander="causal-lm", expansion_model=value)
    with pytest.raises(StudioError, match="not a path") as info:
        presets.parse(json.dumps(preset))
    assert str(info.value).count("not a path") == 1  # said once, though checked in `model` and the request


def test_missing_names_reveal_nothing_about_the_server(tmp_path, cache_dir):
    registry = ModelRegistry(tmp_path / "models", cache_dir)
    (tmp_path / "models").mkdir()
    for name in ("nope.safetensors", "etc"):
        with pytest.raises(StudioError) as info:
            registry.resolve(name)
        assert str(tmp_path) not in str(info.value) and "not in the models folder" in str(info.value)
    with pytest.raises(StudioError) as info:
        registry.resolve_expansion("nope")
    assert str(tmp_path) not in str(info.value)


def _engine(tmp_path, cache_dir, allow: bool) -> Engine:
    return Engine(AppConfig(models_dir=tmp_path / "models", output_dir=tmp_path / "out", cache_dir=cache_dir,
                            allow_unsafe_pickle=allow))


def test_a_diffusers_folder_with_pickle_weights_needs_the_switch(tmp_path, cache_dir, engine, tiny_request):
    import torch

    tiny = engine.registry.resolve("tiny")
    engine.registry.ensure_built(tiny)
    folder = tmp_path / "models" / "binfolder"
    shutil.copytree(tiny.path, folder)
    # The unet's weights as a pickle, as older diffusers saved them.
    from safetensors.torch import load_file

    unet_st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(unet_st)), str(folder / "unet" / "diffusion_pytorch_model.bin"))
    unet_st.unlink()

    request = tiny_request(model="binfolder", steps=2)
    safe = _engine(tmp_path, cache_dir, allow=False)
    with pytest.raises(StudioError, match=r"pickle weights \(unet/diffusion_pytorch_model.bin\).*--allow-unsafe-pickle"):
        safe.run(safe.plan(request))
    unsafe = _engine(tmp_path, cache_dir, allow=True)
    allowed = unsafe.run(unsafe.plan(request)).images
    reference = engine.run(engine.plan(tiny_request(steps=2))).images
    assert (allowed == reference).all()  # the same weights, read from the pickle


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_lm(root / EXPANSION_FOLDER / "lm-safe")
    build_tiny_lm(root / EXPANSION_FOLDER / "lm-pickle", safe=False)
    return root


def test_an_expansion_model_is_a_name_and_its_pickle_needs_the_switch(lm_folders, cache_dir, tiny_request):
    def engine(allow):
        return Engine(AppConfig(models_dir=lm_folders, cache_dir=cache_dir, allow_unsafe_pickle=allow))

    request = tiny_request(expansion=True, expander="causal-lm", expansion_model="lm-pickle")
    with pytest.raises(StudioError, match=r"pickle weights \(pytorch_model.bin\).*--allow-unsafe-pickle"):
        engine(False).plan(request)
    unsafe_text = engine(True).plan(request).prompt.prompt_final
    safe_text = engine(False).plan(request.model_copy(update={"expansion_model": "lm-safe"})).prompt.prompt_final
    assert unsafe_text == safe_text != request.prompt  # the same random weights, either way
    with pytest.raises(StudioError, match="not in the models folder's prompt_expansion/"):
        engine(False).plan(request.model_copy(update={"expansion_model": "lm-missing"}))


def test_the_operator_may_still_give_paths_on_the_command_line(lm_folders, tmp_path, capsys):
    from studio.cli import main

    outside = tmp_path / "elsewhere-lm"
    shutil.copytree(lm_folders / EXPANSION_FOLDER / "lm-safe", outside)
    code = main(["plan", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64", "--expansion", "on",
                 "--expander", "causal-lm", "--expansion-model", str(outside), "--models-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["request"]["expansion_model"] == "elsewhere-lm"  # a name in the plan, not the path

"""Single-file (original LDM layout) checkpoints: detection, loading, and the errors users see.

The checkpoints are made from the built-in tiny models by ``ldm_layout`` (diffusers -> LDM), so a
round trip through ``ModelRegistry.resolve``/``load`` must give back the very same weights.
"""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ldm_layout import pipeline_to_ldm_state_dict, write_checkpoint
from studio.errors import StudioError
from studio.models.registry import ModelRegistry

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def registry(tmp_path, cache_dir):
    return ModelRegistry(tmp_path, cache_dir)  # the test's files are its models folder


def _builtin(cache_dir, tmp_path_factory, name):
    reg = ModelRegistry(tmp_path_factory.mktemp("models"), cache_dir)
    return reg.load(reg.resolve(name))


@pytest.fixture(scope="module")
def tiny(cache_dir, tmp_path_factory):
    return _builtin(cache_dir, tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def tiny_sdxl(cache_dir, tmp_path_factory):
    return _builtin(cache_dir, tmp_path_factory, "tiny-sdxl")


def _components(pipe):
    return {c: getattr(pipe, c) for c in COMPONENTS if getattr(pipe, c, None) is not None}


def assert_same_weights(a, b):
    ca, cb = _components(a), _components(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        sa, sb = ca[name].state_dict(), cb[name].state_dict()
        assert sa.keys() == sb.keys(), f"{name}: {sorted(set(sa) ^ set(sb))[:10]}"
        different = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:5]}"


def _generate(pipe):
    out = pipe(prompt="a red fox in the snow", height=64, width=64, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images


def _round_trip(registry, pipe, path, family):
    write_checkpoint(pipe, path)
    source = registry.resolve(path.name)
    assert source.kind == "single_file"
    assert source.family == family
    assert source.path == path
    assert source.config == path.parent / (path.stem + ".config")
    loaded = registry.load(source)
    assert type(loaded) is type(pipe)
    assert_same_weights(pipe, loaded)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert dict(loaded.scheduler.config) == dict(pipe.scheduler.config)
    a = _generate(pipe)
    b = _generate(loaded)
    assert a.shape == b.shape == (1, 64, 64, 3)
    assert np.abs(a - b).max() == 0
    return loaded


def test_sd1_round_trip(registry, tiny, tmp_path):
    _round_trip(registry, tiny, tmp_path / "tiny-ldm.safetensors", "sd1")


def test_sdxl_round_trip(registry, tiny_sdxl, tmp_path):
    loaded = _round_trip(registry, tiny_sdxl, tmp_path / "tiny-sdxl-ldm.safetensors", "sdxl")
    # the two encoders have different widths, so they cannot have been swapped
    assert loaded.text_encoder.config.hidden_size == 32
    assert loaded.text_encoder_2.config.hidden_size == 48


def test_ldm_keys_look_original(tiny):
    keys = set(pipeline_to_ldm_state_dict(tiny))
    # the marker keys diffusers' own converter reads, at the tiny model's block counts
    for k in ("model.diffusion_model.input_blocks.0.0.weight",
              "model.diffusion_model.input_blocks.3.0.op.weight",
              "model.diffusion_model.middle_block.1.proj_in.weight",
              "model.diffusion_model.output_blocks.2.2.conv.weight",  # after resnet + attention
              "model.diffusion_model.out.2.weight",
              "first_stage_model.decoder.up.1.upsample.conv.weight",
              "first_stage_model.encoder.mid.attn_1.q.weight",
              "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert k in keys, k
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in keys)


def test_corrupt_safetensors(registry, tiny, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StudioError, match="safetensors"):
        registry.resolve(junk.name)

    good = write_checkpoint(tiny, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(StudioError, match="safetensors"):
        registry.resolve(truncated.name)


def test_missing_vae(registry, tiny, tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in pipeline_to_ldm_state_dict(tiny).items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "novae.safetensors"
    save_file(state, str(path))
    with pytest.raises(StudioError, match=r"first_stage_model\."):
        registry.resolve(path.name)


def test_pickle_checkpoint(tiny, tmp_path, cache_dir):
    st = write_checkpoint(tiny, tmp_path / "model.safetensors")
    ckpt = tmp_path / "model.ckpt"  # same stem: shares the model.config/ sidecar
    torch.save({"state_dict": pipeline_to_ldm_state_dict(tiny)}, str(ckpt))
    st.unlink()

    safe = ModelRegistry(tmp_path, cache_dir)
    with pytest.raises(StudioError, match="--allow-unsafe-pickle"):
        safe.resolve(ckpt.name)

    unsafe = ModelRegistry(tmp_path, cache_dir, allow_unsafe_pickle=True)
    source = unsafe.resolve(ckpt.name)
    assert (source.kind, source.family) == ("single_file", "sd1")
    assert source.config == tmp_path / "model.config"
    loaded = unsafe.load(source)
    assert_same_weights(tiny, loaded)

    # A .ckpt from before torch 1.6 (not a zip) loads with the switch too, and is refused without it.
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": pipeline_to_ldm_state_dict(tiny)}, str(old), _use_new_zipfile_serialization=False)
    (tmp_path / "model.config").rename(tmp_path / "old.config")
    with pytest.raises(StudioError, match="--allow-unsafe-pickle"):
        safe.resolve("old.ckpt")
    source = unsafe.resolve("old.ckpt")
    assert (source.kind, source.family) == ("single_file", "sd1")
    assert_same_weights(tiny, unsafe.load(source))


def test_sidecar_has_no_weights(tiny, tmp_path):
    write_checkpoint(tiny, tmp_path / "m.safetensors")
    sidecar = tmp_path / "m.config"
    files = {p.relative_to(sidecar).as_posix() for p in sidecar.rglob("*") if p.is_file()}
    assert "model_index.json" in files and "unet/config.json" in files
    assert any(f.startswith("tokenizer/") for f in files)
    assert not [f for f in files if f.endswith((".safetensors", ".bin"))]
    shutil.rmtree(sidecar)

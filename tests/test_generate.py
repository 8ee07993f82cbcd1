import json

import numpy as np
import pytest

from studio.metadata.png import read_text_chunks
from studio.outputs import save_result


def test_same_request_twice_is_pixel_identical(engine, tiny_request):
    plan = engine.plan(tiny_request(sampler="euler_a", batch=2))
    a, b = engine.run(plan), engine.run(plan)
    assert a.images.shape == (2, 64, 64, 3)
    assert np.array_equal(a.images, b.images)
    assert a.fingerprints == b.fingerprints
    assert a.images.std() > 0.01  # an image, not a constant


def test_different_seeds_differ(engine, tiny_request):
    a = engine.run(engine.plan(tiny_request(seed=1)))
    b = engine.run(engine.plan(tiny_request(seed=2)))
    assert a.fingerprints != b.fingerprints
    assert np.abs(a.images - b.images).max() > 0.05


def test_image_of_a_batch_regenerates_alone(engine, tiny_request):
    batch = engine.run(engine.plan(tiny_request(seed=40, batch=3, sampler="euler_a")))
    alone = engine.run(engine.plan(tiny_request(seed=42, batch=1, sampler="euler_a")))
    assert batch.plan.seeds == [40, 41, 42]
    assert alone.fingerprints[0] == batch.fingerprints[2]  # the same initial noise, bit for bit
    # and the same pixels, before quantisation: per-step noise is the image's own, and no
    # batch-size-dependent rounding gets in
    assert np.array_equal(alone.images[0], batch.images[2])


def test_seed_modes(engine, tiny_request):
    inc = tiny_request(seed=10, batch=2, seed_mode="increment")
    plan = engine.plan(inc)
    assert engine.next_request(inc, plan).seed == 12
    fixed = tiny_request(seed=10, batch=2, seed_mode="fixed")
    assert engine.next_request(fixed, engine.plan(fixed)).seed == 10
    rnd = tiny_request(seed=None, seed_mode="random")
    seeds = {engine.plan(rnd).request.seed for _ in range(4)}
    assert len(seeds) > 1  # drawn anew, and recorded in the plan


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "heun", "lms", "ddim", "dpmpp_2m", "dpmpp_2m_karras",
                                     "dpmpp_2m_sde", "dpmpp_2m_sde_karras", "dpmpp_sde", "uni_pc"])
def test_every_sampler_runs_and_repeats(engine, tiny_request, sampler):
    plan = engine.plan(tiny_request(sampler=sampler, steps=3))
    a, b = engine.run(plan), engine.run(plan)
    assert np.isfinite(a.images).all()
    assert np.array_equal(a.images, b.images), f"{sampler} is not reproducible"


def test_samplers_actually_differ(engine, tiny_request):
    a = engine.run(engine.plan(tiny_request(sampler="euler")))
    b = engine.run(engine.plan(tiny_request(sampler="euler_a")))
    assert np.abs(a.images - b.images).max() > 1e-3


def test_sdxl_tiny_generates(engine, tiny_request):
    plan = engine.plan(tiny_request(model="tiny-sdxl", sampler="euler_a"))
    assert plan.model.family == "sdxl"
    a, b = engine.run(plan), engine.run(plan)
    assert a.images.shape == (1, 64, 64, 3)
    assert np.isfinite(a.images).all() and a.images.std() > 0.01
    assert np.array_equal(a.images, b.images)


def test_metadata_round_trip(engine, tiny_request, tmp_path):
    from PIL import Image

    result = engine.run(engine.plan(tiny_request(negative_prompt="ugly, blurry", batch=2, seed=77)))
    saved = save_result(result, tmp_path)
    assert [s["seed"] for s in saved] == [77, 78]
    chunks = read_text_chunks(saved[1]["path"])
    record = json.loads(chunks["studio"])
    assert record["image"] == {"index": 1, "seed": 78, "noise_fingerprint": result.fingerprints[1]}
    assert record["plan"] == result.plan.to_json_dict()
    # The stored plan re-plans to the same image.
    from studio.plan import Plan

    replay = engine.run(Plan.model_validate(record["plan"]))
    assert np.array_equal(replay.images, result.images)
    params = chunks["parameters"].split("\n")
    assert params[0] == "a photograph of an astronaut riding a horse"
    assert params[1] == "Negative prompt: ugly, blurry"
    assert params[2].startswith("Steps: 4, Sampler: Euler, CFG scale: 7.0, Seed: 78, Size: 64x64, Model hash: "
                                + result.plan.model.sha256[:10] + ", Model: tiny, ")
    assert "RNG: CPU" in params[2] and params[2].endswith("Version: studio 0.1.0")
    # the 8-bit pixels on disk are the quantised float image
    on_disk = np.asarray(Image.open(saved[1]["path"]))
    assert np.array_equal(on_disk, (result.images[1] * 255).round().astype(np.uint8))


def test_files_are_never_overwritten(engine, tiny_request, tmp_path):
    result = engine.run(engine.plan(tiny_request()))
    paths = {save_result(result, tmp_path)[0]["path"] for _ in range(3)}
    assert len(paths) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_untrained_model_is_flagged(engine, tiny_request):
    assert engine.plan(tiny_request()).model.untrained


def test_precision_switch_does_not_leak_into_fp32(engine, tiny_request):
    fp32 = engine.run(engine.plan(tiny_request(seed=5)))
    bf16 = engine.run(engine.plan(tiny_request(seed=5, precision={"unet": "bf16", "text": "bf16", "vae": "bf16"})))
    again = engine.run(engine.plan(tiny_request(seed=5)))
    assert np.abs(bf16.images - fp32.images).max() > 0  # bf16 really ran
    assert np.array_equal(again.images, fp32.images)  # and fp32 weights were not rounded through bf16
    assert {r.code for r in bf16.plan.risks} >= {"vae_not_fp32", "reduced_precision"}


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("component", ["text", "unet", "vae"])
def test_one_component_in_bf16(engine, tiny_request, model, component):
    fp32 = engine.run(engine.plan(tiny_request(model=model, seed=3, steps=2)))
    plan = engine.plan(tiny_request(model=model, seed=3, steps=2, precision={component: "bf16"}))
    assert plan.backend.precision[component] == "bf16"
    mixed = engine.run(plan)
    assert np.isfinite(mixed.images).all()
    diff = np.abs(mixed.images - fp32.images).max()
    assert 0 < diff < 0.2  # the component really ran in bf16, and the image is still the same picture


def test_sd2_style_v_prediction_folder_generates(engine, tiny_request, config):
    """SD 2.x shape: linear-projection attention, GELU text encoder, v-prediction scheduler."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from studio.models import demo
    from studio.models.families import config_dir
    from studio.models.tokenizer import clip_tokenizer

    folder = config.models_dir / "tiny-sd2"
    if not folder.exists():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=(2, 4),
            use_linear_projection=True)
        scheduler = DDIMScheduler.from_pretrained(str(config_dir("sd2", config.cache_dir)), subfolder="scheduler")
        assert scheduler.config.prediction_type == "v_prediction"
        torch.manual_seed(0)
        pipe = StableDiffusionPipeline(
            vae=demo._tiny_vae(), text_encoder=CLIPTextModel(demo._clip_config(32, 5, 4, 37, act="gelu")),
            tokenizer=clip_tokenizer(str(config.cache_dir), pad_token="!"), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(folder))
    assert "tiny-sd2" in engine.registry.available()
    plan = engine.plan(tiny_request(model="tiny-sd2", sampler="euler_a"))
    assert plan.model.kind == "diffusers" and not plan.model.untrained
    a, b = engine.run(plan), engine.run(plan)
    assert np.isfinite(a.images).all() and a.images.std() > 0.01
    assert np.array_equal(a.images, b.images)
    pipe = next(iter(engine.backend("torch")._pipelines.values()))
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the sampler kept the model's objective


def test_runs_side_by_side_equal_runs_alone(engine, tiny_request):
    """Threads sharing one engine (as the app's HTTP routes do): each image equals its seed run alone."""
    import threading

    jobs = [tiny_request(seed=900 + i, sampler=sampler, prompt=prompt) for i, (sampler, prompt) in
            enumerate([("euler", "a cat"), ("euler_a", "a dog on a hill"), ("dpmpp_2m", "a red car, BREAK night"),
                       ("heun", "a tree")] * 2)]
    alone = [engine.run(engine.plan(job)).images for job in jobs]
    together, errors = [None] * len(jobs), []

    def work(i):
        try:
            together[i] = engine.run(engine.plan(jobs[i])).images
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(f"job {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, image in enumerate(together):
        np.testing.assert_array_equal(image, alone[i], err_msg=f"job {i} (seed {900 + i})")

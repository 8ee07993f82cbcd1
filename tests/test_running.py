"""Running (issue 11), engine side: named stages, Stop after an export or compile, Skip, live previews,
available devices, the compile cache panel, and planning without side effects (`lru` out of requests)."""

import json
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from studio.errors import StudioError


def ov_request(tiny_request, **overrides):
    return tiny_request(backend={"name": "openvino", "device": "CPU", "ov_mode": "accuracy"}, **overrides)


def recorded(engine, plan, **kwargs):
    """Run ``plan``; the stages said, in order, and the result (or the exception raised)."""
    stages = []
    on_stage = kwargs.pop("on_stage", None)

    def say(name):
        stages.append(name)
        if on_stage is not None:
            on_stage(name)

    try:
        return stages, engine.run(plan, on_stage=say, **kwargs)
    except StudioError as exc:
        return stages, exc


@pytest.fixture
def fresh_cache(cache_dir, tmp_path):
    """A copy of the session cache without anything OpenVINO made (no IR, no blobs): the next run exports."""
    def make(name="cache"):
        target = tmp_path / name
        shutil.copytree(cache_dir, target, ignore=lambda d, names: ["openvino"] if d == str(cache_dir) else [])
        return target

    return make


def engine_on(cache, tmp_path, **config):
    from studio.engine.engine import Engine
    from studio.settings import AppConfig

    return Engine(AppConfig(cache_dir=cache, output_dir=tmp_path / "out", models_dir=tmp_path / "models", **config))


# -- named stages ---------------------------------------------------------------------------------------------
def test_torch_stages_in_order(config, tiny_request):
    from studio.engine.engine import Engine

    engine = Engine(config)  # its own: the first run loads the model
    plan = engine.plan(tiny_request(batch=2, steps=2))
    stages, result = recorded(engine, plan)
    assert stages == ["loading the model", "image 1 of 2", "decoding", "image 2 of 2", "decoding"]
    assert result.kept == [0, 1] and result.skipped == []
    stages, _ = recorded(engine, plan)
    assert stages == ["image 1 of 2", "decoding", "image 2 of 2", "decoding"]  # loaded already


def test_openvino_first_run_exports_a_stop_keeps_the_ir_then_runs_compile_once(fresh_cache, tmp_path, tiny_request):
    """One export serves the whole story (an export is the slowest thing the suite does): a Stop pressed while
    the first run exports ends it when the export is done, with the IR complete on disk; the next run loads it,
    compiles and runs; the one after only runs."""
    from studio.engine.engine import Stopped

    cache = fresh_cache()
    engine = engine_on(cache, tmp_path)
    plan = engine.plan(ov_request(tiny_request, steps=2))
    assert plan.compile.will_compile and plan.compile.reason == "first load"
    stop = threading.Event()
    stages, exc = recorded(engine, plan, stop=stop,
                           on_stage=lambda name: stop.set() if name.startswith("exporting") else None)
    assert isinstance(exc, Stopped), exc
    assert str(exc) == ("stopped after exporting the model to OpenVINO IR (the exported IR is complete and stays "
                        "cached on disk); nothing was saved")
    assert stages == ["loading the model", "exporting the model to OpenVINO IR"]  # no compile began
    irs = list((cache / "openvino" / "ir").iterdir())
    assert len(irs) == 1 and (irs[0] / "model_index.json").is_file()  # complete, no temp folder beside it
    assert not (tmp_path / "out").exists()
    stages, first = recorded(engine, plan, stop=threading.Event())
    # the IR is on disk now: PyTorch loads only the text encoder
    assert stages == ["loading the model's text encoder",
                      "compiling UNet and VAE decoder for 64×64, 1 chunk (accuracy mode on CPU)",
                      "image 1 of 1", "decoding"], stages
    assert "openvino: IR loaded from cache (no export)" in first.notes
    assert [e["kind"] for e in first.compile_events] == ["compile"]
    plan = engine.plan(ov_request(tiny_request, steps=2))
    assert not plan.compile.will_compile and plan.compile.reason == "cached: the variant the last run used"
    stages, second = recorded(engine, plan)
    assert stages == ["image 1 of 1", "decoding"]
    assert [e["kind"] for e in second.compile_events] == ["hit"]
    np.testing.assert_array_equal(first.images, second.images)
    # two chunks: the stage says what is compiled and for what
    long = engine.plan(ov_request(tiny_request, steps=1, prompt=" ".join(["cat"] * 80)))
    stages, _ = recorded(engine, long)
    assert stages[0] == "compiling UNet and VAE decoder for 64×64, 2 chunks (accuracy mode on CPU)"


def test_stop_during_compile_ends_after_it_and_the_next_run_uses_it(engine, tiny_request, tmp_path):
    from studio.engine.engine import Stopped

    plan = engine.plan(ov_request(tiny_request, steps=2, width=120, height=64))
    assert plan.compile.will_compile
    stop = threading.Event()
    steps = []
    stages, exc = recorded(engine, plan, stop=stop, on_step=lambda d, t: steps.append(d),
                           on_stage=lambda name: stop.set() if name.startswith("compiling") else None)
    assert isinstance(exc, Stopped), exc
    assert str(exc) == ("stopped after compiling UNet and VAE decoder for 120×64, 1 chunk (accuracy mode on CPU) "
                        "(the compiled variant stays in the compile cache: the next run uses it); nothing was saved")
    assert stages[-1].startswith("compiling") and steps == []  # ended when the compile did, before any step
    # the app stays usable: the next run works, from the cached variant, and equals a run that was never stopped
    again = engine.plan(ov_request(tiny_request, steps=2, width=120, height=64))
    assert not again.compile.will_compile
    stages, result = recorded(engine, again, stop=threading.Event())
    assert stages == ["image 1 of 1", "decoding"] and [e["kind"] for e in result.compile_events] == ["hit"]
    from studio.engine.engine import Engine

    fresh = Engine(engine.config).run(again)
    np.testing.assert_array_equal(result.images, fresh.images)


# -- skip ----------------------------------------------------------------------------------------------------
def test_skip_drops_exactly_that_image_and_saves_the_others_as_run_alone(engine, tiny_request, tmp_path):
    from studio.metadata.read import read_metadata
    from studio.outputs import save_result

    plan = engine.plan(tiny_request(batch=3, steps=4, seed=500, sampler="euler_a"))
    skip = threading.Event()

    def press_skip(done, total):
        if done == 4 + 2:  # image 2 (index 1), after its second step
            skip.set()

    result = engine.run(plan, on_step=press_skip, skip=skip)
    assert not skip.is_set()  # cleared for the next image
    assert result.kept == [0, 2] and result.seeds == [500, 502]
    assert result.skipped == [{"index": 1, "seed": 501, "after_step": 2}]
    assert result.images.shape[0] == 2 and len(result.fingerprints) == 2
    alone = [engine.run(plan.for_image(i)) for i in (0, 2)]
    for j, other in enumerate(alone):
        np.testing.assert_array_equal(result.images[j], other.images[0])
        assert result.fingerprints[j] == other.fingerprints[0]
    saved = save_result(result, tmp_path)
    assert [s["seed"] for s in saved] == [500, 502] and [s["index"] for s in saved] == [0, 2]
    assert len(list(tmp_path.glob("*.png"))) == 2  # (beside them: the history and the day's log)
    for s, other in zip(saved, alone):
        record = read_metadata(s["path"])["studio"]
        assert record["image"]["seed"] == s["seed"] and record["image"]["noise_fingerprint"] == other.fingerprints[0]
        assert "Seed: %d," % s["seed"] in read_metadata(s["path"])["parameters"]
        with Image.open(s["path"]) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(other.pil_images()[0]))


def test_skipping_every_image_leaves_nothing_to_save(engine, tiny_request):
    from studio.engine.engine import AllSkipped, Stopped

    plan = engine.plan(tiny_request(batch=2, steps=3))
    skip = threading.Event()
    with pytest.raises(AllSkipped, match=r"^every image of the batch \(2\) was skipped; nothing was saved$") as info:
        engine.run(plan, on_step=lambda d, t: skip.set(), skip=skip)
    assert isinstance(info.value, Stopped)
    assert engine.run(plan).images.shape[0] == 2  # and the next run is whole


def test_skip_on_openvino_keeps_the_compile_events(engine, tiny_request):
    plan = engine.plan(ov_request(tiny_request, batch=2, steps=3, width=128, height=64, seed=40))
    skip = threading.Event()
    result = engine.run(plan, on_step=lambda d, t: skip.set() if d == 1 else None, skip=skip)
    assert result.kept == [1] and result.skipped[0]["index"] == 0
    # made while image 1 ran, then skipped (the session's engine may evict an older variant to make room)
    assert [e["kind"] for e in result.compile_events if e["kind"] != "evict"] == ["compile"]
    np.testing.assert_array_equal(result.images[0], engine.run(plan.for_image(1)).images[0])


# -- previews ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_previews_every_n_steps_and_the_same_images_without_them(engine, tiny_request, backend):
    make = tiny_request if backend == "torch" else lambda **kw: ov_request(tiny_request, **kw)
    plan = engine.plan(make(batch=2, steps=6, width=96, height=64, sampler="euler_a", seed=77))
    assert plan.noise.latent_shape[1:] == [32, 48]
    previews = []
    with_previews = engine.run(plan, on_preview=lambda i, step, img: previews.append((i, step, img)), preview_every=2)
    without = engine.run(plan)
    off = engine.run(plan, on_preview=lambda *a: previews.append("never"), preview_every=0)
    np.testing.assert_array_equal(with_previews.images, without.images)  # bit for bit
    np.testing.assert_array_equal(off.images, without.images)
    assert [(i, step) for i, step, _ in previews] == [(0, 2), (0, 4), (0, 6), (1, 2), (1, 4), (1, 6)]
    for _, _, img in previews:
        # the latent size (the tiny VAE scales by 2, real ones by 8)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (96 // 2, 64 // 2)
    # a preview shows the latents: the two seeds' previews differ
    assert np.asarray(previews[2][2]).tobytes() != np.asarray(previews[5][2]).tobytes()


def test_preview_map_per_family_only_reads_the_latents():
    import torch

    from studio.engine.preview import FACTORS, latents_to_image

    latents = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(3))
    before = latents.clone()
    images = {family: latents_to_image(latents, family) for family in FACTORS}
    torch.testing.assert_close(latents, before, rtol=0, atol=0)
    assert all(img.size == (24, 16) for img in images.values())
    assert np.asarray(images["sd1"]).tobytes() == np.asarray(images["sd2"]).tobytes()  # one VAE, one map
    assert np.asarray(images["sd1"]).tobytes() != np.asarray(images["sdxl"]).tobytes()
    # noisy early latents (sigma ~14) still give a picture, not a saturated one
    early = np.asarray(latents_to_image(latents * 14, "sd1"))
    assert 60 < early.mean() < 195 and ((early == 0) | (early == 255)).mean() < 0.5


def test_preview_every_must_not_be_negative(engine, tiny_request):
    with pytest.raises(StudioError, match="preview_every must be 0"):
        engine.run(engine.plan(tiny_request(steps=1)), on_preview=lambda *a: None, preview_every=-1)


# -- devices -------------------------------------------------------------------------------------------------
def test_available_devices(engine, monkeypatch):
    import sys

    from studio.backends import devices

    torch_devices = engine.available_devices("torch")
    assert torch_devices[0] == "cpu" and torch_devices.reason is None
    assert all(d.startswith("cuda:") for d in torch_devices[1:])
    assert "CPU" in engine.available_devices("openvino")
    with pytest.raises(StudioError, match="unknown backend 'tpu'; use torch or openvino"):
        engine.available_devices("tpu")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    missing = devices.available_devices("openvino")
    assert missing == [] and missing.reason.startswith("openvino is not installed")


# -- the compile cache: planning is pure, the panel, dropping ------------------------------------------------
def test_planning_changes_no_compile_cache(engine, tiny_request):
    engine.run(engine.plan(ov_request(tiny_request, steps=1, width=64, height=64)))
    before = engine.compile_cache_info()
    for size in (136, 144, 64):
        plan = engine.plan(ov_request(tiny_request, steps=1, width=size, height=64))
        engine.with_current_compile(plan)
    assert engine.compile_cache_info() == before
    assert before["openvino"]["capacity"] == engine.config.compile_cache_size


def test_compile_cache_info_and_drop(engine, tiny_request):
    plan = engine.plan(ov_request(tiny_request, steps=2, width=64, height=72, seed=3))
    first = engine.run(plan)
    info = engine.compile_cache_info()["openvino"]
    assert plan.compile.signature in info["cached"] and info["in_use"] == plan.compile.signature
    assert info["last_compile"] is not None and info["last_compile"]["seconds"] >= 0
    assert not engine.plan(ov_request(tiny_request, steps=2, width=64, height=72, seed=3)).compile.will_compile
    # refused while a run holds compiled models
    refusals = []

    def try_drop(name):
        if name.startswith("image"):
            try:
                engine.drop_compile_cache()
            except StudioError as exc:
                refusals.append(str(exc))

    engine.run(plan, on_stage=try_drop)
    assert refusals == ["a run is in progress: drop the compile cache when it ends (or press Stop first)"]
    dropped = engine.drop_compile_cache()
    assert plan.compile.signature in dropped["openvino"]["dropped"] and dropped["openvino"]["disk"] is False
    assert engine.compile_cache_info()["openvino"]["cached"] == []
    again = engine.plan(ov_request(tiny_request, steps=2, width=64, height=72, seed=3))
    assert again.compile.will_compile and again.compile.reason.startswith("the compile cache was dropped")
    result = engine.run(again)
    assert [e["kind"] for e in result.compile_events] == ["compile"]
    np.testing.assert_array_equal(result.images, first.images)


def test_compile_cache_size_is_the_apps_setting(engine, tiny_request):
    from studio.cli import _config, build_parser
    from studio.settings import GenerationRequest

    assert "lru" not in GenerationRequest.model_fields
    assert _config(build_parser().parse_args(["plan", "--lru", "5"])).compile_cache_size == 5
    with pytest.raises(StudioError, match=r"^--lru 0: keep 1 to 64 compiled variants in memory$"):
        _config(build_parser().parse_args(["plan", "--lru", "0"]))
    with pytest.raises(StudioError, match="lru: unknown key"):
        tiny_request(lru=2)  # a request built now has no such field


def test_old_preset_with_lru_opens_with_a_note(tmp_path):
    from studio import presets

    text = json.dumps({"schema_version": 1, "model": {"file": "tiny"},
                       "request": {"prompt": "a cat", "seed": 3, "steps": 4, "lru": 5}})
    preset, notes = presets.parse(text, "preset old.json")
    assert preset.request.seed == 3 and not hasattr(preset.request, "lru")
    assert notes == ["preset old.json: request.lru (the compile cache size) is no longer a generation setting: it "
                     "never changed the image; dropped it (set the size with --lru or AppConfig.compile_cache_size); "
                     "save it again to keep the new form"]
    saved = presets.save(preset, tmp_path / "new.json")
    assert "lru" not in json.loads(saved.read_text())["request"]
    assert presets.load(str(saved))[1] == []


def test_old_image_record_with_lru_imports_with_a_note(engine, tiny_request, tmp_path, capsys):
    from PIL.PngImagePlugin import PngInfo

    from studio.cli import main
    from studio.metadata.png import studio_record

    plan = engine.plan(tiny_request(steps=2))
    record = studio_record(plan, 0, "0" * 16, [])
    record["plan"]["request"]["lru"] = 3  # as studio wrote it before the size moved to the app's settings
    info = PngInfo()
    info.add_itxt("studio", json.dumps(record), zip=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "old.png", pnginfo=info)
    code = main(["preset", "import", str(tmp_path / "old.png"), "--from", "image", "--out",
                 str(tmp_path / "p.json"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert any(n.startswith("request.lru (the compile cache size) is no longer") for n in doc["report"]["notes"])
    assert "lru" not in doc["preset"]["request"] and doc["preset"]["request"]["seed"] == plan.seeds[0]


def test_a_failing_preview_turns_previews_off_and_the_run_goes_on(engine, tiny_request):
    plan = engine.plan(tiny_request(steps=4, seed=9))
    calls = []

    def broken(index, step, image):
        calls.append(step)
        raise RuntimeError("the page went away")

    result = engine.run(plan, on_preview=broken, preview_every=1)
    assert calls == [1]
    assert "live preview failed and was turned off for this run (the images are not affected): the page went away" \
        in result.notes
    np.testing.assert_array_equal(result.images, engine.run(plan).images)

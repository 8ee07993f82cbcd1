"""OpenVINO mode switches and the compiled-blob cache: no run depends on what was compiled before it.

The bug these guard against: OpenVINO keys its blob cache by the model and some compile properties,
not by the execution-mode or precision hints, so a performance compile after an accuracy compile
imported the accuracy blob and ran it under bf16 settings (NaN on bf16/AMX CPUs). Tests that depend
on the precision say which one ran on this CPU.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from studio.repro.environment import cpu_info

def ov(tiny_request, mode, **overrides):
    return tiny_request(backend={"name": "openvino", "device": "CPU", "ov_mode": mode}, seed=21, **overrides)


def _forced_bf16_compiles_to(core) -> str:
    """What a compile that asks for bf16 outright (INFERENCE_PRECISION_HINT=bf16) really runs in here."""
    import openvino
    from openvino import opset13 as ops

    x = ops.parameter([1, 8], np.float32, name="x")
    model = openvino.Model([ops.matmul(x, ops.constant(np.eye(8, dtype=np.float32)), False, False)], [x])
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}).get_property(
        "INFERENCE_PRECISION_HINT").get_type_name()


def cpu_precision() -> tuple[str, str]:
    """What OpenVINO's performance mode compiles to on this CPU, and a line that says why."""
    import openvino

    core = openvino.Core()
    name, flags = cpu_info()
    perf = str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")).lower()
    precision = "bf16" if "bf16" in perf or "bfloat16" in perf else "fp32" if "32" in perf else perf
    where = f"{name} (flags: {', '.join(flags) or 'none of avx2/avx512/amx'})"
    if precision == "bf16":
        return precision, f"performance mode runs in bf16 on {where}"
    forced = _forced_bf16_compiles_to(core)
    if forced == "bf16":  # not seen: OpenVINO's CPU plugin picks bf16 by default where it can
        return precision, (f"performance mode runs in {precision} on {where}, although a compile that asks for "
                           "bf16 gets it; studio's performance mode does not ask, so the bf16 path is not run")
    return precision, (f"performance mode runs in {precision} on {where}: no avx512_bf16/AMX, and OpenVINO cannot "
                       f"emulate bf16 here (a compile with INFERENCE_PRECISION_HINT=bf16 ran in {forced}), so the "
                       "bf16 path cannot run")


@pytest.fixture(scope="module")
def ir_ready(engine):
    """The tiny model's IR in the session cache (exported once), so each test below can copy it."""
    from studio.settings import build_request

    engine.run(engine.plan(build_request(prompt="a cat", model="tiny", steps=1, width=64, height=64,
                                         backend={"name": "openvino", "device": "CPU"})))


@pytest.fixture
def fresh_cache(cache_dir, tmp_path, ir_ready):
    """A copy of the session cache with no compiled blobs: models, tokenizers and the IR only."""
    made = []

    def make():
        target = tmp_path / f"cache{len(made)}"
        shutil.copytree(cache_dir, target, ignore=lambda d, names: [n for n in names if n in ("compiled", "blobs")
                                                                   and d.endswith("openvino")])
        made.append(target)
        return target

    return make


def new_engine(cache, tmp_path):
    from studio.engine.engine import Engine
    from studio.settings import AppConfig

    return Engine(AppConfig(cache_dir=cache, output_dir=tmp_path / "out", models_dir=tmp_path / "models",
                            compile_cache_size=8))


FRESH_PROCESS = """
import sys, numpy as np
from pathlib import Path
from studio.engine.engine import Engine
from studio.settings import AppConfig, GenerationRequest
cache, out, request = sys.argv[1:4]
engine = Engine(AppConfig(cache_dir=Path(cache), output_dir=Path(out) / "o", models_dir=Path(out) / "m"))
result = engine.run(engine.plan(GenerationRequest.model_validate_json(request)))
np.save(Path(out) / "image.npy", result.images)
"""


def start_fresh_process(request, cache, out):
    """A fresh process that runs ``request`` alone and saves its image in ``out``; wait with ``fresh_image``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", STUDIO_CACHE_DIR=str(cache))
    return subprocess.Popen([sys.executable, "-c", FRESH_PROCESS, str(cache), str(out), request.model_dump_json()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), out


def fresh_image(started) -> np.ndarray:
    proc, out = started
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return np.load(out / "image.npy")



# Mode, model and size switches in one engine; repeats come back after others ran in between.
SWITCHES = [("accuracy", "tiny", 64), ("performance", "tiny", 64), ("accuracy", "tiny-sdxl", 64),
            ("accuracy", "tiny", 72), ("performance", "tiny", 64), ("accuracy", "tiny", 64)]


def test_switches_in_one_process_match_a_fresh_process(fresh_cache, tiny_request, tmp_path, say):
    precision, why = cpu_precision()
    engine = new_engine(fresh_cache(), tmp_path)
    runs: dict[tuple, list] = {}
    for mode, model, width in SWITCHES:
        result = engine.run(engine.plan(ov(tiny_request, mode, model=model, width=width)))
        assert np.isfinite(result.images).all(), f"{mode} {model} {width} after {list(runs)}: non-finite image"
        runs.setdefault((mode, model, width), []).append(result)
    assert runs[("performance", "tiny", 64)][0].compile_events[0]["precision"] == precision
    # A second engine in this process reads the variants back from its blob cache.
    again = new_engine(engine.config.cache_dir, tmp_path)
    # The same plan alone, in a fresh process with an empty blob cache each: started side by side (each is
    # mostly imports and a compile), compared below.
    fresh = {}
    for (mode, model, width), results in runs.items():
        out = tmp_path / f"fresh-{mode}-{model}-{width}"
        out.mkdir()
        fresh[(mode, model, width)] = start_fresh_process(results[0].plan.request, fresh_cache(), out)
    for (mode, model, width), results in runs.items():
        first = results[0]
        for repeat in results[1:]:
            np.testing.assert_array_equal(repeat.images, first.images)
        if model == "tiny" and width == 64:
            cached = again.run(again.plan(first.plan.request))
            assert cached.compile_events[0]["from_cache"] is True, cached.notes
            np.testing.assert_array_equal(cached.images, first.images)
        np.testing.assert_array_equal(fresh_image(fresh[(mode, model, width)]), first.images)
    drift = float(np.abs(runs[("performance", "tiny", 64)][0].images - runs[("accuracy", "tiny", 64)][0].images).max())
    if precision == "bf16":
        assert 0 < drift <= 0.05, drift
    say(f"[precision] {why}; performance vs accuracy max abs diff {drift:.3g}")


def test_bf16_performance_after_accuracy_is_finite_and_fast_precision(fresh_cache, tiny_request, tmp_path):
    """The reported failure itself: accuracy, then performance, in one engine, on a CPU where bf16 is real."""
    precision, why = cpu_precision()
    if precision != "bf16":
        pytest.skip(why)
    engine = new_engine(fresh_cache(), tmp_path)
    accurate = engine.run(engine.plan(ov(tiny_request, "accuracy")))
    fast = engine.run(engine.plan(ov(tiny_request, "performance")))
    assert fast.compile_events[0]["precision"] == "bf16" and fast.compile_events[0]["from_cache"] is False
    assert np.isfinite(fast.images).all()
    assert 0 < np.abs(fast.images - accurate.images).max() <= 0.05


def test_performance_compile_never_reads_the_accuracy_blob(fresh_cache, tiny_request, tmp_path):
    """The root cause, checked on any CPU: OpenVINO would import the accuracy blob (LOADED_FROM_CACHE)."""
    cache = fresh_cache()
    first = new_engine(cache, tmp_path)
    first.run(first.plan(ov(tiny_request, "accuracy")))
    engine = new_engine(cache, tmp_path)
    fast = engine.run(engine.plan(ov(tiny_request, "performance")))
    assert fast.compile_events[0]["from_cache"] is False
    folders = sorted((cache / "openvino" / "compiled").iterdir())
    assert [f.name.split("-")[2] for f in folders] == ["accuracy", "performance"], folders
    for folder in folders:
        key = json.loads((folder / "studio-key.json").read_text())
        assert key["mode"] in folder.name and key["hints"]["EXECUTION_MODE_HINT"] == key["mode"].upper()
        assert [p for p in folder.iterdir() if p.suffix == ".blob"], f"{folder.name} holds no blob"


def test_corrupt_blob_is_detected_and_recompiled(fresh_cache, tiny_request, tmp_path):
    cache = fresh_cache()
    first_engine = new_engine(cache, tmp_path)
    first = first_engine.run(first_engine.plan(ov(tiny_request, "accuracy")))
    (folder,) = (cache / "openvino" / "compiled").iterdir()
    blob = max(folder.glob("*.blob"), key=lambda p: p.stat().st_size)  # the UNet's
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    engine = new_engine(cache, tmp_path)  # a new process would do the same: nothing remembered
    result = engine.run(engine.plan(ov(tiny_request, "accuracy")))
    assert any(f"blob {blob.name}" in n and "corrupt" in n and "compiling afresh" in n for n in result.notes), \
        result.notes
    assert result.compile_events[0]["from_cache"] is False
    np.testing.assert_array_equal(result.images, first.images)
    assert blob.read_bytes() != bytes(data)  # rewritten by the new compile


def test_foreign_blobs_are_removed_and_recompiled(fresh_cache, tiny_request, tmp_path):
    """A folder filled under other settings (here: the accuracy blobs copied into the performance folder)."""
    cache = fresh_cache()
    engine = new_engine(cache, tmp_path)
    engine.run(engine.plan(ov(tiny_request, "accuracy")))
    fast = engine.run(engine.plan(ov(tiny_request, "performance")))
    accuracy_dir, performance_dir = sorted((cache / "openvino" / "compiled").iterdir())
    shutil.rmtree(performance_dir)
    shutil.copytree(accuracy_dir, performance_dir)
    engine = new_engine(cache, tmp_path)
    result = engine.run(engine.plan(ov(tiny_request, "performance")))
    assert any("not written for these compile settings" in n for n in result.notes), result.notes
    assert result.compile_events[0]["from_cache"] is False
    np.testing.assert_array_equal(result.images, fast.images)
    # A stray file in a folder studio owns is foreign too.
    (performance_dir / "12345.blob").write_bytes(b"not a blob")
    engine = new_engine(cache, tmp_path)
    result = engine.run(engine.plan(ov(tiny_request, "performance")))
    assert any("blob 12345.blob" in n and "foreign" in n for n in result.notes), result.notes
    assert not (performance_dir / "12345.blob").exists()


def test_old_shared_blob_folder_is_removed(fresh_cache, tiny_request, tmp_path):
    cache = fresh_cache()
    legacy = cache / "openvino" / "blobs"
    legacy.mkdir(parents=True)
    (legacy / "5364296290554738799.blob").write_bytes(b"an accuracy blob from an older studio")
    engine = new_engine(cache, tmp_path)
    result = engine.run(engine.plan(ov(tiny_request, "performance")))
    assert any("removed the old shared blob cache" in n for n in result.notes), result.notes
    assert not legacy.exists()

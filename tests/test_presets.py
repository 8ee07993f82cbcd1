"""Presets: schema, migration, safety, overrides, and the cross-machine report."""

import json

import pytest

from studio import presets
from studio.cli import main
from studio.errors import StudioError
from studio.repro import diff, environment


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(path, obj):
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


GOOD = {"schema_version": 1, "model": {"file": "tiny"}, "request": {"steps": 3, "seed": 1}}


def test_shipped_presets_load_and_say_what_they_promise():
    assert presets.shipped_names() == ["default", "reproducible", "speed"]
    rep, _ = presets.load("reproducible")
    r = rep.request
    assert (r.noise_source, r.deterministic, r.precision.vae, r.expansion, r.backend.ov_mode) == \
        ("cpu", True, "fp32", False, "accuracy")
    speed, _ = presets.load("speed")
    assert (speed.request.backend.name, speed.request.backend.ov_mode, speed.request.chunk_policy) == \
        ("openvino", "performance", "pad:2")


@pytest.mark.parametrize("obj,needle", [
    ({**GOOD, "colour": "red"}, "colour: unknown key"),
    ({**GOOD, "request": {"stepz": 3}}, "request.stepz: unknown key"),
    ({**GOOD, "request": {"steps": "many"}}, "request.steps: Input should be a valid integer"),
    ({**GOOD, "request": {"model": "x"}}, "model.file"),
    ({**GOOD, "schema_version": 7}, "schema_version 7; this studio reads up to 1: update studio"),
    ({"model": {"file": "tiny"}}, "no schema_version"),
    ({**GOOD, "model": {"file": "/etc/passwd"}}, "must be a name in the models folder, not a path"),
    ({**GOOD, "model": {"file": "../models/x.safetensors"}}, "not a path"),
    ({**GOOD, "model": {"file": "tiny", "sha256": "abc"}}, "model.sha256"),
    ([1, 2], "must be a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_presets_name_what_is_wrong(tmp_path, obj, needle):
    path = write(tmp_path / "p.json", obj)
    with pytest.raises(StudioError) as exc:
        presets.load(str(path))
    assert needle in str(exc.value)


def test_size_limit(tmp_path):
    path = write(tmp_path / "big.json", {**GOOD, "description": "x" * (1 << 20)})
    with pytest.raises(StudioError, match="over the 1 MiB limit"):
        presets.load(str(path))


def test_schema_0_is_migrated_and_said(tmp_path):
    path = write(tmp_path / "old.json", {"schema_version": 0, "model": "tiny", "steps": 4, "sampler": "euler"})
    preset, notes = presets.load(str(path))
    assert preset.request.steps == 4 and preset.request.sampler == "euler" and preset.model.file == "tiny"
    assert notes and "migrated" in notes[0] and "from schema_version 0 to 1" in notes[0]


def test_save_then_generate_from_the_preset_with_overrides(capsys, cache_dir, tmp_path):
    out = tmp_path / "mine.json"
    code, _, err = run(capsys, "preset", "save", out, "--prompt", "a red cube", "--seed", "9", "--steps", "3",
                       "--width", "64", "--height", "64", "--sampler", "euler_a", "--json")
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert saved["schema_version"] == 1 and saved["model"]["file"] == "tiny"
    assert len(saved["model"]["sha256"]) == 64 and "model" not in saved["request"]
    assert saved["made_on"]["torch"] and saved["made_on"]["cpu"] and saved["plan"]["seeds"] == [9]
    code, plan_out, _ = run(capsys, "plan", "--preset", out, "--json")
    plan = json.loads(plan_out)
    assert plan["request"]["prompt"] == "a red cube" and plan["seeds"] == [9] and plan["sampler"] == "euler_a"
    code, plan_out, _ = run(capsys, "plan", "--preset", out, "--steps", "5", "--seed", "11", "--json")
    plan = json.loads(plan_out)
    assert (plan["request"]["steps"], plan["seeds"], plan["sampler"]) == (5, [11], "euler_a")  # flags win
    # the same preset twice gives the same image
    dirs = [tmp_path / "a", tmp_path / "b"]
    paths = []
    for d in dirs:
        code, gen_out, err = run(capsys, "generate", "--preset", out, "--out", d, "--json")
        assert code == 0, err
        paths.append(json.loads(gen_out)["jobs"][0]["images"][0]["path"])
    code, v, _ = run(capsys, "verify", *paths, "--json")
    assert json.loads(v)["verdict"] == "identical"


def test_preset_diff_identical_here(capsys, cache_dir, tmp_path):
    out = tmp_path / "p.json"
    run(capsys, "preset", "save", out, "--prompt", "x", "--seed", "3", "--steps", "2", "--width", "64",
        "--height", "64", "--json")
    code, report, err = run(capsys, "preset", "diff", out, "--json")
    assert code == 0, err
    assert json.loads(report) == {"expected": "identical", "differences": [], "notes": []}


def _from_elsewhere(tmp_path, capsys, **changes):
    out = tmp_path / "there.json"
    run(capsys, "preset", "save", out, "--prompt", "x", "--seed", "3", "--steps", "2", "--width", "64",
        "--height", "64", "--json")
    data = json.loads(out.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    out.write_text(json.dumps(data))
    code, report, err = run(capsys, "preset", "diff", out, "--json")
    assert code == 0, err
    doc = json.loads(report)
    return doc["expected"], {d["field"]: d for d in doc["differences"]}


def test_report_model_hash_differs(capsys, cache_dir, tmp_path):
    expected, found = _from_elsewhere(tmp_path, capsys, **{"model.sha256": "0" * 64})
    assert expected == "different" and found["model.sha256"]["effect"] == "different"
    assert "sha256 0000000000" in found["model.sha256"]["fix"]


def test_report_device_noise_on_another_gpu(capsys, cache_dir, tmp_path):
    expected, found = _from_elsewhere(tmp_path, capsys, **{
        "plan.noise.generator_device": "cuda:0", "plan.noise.source": "device",
        "made_on.device_name": "NVIDIA GeForce RTX 4090", "request.noise_source": "device"})
    assert expected == "different"
    assert found["noise.generator_device"]["effect"] == "different"
    assert "RTX 4090" in found["noise.generator_device"]["preset"]
    assert "noise source cpu" in found["noise.generator_device"]["fix"]


def test_report_performance_there_accuracy_here_is_drift(capsys, cache_dir, tmp_path):
    expected, found = _from_elsewhere(tmp_path, capsys, **{
        "plan.backend.name": "openvino", "plan.backend.mode": "performance",
        "plan.backend.precision": {"text": "fp32", "unet": "bf16", "vae": "bf16"}})
    assert expected == "drift"
    assert found["backend.mode"]["effect"] == "drift" and found["backend.precision.unet"]["preset"] == "bf16"


def test_report_library_versions_drift(capsys, cache_dir, tmp_path):
    expected, found = _from_elsewhere(tmp_path, capsys, **{"made_on.torch": "2.9.1", "made_on.device_name": "Other CPU"})
    assert expected == "drift"
    assert found["made_on.torch"]["fix"] == "install torch==2.9.1 for bit-identical results"
    assert found["made_on.device_name"]["effect"] == "drift"


def test_report_expansion_is_replayed_verbatim(capsys, cache_dir, tmp_path):
    expected, found = _from_elsewhere(tmp_path, capsys, **{"request.expansion": True,
                                                           "request.expanded_prompt": "x, moody, film grain"})
    assert expected == "identical"
    assert found["request.expanded_prompt"]["effect"] == "none"


def test_preset_model_missing_says_which_and_offers_the_closest(capsys, cache_dir, tmp_path):
    path = write(tmp_path / "p.json", {"schema_version": 1, "model": {"file": "tinyy", "sha256": "1" * 64},
                                       "request": {}})
    code, out, err = run(capsys, "plan", "--preset", path, "--json")
    assert code == 2 and out == ""
    assert err.strip() == ("error: the preset's model tinyy (sha256 1111111111…) is not here: put it in the models "
                           "folder; the closest here by name is tiny, or override it with --model")
    # Looking for the hash must not build a demo model (sd15-random is 3.4 GB) just to hash it.
    assert not list((cache_dir / "builtin").glob("*sd15-random*"))


def test_preset_model_found_by_hash_under_another_name(engine):
    from studio.settings import Preset

    sha = engine.registry.sha256(engine.registry.resolve("tiny"))
    preset = Preset(model={"file": "renamed.safetensors", "sha256": sha}, request={})
    name, notes = presets.locate_model(preset, engine.registry)
    assert name == "tiny" and "same sha256" in notes[0]


def test_made_on_names_the_machine():
    env = environment.made_on("cpu", {"unet": "fp32"})
    assert env["torch"] and env["cpu"] and isinstance(env["cpu_flags"], list)
    assert env["inference_precision"] == {"unet": "fp32"}


# -- property-based: whatever arrives, the parser answers with a preset or one clear error ----------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FULL = {"schema_version": 1, "name": "n", "model": {"file": "tiny", "sha256": "a" * 64},
        "request": {"prompt": "a cat", "seed": 3, "steps": 20, "cfg": 7.0, "sampler": "euler_a", "width": 512,
                    "height": 512, "backend": {"name": "openvino", "device": "CPU", "ov_mode": "performance"},
                    "precision": {"text": "fp32", "unet": "fp32", "vae": "fp32"}, "chunk_policy": "pad:2"}}


def _parse_or_clear_error(obj):
    try:
        text = json.dumps(obj)
    except (ValueError, TypeError):
        return
    try:
        preset, notes = presets.parse(text)
    except StudioError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert preset.schema_version == 1 and isinstance(notes, list)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_json_never_raises_anything_but_the_clear_error(obj):
    _parse_or_clear_error(obj)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["model", "request", "schema_version", "name", "made_on", "plan"]),
                          st.sampled_from(["prompt", "seed", "steps", "cfg", "sampler", "width", "backend",
                                           "precision", "file", "sha256", "chunk_policy", "x"]),
                          json_values), min_size=1, max_size=4))
def test_mutated_presets_never_raise_anything_but_the_clear_error(mutations):
    data = json.loads(json.dumps(FULL))
    for top, key, value in mutations:
        if isinstance(data.get(top), dict):
            data[top][key] = value
        else:
            data[top] = value
    _parse_or_clear_error(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_never_raise_anything_but_the_clear_error(blob):
    try:
        presets.parse(blob)
    except StudioError as exc:
        assert "\n" not in str(exc)

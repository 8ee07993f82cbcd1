"""LoRAs in the app and the CLI: Fooocus's five slots in the Models tab (through the same API as every other
control), the plan preview naming them, `--lora NAME[:WEIGHT]`, `--loras-dir` and `studio loras`.

The LoRA is a random low-rank update written by the test for the tiny model (tests/adapter_files.py)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from adapter_files import write_lora
from test_app import controls
from test_browser import choose, driver, find, open_tab, page, wait_text  # noqa: F401  (fixtures and helpers)

from studio.cli import main

NAME = "lighten"


@pytest.fixture(scope="module")
def lora(engine, config):
    """A kohya-format LoRA for the tiny model in the session's LoRA folder; its sha256."""
    from studio.models.registry import file_sha256

    pipe = engine.registry.load(engine.registry.resolve("tiny"))
    path = write_lora(config.lora_folder / f"{NAME}.safetensors", pipe, "kohya", seed=3, scale=0.3)
    return file_sha256(path, {})


def generate(client, **overrides):
    gallery, error, info, _ = client.predict(*controls(batch=1, steps=3, seed=9117, **overrides),
                                             api_name="/generate")[:4]
    assert error == "", error
    item = gallery[0]
    return item["image"] if isinstance(item, dict) else item


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def recorded_plan(config, seed):
    """The plan stored in the newest saved image of ``seed`` (the output folder's own file, not a copy)."""
    from studio.metadata.read import read_metadata

    newest = max(config.output_dir.glob(f"*_{seed}.png"), key=lambda p: p.stat().st_mtime_ns)
    return read_metadata(newest)["studio"]["plan"]


def test_a_slot_applies_its_lora_and_a_disabled_slot_is_the_base_image(server, lora, config):
    from gradio_client import Client

    client = Client(server, verbose=False)
    base = pixels(generate(client))
    with_lora = pixels(generate(client, lora_1_name=NAME, lora_1_weight=0.8))
    plan = recorded_plan(config, 9117)
    assert [(u["name"], u["weight"], u["sha256"], u["source"]) for u in plan["loras"]] == \
        [(NAME, 0.8, lora, "request")]
    assert plan["request"]["loras"][0]["name"] == NAME
    assert np.abs(with_lora - base).max() > 0, "the LoRA changed nothing"
    off = pixels(generate(client, lora_1_name=NAME, lora_1_weight=0.8, lora_1_enabled=False))
    assert np.array_equal(off, base), "a disabled slot must give the base image bit for bit"
    assert recorded_plan(config, 9117)["loras"] == []

    # The plan preview, before Generate: a slot's LoRA and a prompt tag's, each with its weight, hash and source.
    error, shown = client.predict(*controls(batch=1, seed=5, lora_3_name=NAME, lora_3_weight=-0.25),
                                  api_name="/plan_preview")
    assert error == "" and f"{NAME} × -0.25 · `" in shown and "· slot (kohya)" in shown
    error, tagged = client.predict(*controls(batch=1, seed=5, prompt=f"a cat <lora:{NAME}:0.5>"),
                                   api_name="/plan_preview")
    assert error == "" and f"{NAME} × 0.5" in tagged and "prompt tag" in tagged
    # A name that is not in the folder: one line, naming the folder's LoRAs.
    error, _ = client.predict(*controls(batch=1, lora_2_name="nowhere"), api_name="/plan_preview")
    assert "LoRA &#x27;nowhere&#x27; is not in loras" in error and NAME in error and "Traceback" not in error


def test_slots_fill_back_from_a_request_first_five_and_a_note():
    from studio.settings import build_request
    from studio.ui.page import slot_loras, slot_values
    from studio.ui.tabs.model import lora_note, overflow_note

    uses = [{"name": f"l{i}", "weight": i / 10, "sha256": f"{i:012x}"} for i in range(7)]
    request = build_request(prompt="x", model="tiny", loras=uses)
    values = slot_values(request)
    assert [values[f"lora_{s}_name"] for s in range(1, 6)] == ["l0", "l1", "l2", "l3", "l4"]
    assert values["lora_5_weight"] == 0.4 and all(values[f"lora_{s}_enabled"] for s in range(1, 6))
    note = lora_note(values["lora_record"])
    assert "7 LoRAs" in note and "l5 (0.5), l6 (0.6)" in note
    assert overflow_note(values).startswith("⚠️ The settings have 7 LoRAs")  # shown by the plan preview too
    # Back to a request: the slots' names keep their recorded hashes; a disabled or empty slot is no LoRA.
    values.update(lora_2_enabled=False, lora_4_name="None")
    assert overflow_note(values) == ""  # the slots were changed: the note no longer describes them
    assert slot_loras(values) == [{"name": "l0", "weight": 0.0, "sha256": "0" * 12},
                                  {"name": "l2", "weight": 0.2, "sha256": "0" * 11 + "2"},
                                  {"name": "l4", "weight": 0.4, "sha256": "0" * 11 + "4"}]
    assert lora_note(slot_values(build_request(prompt="x", model="tiny", loras=[{"name": "a", "weight": 3}]))
                     ["lora_record"]).startswith("⚠️ LoRA a has weight 3")


def test_cli_lora_flag_loras_dir_and_listing(capsys, lora, config, tmp_path):
    from studio.metadata.read import read_metadata

    common = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "77", "--model", "tiny",
              "--models-dir", str(config.models_dir), "--json"]
    code = main(["generate", "--lora", f"{NAME}:0.7", "--out", str(tmp_path / "out"), *common])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = json.loads(out)["jobs"][0]["images"][0]["path"]
    loras = read_metadata(path)["studio"]["plan"]["loras"]
    assert [(u["name"], u["weight"], u["sha256"]) for u in loras] == [(NAME, 0.7, lora)]

    code = main(["generate", "--lora", f"{NAME}:strong", "--out", str(tmp_path / "bad"), *common])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("error: --lora 'lighten:strong': the weight 'strong' is not a number")
    assert not (tmp_path / "bad").exists()

    # Another folder, the same bytes under another name: listed with the same hash and its format.
    other = tmp_path / "my-loras"
    other.mkdir()
    shutil.copy(config.lora_folder / f"{NAME}.safetensors", other / "renamed.safetensors")
    code = main(["loras", "--loras-dir", str(other), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    listed = json.loads(out)
    assert listed["loras_dir"] == str(other)
    assert [(e["name"], e["sha256"], e["format"]) for e in listed["loras"]] == [("renamed", lora, "kohya")]
    assert len(listed["loras"][0]["short_hash"]) == 12
    # A plan with --loras-dir finds the LoRA there (the default folder is not looked at).
    code = main(["plan", "--lora", "renamed", "--loras-dir", str(other), *common])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["loras"][0]["sha256"] == lora
    code = main(["loras", "--loras-dir", str(tmp_path / "missing")])
    assert code == 2 and "no such folder" in capsys.readouterr().err


def test_picking_a_lora_in_slot_1_names_it_in_the_plan_preview(lora, page):
    open_tab(page, "model")
    find(page, "#refresh-loras").click()  # the file was written after the page's list may have been made
    choose(page, "#lora-1-name", NAME)
    shown = wait_text(page, "#plan", f"LoRAs: {NAME} × 1 ·")
    assert "slot (kohya)" in shown

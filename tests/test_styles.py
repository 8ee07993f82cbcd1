"""Styles: the shipped set, a Fooocus-format folder read as untrusted input, applying them before chunking,
and carrying them through images, presets, imports, the cross-machine report and the CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.cli import main
from studio.engine.engine import Engine
from studio.errors import StudioError
from studio.metadata.a1111 import parse_infotext
from studio.metadata.fooocus import import_fooocus
from studio.metadata.fooocus_image import parse_fooocus_json
from studio.metadata.read import read_metadata
from studio.outputs import save_result
from studio.styles import (PLACEHOLDER, Style, apply_styles, load_library, restyle_values, unapply_styles)
from studio.untrusted import MAX_STYLES_FILE_BYTES, is_plain_name

SEVENTY = " ".join(["cat"] * 70)  # 70 CLIP tokens, one chunk


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def style_file(folder, name, entries):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


@pytest.fixture
def styles_dir(tmp_path):
    folder = tmp_path / "styles"
    style_file(folder, "mine.json", [
        {"name": "my-glow", "prompt": "{prompt}, glowing edges, dark backdrop", "negative_prompt": "daylight"},
        {"name": "Fooocus Enhance", "prompt": "{prompt}, highly detailed", "negative_prompt": "lowres"},
        {"name": "watercolor", "prompt": "wet watercolor of {prompt}", "negative_prompt": "ink"},
    ])
    return folder


@pytest.fixture
def folder_engine(config, styles_dir):
    return Engine(config.model_copy(update={"styles_dir": styles_dir}))


def test_shipped_styles_are_studios_own_and_complete():
    library = load_library()
    assert library.problems == [] and library.notes == []
    styles = list(library.styles.values())
    assert len(styles) >= 30
    for style in styles:
        assert style.source == "studio" and is_plain_name(style.name)
        assert style.prompt.count(PLACEHOLDER) == 1, style.name
        assert style.negative_prompt.strip(), style.name
    assert len({s.name.casefold() for s in styles}) == len(styles)
    found = [s.name for s in library.search("pixel")]
    assert found[0] == "Pixel Art" and "Oil Painting" in found  # by name first, then by text ("pixelated")


def test_how_styles_combine():
    a = Style("A", "photo of {prompt}, sharp", "blurry")
    b = Style("B", "{prompt} at dusk", "noon")
    plain = Style("C", "film grain", "")
    # each template takes the prompt (Fooocus repeats it); negatives: the styles' in order, then the user's
    assert apply_styles("a fox", "ugly", [a, b]) == ("photo of a fox, sharp, a fox at dusk", "blurry, noon, ugly")
    # no template with {prompt}: the prompt comes first
    assert apply_styles("a fox", "", [plain]) == ("a fox, film grain", "")
    assert apply_styles("a fox", "ugly", []) == ("a fox", "ugly")
    for styles in ([a], [a, b], [plain], [plain, a], [b, plain]):
        positive, negative = apply_styles("a fox, red", "ugly", styles)
        assert unapply_styles(positive, negative, styles) == ("a fox, red", "ugly")
    assert unapply_styles("a fox", "", [a]) is None  # not what the style makes: kept as written


def test_a_style_changes_the_encoded_prompt_and_the_image(engine, tiny_request):
    plain = engine.plan(tiny_request(negative_prompt="ugly"))
    styled = engine.plan(tiny_request(negative_prompt="ugly", styles=["Ink Drawing"]))
    ink = engine.styles.get("Ink Drawing")
    want = apply_styles("a photograph of an astronaut riding a horse", "ugly", [ink])
    assert (styled.prompt.prompt_final, styled.prompt.negative) == want
    assert styled.prompt.prompt_styled == want[0] and styled.prompt.tokens > plain.prompt.tokens
    assert [s.model_dump() for s in styled.prompt.styles] == [ink.record()]
    assert styled.request.negative_prompt == "ugly"  # the request keeps what the user wrote
    a, b = engine.run(plain).images, engine.run(styled).images
    assert np.abs(a - b).max() > 0.02
    # the style's effect is exactly its text: the same text typed in by hand gives the same pixels
    typed = engine.run(engine.plan(tiny_request(prompt=want[0], negative_prompt=want[1]))).images
    assert np.array_equal(b, typed)


def test_styles_apply_before_chunking(engine, tiny_request):
    plain = engine.plan(tiny_request(prompt=SEVENTY))
    assert (plain.prompt.tokens, plain.prompt.chunks) == (70, 1)
    styled = engine.plan(tiny_request(prompt=SEVENTY, styles=["Photograph"]))
    assert styled.prompt.chunks == 2 and styled.prompt.chunk_count == 2
    # a static-shape backend's compile prediction sees the styled text's chunk count too
    ov = {"name": "openvino", "ov_mode": "accuracy"}
    a = engine.plan(tiny_request(prompt=SEVENTY, backend=ov)).compile
    b = engine.plan(tiny_request(prompt=SEVENTY, backend=ov, styles=["Photograph"])).compile
    assert a.signature.endswith(":77tok") and b.signature.endswith(":154tok")


def test_fooocus_folder_is_read_and_used(folder_engine, tiny_request, styles_dir):
    library = folder_engine.styles
    # Fooocus's naming: hyphens become spaces, words capitalised; a folder style replaces studio's, with a note
    glow = library.get("My Glow")
    assert glow is not None and glow.source == "styles/mine.json" and library.get("my-glow") is glow
    assert library.get("Watercolor").prompt == "wet watercolor of {prompt}"
    assert any("'Watercolor' replaces the one from studio" in n for n in library.notes)
    plan = folder_engine.plan(tiny_request(prompt="a moth", styles=["my glow", "Watercolor"]))
    assert plan.prompt.prompt_final == "a moth, glowing edges, dark backdrop, wet watercolor of a moth"
    assert plan.prompt.negative == "daylight, ink"
    assert [s.source for s in plan.prompt.styles] == ["styles/mine.json", "styles/mine.json"]


def test_broken_files_in_the_folder_are_problems_not_crashes(tmp_path, capsys):
    folder = tmp_path / "styles"
    style_file(folder, "a_good.json", [{"name": "Good", "prompt": "{prompt}, good", "negative_prompt": "bad"}])
    style_file(folder, "broken.json", "[{not json")
    style_file(folder, "object.json", {"name": "x"})
    style_file(folder, "big.json", "[" + " " * MAX_STYLES_FILE_BYTES + "]")
    style_file(folder, "entries.json", [
        "text", {"prompt": "{prompt}"}, {"name": "../etc/passwd", "prompt": "{prompt}"},
        {"name": "Fooocus V2", "prompt": "{prompt}"}, {"name": "Numbers", "prompt": 5},
        {"name": "Long", "prompt": "x" * 5000}, {"name": "Kept", "prompt": "{prompt}, kept"},
        {"name": "kept", "prompt": "{prompt}, kept again"}])
    style_file(folder, "surrogate.json", '[{"name": "S", "prompt": "\\ud800"}]')
    os.mkfifo(folder / "fifo.json")
    (folder / "dir.json").mkdir()
    library = load_library(folder)
    assert library.get("Good").prompt == "{prompt}, good" and library.get("Kept").prompt == "{prompt}, kept again"
    problems = "\n".join(library.problems)
    for needle in ("styles/broken.json is not valid JSON", "styles/object.json: not a list of styles",
                   "styles/big.json: it is", "over the 1 MiB limit", "styles/fifo.json: not a regular file",
                   "styles/dir.json: it is a folder", "entry 1 is not an object", "entry 2 has no name",
                   "may not hold / \\ :", "is Fooocus's prompt expansion", "prompt is not text",
                   "over the 4000 limit", "repeats style 'Kept'", "not valid Unicode"):
        assert needle in problems, needle
    assert all("\n" not in p for p in library.problems)
    code, out, err = run(capsys, "styles", "--styles-dir", folder, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["problems"] == library.problems and {"name": "Good", "prompt": "{prompt}, good",
                                                    "negative_prompt": "bad", "source": "styles/a_good.json"} \
        in doc["styles"]
    code, out, err = run(capsys, "styles", "--styles-dir", folder)
    assert code == 0 and "Good  (styles/a_good.json)" in out and "problem: styles/broken.json" in err


def test_unknown_or_bad_style_is_one_line(engine, tiny_request, capsys, tmp_path):
    with pytest.raises(StudioError, match="style 'Nope' is not here.*--styles-dir"):
        engine.plan(tiny_request(styles=["Nope"]))
    for argv, needle in ((["--style", "Nope"], "style 'Nope' is not here"),
                         (["--style", "Watercolour"], "the closest here is 'Watercolor'"),
                         (["--style", "../x"], "not a path"),
                         (["--style", "Ink Drawing", "--style", "Ink Drawing"], "given twice"),
                         (["--styles-dir", tmp_path / "absent"], "is not a folder")):
        code, out, err = run(capsys, "plan", "--model", "tiny", "--prompt", "a", *argv, "--json")
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
        assert needle in err


def test_cli_style_flags_and_listing(capsys, tmp_path, styles_dir):
    code, out, err = run(capsys, "plan", "--model", "tiny", "--prompt", "a moth", "--style", "Line Art",
                         "--style", "my glow", "--styles-dir", styles_dir, "--width", "64", "--height", "64",
                         "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["request"]["styles"] == ["Line Art", "my glow"]
    assert [s["name"] for s in plan["prompt"]["styles"]] == ["Line Art", "My Glow"]
    assert plan["prompt"]["prompt_final"].startswith("minimal line art of a moth")
    # 'Fooocus V2' is the expansion toggle, not a template
    code, out, err = run(capsys, "plan", "--model", "tiny", "--prompt", "a moth", "--style", "Fooocus V2", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["request"]["styles"] == [] and plan["request"]["expansion"] is True
    code, out, err = run(capsys, "generate", "--model", "tiny", "--prompt", "a moth", "--style", "Pastel",
                         "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--out", tmp_path / "o",
                         "--json")
    assert code == 0, err
    job = json.loads(out)["jobs"][0]
    assert job["prompt"] == "a moth" and job["prompt_final"].startswith("soft pastel drawing of a moth")
    code, out, err = run(capsys, "styles", "--search", "ink", "--json")
    assert code == 0 and {s["name"] for s in json.loads(out)["styles"]} >= {"Ink Drawing", "Ink Wash"}


def test_image_and_preset_replay_the_styled_text(engine, tiny_request, tmp_path, capsys):
    plan = engine.plan(tiny_request(prompt="a moth", negative_prompt="ugly", styles=["Ink Wash", "Mosaic"]))
    result = engine.run(plan)
    path = save_result(result, tmp_path / "out")[0]["path"]
    meta = read_metadata(path)
    assert meta["studio"]["plan"]["prompt"]["styles"][1]["name"] == "Mosaic"
    parsed = parse_infotext(meta["parameters"])
    assert parsed["styles"] == ["Ink Wash", "Mosaic"] and "Styles" not in parsed["unknown"]
    assert parsed["prompt"] == plan.prompt.prompt_final  # other tools see the text that was encoded
    code, out, err = run(capsys, "info", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["request"]["styles"] == ["Ink Wash", "Mosaic"]
    assert [s["prompt"] for s in info["styles"]] == [s.prompt for s in plan.prompt.styles]
    # studio's own image → preset → plan: the same styled text
    preset = tmp_path / "p.json"
    code, out, err = run(capsys, "preset", "import", path, "--from", "image", "--out", preset, "--json")
    assert code == 0, err
    assert json.loads(preset.read_text())["request"]["styles"] == ["Ink Wash", "Mosaic"]
    code, out, err = run(capsys, "plan", "--preset", preset, "--model", "tiny", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["prompt"]["prompt_final"], again["prompt"]["negative"]) == \
        (plan.prompt.prompt_final, plan.prompt.negative)
    # A1111 infotext alone: the styles are taken back out of the prompt, so a replay applies them once
    values = dict(parsed["request"])
    notes = restyle_values(values, parsed["styles"], engine.styles, "Styles")
    assert (values["prompt"], values["negative_prompt"], values["styles"]) == \
        ("a moth", "ugly", ["Ink Wash", "Mosaic"]) and "applied again" in notes[0]
    infotext = tmp_path / "params.txt"
    infotext.write_text(meta["parameters"])
    code, out, err = run(capsys, "preset", "import", infotext, "--from", "a1111", "--out", tmp_path / "a.json",
                         "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text())["request"]["styles"] == ["Ink Wash", "Mosaic"]
    # a style text that differs here: the prompt is kept as written, nothing applied twice
    other = load_library()
    values = dict(parsed["request"])
    other.styles["mosaic"] = Style("Mosaic", "{prompt}, tiles", "")
    notes = restyle_values(values, parsed["styles"], other, "Styles")
    assert values["prompt"] == plan.prompt.prompt_final and "styles" not in values and "kept as written" in notes[0]


def test_preset_diff_flags_a_missing_or_different_style(capsys, tmp_path, styles_dir):
    preset = tmp_path / "glow.json"
    code, out, err = run(capsys, "preset", "save", preset, "--model", "tiny", "--prompt", "a moth", "--seed", "1",
                         "--style", "my glow", "--style", "Pastel", "--styles-dir", styles_dir, "--json")
    assert code == 0, err
    assert json.loads(preset.read_text())["plan"]["prompt"]["styles"][0]["prompt"] == \
        "{prompt}, glowing edges, dark backdrop"
    code, out, err = run(capsys, "preset", "diff", preset, "--styles-dir", styles_dir, "--json")
    assert code == 0, err
    assert not [d for d in json.loads(out)["differences"] if d["field"].startswith("prompt.styles")]
    # without the folder: missing here
    code, out, err = run(capsys, "preset", "diff", preset, "--json")
    assert code == 0, err
    report = json.loads(out)
    (d,) = [d for d in report["differences"] if d["field"].startswith("prompt.styles")]
    assert d["field"] == "prompt.styles.my glow" and d["here"] == "not here" and d["effect"] == "different"
    assert "--styles-dir" in d["fix"] and "glowing edges" in d["preset"] and report["expected"] == "different"
    # a folder whose style of that name has another text
    changed = tmp_path / "changed"
    style_file(changed, "mine.json", [{"name": "My Glow", "prompt": "{prompt}, neon", "negative_prompt": ""}])
    code, out, err = run(capsys, "preset", "diff", preset, "--styles-dir", changed, "--json")
    assert code == 0, err
    (d,) = [d for d in json.loads(out)["differences"] if d["field"].startswith("prompt.styles")]
    assert "neon" in d["here"] and "changed/mine.json" in d["here"] and "glowing edges" in d["preset"]


def test_fooocus_preset_import_applies_the_styles_found(tmp_path, capsys, styles_dir):
    data = {"default_prompt": "a fox", "default_styles": ["Fooocus V2", "Watercolor", "Fooocus Enhance", 7]}
    shipped = import_fooocus(data)
    assert shipped.request_values["styles"] == ["Watercolor"] and shipped.request_values["expansion"] is True
    assert any("'Fooocus Enhance' are not here" in n for n in shipped.notes)
    src = tmp_path / "fooocus.json"
    src.write_text(json.dumps(data))
    code, out, err = run(capsys, "preset", "import", src, "--from", "fooocus", "--out", tmp_path / "f.json",
                         "--styles-dir", styles_dir, "--json")
    assert code == 0, err
    request = json.loads((tmp_path / "f.json").read_text())["request"]
    assert request["styles"] == ["Watercolor", "Fooocus Enhance"] and request["expansion"] is True
    assert not any("not here" in n for n in json.loads(out)["report"]["notes"])


def test_fooocus_image_import_applies_the_styles_found(tmp_path, capsys, styles_dir):
    meta = {"prompt": "a fox", "negative_prompt": "", "styles": "['Fooocus V2', 'Pixel Art', 'Sai Anime']",
            "prompt_expansion": "a fox, intricate", "steps": 4}
    parsed = parse_fooocus_json(json.dumps(meta))
    assert parsed["request"]["styles"] == ["Pixel Art"] and "styles" not in parsed["unknown"]
    assert any("'Sai Anime' are not here" in n for n in parsed["notes"])
    # Fooocus encodes the styled prompt and the expansion; studio replays one text holding both
    assert parsed["request"]["expanded_prompt"].startswith("pixel art of a fox,")
    assert parsed["request"]["expanded_prompt"].endswith(", a fox, intricate")
    info = PngInfo()
    info.add_text("parameters", json.dumps({**meta, "styles": "['My Glow']"}))
    png = tmp_path / "fooocus.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    code, out, err = run(capsys, "preset", "import", png, "--from", "image", "--out", tmp_path / "i.json",
                         "--styles-dir", styles_dir, "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "i.json").read_text())["request"]["styles"] == ["My Glow"]
    code, out, err = run(capsys, "info", png, "--styles-dir", styles_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["styles"][0]["source"] == "styles/mine.json"

"""Image input from the command line: --image/--mode/--mask/--strength/--outpaint on the tiny model, what the
images record (studio's record, A1111 infotext, the history) and `studio info` reads back, presets that need an
input image on another output folder, and every bad input refused in one line before anything is written."""

import contextlib
import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.cli import main
from studio.image_input import pixel_sha256, read_image, read_mask
from studio.settings import ImageInput
from tests.conftest import make_picture

GEN = ["generate", "--prompt", "a lighthouse", "--steps", "4", "--seed", "7", "--sampler", "euler", "--json"]


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*") if p.suffix in (".png", ".jpg", ".webp"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Input files of every kind the tests give, and the input picture's pixel hash."""
    folder = tmp_path_factory.mktemp("files")
    picture = make_picture(64, 48, seed=3)
    picture.save(folder / "in.png")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 6, 20, 16))
    mask.save(folder / "half-mask.png")  # half the picture's size: resized, and said
    picture.convert("CMYK").save(folder / "cmyk.jpg")
    picture.convert("P").save(folder / "palette.png")
    make_picture(48, 40, seed=5).save(folder / "other.png")
    (folder / "not-an-image.png").write_bytes(b"this is text, not a picture\n")
    Image.new("RGB", (4097, 8)).save(folder / "too-wide.png")
    return folder, pixel_sha256(picture)


MODES = {
    "vary": ["--image", "in.png"],  # the default mode: vary-subtle
    "upscale": ["--image", "in.png", "--mode", "upscale-1.5", "--format", "jpeg"],
    "inpaint": ["--image", "in.png", "--mode", "inpaint", "--mask", "half-mask.png", "--mask-blur", "2",
                "--inpaint-area", "masked", "--masked-padding", "8", "--strength", "0.75"],
    "outpaint": ["--image", "in.png", "--mode", "outpaint", "--outpaint", "left=16,top=8", "--format", "webp"],
}


@pytest.fixture(scope="module")
def runs(files, cache_dir, tmp_path_factory):
    """Each mode generated once through the CLI into one output folder: {name: (JSON out, stderr)}."""
    folder, _ = files
    out = tmp_path_factory.mktemp("out")
    done = {}
    for name, flags in MODES.items():
        flags = [str(folder / f) if f.endswith((".png", ".jpg")) else f for f in flags]
        code, stdout, err = cli(*GEN, *flags, "--out", out)
        assert code == 0, err
        done[name] = (json.loads(stdout), err)
    return out, done


def test_each_mode_runs_at_its_size_and_says_what_it_did(runs, files):
    folder, sha = files
    out, done = runs
    expect = {"vary": ("vary-subtle", 0.5, 2, (64, 48), ".png"), "upscale": ("upscale-1.5", 0.382, 1, (96, 72), ".jpg"),
              "inpaint": ("inpaint", 0.75, 3, (64, 48), ".png"), "outpaint": ("outpaint", 1.0, 4, (80, 56), ".webp")}
    for name, (mode, denoise, steps_run, size, suffix) in expect.items():
        job = done[name][0]["jobs"][0]
        plan = job["image"]  # the input image's plan is in generate's JSON
        assert (plan["mode"], plan["strength"], plan["steps_run"], plan["input_sha256"]) == (mode, denoise, steps_run,
                                                                                              sha), name
        (image,) = job["images"]
        assert (image["width"], image["height"]) == size and image["path"].endswith(suffix)
        with Image.open(image["path"]) as saved:
            assert saved.size == size
    assert done["inpaint"][0]["jobs"][0]["image"]["area"] == "masked"
    assert "note: half-mask.png: mask was 32×24, resized to the image's 64×48" in done["inpaint"][1]
    # inpaint keeps what the mask keeps: the corners far from the masked area are the input's pixels
    with Image.open(done["inpaint"][0]["jobs"][0]["images"][0]["path"]) as saved:
        pixels, original = np.asarray(saved.convert("RGB")), np.asarray(Image.open(folder / "in.png"))
    assert np.array_equal(pixels[:4, :4], original[:4, :4]) and np.array_equal(pixels[-4:, -4:], original[-4:, -4:])
    assert sorted(p.name for p in (out / "inputs").iterdir()) == sorted(
        [f"{sha}.png", f"{done['inpaint'][0]['jobs'][0]['image']['mask_sha256']}.png"])


def test_info_reads_mode_denoise_and_inputs_back(runs, files):
    _, sha = files
    _, done = runs
    for name in MODES:  # PNG chunks, JPEG and WebP EXIF
        job = done[name][0]["jobs"][0]
        code, stdout, err = cli("info", job["images"][0]["path"], "--json")
        assert code == 0, err
        doc = json.loads(stdout)
        assert doc["source"] == "studio" and doc["plan"]["image"] == job["image"]
        shown = doc["image_input"]
        assert (shown["mode"], shown["denoise"], shown["input_sha256"], shown["input_known"]) == (
            job["image"]["mode"], job["image"]["strength"], sha, True)
        assert f"Denoising strength: {job['image']['strength']}" in doc["parameters"]
        assert f"Image mode: {job['image']['mode']}, Input image: {sha}" in doc["parameters"]
    inpaint = json.loads(cli("info", done["inpaint"][0]["jobs"][0]["images"][0]["path"], "--json")[1])
    mask = done["inpaint"][0]["jobs"][0]["image"]["mask_sha256"]
    assert inpaint["request"]["image"] == {"mode": "inpaint", "sha256": sha, "strength": 0.75, "mask_sha256": mask,
                                           "mask_blur": 2, "inpaint_area": "masked", "masked_padding": 8,
                                           "outpaint": {"left": 0, "right": 0, "top": 0, "bottom": 0}}
    assert ("Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8, Image mode: inpaint, "
            f"Input image: {sha}, Mask: {mask}") in inpaint["parameters"]
    assert {k: inpaint["image_input"][k] for k in ("mask_sha256", "mask_blur", "inpaint_area", "masked_padding")} == \
        {"mask_sha256": mask, "mask_blur": 2, "inpaint_area": "masked", "masked_padding": 8}
    code, stdout, _ = cli("info", done["outpaint"][0]["jobs"][0]["images"][0]["path"])  # text: one line for it
    assert code == 0 and 'input image: {"mode": "outpaint", "denoise": 1.0' in stdout
    assert '"outpaint": {"left": 16, "right": 0, "top": 8, "bottom": 0}' in stdout


@pytest.mark.parametrize("name", ["inpaint", "outpaint"])
def test_infotext_alone_round_trips_the_input_image(runs, tmp_path, name):
    """The parameters text without studio's record (what A1111 and civitai keep) gives the same input settings,
    and a preset imported from it plans the same input image run."""
    out, done = runs
    job = done[name][0]["jobs"][0]
    original = json.loads(cli("info", job["images"][0]["path"], "--json")[1])
    info = PngInfo()
    info.add_text("parameters", original["parameters"])
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare, pnginfo=info)
    code, stdout, err = cli("info", bare, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["source"] == "a1111" and set(doc["unknown"]) == {"Noise fingerprint", "Version"}
    # The same input settings; the text gives the denoise that ran (the request may leave it to the mode).
    read = ImageInput(**doc["request"]["image"]).model_dump()
    asked = original["request"]["image"]
    assert {**read, "strength": None} == {**asked, "strength": None}
    assert read["strength"] == job["image"]["strength"] == doc["image_input"]["denoise"]
    assert doc["image_input"]["input_known"] is True
    preset = tmp_path / "imported.json"
    code, stdout, err = cli("preset", "import", bare, "--from", "image", "--out", preset, "--json")
    assert code == 0, err
    imported = json.loads(stdout)
    assert imported["preset"]["request"]["image"]["sha256"] == job["image"]["input_sha256"]
    assert any("needs its input image" in n for n in imported["report"]["notes"])
    code, stdout, err = cli("plan", "--preset", preset, "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["image"] == job["image"]
    # and from studio's own record: the request's input as it was asked
    code, stdout, err = cli("preset", "import", job["images"][0]["path"], "--from", "image", "--out",
                            tmp_path / "own.json", "--json")
    assert code == 0, err
    assert ImageInput(**json.loads(stdout)["preset"]["request"]["image"]).model_dump() == asked


def test_a1111_img2img_text_shows_the_denoise_and_says_the_input_is_unknown(tmp_path):
    text = ("a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 45dee52b, "
            "Model: dreamshaper_8, Denoising strength: 0.6, Mask blur: 4, Inpaint area: Only masked, "
            "Masked area padding: 40, Version: v1.9.4")
    info = PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "img2img.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, stdout, err = cli("info", path, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["image_input"] == {"denoise": 0.6, "mask_blur": 4, "inpaint_area": "masked", "masked_padding": 40,
                                  "input_known": False}
    assert "image" not in doc["request"] and doc["unknown"] == {"Version": "v1.9.4"}
    assert any("the input image itself is not known" in n and "--strength 0.6" in n for n in doc["notes"])
    code, stdout, err = cli("preset", "import", path, "--from", "image", "--out", tmp_path / "p.json", "--json")
    assert code == 0, err
    imported = json.loads(stdout)
    assert "image" not in imported["preset"]["request"]
    assert any("the input image itself is not known" in n for n in imported["report"]["notes"])
    # Hires fix writes a Denoising strength too: that is text to image, not an input image.
    info = PngInfo()
    info.add_text("parameters", text.split(", Mask blur")[0] + ", Hires upscale: 2, Hires upscaler: Latent")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    doc = json.loads(cli("info", path, "--json")[1])
    assert doc["image_input"] is None and doc["unknown"]["Denoising strength"] == "0.6"


def test_history_records_the_input_and_its_command_line_makes_the_image_again(runs, files, tmp_path):
    from studio import history
    from studio.history_html import command_line

    out, done = runs
    _, sha = files
    entries = {e.record.image_mode: e for e in history.entries(out)}
    assert set(entries) == {"vary-subtle", "upscale-1.5", "inpaint", "outpaint"}
    for mode, entry in entries.items():
        assert entry.record.input_sha256 == sha and entry.request.image.mode == mode
    assert (entries["inpaint"].record.denoise, entries["vary-subtle"].record.denoise) == (0.75, 0.5)
    # an entry written before image input (no such fields) still reads
    old = entries["vary-subtle"].record.model_dump(mode="json", exclude={"image_mode", "denoise", "input_sha256"})
    assert history.Record.model_validate(old).image_mode is None
    command, missing = command_line(entries["vary-subtle"])
    assert missing == [] and f"--image {out / 'inputs' / (sha + '.png')} --mode vary-subtle" in command
    code, stdout, err = cli(*shlex.split(command)[1:], "--out", tmp_path, "--json")
    assert code == 0, err
    again = json.loads(stdout)["jobs"][0]["images"][0]
    with Image.open(again["path"]) as a, Image.open(entries["vary-subtle"].path) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_plan_text_shows_the_image_plan(files, cache_dir, tmp_path):
    folder, sha = files
    code, stdout, err = cli("plan", "--prompt", "a fox", "--steps", "4", "--image", folder / "in.png", "--mode",
                            "inpaint", "--mask", folder / "half-mask.png", "--strength", "0.75", "--out", tmp_path)
    assert code == 0, err
    assert json.loads(stdout)["image"]["input_sha256"] == sha  # stdout stays the plan's JSON
    assert (f"input image: inpaint of input {sha[:12]} (64×48) · denoise 0.75: runs 3 of 4 steps · latent mask "
            "blending (4-channel UNet) · mask ") in err
    assert "output 64×48" in err and not images_in(tmp_path)


def test_a_preset_with_an_input_image_opened_on_another_output_folder(files, cache_dir, tmp_path, monkeypatch):
    folder, sha = files
    monkeypatch.chdir(tmp_path)  # the current folder is searched too: keep it empty of pictures
    shared, here = tmp_path / "shared", tmp_path / "here"
    preset = shared / "p.json"
    code, stdout, err = cli("preset", "save", preset, "--prompt", "a fox", "--steps", "4", "--seed", "2",
                            "--image", folder / "in.png", "--mode", "vary-strong", "--out", tmp_path / "there",
                            "--json")
    assert code == 0, err
    assert json.loads(preset.read_text())["request"]["image"]["sha256"] == sha
    assert f"names its input image {sha[:12]}" in err
    line = f"the preset's input image {sha[:12]} is not in this machine's inputs store: give it with --image FILE"
    code, stdout, err = cli("preset", "diff", preset, "--out", here, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["expected"] == "different" and report["missing_inputs"] == [line]
    assert {"field": "image.sha256", "preset": sha[:12], "here": "not in this machine's inputs store",
            "effect": "different", "fix": "give it with --image FILE"} in report["differences"]
    code, stdout, _ = cli("preset", "diff", preset, "--out", here)
    assert f"- image.sha256: {sha[:12]} → not in this machine's inputs store [different] give it with --image FILE" \
        in stdout
    code, stdout, err = cli("generate", "--preset", preset, "--out", here, "--json")
    assert (code, stdout, err) == (2, "", f"error: {line}\n") and not images_in(here)
    # the same picture under another name and format beside the preset: found by its pixels' hash, and stored
    Image.open(folder / "in.png").save(shared / "holiday.bmp")
    code, stdout, err = cli("preset", "diff", preset, "--out", here, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["missing_inputs"] == [] and not any(d["field"].startswith("image") for d in report["differences"])
    assert any(f"found it as {shared.resolve() / 'holiday.bmp'} (same pixels) and stored it" in n
               for n in report["notes"])
    assert (here / "inputs" / f"{sha}.png").is_file()
    code, stdout, err = cli("plan", "--preset", preset, "--out", here, "--json")
    assert code == 0, err
    assert json.loads(stdout)["image"]["mode"] == "vary-strong"
    other = pixel_sha256(read_image(folder / "other.png")[0])
    code, stdout, err = cli("plan", "--preset", preset, "--image", folder / "other.png", "--out", here, "--json")
    assert code == 0, err
    assert f"note: the preset's input was {sha[:12]}; this run uses {other[:12]}" in err
    plan = json.loads(stdout)["image"]
    assert (plan["input_sha256"], plan["mode"]) == (other, "vary-strong")  # the preset's mode, the given image


def test_an_image_whose_input_is_elsewhere_opens_with_the_line_or_finds_it(runs, files, config, tmp_path):
    from studio.service import Studio

    out, done = runs
    folder, sha = files
    studio = Studio(config.model_copy(update={"output_dir": tmp_path / "elsewhere"}))
    copy = tmp_path / "copy.png"
    shutil.copy(done["vary"][0]["jobs"][0]["images"][0]["path"], copy)
    opened = studio.open_image(copy)
    assert opened.report["missing_inputs"] == [
        f"the image's input image {sha[:12]} is not in this machine's inputs store: give it with --image FILE"]
    assert opened.request.image.sha256 == sha and opened.plan.image is None  # planned without it
    shutil.copy(folder / "in.png", tmp_path / "the-original.png")  # beside the image: found by hash
    opened = studio.open_image(copy)
    assert opened.report["missing_inputs"] == [] and opened.plan.image.input_sha256 == sha
    assert studio.inputs.has(sha)
    sha2, notes = studio.put_mask(folder / "half-mask.png", sha)
    assert notes == ["mask was 32×24, resized to the image's 64×48"]
    assert sha2 == pixel_sha256(read_mask(folder / "half-mask.png", (64, 48))[0])


def test_the_report_says_when_the_input_runs_another_way_here(files, config, tmp_path):
    from studio.service import Studio
    from studio.settings import build_request

    folder, _ = files
    studio = Studio(config.model_copy(update={"output_dir": tmp_path}))
    sha, notes = studio.put_input(folder / "in.png")
    assert notes == []
    request = build_request(prompt="x", steps=4, seed=1, image={"mode": "vary-subtle", "sha256": sha})
    preset = studio.make_preset(request, "p")
    assert not any(d["field"].startswith("image") for d in studio.open_preset(preset, []).report["differences"])
    there = {**preset.plan, "image": {**preset.plan["image"], "steps_run": 3, "method": "something older"}}
    report = studio.open_preset(preset.model_copy(update={"plan": there}), []).report
    assert report["expected"] == "different"
    assert {(d["field"], d["preset"], d["here"]) for d in report["differences"] if d["field"].startswith("image")} == {
        ("image.steps_run", 3, 2), ("image.method", "something older", "image-to-image")}


@pytest.mark.parametrize("source,note", [("cmyk.jpg", "CMYK colours converted to RGB"),
                                         ("palette.png", "palette (indexed) colours made RGB")])
def test_converted_inputs_are_a_note_and_the_run_goes_on(files, cache_dir, tmp_path, source, note):
    folder, _ = files
    code, stdout, err = cli(*GEN, "--image", folder / source, "--mode", "upscale-1.5", "--out", tmp_path)
    assert code == 0, err
    assert f"note: {source}: {note}" in err.splitlines()
    (image,) = json.loads(stdout)["jobs"][0]["images"]
    assert Path(image["path"]).is_file() and (image["width"], image["height"]) == (96, 72)


BAD = [
    (["--image", "not-an-image.png"], "input image not-an-image.png is not an image studio can read"),
    (["--image", "too-wide.png"], "too-wide.png is 4097×8; the largest is 4096 pixels per side"),
    (["--image", "nowhere.png"], "cannot read input image nowhere.png"),
    (["--image", "in.png", "--mask", "half-mask.png"],
     "a mask is given but the mode is vary-subtle: use --mode inpaint"),
    (["--mask", "half-mask.png"], "--mask needs an input image: give it with --image FILE"),
    (["--mode", "upscale-2"], "--mode needs an input image: give it with --image FILE"),
    (["--strength", "0.5"], "--strength needs an input image"),
    (["--image", "in.png", "--strength", "0"], "--strength 0: the denoise must be more than 0 and at most 1"),
    (["--image", "in.png", "--strength", "1.5"], "--strength 1.5: the denoise must be more than 0 and at most 1"),
    (["--image", "in.png", "--strength", "nan"], "--strength nan: the denoise must be more than 0"),
    (["--image", "in.png", "--mode", "outpaint", "--outpaint", "left128"], "--outpaint 'left128': 'left128' is not"),
    (["--image", "in.png", "--mode", "outpaint", "--outpaint", "left=8,left=16"], "left is given twice"),
    (["--image", "in.png", "--mode", "outpaint", "--outpaint", "left=12"],
     "--outpaint: Input should be a multiple of 8"),
    (["--image", "in.png", "--mode", "outpaint"], "outpaint needs pixels to add on at least one side"),
    (["--image", "in.png", "--outpaint", "left=8"], "outpaint sides are set but the mode is vary-subtle"),
    (["--image", "in.png", "--mode", "inpaint"], "inpaint needs a mask"),
    (["--image", "in.png", "--mode", "sideways"], "invalid choice: 'sideways'"),
    (["--image", "in.png", "--mask-blur", "65"], "--mask-blur: Input should be less than or equal to 64"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(files, cache_dir, tmp_path, argv, needle):
    folder, _ = files
    out = tmp_path / "out"
    argv = [str(folder / a) if a.endswith(".png") else a for a in argv]
    code, stdout, err = cli(*GEN, *argv, "--out", out)
    lines = err.splitlines()
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists() or not any(out.rglob("*"))  # no image, no history, nothing in the inputs store


@pytest.mark.parametrize("command", ["plan", "verify --twice", "preset save"])
def test_the_other_commands_take_the_image_flags_and_refuse_alike(files, cache_dir, tmp_path, command):
    folder, _ = files
    command = command.split() + ([tmp_path / "p.json"] if command == "preset save" else [])
    code, stdout, err = cli(*command, "--image", folder / "in.png", "--strength", "2", "--out", tmp_path / "out")
    assert (code, stdout) == (2, "") and err == "error: --strength 2: the denoise must be more than 0 and at most 1\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.json").exists()


def test_a_real_process_refuses_a_file_that_is_not_an_image(files, cache_dir, tmp_path):
    folder, _ = files
    proc = subprocess.run([sys.executable, "-m", "studio", *GEN, "--image", str(folder / "not-an-image.png"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: input image not-an-image.png is not an image studio can read")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_image_controls_come_from_the_request_model():
    from studio.cli import build_parser
    from studio.controls import BY_NAME, CONTROL_ORDER, CONTROLS
    from studio.image_input import MODES as IMAGE_MODES
    from studio.settings import build_request

    IMAGE_CONTROLS = [c for c in CONTROLS if c.path[0] == "image"]
    assert [(c.name, c.label, c.path) for c in IMAGE_CONTROLS] == [
        ("image_mode", "Input image mode", ("image", "mode")), ("strength", "Denoise", ("image", "strength")),
        ("mask_blur", "Mask blur", ("image", "mask_blur")), ("inpaint_area", "Inpaint area", ("image", "inpaint_area")),
        ("masked_padding", "Masked area padding", ("image", "masked_padding"))]
    assert BY_NAME["image_mode"].choices == list(IMAGE_MODES) and BY_NAME["inpaint_area"].choices == ["whole", "masked"]
    assert (BY_NAME["strength"].bounds, BY_NAME["mask_blur"].bounds, BY_NAME["masked_padding"].bounds) == (
        (0.0, 1.0), (0, 64), (0, 256))
    assert {c.name for c in IMAGE_CONTROLS} <= set(CONTROL_ORDER)  # the app's API parameters too
    request = build_request(image={"mode": "inpaint", "sha256": "a" * 64, "mask_sha256": "b" * 64})
    for control in IMAGE_CONTROLS:
        value = request
        for part in control.path:
            value = getattr(value, part)
        assert value == control.default or control.name == "image_mode"
        assert not control.choices or value in control.choices
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    by_flag = {opt: action for action in generate._actions for opt in action.option_strings}
    for control in IMAGE_CONTROLS:
        action = by_flag[control.flag]
        assert action.dest == control.name and action.help == control.help
        assert (list(action.choices) if action.choices else []) == control.choices
    assert by_flag["--strength"].type is float and by_flag["--mask-blur"].type is int

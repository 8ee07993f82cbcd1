"""The verifier: numbers, a heatmap, a verdict; `studio verify` per the CLI contract."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.repro.compare import compare_arrays, heatmap_png


def test_metrics_on_known_arrays():
    a = np.zeros((4, 5, 3))
    assert compare_arrays(a, a).verdict == "identical"
    assert compare_arrays(a, a).psnr_db is None
    b = a.copy()
    b[1, 2, 0] = 0.5  # one pixel of 20, one channel
    c = compare_arrays(a, b)
    assert c.verdict == "different"
    assert c.max_abs_diff == 0.5
    assert c.mean_abs_diff == pytest.approx(0.5 / 60)
    assert c.pct_pixels_differ == pytest.approx(5.0) and c.pct_pixels_differ_1_255 == pytest.approx(5.0)
    assert c.psnr_db == pytest.approx(10 * np.log10(1 / (0.25 / 60)), abs=1e-3)
    b[1, 2, 0] = 1 / 255
    c = compare_arrays(a, b)
    assert c.verdict == "within_tolerance" and c.pct_pixels_differ_1_255 == 0.0
    assert compare_arrays(a, b, tolerance=0).verdict == "different"


def test_latent_tensors_compare_too():
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8))
    c = compare_arrays(x, x + 1e-6, tolerance=1e-5)
    assert c.verdict == "within_tolerance" and c.max_abs_diff == pytest.approx(1e-6)


def test_heatmap_shows_where_images_differ(tmp_path):
    a = np.zeros((8, 8, 3))
    b = a.copy()
    b[2, 5] = 0.1
    b[6, 1] = 0.05
    heat = np.array(Image.open(io.BytesIO(heatmap_png(a, b))))
    assert heat.shape == (8, 8, 3)
    assert tuple(heat[2, 5]) == (255, 255, 255)  # the largest difference at full scale
    assert heat[6, 1].sum() > 0 and heat[6, 1].sum() < heat[2, 5].sum()
    heat[2, 5] = heat[6, 1] = 0
    assert heat.sum() == 0  # black wherever the images agree


def _png(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_two_images(capsys, tmp_path):
    a = np.zeros((16, 16, 3))
    b = a.copy()
    b[3, 3] = 255
    pa, pb = _png(tmp_path / "a.png", a), _png(tmp_path / "b.png", b)
    heat = tmp_path / "heat.png"
    code, out, err = run(capsys, "verify", pa, pb, "--heatmap", str(heat), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "different" and doc["max_abs_diff"] == 1.0
    assert doc["pct_pixels_differ"] == pytest.approx(100 / 256)
    assert doc["heatmap"] == str(heat) and Image.open(heat).size == (16, 16)
    code, out, _ = run(capsys, "verify", pa, pa, "--json")
    assert json.loads(out)["verdict"] == "identical" and json.loads(out)["psnr_db"] is None


def test_verify_images_of_different_sizes(capsys, tmp_path):
    pa = _png(tmp_path / "a.png", np.zeros((16, 16, 3)))
    pb = _png(tmp_path / "b.png", np.zeros((16, 24, 3)))
    code, out, err = run(capsys, "verify", pa, pb, "--json")
    assert code == 2 and out == ""
    assert err.strip() == "error: the images differ in size: a.png is 16x16, b.png is 24x16; compare images of the same size"


def test_verify_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    pa = _png(tmp_path / "a.png", np.zeros((4, 4, 3)))
    for argv in ([pa, str(bad)], [pa, str(tmp_path / "missing.png")]):
        code, out, err = run(capsys, "verify", *argv, "--json")
        assert code == 2 and out == "" and err.startswith("error: cannot read image ")
        assert len(err.strip().splitlines()) == 1


def test_verify_needs_one_mode(capsys):
    code, _, err = run(capsys, "verify", "--json")
    assert code == 2 and err.startswith("error: give two images, or --twice")


def test_verify_twice_is_identical(capsys, cache_dir):
    """The issue's own acceptance command."""
    code, out, err = run(capsys, "verify", "--twice", "--model", "tiny", "--sampler", "euler_a", "--seed", "15",
                         "--batch", "2", "--steps", "4", "--width", "64", "--height", "64", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verdict"] == "identical" and doc["max_abs_diff"] == 0.0


def test_verify_against_another_backend(capsys, cache_dir):
    code, out, err = run(capsys, "verify", "--against", "torch", "--model", "tiny", "--seed", "3", "--steps", "2",
                         "--width", "64", "--height", "64", "--json")
    assert code == 0, err
    assert json.loads(out)["verdict"] == "identical"
    code, _, err = run(capsys, "verify", "--against", "tensorrt", "--json")
    assert code == 2 and "--against 'tensorrt'" in err

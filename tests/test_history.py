"""History (issue 11): every saved image recorded in the output folder, read back newest first across
restarts, robust to torn and hostile lines and to concurrent writers; a log page per day; `studio history`.

Real runs of the tiny model (the CLI in-process through studio.cli.main), real files, real processes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio import history
from studio.cli import main
from studio.outputs import save_result
from studio.untrusted import MAX_HISTORY_LINE_BYTES

ROOT = Path(__file__).resolve().parents[1]
GEN = ["generate", "--model", "tiny", "--steps", "1", "--width", "64", "--height", "64", "--sampler", "euler_a",
       "--json"]
# No brackets: ( ) would be emphasis weights, which the untrained tiny model turns into NaN.
HOSTILE = '<script>document.title="x"</script> & <b>bold</b>'


def cli_json(capsys, argv) -> dict:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Traceback" not in captured.err
    return json.loads(captured.out)


def index_files(out: Path) -> list[Path]:
    return sorted((out / ".studio" / "history").glob("*.jsonl"))


def day_log(out: Path) -> Path:
    (page,) = sorted((out / "log").glob("*.html"))
    return page


@pytest.fixture(scope="module")
def generated(cache_dir, tmp_path_factory):
    """One CLI generate of a batch of two with a hostile prompt and negative, into a fresh folder."""
    out = tmp_path_factory.mktemp("hist-cli")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*GEN, "--batch", "2", "--seed", "5", "--prompt", HOSTILE, "--negative=-ugly & <i>",
                     "--out", str(out)])
    assert code == 0, stderr.getvalue()[-3000:]
    return out, json.loads(stdout.getvalue())


def save(engine, tiny_request, out: Path, **overrides):
    result = engine.run(engine.plan(tiny_request(steps=1, **overrides)))
    return result, save_result(result, out)


# -- recording ------------------------------------------------------------------------------------
def test_cli_generate_records_every_image(generated):
    out, run = generated
    images = run["jobs"][0]["images"]
    found = history.entries(out)
    assert [e.record.seed for e in found] == [6, 5]  # newest first: the batch's second image was saved last
    for entry, image in zip(found, reversed(images)):
        rec = entry.record
        assert entry.path == Path(image["path"]) and rec.image == Path(image["path"]).name
        assert (rec.seed, rec.noise_fingerprint, rec.prompt_final) == (image["seed"], image["noise_fingerprint"],
                                                                       image["prompt_final"])
        assert rec.prompt == HOSTILE and rec.negative == "-ugly & <i>"  # a text that looks like a flag
        assert rec.model.name == "tiny" and rec.model.sha256 == run["model"]["sha256"]
        assert rec.model.short_hash == rec.model.sha256[:10]
        assert (rec.sampler, rec.steps, rec.cfg, rec.width, rec.height) == ("euler_a", 1, 7.0, 64, 64)
        assert (rec.backend.name, rec.backend.device, rec.backend.precision["unet"]) == ("torch", "cpu", "fp32")
        assert rec.batch == 2 and rec.index == images.index(image)
        assert rec.day == rec.time[:10] and rec.image.startswith(rec.day.replace("-", ""))
        # What Apply fills in: this image's own request, valid now, reproducing it alone.
        assert entry.request_error is None
        assert entry.request.seed == rec.seed and entry.request.batch == 1 and entry.request.prompt == HOSTILE
    # one line per image, one file for the day
    (index,) = index_files(out)
    assert index.name == f"{found[0].record.day}.jsonl"
    assert len(index.read_bytes().splitlines()) == 2


def test_the_copied_command_line_makes_the_same_image(generated, capsys, tmp_path):
    out, _ = generated
    entry = history.entries(out)[0]
    argv = shlex.split(entry.to_json()["command"])
    assert argv[:2] == ["studio", "generate"] and f"--prompt={HOSTILE}" in argv and "--negative=-ugly & <i>" in argv
    again = cli_json(capsys, [*argv[1:], "--json", "--out", tmp_path])
    image = again["jobs"][0]["images"][0]
    assert (image["seed"], image["noise_fingerprint"]) == (entry.record.seed, entry.record.noise_fingerprint)
    assert np.array_equal(np.asarray(Image.open(image["path"])), np.asarray(Image.open(entry.path)))


def test_entries_for_one_image(generated):
    out, run = generated
    first = Path(run["jobs"][0]["images"][0]["path"])
    (entry,) = history.entries_for_image(out, first)
    assert entry.record.seed == 5 and entry.path == first
    # A copy elsewhere (the app's gallery) under the same name finds it too; a name not recorded, nothing.
    assert history.entries_for_image(out, Path("/elsewhere/cache") / first.name)[0].record.seed == 5
    assert history.entries_for_image(out, "20000101-000000_1.png") == []
    assert history.entries_for_image(out, "../" + first.name) == history.entries_for_image(out, first.name)
    assert history.entries_for_image(out, ".") == []


# -- reading ----------------------------------------------------------------------------------------
def test_newest_first_across_restarts_paged_and_a_deleted_image_drops_out(engine, tiny_request, tmp_path):
    out = tmp_path / "out"
    saved = [save(engine, tiny_request, out, seed=seed)[1][0] for seed in (101, 102, 103)]
    assert [e.record.seed for e in history.entries(out)] == [103, 102, 101]
    assert [e.record.seed for e in history.entries(out, limit=1, offset=1)] == [102]
    # A restart: a fresh process that only reads the folder.
    reader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json
        from studio import history
        print(json.dumps([e.to_json() for e in history.entries({str(out)!r})]))
        """)], capture_output=True, text=True, cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert reader.returncode == 0, reader.stderr
    listed = json.loads(reader.stdout)
    assert [e["seed"] for e in listed] == [103, 102, 101]
    assert [e["path"] for e in listed] == [s["path"] for s in reversed(saved)]
    assert all(e["apply"] and e["apply_error"] is None for e in listed)

    Path(saved[1]["path"]).unlink()
    assert [e.record.seed for e in history.entries(out)] == [103, 101]
    assert [e.record.seed for e in history.entries(out, limit=1, offset=1)] == [101]  # not counted when paging
    assert history.entries_for_image(out, saved[1]["path"]) == []
    save(engine, tiny_request, out, seed=104)  # the next save rewrites the day's page without it
    page = day_log(out).read_text()
    assert Path(saved[1]["path"]).name not in page and Path(saved[0]["path"]).name in page


def test_torn_garbage_and_hostile_lines_are_skipped(engine, tiny_request, tmp_path):
    out = tmp_path / "out"
    save(engine, tiny_request, out, seed=201)
    (index,) = index_files(out)
    good = json.loads(index.read_bytes().splitlines()[0])
    (out / "elsewhere.png").write_bytes(b"not ours")
    os.symlink("/etc/passwd", out / "link.png")
    (out / "folder.png").mkdir()

    def line(**changes) -> bytes:
        return json.dumps({**good, **changes}).encode() + b"\n"

    bad_request = {**good["request"], "sampler": "no-such-sampler"}
    garbage = [
        b"not json at all\n", b"\n", b"[1, 2, 3]\n", b"{}\n", b'{"v": 2}\n',
        line(image="../elsewhere.png"), line(image="/etc/passwd"), line(image="link.png"), line(image="folder.png"),
        line(image=".studio"), line(seed="201"), line(cfg="7"), line(v=1.5), line(day="1999-01-01"),
        line(prompt="\ud800"), b'{"v":1,"prompt":"\\ud800"}\n', line(request=[1]), line(model={"name": "tiny"}),
        b"[" * 100_000 + b"\n",  # nested deeper than any parser should go
        b'{"v":1,"prompt":"' + b"x" * (MAX_HISTORY_LINE_BYTES + 10) + b'"}\n',  # over the line limit
        line(request=bad_request), line(request={**good["request"], "bogus": 1}),
    ]
    with open(index, "ab") as f:
        f.write(b"".join(garbage))
        f.write(line()[: len(line()) // 2])  # a writer killed mid-line: a torn last line
    found = history.entries(out)
    # The good line, and the two whose request no longer validates: shown, without Apply, with the reason.
    assert [e.record.seed for e in found] == [201, 201, 201]
    assert all(e.path == out / good["image"] for e in found)
    unknown_key, unknown_sampler, original = found
    assert original.request is not None and original.request_error is None
    assert unknown_sampler.request is None and "sampler" in unknown_sampler.request_error
    assert unknown_key.request is None and "bogus: unknown key" in unknown_key.request_error
    assert unknown_key.to_json()["apply"] is False and unknown_key.to_json()["command"] is None

    # The next save starts a line of its own after the torn one, and is read back.
    save(engine, tiny_request, out, seed=202)
    assert [e.record.seed for e in history.entries(out)][:2] == [202, 201]
    page = day_log(out).read_text()
    assert page.count("<article") == 4 and "Cannot be applied" in page and "no-such-sampler" in page
    assert "elsewhere.png" not in page and "passwd" not in page


def test_limits_and_offsets_are_checked(tmp_path):
    for bad in (0, -1, 10**6, True, "5", None):
        with pytest.raises(history.StudioError, match="limit"):
            history.entries(tmp_path, limit=bad)
    with pytest.raises(history.StudioError, match="offset"):
        history.entries(tmp_path, offset=-1)
    assert history.entries(tmp_path / "no-such-folder") == []


# -- concurrency ------------------------------------------------------------------------------------
WRITER = r"""
import json, os, sys, time
from pathlib import Path
from studio import history
out, tag, n, template, log = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), json.loads(Path(sys.argv[4]).read_text()), sys.argv[5] == "log"
records = []
for i in range(n):
    name = f"{tag}-{i}.png"
    (out / name).write_bytes(b"an image")
    # Long prompts: each line spans many pages, so an interleaved write would show.
    records.append(history.Record.model_validate({**template, "image": name, "seed": i, "prompt": tag * (20_000 + 397 * i)}))
Path(f"{out}/../ready-{tag}").touch()
while not Path(f"{out}/../go").exists():  # both start writing at once
    time.sleep(0.001)
for rec in records:
    assert history.record(out, rec) == [], "not recorded"
    if log:
        assert history.refresh_day_log(out, rec.day) == [], "log not written"
"""


def run_writers(engine, tiny_request, tmp_path, n: int, log: bool) -> tuple[Path, list[dict]]:
    """Two processes each recording ``n`` images (and rewriting the day's page after each when ``log``)
    into one folder at the same moment; the folder and the lines of its history file, parsed."""
    out = tmp_path / "out"
    save(engine, tiny_request, out, seed=301)
    (index,) = index_files(out)
    template = tmp_path / "template.json"
    template.write_bytes(index.read_bytes().splitlines()[0])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), tag, str(n), str(template),
                                 "log" if log else "-"], env=env, stderr=subprocess.PIPE, text=True)
               for tag in ("a", "b")]
    while not all((tmp_path / f"ready-{tag}").exists() for tag in ("a", "b")):
        assert all(w.poll() is None for w in writers), [w.stderr.read()[-3000:] for w in writers]
    (tmp_path / "go").touch()
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read()[-3000:]
    lines = index.read_bytes().splitlines()
    assert len(lines) == 1 + 2 * n
    parsed = [json.loads(line) for line in lines]  # every line whole: no tearing, no interleaving
    for tag in ("a", "b"):
        mine = [p for p in parsed if p["image"].startswith(f"{tag}-")]
        assert [p["seed"] for p in mine] == list(range(n))  # each writer's lines in its own order
        assert all(p["prompt"] == tag * (20_000 + 397 * p["seed"]) for p in mine)
    return out, parsed


def test_two_processes_appending_never_interleave_lines(engine, tiny_request, tmp_path):
    out, parsed = run_writers(engine, tiny_request, tmp_path, n=300, log=False)
    order = "".join(p["image"][0] for p in parsed[1:])
    assert "ab" in order and "ba" in order, "the writers did not overlap: the test proved nothing"
    assert len(history.entries(out, limit=1000)) == 1 + 600


def test_two_processes_saving_the_same_day_both_land_in_the_log(engine, tiny_request, tmp_path):
    n = 15
    out, _ = run_writers(engine, tiny_request, tmp_path, n=n, log=True)
    # Whichever process wrote the page last, it holds every image of both.
    page = day_log(out).read_text()
    for tag in ("a", "b"):
        for i in range(n):
            assert f'src="../{tag}-{i}.png"' in page
    assert page.count("<article") == 1 + 2 * n


def test_a_page_written_from_an_older_read_never_lands_last(engine, tiny_request, tmp_path, monkeypatch):
    """The race the lock closes, made certain: writer A has read the day's lines and is slow to write its
    page; meanwhile B records an image and writes its page. A's page, missing B's image, must not be the
    one left (B waits for A, then reads everything)."""
    import studio.history_html as history_html

    out = tmp_path / "out"
    save(engine, tiny_request, out, seed=601)
    first = history.entries(out)[0].record
    real, a_has_read, release = history_html.render_day, threading.Event(), threading.Event()

    def render(day, entries):
        if threading.current_thread().name == "A":
            a_has_read.set()
            assert release.wait(30)
        return real(day, entries)

    monkeypatch.setattr(history_html, "render_day", render)
    a = threading.Thread(name="A", target=history.refresh_day_log, args=(out, first.day))
    a.start()
    assert a_has_read.wait(30)
    (out / "b.png").write_bytes(b"an image")
    assert history.record(out, first.model_copy(update={"image": "b.png"})) == []
    b = threading.Thread(name="B", target=history.refresh_day_log, args=(out, first.day))
    b.start()
    b.join(0.5)
    release.set()
    a.join(30)
    b.join(30)
    page = day_log(out).read_text()
    assert 'src="../b.png"' in page and f'src="../{first.image}"' in page


# -- failures never cost an image -----------------------------------------------------------------
def test_history_folder_blocked_by_a_file_keeps_the_images(engine, tiny_request, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".studio").write_text("a file where the folder should be")
    result, saved = save(engine, tiny_request, out, seed=401, batch=2)
    assert len(saved) == 2 and all(Image.open(s["path"]).size == (64, 64) for s in saved)
    notes = [n for n in result.notes if "not recorded in the history" in n]
    assert len(notes) == 1 and "choose another folder" in notes[0], result.notes  # one note, said once
    assert history.entries(out) == []
    # and no image's own metadata carries the note
    from studio.metadata.read import read_metadata

    assert all(read_metadata(s["path"])["studio"]["run"]["notes"] == [] for s in saved)


def test_a_planted_fifo_or_symlink_neither_blocks_nor_redirects_the_history(engine, tiny_request, tmp_path):
    out = tmp_path / "out"
    folder = out / ".studio" / "history"
    folder.mkdir(parents=True)
    index = folder / f"{history.day_of(time.time())}.jsonl"
    os.mkfifo(index)  # opened for writing the usual way, a FIFO without a reader blocks forever
    result, saved = save(engine, tiny_request, out, seed=451)
    assert Path(saved[0]["path"]).is_file()
    assert any("not recorded in the history" in n for n in result.notes), result.notes
    index.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("not studio's\n")
    index.symlink_to(victim)
    result, saved = save(engine, tiny_request, out, seed=452)
    assert Path(saved[0]["path"]).is_file() and victim.read_text() == "not studio's\n"
    assert any("not recorded in the history" in n for n in result.notes), result.notes
    assert history.entries(out) == []


def test_disk_full_or_read_only_history_keeps_the_image(engine, tiny_request, tmp_path, monkeypatch):
    out = tmp_path / "out"
    save(engine, tiny_request, out, seed=501)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(history, "append_line", full)
    result, saved = save(engine, tiny_request, out, seed=502)
    assert Path(saved[0]["path"]).is_file()
    assert any("not recorded in the history: no space left on device" in n for n in result.notes), result.notes
    monkeypatch.undo()

    def read_only(target, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    monkeypatch.setattr(history, "atomic_write_bytes", read_only)
    result, saved = save(engine, tiny_request, out, seed=503)
    assert Path(saved[0]["path"]).is_file()
    assert any("log was not updated: read-only file system" in n for n in result.notes), result.notes
    monkeypatch.undo()
    assert [e.record.seed for e in history.entries(out)] == [503, 501]  # 502 is saved but was not recorded


def test_cli_says_the_note_and_keeps_the_image(generated, capsys, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(history, "append_line", full)
    assert main([*GEN, "--seed", "7", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    run = json.loads(captured.out)
    (image,) = run["jobs"][0]["images"]
    assert Path(image["path"]).is_file()
    assert any("no space left on device" in n for n in run["jobs"][0]["notes"])
    assert "note: the image was saved but not recorded in the history: no space left on device" in captured.err


# -- the day's log page ---------------------------------------------------------------------------
class _Page(HTMLParser):
    """Collects what a browser would see: the image sources, the text, and any script elements."""

    def __init__(self):
        super().__init__()
        self.srcs, self.scripts, self.text, self.stack = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_day_log_holds_every_image_escaped_and_stays_valid(generated, capsys):
    out, run = generated
    page_path = day_log(out)
    day = history.entries(out)[0].record.day
    assert page_path == out / "log" / f"{day}.html"
    first = page_path.read_text()
    # A second save the same day (the CLI again): the page is rewritten with all three, newest first.
    more = cli_json(capsys, [*GEN, "--seed", "9", "--prompt", "second run", "--out", out])
    html = page_path.read_text()
    assert html != first
    page = _Page()
    page.feed(html)
    page.close()
    assert page.stack == [], "unclosed elements"
    assert page.scripts == 0  # the hostile prompt is text, not a script
    assert "<script>" not in html and "&lt;script&gt;document.title=&quot;x&quot;&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "-ugly &amp; &lt;i&gt;" in html
    images = [more["jobs"][0]["images"][0]] + list(reversed(run["jobs"][0]["images"]))
    assert page.srcs == ["../" + Path(i["path"]).name for i in images]  # newest first
    assert all((page_path.parent / src).resolve() == Path(i["path"]).resolve() for src, i in zip(page.srcs, images))
    text = "".join(page.text)
    for image in images:
        assert str(image["seed"]) in text and image["noise_fingerprint"] in text
    assert text.count("studio generate ") == 3  # each with its command line
    assert HOSTILE in text  # what a reader sees is the prompt as typed


def test_history_command(generated, capsys, tmp_path):
    out, run = generated
    listed = cli_json(capsys, ["history", "--out", out, "--json", "--limit", "2"])
    assert listed["output_dir"] == str(out) and listed["logs"] == str(out / "log")
    assert len(listed["entries"]) == 2
    assert [e["time"] for e in listed["entries"]] == sorted((e["time"] for e in listed["entries"]), reverse=True)
    entry = listed["entries"][0]
    assert entry["apply"] is True and entry["request"]["seed"] == entry["seed"]
    assert entry["command"].startswith("studio generate ")
    assert cli_json(capsys, ["history", "--out", out, "--json", "--offset", "1", "--limit", "1"])["entries"] == \
        listed["entries"][1:2]

    assert main(["history", "--out", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == len(history.entries(out)) and all("seed " in line for line in text)

    (tmp_path / "file").write_text("x")
    for argv, says in ((["--limit", "0"], "--limit 0"), (["--limit", "x"], "invalid int value"),
                       (["--offset", "-2"], "--offset -2"), (["--out", str(tmp_path / "missing")], "no such folder"),
                       (["--out", str(tmp_path / "file")], "not a folder")):
        assert main(["history", *argv, "--json"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("error: ") and says in captured.err, captured.err
    # An output folder with nothing in it yet is an empty history, not an error.
    assert cli_json(capsys, ["history", "--out", tmp_path, "--json"])["entries"] == []

"""Limits checked before any work: files that are not regular files, files and prompts that are too big.

Each refusal is one `error:` line, exit 2, and nothing is written.
"""

import json
import os
import subprocess
import sys

import pytest

from studio.cli import main
from studio.errors import StudioError
from studio.prompts.chunking import MAX_PROMPT_CHARS, count_tokens
from studio.settings import build_request
from studio.untrusted import MAX_PRESET_BYTES, MAX_PROMPT_FILE_LINES, read_bounded


def cli_error(capsys, tmp_path, *argv) -> str:
    out_dir = tmp_path / "out"
    code = main([*argv, "--out", str(out_dir)] if argv[0] == "generate" and "--out" not in argv else list(argv))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return lines[0]


GENERATE = ["generate", "--steps", "1", "--width", "64", "--height", "64", "--json"]


def test_devices_and_folders_are_refused_before_reading(tmp_path):
    with pytest.raises(StudioError, match="not a regular file"):
        read_bounded("/dev/zero", 100, "x")
    with pytest.raises(StudioError, match="folder"):
        read_bounded(tmp_path, 100, "x")
    with pytest.raises(StudioError, match="No such file"):
        read_bounded(tmp_path / "missing", 100, "x")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(StudioError, match="it is 101 bytes, over the 100 bytes limit"):
        read_bounded(big, 100, "x")
    assert read_bounded(big, 101, "x") == b"x" * 101


@pytest.mark.parametrize("argv", [
    GENERATE + ["--prompt-file", "/dev/zero"],
    ["preset", "import", "/dev/zero", "--from", "a1111", "--out", "{tmp}/p.json"],
    ["preset", "import", "/dev/zero", "--from", "fooocus", "--out", "{tmp}/p.json"],
    ["preset", "import", "/dev/zero", "--from", "image", "--out", "{tmp}/p.json"],
    ["preset", "diff", "/dev/zero"],
    ["info", "/dev/zero"],
])
def test_dev_zero_is_refused_everywhere(capsys, tmp_path, argv):
    line = cli_error(capsys, tmp_path, *[a.format(tmp=tmp_path) for a in argv])
    assert "not a regular file" in line
    assert not (tmp_path / "p.json").exists()


FIFO_COMMANDS = [
    GENERATE + ["--prompt-file", "{fifo}", "--out", "{tmp}/out"],
    ["preset", "import", "{fifo}", "--from", "fooocus", "--out", "{tmp}/p.json"],
    ["preset", "diff", "{fifo}"],
]


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Real processes (a FIFO blocks the whole process that opens it), started side by side: each is mostly
    # imports. Nobody ever writes to the FIFO: a reader that opens it blocks until the timeout fails the test.
    procs = [subprocess.Popen([sys.executable, "-m", "studio", *[a.format(fifo=fifo, tmp=tmp_path) for a in argv]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}) for argv in FIFO_COMMANDS]
    try:
        for argv, proc in zip(FIFO_COMMANDS, procs):
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, (argv, stderr)
            assert stderr.strip().startswith("error: ") and "not a regular file" in stderr, (argv, stderr)
            assert "Traceback" not in stderr
    finally:
        for proc in procs:
            proc.kill()


def test_prompt_file_limits(capsys, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"prompt {i}" for i in range(MAX_PROMPT_FILE_LINES + 1)))
    assert f"the most in one run is {MAX_PROMPT_FILE_LINES}" in cli_error(capsys, tmp_path, *GENERATE,
                                                                          "--prompt-file", str(many))
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a cat\n" * ((1 << 20) // 6 + 1))
    assert "over the 1 MiB limit" in cli_error(capsys, tmp_path, *GENERATE, "--prompt-file", str(huge))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "not UTF-8" in cli_error(capsys, tmp_path, *GENERATE, "--prompt-file", str(binary))


def test_oversized_preset_files_are_refused_by_size(capsys, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"schema_version": 1, "description": "x" * MAX_PRESET_BYTES}))
    assert "over the 1 MiB limit" in cli_error(capsys, tmp_path, "preset", "diff", str(big))
    assert "over the 1 MiB limit" in cli_error(capsys, tmp_path, "preset", "import", str(big), "--from", "fooocus",
                                               "--out", str(tmp_path / "p.json"))
    assert not (tmp_path / "p.json").exists()


def test_prompt_characters_are_limited_before_tokenizing(capsys, tmp_path):
    text = "a" * (MAX_PROMPT_CHARS + 1)
    for field in ("prompt", "negative_prompt"):
        with pytest.raises(StudioError, match=f"{field}: String should have at most {MAX_PROMPT_CHARS}"):
            build_request(**{field: text})
    with pytest.raises(StudioError, match="expanded_prompt: a text of"):
        build_request(expansion=True, expanded_prompt=text)
    # the tokenizer is never reached: count_tokens refuses on length with no tokenizer at all
    with pytest.raises(StudioError, match=f"the most is {MAX_PROMPT_CHARS}"):
        count_tokens(text, tokenizer=None)
    assert "at most 20000 characters" in cli_error(capsys, tmp_path, *GENERATE, "--prompt", text)
    assert f"the most is {MAX_PROMPT_CHARS}" in cli_error(capsys, tmp_path, "tokens", text)

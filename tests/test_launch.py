"""`python launch.py` from outside the venv: no reinstall when pyproject.toml is unchanged, flags reach the app."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def base_python():
    # The interpreter the venv was made from: what a user types `python` for.
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="needs launch.py's .venv")
def test_second_start_reuses_the_venv_and_passes_flags(tmp_path):
    stamp = ROOT / ".venv" / ".studio-installed"
    assert stamp.is_file(), "launch.py writes its install stamp"
    before = stamp.stat().st_mtime_ns
    proc = subprocess.run([base_python(), str(ROOT / "launch.py"), "--share"], capture_output=True, text=True,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --share makes the app public")
    assert "Installing" not in proc.stdout  # nothing reinstalled
    assert stamp.stat().st_mtime_ns == before


def test_listen_without_auth_is_warned_with_the_address():
    from studio.ui.server import build_parser, listen_warning

    args = build_parser().parse_args(["--listen"])
    warning = listen_warning(args.listen, args.port, [])
    assert warning.startswith("warning: listening on 0.0.0.0:7865 with no login") and "--auth" in warning
    assert listen_warning("192.168.1.5", 7000, [("u", "p")]) is None  # a login is asked for
    assert listen_warning("127.0.0.1", 7865, []) is None  # this machine only


def test_the_suite_runs_in_two_processes_unless_the_caller_chose():
    sys.path.insert(0, str(ROOT))
    try:
        import launch
    finally:
        sys.path.remove(str(ROOT))
    assert launch._parallel(["tests/test_cli.py", "-x"]) == ["-n", "2", "--dist", "loadfile"]
    for chosen in (["-n", "0"], ["-n4"], ["--numprocesses=3"], ["-p", "no:xdist"], ["--dist", "load"]):
        assert launch._parallel(chosen) == [], chosen

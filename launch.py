#!/usr/bin/env python3
"""Set up and start studio: `python launch.py` (the app) or `python launch.py --test` (the tests).

First run: makes .venv, installs studio and its pinned dependencies into it, then re-runs itself
inside it. Later runs reinstall only when pyproject.toml has changed. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".studio-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _inside_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=ROOT) != 0:
        _fail(f"setup step failed: {' '.join(cmd)}; fix the message above and run `python launch.py` again")


def ensure_installed() -> None:
    if sys.version_info[:2] != (3, 11):
        _fail(f"studio needs Python 3.11 (this is {sys.version.split()[0]}); run launch.py with python3.11")
    if not PYTHON.exists():
        print(f"Creating {VENV} ...", flush=True)
        _run([sys.executable, "-m", "venv", str(VENV)])
    if STAMP.exists() and STAMP.read_text().strip() == _wanted_stamp():
        return
    print("Installing studio and its dependencies into .venv (first run: several minutes) ...", flush=True)
    _run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(PYTHON), "-m", "pip", "install", "--quiet", "--editable", ".[test]"])
    STAMP.write_text(_wanted_stamp())


BROWSER = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))  # tests/test_browser.py drives these
BROWSER_PACKAGES = ["chromium", "chromium-driver"]


def _debian_like() -> bool:
    if Path("/etc/debian_version").exists():
        return True
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return False
    fields = dict(line.split("=", 1) for line in release.splitlines() if "=" in line)
    names = (fields.get("ID", "") + " " + fields.get("ID_LIKE", "")).lower()
    return "debian" in names or "ubuntu" in names


def ensure_browser() -> None:
    """Install Debian's chromium + chromium-driver for the browser tests, when missing and we may (root, apt).

    Never fatal: if it cannot install, the browser tests fail and say why.
    """
    missing = [str(p) for p in BROWSER if not p.exists()]
    if not missing:
        return
    apt = shutil.which("apt-get")
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and apt and _debian_like()):
        print(f"note: {' and '.join(missing)} missing and not root on Debian with apt-get: cannot install "
              f"{' '.join(BROWSER_PACKAGES)}; the browser tests will fail", flush=True)
        return
    print(f"{' and '.join(missing)} missing: installing {' '.join(BROWSER_PACKAGES)} for the browser tests ...",
          flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in ([apt, "update"], [apt, "install", "-y", *BROWSER_PACKAGES]):
        print("+ " + " ".join(cmd), flush=True)
        try:
            code = subprocess.call(cmd, env=env)
        except OSError as exc:
            code = f"{exc}"
        if code != 0:
            print(f"warning: `{' '.join(cmd)}` failed ({code}); the browser tests will fail", flush=True)
            return
    still = [str(p) for p in BROWSER if not p.exists()]
    if still:
        print(f"warning: installed {' '.join(BROWSER_PACKAGES)} but {' and '.join(still)} still missing; "
              "the browser tests will fail", flush=True)


def _parallel(args: list[str]) -> list[str]:
    """Two test processes, one per test file at a time, unless the caller chose: most tests run tiny models whose
    time is Python on one core, so a second process uses the second core (measured on 2 cores: 31 min → 23 min)."""
    if any(a.startswith(("-n", "--numprocesses", "--dist")) for a in args) or "no:xdist" in args:
        return []
    return ["-n", "2", "--dist", "loadfile"]


def main(argv: list[str]) -> int:
    if not _inside_venv():
        ensure_installed()
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
        os.execve(str(PYTHON), [str(PYTHON), str(Path(__file__).resolve()), *argv], env)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[:1] == ["--test"]:
        import pytest

        os.chdir(ROOT)
        ensure_browser()
        return pytest.main(["-q", *_parallel(argv[1:]), *argv[1:]], plugins=[])
    from studio.ui.server import main as serve

    return serve(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

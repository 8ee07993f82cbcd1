"""Faults (issue 10): a failing environment gives one clear line and never a half-written file.

Everything here is real: the tiny diffusers pipelines, real files, real processes, the kernel's own
errors. The CLI runs in processes forked from one prepared interpreter (the "zygote"), each running
the real ``studio.cli.main``: a cold ``python -m studio generate`` spends 10-20 s on 2 cores importing
torch and diffusers, and this file starts some 35 of them. The zygote itself runs in a user+mount
namespace (``unshare --user --map-root-user --mount``; else ``unshare --mount``, which needs
CAP_SYS_ADMIN; else none), so it may mount over an output folder where only its processes see it.

How each fault is made (we are root in a container, so ``chmod`` alone refuses nothing):

- disk full: a tmpfs a few pages large mounted over the output folder, so writes fail with ENOSPC as
  on a full disk. Where no namespace may mount (a locked-down container) the fallback is RLIMIT_FSIZE
  on the CLI process (Python ignores SIGXFSZ, so an over-long write fails with EFBIG). The mechanism
  that ran is printed; in this project's containers it is the tmpfs.
- read-only output folder: a read-only bind mount (EROFS), and a 0555 folder written by a root
  process that dropped CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (capset, as
  ``setpriv --bounding-set=-dac_override,...`` does; EACCES).
- a model deleted mid-session: an Engine generates with a models-folder model, then it is deleted.
- SIGKILL while writing: 21 CLI processes each killed at another moment, chosen from the kernel's
  reports of their file creations (inotify); two more killed by strace on entering fchmod and link,
  i.e. inside a write whatever the timing (where strace may attach); then one run that finishes.
- a corrupted OpenVINO blob cache, end to end through ``studio generate --backend openvino``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from studio import fsutil, history
from studio.cli import main
from studio.errors import StudioError
from studio.metadata.read import read_metadata

GEN = ["generate", "--model", "tiny", "--steps", "1", "--width", "64", "--height", "64", "--json"]
ROOT = Path(__file__).resolve().parents[1]


# -- the zygote: forks processes that run the real CLI -------------------------------------------
ZYGOTE = r"""
import ctypes, json, os, resource, subprocess, sys, traceback
from studio.runtime import prepare_process, quiet_libraries
prepare_process()
quiet_libraries()
from studio.cli import main
# What the CLI imports lazily, paid for once here. No tensor operation runs in this process: OpenMP's
# worker threads do not survive fork (a child of a process that used them hangs).
import studio.engine.engine, studio.outputs, studio.backends.torch_backend, studio.metadata.png  # noqa
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion, transformers.models.clip.modeling_clip  # noqa


def sh(script, *args):
    return subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True)


def drop_dac_capabilities():
    # What `setpriv --bounding-set=-dac_override,-dac_read_search,-fowner` leaves a root process.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capget")
    keep = 0xFFFFFFFF & ~((1 << 1) | (1 << 2) | (1 << 3))
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capset")


probe = sh('d=$(mktemp -d) && mount -t tmpfs -o size=8k studio-probe "$d" && umount "$d"; r=$?; rmdir "$d"; exit $r')
print(json.dumps({"ready": os.getpid(), "can_mount": probe.returncode == 0}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "sh":
        done = sh(msg["script"], *msg["args"])
        print(json.dumps({"code": done.returncode, "stderr": done.stderr}), flush=True)
    elif msg["cmd"] == "spawn":
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(msg["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(msg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(null, 0), os.dup2(out, 1), os.dup2(err, 2)
            try:
                if msg.get("fsize"):
                    resource.setrlimit(resource.RLIMIT_FSIZE, (msg["fsize"], msg["fsize"]))
                if msg.get("drop_dac"):
                    drop_dac_capabilities()
                code = main(msg["argv"])
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif msg["cmd"] == "wait":
        _, status = os.waitpid(msg["pid"], 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""

NAMESPACES = (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"], [])


class Zygote:
    def __init__(self, logs: Path):
        self.logs, self.runs = logs, 0
        # One compute thread: OpenMP's spinning workers make a run ten times slower when the CPU is
        # shared (measured: 20 s instead of 1.8 s beside two busy processes on 2 cores).
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for prefix in NAMESPACES:
            if prefix and not shutil.which(prefix[0]):
                continue
            self.proc = subprocess.Popen([*prefix, sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=env)
            line = self.proc.stdout.readline()
            if line:
                ready = json.loads(line)
                # Mounts are made only where the zygote's processes alone see them.
                self.namespace, self.can_mount = " ".join(prefix) or "none", ready["can_mount"] and bool(prefix)
                return
            self.proc.wait()  # unshare refused: try the next way
        raise AssertionError("the zygote did not start")

    def _send(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return json.loads(line)

    def sh(self, script: str, *args) -> None:
        """Run ``script`` in the zygote's mount namespace (where its CLI processes run)."""
        done = self._send(cmd="sh", script=script, args=[str(a) for a in args])
        assert done["code"] == 0, done["stderr"]

    def spawn(self, argv, **options) -> tuple[int, Path]:
        self.runs += 1
        log = self.logs / f"run{self.runs}"
        pid = self._send(cmd="spawn", argv=[str(a) for a in argv], stdout=f"{log}.out", stderr=f"{log}.err",
                         **options)["pid"]
        return pid, log

    def wait(self, pid: int) -> dict:
        return self._send(cmd="wait", pid=pid)

    def cli(self, argv, **options):
        """One whole CLI run: its exit code, stdout and stderr."""
        pid, log = self.spawn(argv, **options)
        status = self.wait(pid)
        assert status["signal"] is None, status
        return SimpleNamespace(returncode=status["code"], stdout=Path(f"{log}.out").read_text(),
                               stderr=Path(f"{log}.err").read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def warm(cache_dir, engine):
    """The tiny model built and hashed in the session cache, so CLI runs only read the cache."""
    from studio.settings import build_request

    engine.plan(build_request(prompt="warm", model="tiny", steps=1, width=64, height=64))
    return cache_dir


@pytest.fixture(scope="module")
def zygote(warm, tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote-logs"))
    yield z
    z.close()


# -- helpers -----------------------------------------------------------------------------------
def the_error_line(proc) -> str:
    """The one `error: ` line of a failed CLI run (exit 2, no traceback, nothing on stdout)."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert proc.stdout == "", proc.stdout
    return lines[0]


def temp_names(folder: Path) -> list[str]:
    """Temp files in ``folder`` and in the history and log folders studio keeps there (relative paths)."""
    found = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".studio"]
    for sub in (folder / ".studio" / "history", folder / history.LOG_FOLDER):
        if sub.is_dir():
            found += [str(p.relative_to(folder)) for p in sub.iterdir() if p.name.startswith(".")]
    return sorted(found)


def final_images(folder: Path) -> dict[Path, dict]:
    """Every file under a final name in ``folder``: a complete image whose studio record reads back."""
    found = {}
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name != history.LOG_FOLDER):
        meta = read_metadata(path)  # a StudioError for a truncated or damaged file
        assert meta["studio"] is not None, f"{path.name}: no studio record"
        with Image.open(path) as im:
            im.load()  # every byte of the pixel data is there
            pixels = np.asarray(im.convert("RGB"))
        found[path] = {"record": meta["studio"], "pixels": pixels}
    return found


def in_mount(zygote, mount: str, out: Path, argv, setup: str = ""):
    """Run the CLI with ``mount`` (shell, "$1" is the folder) over ``out``, seen by the CLI process only;
    the run, and a copy of the folder as that run left it."""
    snap = out.parent / (out.name + "-as-left")
    snap.mkdir()
    zygote.sh(f"{mount}{setup}", out)
    try:
        proc = zygote.cli(argv)
        zygote.sh('cp -a "$1/." "$2/"', out, snap)
    finally:
        zygote.sh('umount "$1"', out)
    return proc, snap


TMPFS = 'mount -t tmpfs -o size={size} studio-full "$1"'
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"'


# -- 1. disk full ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def disk_full(zygote):
    """Runs the CLI with ``size`` bytes of room in the output folder: a tmpfs, or a file-size limit."""
    if zygote.can_mount:
        name = f"tmpfs over the output folder (namespace: {zygote.namespace}): ENOSPC"
        problem = "no space left on device"

        def run(argv, out: Path, size: int, old: Path | None = None):
            return in_mount(zygote, TMPFS.format(size=size), out, argv, f' && cp -p "{old}" "$1/"' if old else "")
    else:
        name, problem = "RLIMIT_FSIZE on the CLI process (no namespace may mount here): EFBIG", "file too large"

        def run(argv, out: Path, size: int, old: Path | None = None):
            if old:
                shutil.copy2(old, out)
            proc = zygote.cli(argv, fsize=size // 3)  # below one image, and below one preset
            snap = out.parent / (out.name + "-as-left")
            shutil.copytree(out, snap)
            return proc, snap
    print(f"\n[disk full] {name}")
    return SimpleNamespace(run=run, problem=problem)


def test_disk_full_while_generate_saves(zygote, disk_full, tmp_path):
    """Room for one 64x64 PNG (~12 kB: 4 tmpfs pages of 6) but not two: the second fails part-written."""
    out = tmp_path / "out"
    out.mkdir()
    proc, left = disk_full.run([*GEN, "--batch", "3", "--seed", "11", "--out", out], out, size=24 * 1024)
    line = the_error_line(proc)
    assert disk_full.problem in line and f"writing {out}/" in line and "choose another folder" in line, line
    assert temp_names(left) == [], "a temp file was left behind"
    saved = final_images(left)  # whatever has a final name is whole
    assert sorted(s["record"]["image"]["seed"] for s in saved.values()) == [11, 12][: len(saved)]


def test_disk_full_while_preset_save_replaces_a_preset(zygote, disk_full, tmp_path):
    """The old preset stays as it was, byte for byte, when the new one cannot be written."""
    old = tmp_path / "p.json"
    assert main(["preset", "save", str(old), "--model", "tiny", "--prompt", "the old one", "--json"]) == 0
    out = tmp_path / "out"
    out.mkdir()
    room = -(-old.stat().st_size // 4096) * 4096  # the tmpfs pages the old preset fills, and no more
    proc, left = disk_full.run(["preset", "save", out / "p.json", "--model", "tiny", "--prompt", "a new one",
                                "--json"], out, size=room, old=old)
    line = the_error_line(proc)
    assert disk_full.problem in line.lower() and "p.json" in line, line
    assert sorted(p.name for p in left.iterdir()) == ["p.json"]
    assert (left / "p.json").read_bytes() == old.read_bytes()


# -- 2. read-only output folder ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["read-only mount", "no write permission"])
@pytest.mark.parametrize("command", ["generate", "preset save"])
def test_read_only_output_folder(zygote, tmp_path, how, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("what was here before\n")
    argv = [*GEN, "--batch", "2", "--out", out] if command == "generate" else \
        ["preset", "save", out / "p.json", "--model", "tiny", "--json"]
    if how == "read-only mount":
        if not zygote.can_mount:
            pytest.skip("no namespace may mount here")
        proc, left = in_mount(zygote, READ_ONLY, out, argv)
        problem = "read-only file system"
    else:
        out.chmod(0o555)
        try:
            proc = zygote.cli(argv, drop_dac=True)
        finally:
            out.chmod(0o755)
        problem = "permission denied"
    line = the_error_line(proc)
    if command == "generate":
        # Found before the run (outputs.check_output_folder), so the line names the folder, not an image.
        assert problem in line and f"writing {out}" in line and "choose a folder you can write to" in line, line
    else:
        assert problem in line.lower() and "p.json" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]  # nothing written, nothing lost
    assert (out / "kept.txt").read_text() == "what was here before\n"


def test_output_folder_that_is_a_file(capsys, warm, tmp_path):
    """``--out`` naming a file: one line, not a FileExistsError traceback."""
    out = tmp_path / "out.png"
    out.write_bytes(b"not a folder")
    assert main([*GEN, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == f"error: {out} is a file, not a folder: choose another folder"
    assert "Traceback" not in captured.err and captured.out == ""
    assert out.read_bytes() == b"not a folder"


def test_written_files_get_the_usual_permissions(tmp_path):
    """What a plain open() or mkdir() would give (0644 / 0755 under umask 022), not mkstemp's 0600 / 0700:
    an image or preset that only its owner can read is a surprise when the folder is shared."""
    old = os.umask(0o022)
    try:
        image = fsutil.write_new_file(tmp_path, "image", ".png", b"png")
        fsutil.atomic_write_bytes(tmp_path / "p.json", b"{}")
        with fsutil.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_bytes(b"w")
    finally:
        os.umask(old)
    assert oct(image.stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "p.json").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == oct(0o755)


def test_check_output_folder(tmp_path):
    from studio.outputs import check_output_folder

    check_output_folder(tmp_path / "not" / "there" / "yet")  # can be made: fine, and nothing is made
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StudioError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_output_folder_is_refused_before_the_run(capsys, warm, tmp_path, monkeypatch):
    """Minutes of generating should not end in 'cannot write': the folder is checked first."""
    from studio.engine.engine import Engine

    runs = []
    real_run = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, plan, *a, **k: runs.append(plan) or real_run(self, plan, *a, **k))
    out = tmp_path / "out.png"
    out.write_bytes(b"not a folder")
    assert main([*GEN, "--out", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert runs == [], "the images were generated before the output folder was found unusable"


# -- 3. a model deleted mid-session ------------------------------------------------------------
@pytest.fixture
def models(engine, tmp_path):
    """A models folder with the tiny model as a single-file checkpoint and as a diffusers folder."""
    from ldm_layout import write_checkpoint

    folder = tmp_path / "models"
    pipe = engine.registry.load(engine.registry.resolve("tiny"))
    write_checkpoint(pipe, folder / "tiny-ldm.safetensors")
    pipe.save_pretrained(folder / "tiny-folder", safe_serialization=True)
    return folder


DELETIONS = [("tiny-ldm.safetensors", "tiny-ldm.safetensors"), ("tiny-folder", "tiny-folder"),
             ("tiny-folder", "tiny-folder/unet/diffusion_pytorch_model.safetensors")]


def _delete(models: Path, what: str) -> None:
    target = models / what
    shutil.rmtree(target) if target.is_dir() else target.unlink()


@pytest.mark.parametrize("name,delete", DELETIONS)
def test_model_deleted_mid_session(warm, models, tmp_path, name, delete):
    from studio.engine.engine import Engine
    from studio.outputs import save_result
    from studio.settings import AppConfig, build_request

    config = AppConfig(cache_dir=warm, output_dir=tmp_path / "out", models_dir=models)
    engine = Engine(config)
    request = build_request(prompt="a lighthouse", model=name, steps=1, width=64, height=64, seed=3)
    first = engine.plan(request)
    assert len(save_result(engine.run(first), config.output_dir)) == 1
    _delete(models, delete)
    out = tmp_path / "after"
    # The session's next plan and run, and a plan made before the deletion run by a new engine
    # (nothing in memory): each one clear error naming the model, and nothing written.
    for attempt in (lambda: save_result(engine.run(engine.plan(request)), out),
                    lambda: save_result(Engine(config).run(first), out)):
        with pytest.raises(StudioError) as caught:
            attempt()
        assert name in caught.value.message, caught.value.message
    assert not out.exists()


@pytest.mark.parametrize("name,delete", [
    *DELETIONS[:2],
    DELETIONS[2],
])
def test_model_deleted_cli(zygote, models, tmp_path, name, delete):
    """The CLI in a process of its own, so whatever a library prints on stderr is seen."""
    out = tmp_path / "out"
    argv = [*GEN, "--models-dir", models, "--model", name, "--out", out]
    assert zygote.cli(argv).returncode == 0
    shutil.rmtree(out)
    _delete(models, delete)
    line = the_error_line(zygote.cli(argv))
    assert name in line, line
    assert not out.exists()


# -- 4. SIGKILL while writing ------------------------------------------------------------------
class Creations:
    """Names created in a folder, in order, as the kernel reports them (inotify IN_CREATE)."""

    IN_CREATE = 0x100

    def __init__(self, folder: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def read(self, timeout: float) -> list[str]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        names, i = [], 0
        while i < len(data):
            _, _, _, length = struct.unpack_from("iIII", data, i)
            names.append(data[i + 16 : i + 16 + length].rstrip(b"\0").decode())
            i += 16 + length
        return names

    def close(self):
        os.close(self.fd)


# Four jobs of two images (seeds 100..107); kills come after writes 1..6, so a run is seldom over.
PROMPTS = ["a red cube", "a blue ball", "a green cone", "a yellow ring"]
KILLS = 21
# Kill k comes after the run's n-th temp-file creation (its n-th image write began) and a pause:
# none (inside the write, or just after it), microseconds to milliseconds (the write's syscalls,
# the link that names the file), or long enough to land in the next job's compute.
PAUSES = [0.0, 0.0, 20e-6, 100e-6, 0.0, 400e-6, 1e-3, 3e-3, 0.0, 10e-3, 30e-3, 0.1, 0.3]


def test_sigkill_while_writing_leaves_only_whole_images(zygote, tmp_path, say):
    out = tmp_path / "out"
    out.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = [*GEN, "--prompt-file", prompts, "--batch", "2", "--seed", "100", "--seed-mode", "increment",
            "--out", out]
    seeds = {p: [100 + 2 * i, 101 + 2 * i] for i, p in enumerate(PROMPTS)}
    watch = Creations(out)
    kills, finished = [], 0

    def start_saving(nth: int):
        """Start a run and wait until its ``nth`` image write began (its nth temp file was created)."""
        watch.read(0)  # events of the runs before
        pid, log = zygote.spawn(argv)
        # Its image temp files (.png): the output-folder check before the run makes a bare probe too.
        mine, begun, deadline = re.compile(rf"\.tmp-[0-9a-f]{{8}}-{pid}-.*\.png$"), 0, time.monotonic() + 300
        while begun < nth:
            begun += sum(1 for n in watch.read(1.0) if mine.match(n))
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":  # it ended
                while pending := watch.read(0):
                    begun += sum(1 for n in pending if mine.match(n))
                assert begun >= nth, (f"the run ended after {begun} temp file(s) named with its pid, not {nth}:\n"
                                      + Path(f"{log}.err").read_text()[-3000:])
            assert time.monotonic() < deadline, Path(f"{log}.err").read_text()[-3000:]
        return pid, log, mine

    def reap(pid, log, mine, **how) -> None:
        nonlocal finished
        status = zygote.wait(pid)
        if status["signal"] != signal.SIGKILL:  # it ended first (a slow moment here): not a kill
            assert status == {"signal": None, "code": 0}, Path(f"{log}.err").read_text()[-3000:]
            finished += 1
            return
        # Any temp file of the run: an image's, or the day's log page's (written after a job's images).
        ours = re.compile(rf"(?:.*/)?\.(?:.*\.)?tmp-[0-9a-f]{{8}}-{pid}-")
        kills.append({**how, "temp_left": [n for n in temp_names(out) if ours.match(n)]})

    def run_and_kill(nth: int, pause: float) -> None:
        """SIGKILL a run ``pause`` seconds after its ``nth`` image write began."""
        pid, log, mine = start_saving(nth)
        if pause:
            time.sleep(pause)
        os.kill(pid, signal.SIGKILL)
        reap(pid, log, mine, after_write=nth, pause_s=pause)

    def run_and_kill_at(syscalls: str) -> bool:
        """SIGKILL a saving run as it enters its next ``syscalls``: strace injects the signal there, so
        the kill falls inside a write however fast the write is (fchmod: the temp file was just made,
        empty; link: it is whole but has no final name yet)."""
        pid, log, mine = start_saving(1)
        tracer = subprocess.run(["strace", "-qq", "-o", os.devnull, "-e", f"trace={syscalls}",
                                 "-e", f"inject={syscalls}:signal=SIGKILL:when=1", "-p", str(pid)],
                                capture_output=True, text=True, timeout=300)
        reap(pid, log, mine, at_syscall=syscalls)
        if tracer.returncode and not (kills and kills[-1].get("at_syscall") == syscalls):
            return False  # strace may not attach here (ptrace not permitted): the run simply finished
        assert kills and kills[-1].get("at_syscall") == syscalls, f"strace did not kill the run: {tracer.stderr}"
        assert kills[-1]["temp_left"], f"killed entering {syscalls}, yet no temp file of the run is left"
        return True

    try:
        for k in range(KILLS + 10):
            if len(kills) == KILLS:
                break
            run_and_kill(1 + (k * 5) % 6, PAUSES[k % len(PAUSES)])
        assert len(kills) == KILLS, f"only {len(kills)} runs were killed; {finished} ended first"
        # Each run removes what the dead runs before it left; these last kills leave temp files for
        # certain, for the finishing run below to remove.
        if shutil.which("strace") and run_and_kill_at("fchmod"):
            run_and_kill_at("link,linkat")
        left_by_kills = temp_names(out)
        # Every file with a final name is whole, its record reads back, and its pixels are the
        # same seed's run alone (each image a job of its own: batch 1, seeds 100..107 in turn).
        (tmp_path / "alone.txt").write_text("".join(f"{p}\n{p}\n" for p in PROMPTS))
        proc = zygote.cli([*GEN, "--prompt-file", tmp_path / "alone.txt", "--batch", "1", "--seed", "100",
                           "--seed-mode", "increment", "--out", tmp_path / "alone"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        alone = {(s["record"]["plan"]["request"]["prompt"], s["record"]["image"]["seed"]): s["pixels"]
                 for s in final_images(tmp_path / "alone").values()}
        assert sorted(alone) == sorted((p, seed) for p in PROMPTS for seed in seeds[p])
        saved = final_images(out)
        for path, s in saved.items():
            key = (s["record"]["plan"]["request"]["prompt"], s["record"]["image"]["seed"])
            assert key in alone, path.name
            assert np.array_equal(s["pixels"], alone[key]), f"{path.name}: pixels differ from {key} run alone"
        # One more run that finishes: it removes what the dead writers left, and leaves nothing itself.
        proc = zygote.cli(argv)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        watch.close()
    assert temp_names(out) == [], f"left after a finished run: {temp_names(out)}"
    finals = final_images(out)
    assert len(finals) == len(saved) + 2 * len(PROMPTS)
    # The history, torn lines and all, lists only whole images, among them every one the last run saved
    # (a run killed between saving an image and recording it leaves that image unlisted).
    listed = history.entries(out, limit=1000)
    assert {e.path for e in listed} <= set(finals)
    last_run = {p for p in finals if p not in saved}
    assert last_run <= {e.path for e in listed}
    hit = sum(bool(k["temp_left"]) for k in kills if "after_write" in k)
    traced = sum("at_syscall" in k for k in kills)
    say(f"[sigkill] {len(kills)} kills ({KILLS} timed by inotify, {traced} by strace at fchmod/link; "
        f"{finished} run(s) ended before their kill); {len(saved)} whole images kept; {hit} timed kill(s) "
        f"left a temp file; {len(left_by_kills)} temp file(s) of dead writers before the last run, none after"
        + ("" if traced else " (no strace here: the kills inside a write were left to timing)"))


def test_temp_files_of_dead_writers_are_removed_and_of_live_ones_kept(tmp_path):
    """The clean-up itself, with real processes: one that ended (its pid free) and one still running."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # ended, not yet waited for
    try:
        while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        tag = fsutil._machine_tag()
        names = {
            "dead image": f".tmp-{tag}-{dead.pid}-abcdefgh.png",
            "dead preset": f".p.json.tmp-{tag}-{dead.pid}-abcdefgh",
            "zombie image": f".tmp-{tag}-{zombie.pid}-abcdefgh.png",
            "live image": f".tmp-{tag}-{live.pid}-abcdefgh.png",
            "live preset": f".p.json.tmp-{tag}-{live.pid}-abcdefgh",
            "other machine": f".tmp-{'0' * 8 if tag != '0' * 8 else '1' * 8}-{dead.pid}-abcdefgh.png",
            "not a temp name": ".tmp-notes.txt",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"part of a file")
        dead_dir = tmp_path / f".models.tmp-{tag}-{dead.pid}-abcdefgh"  # atomic_dir's
        (dead_dir / "unet").mkdir(parents=True)
        fsutil.write_new_file(tmp_path, "image", ".png", b"a whole file")
        assert temp_names(tmp_path) == sorted(names[k] for k in ("live image", "live preset", "other machine",
                                                                 "not a temp name"))
        assert (tmp_path / "image.png").read_bytes() == b"a whole file"
    finally:
        live.kill()
        live.wait()
        zombie.wait()


# -- 5. a corrupted OpenVINO blob cache, end to end ----------------------------------------------
def test_corrupt_openvino_blob_is_rebuilt_and_said(capsys, warm, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    cache = tmp_path / "cache"
    shutil.copytree(warm, cache, ignore=lambda d, names: ["compiled"] if d.endswith("openvino") else [])
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(cache))
    argv = [*GEN, "--backend", "openvino", "--seed", "5", "--prompt", "a lighthouse at dusk"]

    def generate(out):
        code = main([*argv, "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        job = json.loads(captured.out)["jobs"][0]
        with Image.open(job["images"][0]["path"]) as im:
            return job, np.asarray(im.convert("RGB"))

    first, first_pixels = generate(tmp_path / "a")
    blob = max((cache / "openvino" / "compiled").glob("*/*.blob"), key=lambda p: p.stat().st_size)  # the UNet's
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    second, second_pixels = generate(tmp_path / "b")
    said = [n for n in second["notes"] if f"blob {blob.name}" in n]
    assert said and "corrupt" in said[0] and "compiling afresh" in said[0], second["notes"]
    assert second["compile_events"][0]["from_cache"] is False
    assert second_pixels.std() > 1  # an image (a NaN one is refused by the engine: the run would exit 2)
    np.testing.assert_array_equal(second_pixels, first_pixels)
    assert blob.read_bytes() != bytes(data)  # written anew by the new compile
    third, _ = generate(tmp_path / "c")
    assert third["compile_events"][0]["from_cache"] is True and not any("corrupt" in n for n in third["notes"])


def test_blob_folder_reset_keeps_a_live_writers_temp_file(tmp_path):
    """A key folder emptied for new settings: its blobs go, a temp file a live process is still
    writing stays (removing it would fail that writer's rename), and a dead writer's goes."""
    from studio.backends.blob_cache import BlobCache

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cache = BlobCache(tmp_path)
        folder, _ = cache.open({"model": "m", "device": "CPU", "mode": "accuracy"})
        tag = fsutil._machine_tag()
        (folder / "1234.blob").write_bytes(b"a blob of other settings")
        (folder / "studio-key.json").write_text("{}")  # another key's folder, as a copied cache would be
        live_temp = folder / f".studio-blobs.json.tmp-{tag}-{live.pid}-abcdefgh"
        dead_temp = folder / f".studio-blobs.json.tmp-{tag}-{dead.pid}-abcdefgh"
        live_temp.write_bytes(b"{")
        dead_temp.write_bytes(b"{")
        _, notes = cache.open({"model": "m", "device": "CPU", "mode": "accuracy"})
        assert any("not written for these compile settings" in n for n in notes), notes
        assert sorted(p.name for p in folder.iterdir()) == sorted([live_temp.name, "studio-key.json"])
    finally:
        live.kill()
        live.wait()

"""Writes that are never seen half-done: temp file or folder beside the target, then rename.

A writer that is killed (SIGKILL, power cut, OOM killer) cannot remove its temp file, so every temp
name carries the writer's pid (and which machine and pid namespace that pid belongs to); the next
writer in the same folder removes the temp files of writers that are no longer alive. A temp file
of a live process is never touched, nor one whose pid this process cannot judge (another machine or
container sharing the folder).

A write that fails because of where it writes (disk full, read-only, no permission) raises
``WriteError``: a StudioError (one clear line naming the file and what to do) that is also an
OSError, so code that handles OSError still does.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from functools import lru_cache
from pathlib import Path

from studio.errors import StudioError

# ``.tmp-<tag>-<pid>-<random>[suffix]`` (write_new_file) and ``.<name>.tmp-<tag>-<pid>-<random>``
# (atomic_write_bytes, atomic_dir); the random part is tempfile's (8 of [a-z0-9_]).
_TEMP_NAME = re.compile(r"\.(?:.*\.)?tmp-(?P<tag>[0-9a-f]{8})-(?P<pid>[0-9]+)-[a-z0-9_]{8}")
_NAME_ROOM = 120  # of the target's name kept in a temp name (a file name holds 255 bytes)


class WriteError(StudioError, OSError):
    """A file or folder could not be written where it was asked for; the message says what to do."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." made from errno and filename
        return str(self.args[0]) if self.args else ""


_PROBLEMS = {
    errno.ENOSPC: ("no space left on device", "free some space or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another folder"),
    errno.EFBIG: ("file too large (for this file system, or over the file-size limit `ulimit -f`)",
                  "raise the limit or choose another folder"),
    errno.EROFS: ("read-only file system", "choose a folder you can write to"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another folder"),
    errno.EEXIST: ("a file is in the way where a folder should be", "choose another folder"),
    errno.EISDIR: ("a folder is in the way where the file should be", "choose another file name"),
}
# What only the place written to causes; anything else raised inside atomic_dir's block is left as it is.
_PLACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def write_error(exc: OSError, target: Path) -> WriteError:
    """``exc`` (raised writing ``target``) as one clear line; a WriteError is passed through."""
    if isinstance(exc, WriteError):
        return exc
    problem, fix = _PROBLEMS.get(exc.errno, ((exc.strerror or type(exc).__name__).lower(),
                                             "check the folder, or choose another one"))
    err = WriteError(f"{problem} writing {target}: {fix}")
    err.errno, err.strerror, err.filename = exc.errno, exc.strerror, str(target)
    return err


@lru_cache(maxsize=1)
def _machine_tag() -> str:
    """The pid namespace this process's pids belong to (boot, namespace, host), as 8 hex digits."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(open(path).read().strip() if path.endswith("boot_id") else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _temp_prefix(name: str = "") -> str:
    """The start of this process's temp names (the pid is read now: a forked child has its own)."""
    head = f".{name[:_NAME_ROOM]}." if name else "."
    return f"{head}tmp-{_machine_tag()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Whether ``pid`` (of this pid namespace) may still write; when in doubt, yes."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process (EPERM): alive
    try:  # a zombie (killed, not yet waited for) writes no more
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


def remove_dead_temps(folder: Path) -> list[str]:
    """Remove the temp files and folders that writers which are no longer alive left in ``folder``.

    Only names this module makes, with a pid of this machine's pid namespace, are looked at. Returns
    the names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    tag = _machine_tag()
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or m["tag"] != tag or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
        except OSError:
            continue  # gone already (another writer cleaned it), or not ours to remove
        removed.append(entry.name)
    return removed


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        raise WriteError(f"{folder} is a file, not a folder: choose another folder") from exc
    except OSError as exc:
        raise write_error(exc, folder) from exc


def _new_temp_file(folder: Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    # mkstemp makes 0600; the file gets what an ordinary open() would give (where the file system
    # keeps modes at all: FAT or SMB may refuse, and the write goes on).
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def check_can_write(folder: Path) -> None:
    """Raise WriteError now if no file could be written in ``folder`` (before work whose end is a write).

    Nothing is left behind: the folder, or where it does not exist yet the nearest folder above it, is
    tried with a temp file that is removed at once. (A disk that fills up later is found then.)
    """
    folder = Path(folder)
    try:
        probe = folder
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise WriteError(f"{probe} is a file, not a folder: choose another folder")
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise write_error(exc, folder) from exc


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temp folder beside ``target``; on success it becomes ``target``.

    If another process finished the same folder first, ours is dropped and theirs kept.
    """
    target = Path(target)
    _make_folder(target.parent)
    remove_dead_temps(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), dir=target.parent))
    except OSError as exc:
        raise write_error(exc, target) from exc
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder gets what mkdir() would give
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _PLACE_ERRNOS:
                raise write_error(exc, target) from exc
            raise
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if not target.exists():
                raise write_error(exc, target) from exc
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data``: readers see the old file or the new one, never a part."""
    target = Path(target)
    _make_folder(target.parent)
    remove_dead_temps(target.parent)
    tmp = None
    try:
        fd, tmp = _new_temp_file(target.parent, _temp_prefix(target.name))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(exc, target) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_new_file(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` to a new file ``stem[-N]suffix`` in ``folder``, never overwriting one.

    The bytes go to a temp file first; a hard link then claims the final name, which fails
    if the name exists, so two writers can never take the same name.
    """
    folder = Path(folder)
    _make_folder(folder)
    remove_dead_temps(folder)
    tmp = None
    try:
        fd, tmp = _new_temp_file(folder, _temp_prefix(), suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        for n in range(100000):
            path = folder / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise WriteError(f"no free file name for {stem}{suffix} in {folder}: choose another folder")
    except OSError as exc:
        raise write_error(exc, folder / f"{stem}{suffix}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

"""OpenVINO's compiled-blob cache: one folder per compile key, checked before OpenVINO reads it.

Why a folder per key: OpenVINO (2026.4, measured) keys a cached blob by the model and only some
compile properties. The execution-mode and inference-precision hints are not among them, so a
PERFORMANCE compile of a model already compiled in ACCURACY mode into the same CACHE_DIR imports the
accuracy blob (the compiled model reports LOADED_FROM_CACHE) and runs it under bf16 settings: NaN
images on CPUs with avx512_bf16/AMX, at fp32 speed. Studio gives each key (model, device and its CPU
features, mode and its hints, library versions) its own folder, so no blob can be served to a
compile made under other settings.

Why a manifest: a blob whose bytes changed (a crash while writing, a bad disk) or that studio did
not write for this key (a copied or stale folder) may import without an error and compute wrong
numbers. Studio records the size and sha256 of every blob it saw OpenVINO write; before a compile,
a file that does not match is removed (OpenVINO then compiles afresh) and the run's notes say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Optional

from studio.fsutil import atomic_write_bytes

FORMAT = 1
KEY_FILE = "studio-key.json"
MANIFEST = "studio-blobs.json"
_OURS = (KEY_FILE, MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, sort_keys=True, indent=1).encode())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _files(folder: Path) -> list[tuple[str, Path]]:
    """The cached files under ``folder`` by their path in it (a compiler may write sub-folders): not studio's
    own, not writers' temp (dot) files, not lock files (rewritten by every reader)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        parts = rel.split("/")
        if rel in _OURS or any(p.startswith(".") for p in parts) or "locks" in parts or path.suffix == ".lock":
            continue
        if path.is_file() and not path.is_symlink():
            found.append((rel, path))
    return found


class BlobCache:
    def __init__(self, root: Path, label: str = "openvino"):
        self.root = Path(root)
        self.label = label  # who compiles into it, for the notes
        # Blobs already hashed by this process, by (size, mtime_ns): a file is read in full once per process.
        self._checked: dict[Path, tuple[int, int]] = {}

    @staticmethod
    def folder_name(key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{str(key.get('model', ''))[:12]}-{key.get('device', '')}-{key.get('mode', '')}-{digest}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)

    def open(self, key: dict) -> tuple[Path, list[str]]:
        """The folder for ``key``, with what was wrong in it removed; the notes say what and why."""
        key = {"format": FORMAT, **key}
        folder = self.root / self.folder_name(key)
        folder.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        if _read_json(folder / KEY_FILE) != key:
            stale = [p for p in folder.iterdir() if p.name not in _OURS and not p.name.startswith(".")]
            if stale:
                notes.append(f"{self.label}: compile cache {folder.name} held {len(stale)} file(s) not written for these "
                             "compile settings; removed them, compiling afresh")
            # Dot names are writers' temp files: one of a live writer is its own to finish; fsutil
            # removes those whose writer died.
            for p in [*stale, *(folder / n for n in _OURS)]:
                _remove(p)
            _write_json(folder / KEY_FILE, key)
        manifest = _read_json(folder / MANIFEST) or {}
        changed = False
        for rel, path in _files(folder):
            problem = self._problem(path, manifest.get(rel))
            if problem:
                notes.append(f"{self.label}: blob {rel} in {folder.name} {problem}; removed it, compiling "
                             "afresh")
                _remove(path)
                self._checked.pop(path, None)
                changed |= manifest.pop(rel, None) is not None
        for name in [n for n in manifest if not (folder / n).is_file()]:
            del manifest[name]
            changed = True
        if changed:
            _write_json(folder / MANIFEST, manifest)
        return folder, notes

    def _problem(self, path: Path, entry) -> Optional[str]:
        """Why ``path`` cannot be trusted, or None."""
        if not path.is_file() or not isinstance(entry, dict):
            return "was not written by studio for this key (foreign, or left by a compile that did not finish)"
        stat = path.stat()
        if self._checked.get(path) == (stat.st_size, stat.st_mtime_ns):
            return None
        if stat.st_size != entry.get("size") or _sha256(path) != entry.get("sha256"):
            return "does not match what was written (corrupt)"
        self._checked[path] = (stat.st_size, stat.st_mtime_ns)
        return None

    def record(self, folder: Path) -> None:
        """After a compile: note the size and sha256 of the files the compiler wrote, for the next check."""
        manifest = _read_json(folder / MANIFEST) or {}
        added = False
        for rel, path in _files(folder):
            if rel in manifest:
                continue
            stat = path.stat()
            manifest[rel] = {"size": stat.st_size, "sha256": _sha256(path)}
            self._checked[path] = (stat.st_size, stat.st_mtime_ns)
            added = True
        if added:
            _write_json(folder / MANIFEST, manifest)

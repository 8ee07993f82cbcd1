"""The files of an adapter folder (loras/, embeddings/): listed by name, hashed, and found by hash.

A request names an adapter by its file's stem and records its sha256; on another machine the same bytes
may sit under another name, so a name that is missing or holds other bytes is looked up by hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes
from studio.models.registry import file_sha256
from studio.untrusted import check_name

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class AdapterFile:
    name: str  # the file's stem: what a prompt or a request names
    path: Path
    sha256: str
    short_hash: str  # A1111's (12 hex): sshs_model_hash metadata, else the "addnet" hash, else the sha256's

    @property
    def pickle(self) -> bool:
        return self.path.suffix.lower() in PICKLE_SUFFIXES


@dataclass(frozen=True)
class Found:
    file: AdapterFile
    note: Optional[str] = None  # said when the file was found by hash under another name


def read_header(path: Path) -> dict:
    """A .safetensors file's JSON header (tensor names, dtypes, shapes and ``__metadata__``), read without
    loading any tensor; a StudioError naming the file if it is not one."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than a safetensors header")
            (size,) = struct.unpack("<Q", raw)
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError("its header length is not a safetensors one")
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StudioError(f"{path.name} is not a readable .safetensors file ({exc}); copy it again") from None
    if not isinstance(header, dict):
        raise StudioError(f"{path.name} is not a readable .safetensors file (its header is not an object)")
    return header


def a1111_short_hash(path: Path, sha256: str) -> str:
    """The 12 hex digits A1111 writes in ``Lora hashes`` / ``TI hashes``: the file's ``sshs_model_hash``
    metadata if it has one, else for .safetensors the sha256 of the bytes after the header ("addnet"),
    else the file's sha256."""
    if path.suffix.lower() != ".safetensors":
        return sha256[:12]
    meta = read_header(path).get("__metadata__") or {}
    given = meta.get("sshs_model_hash") if isinstance(meta, dict) else None
    if isinstance(given, str) and len(given) >= 12 and all(c in "0123456789abcdef" for c in given[:12].lower()):
        return given[:12].lower()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + size)
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


class AdapterFolder:
    """One folder of adapters of one kind ("LoRA", "embedding"); hashes are kept in the cache folder."""

    def __init__(self, folder: Optional[Path], cache_dir: Path, kind: str, flag: str,
                 allow_unsafe_pickle: bool = False):
        self.folder = None if folder is None else Path(folder)
        self.cache_file = Path(cache_dir) / "adapter-hashes.json"
        self.kind, self.flag = kind, flag
        self.allow_unsafe_pickle = allow_unsafe_pickle

    def _suffixes(self) -> tuple[str, ...]:
        return SAFE_SUFFIXES + PICKLE_SUFFIXES

    def paths(self) -> dict[str, Path]:
        """Every adapter file by name (stem), sorted; a name held by two files is the .safetensors one."""
        if self.folder is None or not self.folder.is_dir():
            return {}
        out: dict[str, Path] = {}
        for path in sorted(self.folder.iterdir(), key=lambda p: (p.suffix.lower() != ".safetensors", p.name)):
            if path.is_file() and path.suffix.lower() in self._suffixes() and not path.name.startswith("."):
                out.setdefault(path.stem, path)
        return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))

    def names(self) -> list[str]:
        return list(self.paths())

    def _describe(self, path: Path, cache: dict) -> AdapterFile:
        try:
            sha = file_sha256(path, cache)
            key = "short:" + sha
            if not isinstance(cache.get(key), str):
                cache[key] = a1111_short_hash(path, sha)
        except OSError as exc:
            raise StudioError(f"{self.kind} {path.name} became unreadable while it was hashed "
                              f"({exc.strerror or type(exc).__name__}); check the {self.flag} folder") from None
        return AdapterFile(name=path.stem, path=path, sha256=sha, short_hash=cache[key])

    def _with_cache(self, work):
        try:
            cache = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
        before = json.dumps(cache, sort_keys=True)
        result = work(cache)
        if json.dumps(cache, sort_keys=True) != before:
            try:
                atomic_write_bytes(self.cache_file, json.dumps(cache, indent=1).encode())
            except OSError:
                pass  # a read-only cache only costs hashing again next time
        return result

    def describe(self, name: str) -> Optional[AdapterFile]:
        path = self.paths().get(name)
        return None if path is None else self._with_cache(lambda cache: self._describe(path, cache))

    def all(self) -> list[AdapterFile]:
        paths = self.paths()
        return self._with_cache(lambda cache: [self._describe(p, cache) for p in paths.values()])

    def find(self, name: str, sha256: Optional[str] = None) -> Found:
        """The file named ``name``; with ``sha256`` (a full hash, or A1111's 10- or 12-hex short one), the file
        with those bytes, under this name or, if the name is missing here or holds other bytes, another.
        A StudioError says what is missing and where it was looked for."""
        check_name(name, self.kind)
        named = self.describe(name)
        if named is not None and (sha256 is None or _matches(named, sha256)):
            return Found(named)
        if sha256 is not None:
            other = next((f for f in self.all() if _matches(f, sha256)), None)
            if other is not None:
                why = "is not here" if named is None else "holds other bytes here"
                return Found(other, f"{self.kind} {name!r} {why}; using {other.path.name}, which has its hash "
                                    f"{sha256[:12]}")
        where = self.folder if self.folder is not None else f"(no folder: set {self.flag})"
        if named is not None:
            raise StudioError(f"{self.kind} {name!r} here ({named.path.name}, {named.sha256[:12]}) is not the one "
                              f"asked for ({sha256[:12]}), and no file in {where} has that hash: copy the "
                              f"{self.kind} that was used into {where}")
        known = ", ".join(self.names()[:8]) or "none"
        hashed = f" (hash {sha256[:12]})" if sha256 else ""
        raise StudioError(f"{self.kind} {name!r}{hashed} is not in {where} ({self.kind}s there: {known}); copy the "
                          f"file into that folder or use {self.flag} to point at another")

    def check_loadable(self, found: AdapterFile) -> None:
        if found.pickle and not self.allow_unsafe_pickle:
            raise StudioError(f"{self.kind} {found.path.name} is a pickle, which can run code when loaded: use a "
                              ".safetensors file, or start studio with --allow-unsafe-pickle if you trust it")


def _matches(file: AdapterFile, sha256: str) -> bool:
    sha256 = sha256.lower()
    if len(sha256) == 64:
        return file.sha256 == sha256
    return file.short_hash == sha256 or file.sha256.startswith(sha256)

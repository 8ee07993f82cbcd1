"""History: every saved image with its settings, newest first, across restarts.

Where: one append-only file per day, ``<output>/.studio/history/YYYY-MM-DD.jsonl`` (the day in local
time when the image was saved), one JSON line per image. A line is written with a single O_APPEND
write, so lines of two processes saving into one folder never interleave, and a killed writer leaves at
most a torn last line, which readers skip (and the next writer starts on a fresh line after it).

Reading treats the files as untrusted (anyone who can write the output folder can edit them): bounded
reads from the end, each line parsed with ``untrusted.parse_json`` and checked field by field, an image
named by a plain file name in the output folder only. The request an entry holds is validated again as
it is read; one that no longer validates is shown without Apply, with the reason.

Recording never costs an image: a failure is a note (``record`` and ``refresh_day_log`` return notes
rather than raise), the image stays saved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio import history_html
from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes, write_error
from studio.settings import GenerationRequest, build_request
from studio.untrusted import (MAX_HISTORY_DAY_BYTES, MAX_HISTORY_DAYS, MAX_HISTORY_LIMIT, MAX_HISTORY_LINE_BYTES,
                              check_name, parse_json)

HISTORY_FOLDER = Path(".studio") / "history"
LOG_FOLDER = "log"  # <output>/log/YYYY-MM-DD.html, beside the flat images (src="../<image>")
SCHEMA_VERSION = 1
_DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.jsonl")
_BLOCK = 64 << 10
_LINE_START = b'{"v":1,'  # how every line studio writes begins (json.dumps, compact, "v" first)
_LOCK_WAIT_S = 10.0


# -- what a line holds ------------------------------------------------------------------------------
class _Line(BaseModel):
    # Strict types: a line is data from a file anyone may have edited; what does not fit is skipped.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class ModelRef(_Line):
    name: str
    sha256: str
    short_hash: str


class BackendRef(_Line):
    name: str
    device: str
    mode: Optional[str] = None
    precision: dict[str, str] = {}
    text_encoder: str = "torch"


class Record(_Line):
    """One history line: one saved image and everything that made it."""

    v: Literal[1]
    time: str = Field(description="when it was saved, ISO 8601 in local time with the UTC offset")
    timestamp: float
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    image: str = Field(description="the image's file name in the output folder")
    index: int = Field(ge=0, description="the image's place in its batch")
    batch: int = Field(ge=1)
    seed: int
    noise_fingerprint: str
    prompt: str
    prompt_final: str = Field(description="what was encoded: the prompt after expansion")
    negative: str
    model: ModelRef
    sampler: str
    scheduler: str
    steps: int
    cfg: float
    width: int
    height: int
    backend: BackendRef
    notes: list[str] = []
    request: dict = Field(description="this image's own request (its seed, batch 1): what Apply fills in")
    # An input image's run (None for text to image, and in entries written before image input).
    image_mode: Optional[str] = None
    denoise: Optional[float] = None
    input_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("image")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        try:
            return check_name(v, "image")  # never a path: an entry cannot point outside the output folder
        except StudioError as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class Entry:
    """A history entry as read: the record, the image's path, and the request Apply would use.

    ``request`` is the recorded request validated now (None when it no longer validates, e.g. a sampler
    since removed; ``request_error`` then says why, and the entry is shown without Apply).
    """

    record: Record
    path: Path
    request: Optional[GenerationRequest]
    request_error: Optional[str]

    def to_json(self) -> dict:
        out = self.record.model_dump(mode="json")
        out["path"] = str(self.path)
        out["apply"] = self.request is not None
        out["apply_error"] = self.request_error
        out["command"] = history_html.command_line(self)[0] if self.request is not None else None
        return out


# -- where ------------------------------------------------------------------------------------------
def day_of(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))


def history_folder(output_dir: Path) -> Path:
    return Path(output_dir) / HISTORY_FOLDER


def day_log_path(output_dir: Path, day: str) -> Path:
    """The day's log page: ``<output>/log/YYYY-MM-DD.html``."""
    return Path(output_dir) / LOG_FOLDER / f"{day}.html"


def _index_path(output_dir: Path, day: str) -> Path:
    return history_folder(output_dir) / f"{day}.jsonl"


# -- recording --------------------------------------------------------------------------------------
def make_record(plan, index: int, fingerprint: str, image: Path, notes: list[str], timestamp: float) -> Record:
    """The record of image ``index`` of ``plan``'s run, saved as ``image`` at ``timestamp``."""
    alone = plan.for_image(index)  # its own seed, batch 1, its own expanded text: reproduces it alone
    local = datetime.fromtimestamp(timestamp).astimezone()
    given = plan.image  # the input image's plan (``image`` is the saved file)
    width, height = plan.output_size  # the saved image's size (an input image's run may run a crop)
    return Record(
        v=SCHEMA_VERSION, time=local.isoformat(timespec="seconds"), timestamp=round(timestamp, 6),
        day=local.strftime("%Y-%m-%d"), image=image.name, index=index, batch=len(plan.seeds),
        seed=plan.seeds[index], noise_fingerprint=fingerprint, prompt=plan.prompt.prompt,
        prompt_final=plan.prompt.final_for(index), negative=plan.prompt.negative,
        model=ModelRef(name=plan.model.name, sha256=plan.model.sha256, short_hash=plan.model.short_hash),
        sampler=plan.sampler, scheduler=plan.scheduler, steps=plan.request.steps, cfg=float(plan.request.cfg),
        width=width, height=height,
        backend=BackendRef(name=plan.backend.name, device=plan.backend.device, mode=plan.backend.mode,
                           precision=dict(plan.backend.precision), text_encoder=plan.backend.text_encoder),
        notes=list(notes), request=alone.request.model_dump(mode="json"),
        image_mode=given.mode if given else None, denoise=float(given.strength) if given else None,
        input_sha256=given.input_sha256 if given else None)


def record_saved(output_dir: Path, plan, index: int, fingerprint: str, image: Path, notes: list[str],
                 timestamp: float) -> list[str]:
    """Record image ``index`` of ``plan``'s run, just saved as ``image``. Returns notes; never raises."""
    try:
        rec = make_record(plan, index, fingerprint, image, notes, timestamp)
    except (ValidationError, StudioError, ValueError) as exc:  # a record that cannot be made costs no image
        return [f"{image.name} was saved but not recorded in the history: {exc}"]
    return record(output_dir, rec)


def record(output_dir: Path, rec: Record) -> list[str]:
    """Append ``rec`` to its day's history file. Returns notes (empty when recorded); never raises OSError."""
    path = _index_path(output_dir, rec.day)
    data = (json.dumps(rec.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    if len(data) > MAX_HISTORY_LINE_BYTES:  # readers would skip it: say so now rather than lose it quietly
        return [f"{rec.image} was saved but not recorded in the history: its entry is over "
                f"{MAX_HISTORY_LINE_BYTES >> 20} MiB"]
    try:
        _make_folders(path.parent)
        append_line(path, data)
    except OSError as exc:
        return [f"the image was saved but not recorded in the history: {write_error(exc, path)}"]
    return []


def _make_folders(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


def append_line(path: Path, data: bytes) -> None:
    """Append one line with one write(2) on an O_APPEND descriptor: the kernel places it whole at the end,
    after any other process's line. A short write (a full disk) raises; its torn tail is left to readers.

    Nothing is read first (whether the file ends in a torn line): another process's write may be half
    done at that moment, so the answer would be wrong. Readers recover a line glued to a torn one instead.
    """
    # O_NONBLOCK: a FIFO planted under the file's name fails at once (ENXIO) instead of blocking the save.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    finally:
        os.close(fd)


def refresh_day_log(output_dir: Path, day: str) -> list[str]:
    """Rewrite ``day``'s log page from its history file. Returns notes; never raises OSError.

    Under an exclusive lock on the day's history file: each writer appends its line before it takes the
    lock, so the last page written holds every line appended before it, whichever process writes last.
    """
    target = day_log_path(output_dir, day)
    try:
        with _locked(_index_path(output_dir, day)):
            found = list(_day_entries(Path(output_dir), day))
            atomic_write_bytes(target, history_html.render_day(day, found).encode("utf-8"))
    except FileNotFoundError:
        return []  # no history for the day (recording failed, and said so)
    except OSError as exc:
        return [f"the image was saved but the day's log was not updated: {write_error(exc, target)}"]
    return []


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A writer stopped while holding it (SIGSTOP) must not stop this save: write without the
                # lock; at worst the page misses the other writer's image until the next save.
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            except OSError:
                break  # a file system without locks
        yield
    finally:
        os.close(fd)  # releases the lock


# -- reading ----------------------------------------------------------------------------------------
def _check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise StudioError(f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise StudioError("offset must be a whole number, 0 or more")


def entries(output_dir: Path, limit: int = 50, offset: int = 0) -> list[Entry]:
    """The history of ``output_dir``, newest first: ``limit`` entries after skipping ``offset``.

    Entries whose image is gone, and lines that are torn, over the size limit or not a valid record, are
    skipped (and not counted). An output folder without history gives an empty list.
    """
    _check_page(limit, offset)
    out = []
    for entry in _all_entries(Path(output_dir)):
        if offset:
            offset -= 1
            continue
        out.append(entry)
        if len(out) == limit:
            break
    return out


def entries_for_image(output_dir: Path, image: Path | str) -> list[Entry]:
    """The entries of one image, newest first (normally one): what "Reuse seed" and "Apply" need.

    ``image`` is the file's path or name; only its name is used, since the app shows copies of the
    output folder's images under the same name.
    """
    name = Path(str(image)).name
    try:
        check_name(name, "image")
    except StudioError:
        return []
    output_dir = Path(output_dir)
    days = _day_files(output_dir)
    # A file name starts with its save time (YYYYMMDD-): look in that day first, then everywhere.
    if m := re.match(r"(\d{4})(\d{2})(\d{2})-", name):
        first = f"{m[1]}-{m[2]}-{m[3]}"
        days.sort(key=lambda d: d != first)
    found = []
    for day in days:
        found += [e for e in _day_entries(output_dir, day) if e.record.image == name]
        if found:
            break
    return found


def _all_entries(output_dir: Path) -> Iterator[Entry]:
    for day in _day_files(output_dir):
        yield from _day_entries(output_dir, day)


def _day_files(output_dir: Path) -> list[str]:
    """The days with a history file, newest first."""
    try:
        names = [e.name for e in os.scandir(history_folder(output_dir)) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    days = sorted((m[1] for n in names if (m := _DAY_FILE.fullmatch(n))), reverse=True)
    return days[:MAX_HISTORY_DAYS]


def _day_entries(output_dir: Path, day: str) -> Iterator[Entry]:
    for line in _lines_newest_first(_index_path(output_dir, day), MAX_HISTORY_DAY_BYTES):
        entry = _entry(line, output_dir, day)
        if entry is not None:
            yield entry


def _entry(line: bytes, output_dir: Path, day: str) -> Optional[Entry]:
    if not line.strip():
        return None
    try:
        rec = Record.model_validate(_parse_line(line))
    except (StudioError, ValidationError):
        return None
    if rec.day != day:
        return None  # a line copied into another day's file
    path = output_dir / rec.image
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None  # not a symlink to elsewhere, nor a folder
    except OSError:
        return None  # the image was deleted or moved
    try:
        request, error = build_request(**rec.request), None
    except StudioError as exc:
        request, error = None, exc.message
    except Exception as exc:  # a hostile key (e.g. not a string) makes ** itself fail
        request, error = None, f"the recorded request is not valid ({type(exc).__name__})"
    return Entry(rec, path, request, error)


def _parse_line(line: bytes):
    try:
        return parse_json(line, "history line")
    except StudioError:
        # A writer killed mid-line leaves a torn line with no newline, and the next line is appended right
        # after it. Every line starts with _LINE_START, which json.dumps can never write inside a string
        # (its quotes are escaped there): the last one in the line is where the whole line begins.
        cut = line.rfind(_LINE_START, 1)
        if cut < 0:
            raise
        return parse_json(line[cut:], "history line")


def _lines_newest_first(path: Path, budget: int) -> Iterator[bytes]:
    """The lines of ``path`` from the last, reading at most ``budget`` bytes from its end.

    A line over MAX_HISTORY_LINE_BYTES is skipped without being held whole; the line cut by the budget is
    dropped. Lines appended while reading are left for the next read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        start = max(0, st.st_size - budget)
        pos, head, skipping = st.st_size, b"", False
        while pos > start:
            n = min(_BLOCK, pos - start)
            pos -= n
            try:
                chunk = os.pread(fd, n, pos)
            except OSError:
                return
            if skipping:  # inside an over-long line: drop up to the newline before it
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    continue
                chunk, skipping = chunk[: cut + 1], False
            parts = (chunk + head).split(b"\n")
            head = parts[0]
            for part in reversed(parts[1:]):
                if len(part) <= MAX_HISTORY_LINE_BYTES:
                    yield part
            if len(head) > MAX_HISTORY_LINE_BYTES:
                head, skipping = b"", True
        if start == 0 and not skipping and len(head) <= MAX_HISTORY_LINE_BYTES:
            yield head
    finally:
        os.close(fd)

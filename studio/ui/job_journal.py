"""A journal of the app's queued jobs, so a server that was killed can say, once restarted, what it lost.

Each job accepted by Gradio's queue is written as a `queued` line and, when it has run (whatever the
outcome), a `finished` line. Lines are single appends of whole JSON lines; a line cut short by a kill
is ignored. At start the jobs that never finished are the lost ones: they are reported, kept in
`lost-jobs.json` beside the journal, and the journal starts afresh.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from studio.fsutil import atomic_write_bytes

PROMPT_SHOWN = 80


class JobJournal:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "jobs.jsonl"
        self.lost_path = self.folder / "lost-jobs.json"
        self._lock = threading.Lock()

    # -- at start ------------------------------------------------------------------------------
    def take_lost(self) -> list[dict]:
        """The jobs queued before the last stop that never finished; the journal is then emptied."""
        queued: dict[str, dict] = {}
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # cut short by a kill
            if not isinstance(entry, dict):
                continue
            if entry.get("event") == "queued":
                queued[str(entry.get("job"))] = entry
            elif entry.get("event") == "finished":
                queued.pop(str(entry.get("job")), None)
        lost = [{k: v for k, v in e.items() if k != "event"} for e in queued.values()]
        if lost:
            atomic_write_bytes(self.lost_path, (json.dumps(lost, indent=1, ensure_ascii=False) + "\n").encode())
        if lines:
            atomic_write_bytes(self.path, b"")
        return lost

    # -- while serving -------------------------------------------------------------------------
    def queued(self, job: str, api: str, values: dict) -> None:
        prompt = str(values.get("prompt") or "")
        self._append({"event": "queued", "job": job, "api": api, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "seed": values.get("seed"), "batch": values.get("batch"),
                      "prompt": prompt[:PROMPT_SHOWN] + ("…" if len(prompt) > PROMPT_SHOWN else "")})

    def finished(self, job: str) -> None:
        self._append({"event": "finished", "job": job})

    def _append(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write of a whole line: a kill leaves whole lines or a cut last one
            finally:
                os.close(fd)

    def attach(self, blocks, api_names: tuple[str, ...], controls: tuple[str, ...]) -> None:
        """Journal the queued calls of ``api_names`` on ``blocks`` (after ``blocks.queue()``)."""
        queue = blocks._queue  # Gradio's queue: push() accepts a job, process_events() runs it
        push, process = queue.push, queue.process_events
        journal = self

        async def journaled_push(body, request, username):
            accepted = await push(body, request, username)
            fn = blocks.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
            if accepted[0] and fn is not None and fn.api_name in api_names and body.event_id:
                data = body.data if isinstance(body.data, list) else []
                journal.queued(body.event_id, fn.api_name, dict(zip(controls, data)))
            return accepted

        async def journaled_process(events, *args, **kwargs):
            try:
                return await process(events, *args, **kwargs)
            finally:
                for event in events:
                    if getattr(event.fn, "api_name", None) in api_names:
                        journal.finished(event._id)

        queue.push = journaled_push
        queue.process_events = journaled_process

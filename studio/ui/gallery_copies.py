"""The gallery's copies of output images in Gradio's cache: removed when the browser session ends,
and never served once the output file they copy is deleted."""

from __future__ import annotations

import glob
import threading
from pathlib import Path


class GalleryCopies:
    def __init__(self, output_dir: Path, gradio_cache: Path):
        self.output_dir = Path(output_dir)
        self.gradio_cache = Path(gradio_cache)
        self._names: set[str] = set()  # output files shown in any gallery of this process
        self._by_session: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def shown(self, session: str | None, paths: list[str]) -> None:
        names = {Path(p).name for p in paths}
        with self._lock:
            self._names |= names
            self._by_session.setdefault(session or "", set()).update(names)

    def gone(self, name: str) -> bool:
        """True (and the copies removed) when ``name`` was shown and its output file no longer exists."""
        with self._lock:
            if name not in self._names or (self.output_dir / name).exists():
                return False
        self._remove(name)
        return True

    def end_session(self, session: str | None) -> int:
        """Remove the session's copies (the tab was closed); the number of files removed."""
        with self._lock:
            names = self._by_session.pop(session or "", set())
            still_shown = set().union(*self._by_session.values()) if self._by_session else set()
        return sum(self._remove(name) for name in names - still_shown)

    def _remove(self, name: str) -> int:
        removed = 0
        for copy in glob.glob(str(self.gradio_cache / "*" / glob.escape(name))):
            try:
                Path(copy).unlink()
                removed += 1
            except OSError:
                pass
        return removed

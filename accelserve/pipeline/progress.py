"""Progress of a pipeline run: a live line on a terminal, plain one-line events in logs (CI)."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.quiet = quiet
        self.started = time.monotonic()
        self._transient = False
        self.events: list[str] = []

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60:02d}:{s % 60:02d}"

    def _clear(self) -> None:
        if self._transient:
            self.stream.write("\r\033[K")
            self._transient = False

    def event(self, text: str) -> None:
        """A finished step: a permanent line."""
        self.events.append(text)
        if self.quiet:
            return
        self._clear()
        self.stream.write(f"[{self._elapsed()}] {text}\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        """Work in progress: rewritten in place on a terminal; a plain line in logs."""
        if self.quiet:
            return
        if self.live:
            self._clear()
            self.stream.write(f"\r\033[K[{self._elapsed()}] ... {text}"[: 2000])
            self._transient = True
        else:
            self.stream.write(f"[{self._elapsed()}] start {text}\n")
        self.stream.flush()

    def stage(self, name: str, seconds: float, cached: bool, detail: str = "") -> None:
        how = "cached" if cached else f"{seconds:.1f}s"
        self.event(f"{name}: {'reused from cache' if cached else 'done'} ({how})" + (f" - {detail}" if detail else ""))

    def close(self) -> None:
        self._clear()
        self.stream.flush()

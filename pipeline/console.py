"""What a run prints while it works: each stage as it starts and ends, with its key figure.

On a terminal, a stage's line is rewritten in place (started, then done with its figure) and
the warm-up and replay show live progress with rows/s; in a CI log (not a terminal), one plain
line per finished stage and no progress noise. ``--quiet`` and ``--json`` print none of it.
Part of the edge: only the CLI creates a Console.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

LABELS = {"dataset": "dataset", "baseline": "baseline", "export": "export", "archive": "archive",
          "handled": "handled", "serve": "serve", "replay": "replay", "compare": "compare & gate"}


def _figure(stage: str, facts: dict) -> str:
    f = facts
    if stage == "dataset" and "rows" in f:
        return f"{f['rows']} {f.get('kind', '')} rows loaded"
    if stage == "baseline" and "accuracy" in f:
        return f"accuracy {f['accuracy']:.4f} through {f.get('reference')}"
    if stage == "export" and "max_abs_diff" in f:
        return f"{f.get('mode')}: max output difference {f['max_abs_diff']:.3g}"
    if stage == "archive" and "size_bytes" in f:
        return f".mar {f['size_bytes'] / 1024:.0f} KiB"
    if stage == "handled" and "answered" in f:
        return f"{f['answered']}/{f['rows']} rows answered in-process"
    if stage == "serve" and "startup_s" in f:
        return f"TorchServe ready in {f['startup_s']:.1f} s"
    if stage == "replay" and "answered" in f:
        return f"{f['answered']}/{f['rows']} rows answered, {f.get('rps', 0):.0f} rows/s"
    return ""


@dataclass
class Console:
    stream: TextIO
    is_tty: bool
    quiet: bool
    _progress_t0: float = 0.0
    _progress_open: bool = False
    _started: dict = field(default_factory=dict)

    @classmethod
    def for_stream(cls, stream: TextIO, quiet: bool = False) -> "Console":
        return cls(stream=stream, is_tty=bool(getattr(stream, "isatty", lambda: False)()), quiet=quiet)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self._progress_open:
            self._write("\r\x1b[2K")
            self._progress_open = False

    def stage_event(self, stage: str, phase: str, facts: dict) -> None:
        if self.quiet:
            return
        label = LABELS.get(stage, stage)
        if phase == "start":
            self._started[stage] = time.monotonic()
            if self.is_tty:
                self._clear()
                self._write(f"  {label:<15} ...")
                self._progress_open = True
            return
        figure = _figure(stage, facts)
        seconds = facts.get("seconds", 0.0)
        line = f"  {label:<15} {seconds:6.2f} s  {figure}".rstrip()
        if self.is_tty:
            self._clear()
        self._write(line + "\n")

    def progress(self, phase: str, done: int, total: int) -> None:
        if self.quiet or not self.is_tty:
            return
        now = time.monotonic()
        if done <= 50 or not self._progress_t0:
            self._progress_t0 = now
        rate = done / (now - self._progress_t0) if now > self._progress_t0 else 0.0
        what = "warm-up" if phase == "warmup" else "replay"
        pct = 100.0 * done / total if total else 100.0
        self._write(f"\r\x1b[2K  {what:<15} {done}/{total} ({pct:.0f}%)" + (f", {rate:.0f} rows/s" if rate else ""))
        self._progress_open = True

    def finish(self) -> None:
        if not self.quiet:
            self._clear()

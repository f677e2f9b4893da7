"""Progress of long ``prepare`` stages: rate and ETA.

On a terminal a one-line bar is redrawn in place (at most a few times a second); otherwise
(Airflow task logs, CI) a log line is written every ``interval`` seconds. The total is an
estimate when the input does not say how many rows it holds (lines of a JSONL/CSV file),
and the ETA is left out when there is none.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import IO, Iterable

log = logging.getLogger("grounding_ops.data.prepare")

LINE_FORMATS_SUFFIXES = (".jsonl", ".csv")


def count_lines(paths: Iterable[Path], chunk: int = 1 << 22) -> int | None:
    """Lines in the line-based inputs (JSONL, CSV), an estimate of their rows; None when an
    input is a whole document (COCO, PadChest-GR, pickle, parquet) whose rows are unknown."""
    total = 0
    for path in paths:
        if path.suffix.lower() not in LINE_FORMATS_SUFFIXES:
            return None
        with open(path, "rb") as handle:
            while True:
                block = handle.read(chunk)
                if not block:
                    break
                total += block.count(b"\n")
    return total


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``update(n)`` after each ``n`` items; ``close()`` writes the final line."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        interval: float = 10.0,
        stream: IO[str] | None = None,
        tty: bool | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.25 if self.tty else interval
        self.done = 0
        self.start = time.monotonic()
        self._last = self.start

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done}"
        if self.total:
            text += f"/{self.total} ({min(self.done / self.total, 1.0):.0%})"
        text += f", {rate:,.0f} rows/s, {_duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def _bar(self) -> str:
        if not self.total:
            return self.line()
        width = 24
        filled = int(width * min(self.done / self.total, 1.0))
        return f"[{'#' * filled}{'.' * (width - filled)}] " + self.line()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self._bar())
            self.stream.flush()
        else:
            log.info("%s", self.line())

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._bar() + "\n")
            self.stream.flush()
        else:
            log.info("%s (done)", self.line())

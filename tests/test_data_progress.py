"""Progress of prepare (rate, ETA; a bar on a terminal, log lines otherwise) and the parallel
image checks (each distinct image once, by a thread pool)."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

from grounding_ops.data.images import ImageCheck, ImageCheckCache
from grounding_ops.data.progress import Progress, count_lines


def test_log_lines_say_rate_and_eta(caplog) -> None:
    caplog.set_level(logging.INFO, logger="grounding_ops.data.prepare")
    progress = Progress("validate", 1000, interval=0.0, tty=False)
    progress.update(250)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("validate: 250/1000 (25%)") and "rows/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].endswith("(done)")


def test_terminal_gets_a_bar_redrawn_in_place() -> None:
    stream = io.StringIO()
    progress = Progress("export", 10, stream=stream, tty=True)
    progress.interval = 0.0
    for _ in range(10):
        progress.update()
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 11 and "[########################] export: 10/10 (100%)" in text
    assert text.endswith("\n")


def test_count_lines_estimates_line_based_inputs(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n{}\n{}\n")
    (tmp_path / "b.csv").write_text("h\n1\n")
    assert count_lines([tmp_path / "a.jsonl", tmp_path / "b.csv"]) == 5
    (tmp_path / "c.json").write_text("{}")
    assert count_lines([tmp_path / "c.json"]) is None


class _SlowResolver:
    """Checks take 50 ms (a remote fetch); records which threads ran them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def check(self, ref: str, max_pixels: int, max_bytes: int) -> ImageCheck:
        time.sleep(0.05)
        with self.lock:
            self.calls.append(ref)
            self.threads.add(threading.get_ident())
        return ImageCheck(inside_root=True, exists=True, decodes=True, within_pixel_limit=True, width=4, height=4)


def test_distinct_images_are_checked_once_and_in_parallel() -> None:
    resolver = _SlowResolver()
    cache = ImageCheckCache(resolver, 100)  # type: ignore[arg-type]
    refs = [f"img{i}.png" for i in range(16)]
    start = time.perf_counter()
    checks = cache.get_many(set(refs + refs), workers=16)
    elapsed = time.perf_counter() - start
    assert set(checks) == set(refs) and sorted(resolver.calls) == sorted(refs)
    assert len(resolver.threads) > 1 and elapsed < 16 * 0.05 / 2  # not one after another
    again = cache.get_many(refs, workers=16)
    assert again == checks and len(resolver.calls) == 16  # cached: not checked again

"""The engine subprocesses of a training run: the runner's log, process groups, signals, streamed output.

- :func:`log` prints one ``[train] ...`` line (the runner's own voice in the container log).
- :class:`Terminator` forwards SIGTERM/SIGINT to the running engine's process group and remembers
  that it did, so the runner can upload the finished checkpoints and exit 143.
- :func:`stream_process` runs a command in its own process group and hands each output line on.
- :func:`engine_env` is the environment every engine process starts from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any, Callable, Sequence


def log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def echo(line: str) -> None:
    """Pass an engine's output line through to the container log."""
    print(line, flush=True)


class Terminator:
    """Forwards SIGTERM/SIGINT to the engine's process group and remembers it happened."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Terminator":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True
        log(f"received signal {signum}: stopping the engine, then uploading finished checkpoints")
        self.kill_group(signal.SIGTERM)

    def kill_group(self, sig: int) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass


def stream_process(
    command: Sequence[str],
    *,
    env: dict[str, str] | None,
    on_line: Callable[[str], None],
    terminator: Terminator,
    cwd: str | None = None,
) -> int:
    """Run ``command`` in its own process group, passing each output line to ``on_line``."""
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        cwd=cwd,
        start_new_session=True,
        errors="replace",
    )
    terminator.proc = proc
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()
    finally:
        if proc.poll() is None:
            terminator.kill_group(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                terminator.kill_group(signal.SIGKILL)
                proc.wait()
        terminator.proc = None


def engine_env() -> dict[str, str]:
    """The environment of an engine process: this one's, with quiet, offline, unbuffered defaults."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env

"""Great Expectations in a Python process of its own, next to a ``prepare`` that reads.

Importing Great Expectations costs about 3 s of CPU and 300 MB; a ``prepare`` of a large
input starts this process first, so that the import runs on another core while the input is
read and the images are checked, and each batch's row suite runs while the next batch is
read (``grounding_ops.data.validation.RowSuite``); the export's acceptance suite runs there
too when the process is up. Small inputs (the tests, a demo) validate in the calling process.

The process is a plain ``python -c`` child speaking length-prefixed pickles over its stdin
and stdout, not ``multiprocessing``: that re-imports the caller's main script in the child,
which breaks scripts and notebooks without a ``__main__`` guard. Calls run in order; each
returns a :class:`concurrent.futures.Future`. The process lives until :func:`close` or the
interpreter's exit.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO, Callable

_HEADER = struct.Struct(">Q")
_SHARED: dict[str, "GXProcess"] = {}


def _send(stream: BinaryIO, payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def serve() -> None:
    """The child's loop: run each call received on stdin, answer on stdout (which is kept for
    the answers: anything printed goes to stderr)."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    import great_expectations  # noqa: F401  - the point of this process: imported once, first

    while True:
        try:
            fn, args, kwargs = _receive(requests)
        except EOFError:
            return
        try:
            answer: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            answer = (False, exc)
        try:
            _send(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send(answers, (False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]!r} ({exc})")))


class GXProcess:
    """One child process running module-level functions in the order they were submitted."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from grounding_ops.data.gx_process import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._outbox: queue.SimpleQueue[tuple[Future, Any] | None] = queue.SimpleQueue()
        self._waiting: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._broken: BaseException | None = None
        self._lock = threading.Lock()
        # a writer thread, so that the caller never blocks on a full pipe while the child imports
        self._writer = threading.Thread(target=self._write, name="gx-process-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="gx-process-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            self._waiting.put(future)
            self._outbox.put((future, (fn, args, kwargs)))
        return future

    def _write(self) -> None:
        assert self._proc.stdin is not None
        while True:
            item = self._outbox.get()
            if item is None:
                break
            future, payload = item
            try:
                _send(self._proc.stdin, payload)
            except (BrokenPipeError, OSError, ValueError):
                break  # the reader reports the end of the process
            except Exception as exc:  # noqa: BLE001 - an argument that cannot be pickled
                self._fail(RuntimeError(f"cannot hand the call to the Great Expectations process: {exc}"))
                break
        try:
            self._proc.stdin.close()
        except OSError:
            pass

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while True:
            try:
                ok, value = _receive(self._proc.stdout)
            except Exception:  # noqa: BLE001 - EOF or a broken answer: the process is gone
                code = self._proc.wait()
                self._fail(
                    RuntimeError(
                        f"the Great Expectations process ended (exit code {code}; out of memory?); run prepare again"
                    )
                )
                return
            future = self._waiting.get()
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = error
            while True:
                try:
                    future = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if not future.done():
                    future.set_exception(error)

    def close(self) -> None:
        self._outbox.put(None)
        self._writer.join(timeout=60)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=10)


def imported_here() -> bool:
    return "great_expectations" in sys.modules


def running() -> GXProcess | None:
    return _SHARED.get("process")


def start_if(wanted: bool) -> GXProcess | None:
    """The running process; else a new one when ``wanted``, Great Expectations is not imported
    in this process yet and there is more than one CPU; else None (run in this process)."""
    process = _SHARED.get("process")
    if process is not None or not wanted or imported_here() or (os.cpu_count() or 1) < 2:
        return process
    import atexit

    process = _SHARED["process"] = GXProcess()
    atexit.register(close)
    return process


def close() -> None:
    process = _SHARED.pop("process", None)
    if process is not None:
        process.close()


def run_elsewhere(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """A future of ``fn(*args, **kwargs)``: in the running process, else computed here, now."""
    process = _SHARED.get("process")
    if process is not None:
        return process.submit(fn, *args, **kwargs)
    return done(fn, *args, **kwargs)


def done(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - handed to the caller by future.result()
        future.set_exception(exc)
    return future

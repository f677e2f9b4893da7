"""The checkpoint layout, in one place: local step folders, the output store, and what "complete" means.

Every module that names a step folder, the tracker file, the completion marker or the output's
model folders (the engines, the runner, the DAG's checkpoint listing) asks this module.

Local layout (both engines; VeRL's own convention)::

    <local>/global_step_N/...                 one checkpoint per saved step (:func:`step_dir`)
    <local>/latest_checkpointed_iteration.txt the last step whose checkpoint is fully written

A local ``global_step_N`` counts as complete once the tracker file says N or more: engines
write the tracker after the checkpoint, so a folder still being written is never uploaded.
An engine can add its own test (``is_complete``): VeRL's counts only when ``actor/`` holds every
rank's model shard, since its rotation deletes ``actor/`` and leaves ``data.pt`` behind.

Remote layout (the run's output store)::

    <output>/checkpoints/global_step_N/...                   the files, uploaded one by one
    <output>/checkpoints/global_step_N/checkpoint.complete.json   written LAST
    <output>/checkpoints/global_step_N/huggingface/          VeRL: the step merged into a HF folder
    <output>/final/                                          the final Hugging Face model
    <output>/base/                                           the model GRPO started from (CPU engine)

Only a checkpoint with its marker is a checkpoint: an upload cut short leaves files without a
marker, which discovery ignores (and the next upload of that step overwrites). The marker lists
every file with its size and the sha256 the trainer computed before uploading it; a download
(before any resume: VeRL unpickles resumed checkpoints) checks both and refuses markers without
checksums. The checkpoint prefix must be writable by the trainer only (docs/reliability.md).

A checkpoint is *evaluable* (:func:`evaluable_checkpoints`) when it is complete and its folder,
or its ``huggingface/`` sub-folder, holds a Hugging Face ``config.json``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from grounding_ops.storage import ObjectStore, StorageError, join_key, local_path_for_key, sha256_file

STEP_PREFIX = "global_step_"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
MARKER_FILE = "checkpoint.complete.json"
CHECKPOINTS_PREFIX = "checkpoints"
HF_DIR = "huggingface"  # a step's merged Hugging Face model, when the step folder is not one itself (VeRL)
FINAL_PREFIX = "final"  # the output's final Hugging Face model
BASE_PREFIX = "base"  # the output's copy of the model GRPO started from, where the engine made one
_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")

log = logging.getLogger(__name__)


def step_name(step: int) -> str:
    """The folder name of a step's checkpoint: ``global_step_<step>``."""
    return f"{STEP_PREFIX}{int(step)}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name, or ``None`` when ``name`` is not one."""
    match = _STEP_RE.match(name)
    return int(match.group(1)) if match else None


def step_dir(local_dir: str | Path, step: int) -> Path:
    """The local folder of a step's checkpoint under ``local_dir``."""
    return Path(local_dir) / step_name(step)


def step_dirs(local_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``global_step_N`` folder under ``local_dir`` (complete or not), by ascending step."""
    root = Path(local_dir)
    if not root.is_dir():
        return []
    found = [(step, child) for child in root.iterdir() if (step := step_of(child.name)) is not None and child.is_dir()]
    return sorted(found)


def read_tracker(local_dir: str | Path) -> int | None:
    path = Path(local_dir) / TRACKER_FILE
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_tracker(local_dir: str | Path, step: int) -> None:
    path = Path(local_dir) / TRACKER_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(int(step)))
    tmp.replace(path)


StepTest = Callable[[Path], bool]


def local_complete_steps(local_dir: str | Path, is_complete: StepTest | None = None) -> list[int]:
    """Steps of the fully written ``global_step_N`` folders under ``local_dir``, ascending."""
    tracked = read_tracker(local_dir)
    if tracked is None:
        return []
    return [
        step
        for step, folder in step_dirs(local_dir)
        if step <= tracked and (is_complete is None or is_complete(folder))
    ]


def latest_local_checkpoint(local_dir: str | Path, is_complete: StepTest | None = None) -> tuple[int, Path] | None:
    steps = local_complete_steps(local_dir, is_complete)
    if not steps:
        return None
    return steps[-1], step_dir(local_dir, steps[-1])


def _remote_dir(step: int) -> str:
    return join_key(CHECKPOINTS_PREFIX, step_name(step))


def remote_complete_steps(store: ObjectStore) -> list[int]:
    """Steps with a completion marker under ``checkpoints/``, ascending."""
    steps = set()
    for info in store.list(CHECKPOINTS_PREFIX + "/"):
        parts = info.key.split("/")
        if len(parts) >= 3 and parts[-1] == MARKER_FILE and parts[-3] == CHECKPOINTS_PREFIX:
            step = step_of(parts[-2])
            if step is not None:
                steps.add(step)
    return sorted(steps)


def checkpoint_uri(store: ObjectStore, step: int) -> str:
    return store.url(_remote_dir(step))


def upload_checkpoint(store: ObjectStore, local_dir: str | Path, step: int) -> str:
    """Upload ``global_step_<step>`` file by file, then its marker; return its URI."""
    folder = step_dir(local_dir, step)
    if not folder.is_dir():
        raise StorageError(f"no checkpoint folder {folder}")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MARKER_FILE:
            continue
        digest = sha256_file(path)  # computed by the trainer before upload, checked before any resume
        store.upload_file(join_key(_remote_dir(step), rel), path, sha256=digest)
        files[rel] = {"size": path.stat().st_size, "sha256": digest}
    marker = {
        "step": step,
        "files": files,
        "bytes": sum(entry["size"] for entry in files.values()),
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.put_bytes(join_key(_remote_dir(step), MARKER_FILE), json.dumps(marker, indent=2, sort_keys=True).encode())
    return checkpoint_uri(store, step)


def _check_relative(rel: Any, where: str) -> None:
    """A file name from a marker must stay inside the checkpoint folder."""
    parts = PurePosixPath(str(rel)).parts if isinstance(rel, str) else ()
    if not parts or str(rel).startswith(("/", "\\")) or ".." in parts or "\\" in str(rel) or ":" in str(rel):
        raise StorageError(
            f"the completion marker of {where} names {rel!r}, which is not a file inside the checkpoint: "
            "the checkpoint was tampered with; delete it from the output"
        )


def download_checkpoint(store: ObjectStore, step: int, local_dir: str | Path) -> Path:
    """Download the complete checkpoint ``step`` into ``<local_dir>/global_step_<step>``; check
    sizes against its marker; write the tracker file. Returns the folder."""
    remote = _remote_dir(step)
    try:
        marker = json.loads(store.get_bytes(join_key(remote, MARKER_FILE)))
    except (StorageError, ValueError) as exc:
        raise StorageError(f"checkpoint {store.url(remote)} has no readable completion marker: {exc}") from exc
    folder = step_dir(local_dir, step)
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict):
        raise StorageError(f"the completion marker of {store.url(remote)} lists no files: the checkpoint is damaged")
    for rel in files:
        _check_relative(rel, store.url(remote))
    folder.mkdir(parents=True, exist_ok=True)
    for rel, entry in sorted(files.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise StorageError(
                f"the completion marker of {store.url(remote)} records no sha256 for {rel!r} (written by an older "
                "version, or forged): resuming would load unverified files; delete the checkpoint from the output "
                "to resume from an earlier one or start the run afresh"
            )
        target = local_path_for_key(folder, rel)
        store.download_file(join_key(remote, rel), target)
        size, digest = target.stat().st_size, sha256_file(target)
        if size != int(entry.get("size", -1)) or digest != entry["sha256"]:
            target.unlink(missing_ok=True)
            raise StorageError(
                f"{store.url(join_key(remote, rel))} ({size} bytes, sha256 {digest[:12]}...) does not match its "
                f"marker ({entry.get('size')} bytes, sha256 {str(entry['sha256'])[:12]}...): the checkpoint is "
                "damaged or was changed after upload; delete it from the output to resume from an earlier one"
            )
    if (read_tracker(local_dir) or -1) < step:
        write_tracker(local_dir, step)
    return folder


@dataclass
class CheckpointUploader:
    """Uploads every newly completed local checkpoint in a background thread.

    ``start()`` begins polling ``local_dir``; ``finish()`` makes a last pass, waits for the
    uploads to end and returns the uploaded URIs (raises if any upload failed). Training is
    never blocked: the engine writes, this thread reads and uploads.

    ``is_complete`` is the engine's test of a step folder; ``before_upload(step, folder)`` runs
    first (VeRL: merge the shards into ``huggingface/`` so every checkpoint is evaluable), and
    ``after_upload(step, folder)`` after (VeRL: drop that local copy again). A step the engine
    rotated away before its upload finished is logged, not retried.
    """

    store: ObjectStore
    local_dir: Path
    already_uploaded: set[int] = field(default_factory=set)
    interval: float = 1.0
    retries: int = 3
    log: Callable[[str], None] = print
    is_complete: StepTest | None = None
    before_upload: Callable[[int, Path], None] | None = None
    after_upload: Callable[[int, Path], None] | None = None
    uploaded: dict[int, str] = field(default_factory=dict)
    rotated: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "CheckpointUploader":
        self._thread = threading.Thread(target=self._loop, name="checkpoint-uploader", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sync_once()
            self._stop.wait(self.interval)

    def sync_once(self) -> None:
        for step in local_complete_steps(self.local_dir, self.is_complete):
            if step in self.already_uploaded or step in self.uploaded or step in self.rotated:
                continue
            self._upload(step)

    def _still_there(self, step: int) -> bool:
        folder = step_dir(self.local_dir, step)
        return folder.is_dir() and (self.is_complete is None or self.is_complete(folder))

    def _upload(self, step: int) -> None:
        last_error = ""
        folder = step_dir(self.local_dir, step)
        for attempt in range(1, self.retries + 1):
            started = time.perf_counter()
            try:
                if self.before_upload is not None:
                    self.before_upload(step, folder)
                uri = upload_checkpoint(self.store, self.local_dir, step)
            except (StorageError, OSError, RuntimeError) as exc:
                if not self._still_there(step):
                    self.rotated.append(step)
                    self.log(
                        f"checkpoint step {step} was rotated away by the engine before its upload finished; "
                        "raise max_checkpoints_to_keep (or save_freq) to keep every checkpoint"
                    )
                    return
                last_error = str(exc)
                self.log(f"checkpoint upload of step {step} failed (attempt {attempt}/{self.retries}): {exc}")
                if attempt < self.retries:
                    time.sleep(min(2.0 * attempt, 10.0))
                continue
            self.uploaded[step] = uri
            self.log(f"uploaded checkpoint step {step} to {uri} in {time.perf_counter() - started:.1f}s")
            if self.after_upload is not None:
                self.after_upload(step, folder)
            return
        self.errors.append(f"checkpoint step {step}: {last_error}")
        self.already_uploaded.add(step)  # do not retry forever; reported by finish()

    def finish(self) -> dict[int, str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sync_once()
        if self.errors:
            raise StorageError("could not upload " + "; ".join(self.errors))
        return dict(self.uploaded)


@dataclass(frozen=True)
class EvaluableCheckpoint:
    """A model of a training output that an evaluation can load.

    :param name: ``global_step_N``, or ``final`` for the final model.
    :param step: the checkpoint's step; ``final`` sorts after every checkpoint (the last step + 1).
    :param uri: the Hugging Face folder (the step folder, its ``huggingface/`` sub-folder, or ``final/``).
    """

    name: str
    step: int
    uri: str


def _holds_model(store: ObjectStore, prefix: str) -> bool:
    return store.exists(join_key(prefix, "config.json"))


def evaluable_checkpoints(store: ObjectStore, *, steps_done: int = 0) -> list[EvaluableCheckpoint]:
    """The evaluable models of the training output ``store``, by ascending step, ``final`` last.

    A checkpoint counts when it is complete (its marker is there, see :func:`remote_complete_steps`)
    and its folder or its ``huggingface/`` sub-folder holds ``config.json``; a complete one without
    (FSDP shards only) is skipped with a log line. ``final/`` counts when it holds ``config.json``;
    its step is one past the last of ``steps_done`` and the checkpoints'.
    """
    found: list[EvaluableCheckpoint] = []
    for step in remote_complete_steps(store):
        remote = _remote_dir(step)
        model = next((p for p in (remote, join_key(remote, HF_DIR)) if _holds_model(store, p)), None)
        if model is None:
            log.info("checkpoint %s has no Hugging Face folder (config.json); not evaluated", store.url(remote))
            continue
        found.append(EvaluableCheckpoint(name=step_name(step), step=step, uri=store.url(model)))
    if _holds_model(store, FINAL_PREFIX):
        last = max([int(steps_done or 0), *(c.step for c in found)])
        found.append(EvaluableCheckpoint(name=FINAL_PREFIX, step=last + 1, uri=store.url(FINAL_PREFIX)))
    return found


def upload_folder(store: ObjectStore, prefix: str, folder: Path) -> list[str]:
    """Upload ``folder`` under ``prefix`` and delete objects there that the folder does not have."""
    names = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        store.upload_file(join_key(prefix, rel), path)
        names.append(rel)
    keep = {join_key(prefix, n) for n in names}
    for info in list(store.list(prefix + "/")):
        if info.key not in keep:
            store.delete(info.key)
    return names

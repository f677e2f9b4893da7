"""The training container contract: ``grounding-ops train --engine verl|cpu`` end to end.

:func:`run_training`:

1. fetches the dataset version by its manifest and verifies every checksum;
2. downloads the latest complete checkpoint from ``OUTPUT/checkpoints/`` if there is one
   (resume; see :mod:`grounding_ops.training.checkpoints` for what "complete" means);
3. runs the engine as a subprocess, streaming its log lines (the CPU engine prints one
   readable line per step; VeRL's metric lines are followed by a readable summary);
4. uploads each checkpoint the engine finishes to ``OUTPUT/checkpoints/global_step_N/`` from a
   background thread, file by file and then a completion marker, while training goes on;
5. produces the final Hugging Face folder (CPU: the last checkpoint's model and processor;
   VeRL: ``verl.model_merger`` on the last FSDP checkpoint) and uploads it to ``OUTPUT/final/``;
6. writes ``OUTPUT/run.json`` last.

Exit codes: 0 success; 1 the engine, the merge or an upload failed; 2 an input problem (the
message says what to fix); 143 terminated by SIGTERM (the engine is stopped and the finished
checkpoints are uploaded first).

Runs that would train nothing are errors, never a quiet success:

- a resume that ends without a single new step (the engine ran but saved nothing new);
- a run whose target step count is already reached and whose ``run.json`` exists:
  "nothing to train: already at step N; raise total_steps".

One case is not an error: the target is reached by the checkpoints in ``OUTPUT`` but
``run.json`` is missing (a previous run died after its last checkpoint, before the final
model). Then the run only finishes the job: final model and ``run.json``, ``steps_trained`` 0,
and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from grounding_ops.storage import ObjectStore, StorageError, download_tree, join_key, open_store
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.presets import TINY_MODEL_SCHEME

RUN_JSON = "run.json"
HF_DIR = "huggingface"  # a VeRL step's merged Hugging Face model, next to actor/
FINAL_PREFIX = "final"
WANDB_PREFIX = "wandb"  # offline W&B runs of the engine, kept next to the run outputs
BASE_PREFIX = "base"
IMAGE_ENV = "GROUNDING_OPS_IMAGE"
GIT_COMMIT_ENV = "GROUNDING_OPS_GIT_COMMIT"
WORK_DIR_ENV = "GROUNDING_OPS_WORK_DIR"
_WANDB_URL = re.compile(r"View run at (https?://\S+)")
# Files of a CPU-engine checkpoint that are trainer state rather than the model folder.
_TRAINER_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|training_args\.bin|rng_state.*\.pth)$"
)


class RunError(RuntimeError):
    """A failed run; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class EngineOutcome:
    returncode: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    wandb_url: str | None = None
    seconds_per_step: float | None = None
    terminated: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per step (see run.json)


def _log(message: str) -> None:
    print(f"[train] {message}", flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- inputs
def fetch_dataset(dataset_uri: str, dest: Path, s3_client: Any | None) -> tuple[dict[str, Any], Path, Path | None]:
    """Download and verify the dataset; return (manifest, train parquet, val parquet or None)."""
    from grounding_ops.data.manifest import DatasetVerificationError, load_verified_dataset

    try:
        manifest, paths = load_verified_dataset(
            dataset_uri, dest, s3_client=s3_client, files=("train.parquet", "val.parquet")
        )
    except DatasetVerificationError as exc:
        raise RunError(str(exc), code=2) from exc
    train = paths["train.parquet"]
    val = paths.get("val.parquet")
    if _parquet_rows(train) == 0:
        raise RunError(f"the dataset {dataset_uri} has no training rows: export more data", code=2)
    if val is not None and _parquet_rows(val) == 0:
        val = None
    return manifest, train, val


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def target_steps(spec: Any, n_train_rows: int) -> int:
    """The step a run must reach: ``total_steps``, or ``total_epochs`` over full batches."""
    if spec.total_steps:
        return int(spec.total_steps)
    return max(1, n_train_rows // int(spec.train_batch_size)) * int(spec.total_epochs)


def resolve_model(spec: Any, engine: str, dest: Path, s3_client: Any | None) -> str | None:
    """A local folder for the model (``None``: hand the name to VeRL as is, e.g. a hub id)."""
    model = spec.model.strip()
    if model.startswith(TINY_MODEL_SCHEME):
        from grounding_ops.tiny_models import build_tiny_model

        family = model[len(TINY_MODEL_SCHEME) :] or spec.model_family
        try:
            return str(build_tiny_model(dest, family=family, seed=0))
        except ValueError as exc:
            raise RunError(f"model {model!r}: {exc}", code=2) from exc
    if model.startswith("s3://"):
        store = open_store(model, s3_client=s3_client)
        try:
            count = len(download_tree(store, dest))
        except StorageError as exc:
            raise RunError(f"cannot download model {model}: {exc}", code=2) from exc
        if not (dest / "config.json").is_file():
            raise RunError(
                f"model {model} holds no config.json ({count} objects): upload a Hugging Face folder", code=2
            )
        return str(dest)
    local = Path(model.removeprefix("file://")).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise RunError(f"model folder {local} has no config.json: point model= at a Hugging Face folder", code=2)
        return str(local.resolve())
    if engine == "cpu":
        raise RunError(
            f"model {model!r} is not a local folder, an s3:// URI or tiny:<family>: the CPU engine cannot "
            "download models; build one with `grounding-ops tiny-model` or copy it to a folder or bucket",
            code=2,
        )
    return None


# --------------------------------------------------------------------------- engines
class _Terminator:
    """Forwards SIGTERM/SIGINT to the engine's process group and remembers it happened."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Terminator":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True
        _log(f"received signal {signum}: stopping the engine, then uploading finished checkpoints")
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
    terminator: _Terminator,
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


def _engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    return env


def _cpu_engine_env() -> dict[str, str]:
    from grounding_ops.training.cpu_engine import DEFAULT_THREADS, THREADS_ENV

    env = _engine_env()
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # The OpenMP pool follows the engine's thread count (see cpu_engine.THREADS_ENV).
    env["OMP_NUM_THREADS"] = env.get(THREADS_ENV) or str(DEFAULT_THREADS)
    return env


def run_cpu_engine(
    spec: Any,
    *,
    model_dir: str,
    train: Path,
    val: Path | None,
    checkpoint_dir: Path,
    total: int,
    work: Path,
    terminator: _Terminator,
    need_warmup_model: bool = False,
) -> EngineOutcome:
    from grounding_ops.training.cpu_engine import EngineConfig

    result_path = work / "engine-result.json"
    result_path.unlink(missing_ok=True)
    config_path = work / "engine-config.json"
    EngineConfig(
        spec=spec.to_dict(),
        model_dir=model_dir,
        train_files=[str(train)],
        val_files=[str(val)] if val else [],
        checkpoint_dir=str(checkpoint_dir),
        total_steps=total,
        result_path=str(result_path),
        need_warmup_model=need_warmup_model,
    ).save(config_path)
    command = [sys.executable, "-m", "grounding_ops.training.cpu_engine", "--config", str(config_path)]
    env = {"WANDB_DIR": str(work), **_cpu_engine_env()}  # offline W&B runs land in work/wandb (kept, see below)
    rc = stream_process(command, env=env, on_line=lambda line: print(line, flush=True), terminator=terminator)
    outcome = EngineOutcome(returncode=rc, terminated=terminator.signalled)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        outcome.final_metrics = result.get("final_metrics") or {}
        outcome.wandb_url = result.get("wandb_url")
        outcome.seconds_per_step = result.get("seconds_per_step")
        outcome.history = list(result.get("history") or [])
    return outcome


def verl_overrides(
    spec: Any, *, model_dir: str | None, train: Path, val: Path | None, checkpoint_dir: Path, total: int | None = None
) -> list[str]:
    from grounding_ops.training.verl_overrides import RunPaths, render_overrides

    paths = RunPaths(
        train_file=str(train),
        val_file=str(val) if val else None,
        checkpoint_dir=str(checkpoint_dir),
        model_path=model_dir,
    )
    return list(render_overrides(spec, paths, target_steps=total))


def check_verl_dataset(spec: Any, manifest: dict[str, Any], train: Path, val: Path | None) -> int:
    """The VeRL run's step target, after refusing a dataset that does not fit the spec (exit 2)."""
    from grounding_ops.training.verl_preflight import DatasetMismatch, check_dataset

    try:
        fit = check_dataset(spec, manifest, train, val)
    except DatasetMismatch as exc:
        raise RunError(str(exc), code=2) from exc
    overlong = fit.train.overlong + (fit.val.overlong if fit.val else 0)
    if overlong:
        _log(f"{overlong} rows may be filtered by VeRL as longer than max_prompt_length={spec.max_prompt_length}")
    return fit.steps(spec)


def verl_checkpoint_dir(spec: Any, work: Path, output_uri: str) -> Path:
    """The work folder's checkpoints/ on one node; a per-output folder of ``shared_dir`` on several."""
    import hashlib

    from grounding_ops.training.verl_overrides import checkpoint_root

    if spec.nnodes <= 1:
        return checkpoint_root(work, spec)
    shared = Path(spec.shared_dir)
    if not shared.is_dir() or not os.access(shared, os.W_OK):
        raise RunError(
            f"shared_dir {shared} is not a writable folder here: mount the same shared folder (NFS, Lustre, ...) "
            f"at {shared} on every node; each node's ranks write their FSDP shards there",
            code=2,
        )
    return checkpoint_root(work, spec, run_name=hashlib.sha256(output_uri.encode()).hexdigest()[:16])


def _incomplete_verl_steps(checkpoint_dir: Path) -> str:
    from grounding_ops.training.verl_engine import missing_shards

    found = []
    for folder in sorted(checkpoint_dir.glob(f"{ckpt.STEP_PREFIX}*")):
        missing = missing_shards(folder)
        if missing:
            found.append(f"{folder.name} lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if not found:
        return ""
    return (
        ". Incomplete checkpoints: " + "; ".join(found) + " (on several nodes, every node must write to "
        "the same shared_dir)"
    )


class VerlCheckpoints:
    """How the runner treats VeRL's checkpoint folders.

    A step counts once ``actor/`` holds every rank's model shard. Before a step is uploaded its
    shards (and LoRA adapter) are merged into ``global_step_N/huggingface/``, so every uploaded
    checkpoint is an evaluable Hugging Face model; after the upload the merged copies of older
    steps are deleted (the newest stays for the final model).
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        # its own: the merges run in the uploader thread, beside the trainer the run's terminator tracks
        self.terminator = _Terminator()

    @staticmethod
    def is_complete(folder: Path) -> bool:
        from grounding_ops.training.verl_engine import actor_has_model

        return actor_has_model(folder)

    def merge(self, step: int, folder: Path) -> None:
        target = folder / HF_DIR
        if (target / "config.json").is_file():
            return
        final_from_verl_checkpoint(folder, target, self.terminator, spec=self.spec)

    @staticmethod
    def drop_older_merges(step: int, folder: Path) -> None:
        for other in folder.parent.glob(f"{ckpt.STEP_PREFIX}*"):
            if other != folder and (ckpt.step_of(other.name) or 0) < step:
                shutil.rmtree(other / HF_DIR, ignore_errors=True)


def verl_history_entry(metrics: Any) -> dict[str, Any]:
    """One step of VeRL's log as a history entry of ``run.json`` (same keys as the CPU engine's)."""
    values = metrics.values
    entry = {k: v for k, v in metrics.to_dict().items() if v is not None}
    entry.update({"timestamp": time.time(), "tokens_per_s": metrics.throughput})
    for key, names in (
        ("entropy", ("actor/entropy", "actor/entropy_loss")),
        ("response_length", ("response_length/mean",)),
    ):
        entry[key] = next((values[n] for n in names if n in values), None)
    return entry


def run_verl_engine(overrides: Sequence[str], *, terminator: _Terminator, work: Path) -> EngineOutcome:
    from grounding_ops.training import verl_engine

    outcome = EngineOutcome(returncode=1)
    times: list[float] = []

    def on_line(line: str) -> None:
        print(line, flush=True)
        metrics = verl_engine.parse_log_line(line)
        if metrics is not None:
            print(f"[train] {metrics.summary()}", flush=True)
            # the latest value of each metric: validation ones (val_iou, val_acc) only come on validation steps
            outcome.final_metrics.update({k: v for k, v in metrics.to_dict().items() if v is not None and k != "step"})
            outcome.history.append(verl_history_entry(metrics))
            if metrics.seconds_per_step is not None:
                times.append(metrics.seconds_per_step)
        match = _WANDB_URL.search(line)
        if match:
            outcome.wandb_url = match.group(1)

    outcome.returncode = stream_process(
        verl_engine.trainer_command(overrides),
        env={"WANDB_DIR": str(work), **verl_engine.trainer_env()},
        on_line=on_line,
        terminator=terminator,
        cwd=str(work),
    )
    outcome.terminated = terminator.signalled
    outcome.seconds_per_step = sum(times) / len(times) if times else None
    return outcome


# --------------------------------------------------------------------------- final model
def final_from_cpu_checkpoint(step_dir: Path, target: Path) -> Path:
    """The HF folder of a CPU checkpoint: its files minus the trainer state."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(step_dir.iterdir()):
        if path.is_file() and not _TRAINER_STATE.match(path.name) and path.name != ckpt.MARKER_FILE:
            shutil.copy2(path, target / path.name)
    if not (target / "config.json").is_file():
        raise RunError(f"checkpoint {step_dir} holds no model (config.json missing)")
    return target


def final_from_verl_checkpoint(step_dir: Path, target: Path, terminator: _Terminator, spec: Any = None) -> Path:
    """A Hugging Face folder with the trained weights of one VeRL step (LoRA merged in).

    The step's own merged ``huggingface/`` is copied when the uploader made it already."""
    from grounding_ops.training import verl_engine
    from grounding_ops.training.verl_overrides import LORA_EXCLUDE_MODULES

    shutil.rmtree(target, ignore_errors=True)
    merged = step_dir / HF_DIR
    if merged != target and (merged / "config.json").is_file():
        shutil.copytree(merged, target)
        return target
    exclude = LORA_EXCLUDE_MODULES if spec is not None and spec.use_lora else None
    command = verl_engine.merge_command(step_dir, target, exclude_modules=exclude)
    _log("merging the FSDP checkpoint into a Hugging Face folder: " + " ".join(command[1:]))
    rc = stream_process(
        command, env=verl_engine.trainer_env(), on_line=lambda line: print(line, flush=True), terminator=terminator
    )
    if rc != 0 or not (target / "config.json").is_file():
        raise RunError(f"the model merge of {step_dir} failed (exit code {rc}); the checkpoints are in the output")
    return target


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


# --------------------------------------------------------------------------- the run
def upload_offline_wandb(out: ObjectStore, wandb_dir: Path) -> str | None:
    """Upload the offline W&B run folders under ``wandb_dir`` to ``<output>/wandb/``; their URI or None."""
    runs = sorted(p for p in wandb_dir.glob("offline-run-*") if p.is_dir()) if wandb_dir.is_dir() else []
    for run in runs:
        files = upload_folder(out, f"{WANDB_PREFIX}/{run.name}", run)
        _log(f"kept the offline W&B run {run.name} ({len(files)} files) at {out.url(WANDB_PREFIX + '/' + run.name)}")
    return out.url(WANDB_PREFIX) if runs else None


def publish_base_model(out: ObjectStore, spec: Any, *, engine: str, checkpoint_dir: Path) -> str | None:
    """The URI of the model GRPO started from, uploaded to ``OUTPUT/base/`` where needed.

    CPU engine: the supervised warm-up's model (GRPO's true starting point), uploaded once.
    VeRL: ``spec.model`` itself when it is a folder or ``s3://`` URI (a hub id is not evaluable).
    """
    if engine == "cpu":
        from grounding_ops.training.cpu_engine import WARMUP_DIR

        if out.exists(f"{BASE_PREFIX}/config.json"):
            return out.url(BASE_PREFIX)
        warmup = checkpoint_dir / WARMUP_DIR
        if not (warmup / "config.json").is_file():
            _log("no warm-up model to publish as the base model")
            return None
        files = upload_folder(out, BASE_PREFIX, warmup)
        _log(f"uploaded the warm-started base model ({len(files)} files) to {out.url(BASE_PREFIX)}")
        return out.url(BASE_PREFIX)
    model = str(spec.model)
    return model if model.startswith("s3://") or Path(model).is_dir() else None


def run_training(
    spec: Any,
    *,
    dataset_uri: str,
    output_uri: str,
    engine: str,
    s3_client: Any | None = None,
    work_dir: str | Path | None = None,
) -> int:
    """Run the container contract; return the exit status (0 = trained and published)."""
    try:
        summary = _run(
            spec, dataset_uri=dataset_uri, output_uri=output_uri, engine=engine, s3_client=s3_client, work_dir=work_dir
        )
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    _log(summary)
    return 0


def _run(
    spec: Any, *, dataset_uri: str, output_uri: str, engine: str, s3_client: Any | None, work_dir: str | Path | None
) -> str:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        spec.validate(engine=engine)
    except ValueError as exc:
        raise RunError(str(exc), code=2) from exc
    out = open_store(output_uri, s3_client=s3_client)
    own_work = work_dir is None and not os.environ.get(WORK_DIR_ENV)
    work = Path(work_dir or os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="grounding-ops-train-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = work / "checkpoints"
    try:
        # 1. dataset
        t0 = time.perf_counter()
        _log(f"fetching dataset {dataset_uri}")
        manifest, train, val = fetch_dataset(dataset_uri, work / "data", s3_client)
        n_rows = _parquet_rows(train)
        # VeRL counts steps from the rows its overlong-prompt filter keeps: one target for both
        total = check_verl_dataset(spec, manifest, train, val) if engine == "verl" else target_steps(spec, n_rows)
        if engine == "verl":
            checkpoint_dir = verl_checkpoint_dir(spec, work, output_uri)
        timings["dataset_fetch_s"] = time.perf_counter() - t0
        _log(f"dataset version {manifest.get('version')}: {n_rows} training rows verified; target step {total}")

        # 2. resume
        t0 = time.perf_counter()
        remote_steps = ckpt.remote_complete_steps(out)
        already_ran = out.exists(RUN_JSON)
        start_step = remote_steps[-1] if remote_steps else 0
        if start_step >= total and already_ran:
            raise RunError(
                f"nothing to train: {out.url(ckpt.CHECKPOINTS_PREFIX)} is already at step {start_step} and the run "
                f"finished ({out.url(RUN_JSON)}); raise total_steps above {start_step} (--set total_steps=N) to "
                "train further, or use a new --output",
                code=2,
            )
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
        if start_step:
            _log(f"resuming from {ckpt.checkpoint_uri(out, start_step)}")
            ckpt.download_checkpoint(out, start_step, checkpoint_dir)
        timings["checkpoint_download_s"] = time.perf_counter() - t0

        # 3.-4. train, uploading checkpoints as they appear
        overrides: list[str] = []
        outcome = EngineOutcome(returncode=0)
        finishing_only = start_step >= total
        t0 = time.perf_counter()
        model_dir = resolve_model(spec, engine, work / "model", s3_client)
        timings["model_fetch_s"] = time.perf_counter() - t0
        with _Terminator() as terminator:
            verl_steps = VerlCheckpoints(spec) if engine == "verl" else None
            is_complete = verl_steps.is_complete if verl_steps else None
            uploader = ckpt.CheckpointUploader(
                out,
                checkpoint_dir,
                already_uploaded=set(remote_steps),
                log=_log,
                is_complete=is_complete,
                before_upload=verl_steps.merge if verl_steps else None,
                after_upload=verl_steps.drop_older_merges if verl_steps else None,
            )
            t0 = time.perf_counter()
            if finishing_only:
                _log(
                    f"the checkpoints already reach step {start_step} (target {total}) but the run has no {RUN_JSON}: "
                    "no steps left to train; producing the final model and run.json of the interrupted run"
                )
            else:
                uploader.start()
                try:
                    if engine == "cpu":
                        assert model_dir is not None
                        outcome = run_cpu_engine(
                            spec,
                            model_dir=model_dir,
                            train=train,
                            val=val,
                            checkpoint_dir=checkpoint_dir,
                            total=total,
                            work=work,
                            terminator=terminator,
                            need_warmup_model=not out.exists(f"{BASE_PREFIX}/config.json"),
                        )
                    else:
                        overrides = verl_overrides(
                            spec, model_dir=model_dir, train=train, val=val, checkpoint_dir=checkpoint_dir, total=total
                        )
                        outcome = run_verl_engine(overrides, terminator=terminator, work=work)
                finally:
                    timings["engine_s"] = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    try:
                        uploader.finish()  # uploads what was saved, even when the engine failed
                    finally:
                        timings["upload_wait_s"] = time.perf_counter() - t1
                if outcome.terminated:
                    raise RunError(
                        "terminated by a signal; finished checkpoints were uploaded, the next run resumes", 143
                    )
                if outcome.returncode != 0:
                    raise RunError(
                        f"the {engine} engine failed (exit code {outcome.returncode}); see its log above. "
                        "Finished checkpoints were uploaded; the next run resumes from the last one"
                    )
            latest = ckpt.latest_local_checkpoint(checkpoint_dir, is_complete)
            end_step = latest[0] if latest else 0
            steps_trained = end_step - start_step
            if not finishing_only and steps_trained <= 0:
                raise RunError(
                    f"the {engine} engine exited without saving a checkpoint past step {start_step}: no steps were "
                    "trained. Check the log above; raise total_steps if the run was already complete"
                    + (_incomplete_verl_steps(checkpoint_dir) if engine == "verl" else "")
                )
            if end_step < total:
                _log(f"warning: the engine stopped at step {end_step}, before the target step {total}")
            assert latest is not None

            # 5. final model
            t0 = time.perf_counter()
            final_dir = work / "final"
            if engine == "cpu":
                final_from_cpu_checkpoint(latest[1], final_dir)
            else:
                final_from_verl_checkpoint(latest[1], final_dir, terminator, spec=spec)
            files = upload_folder(out, FINAL_PREFIX, final_dir)
            timings["final_s"] = time.perf_counter() - t0
            _log(f"uploaded the final model ({len(files)} files) to {out.url(FINAL_PREFIX)}")

        # 5a. offline W&B runs would die with the container: keep them (`wandb sync` them later)
        wandb_offline = upload_offline_wandb(out, work / "wandb")

        # 5b. the base model the run started from (what promotion must beat when there is no champion)
        base_model_uri = publish_base_model(out, spec, engine=engine, checkpoint_dir=checkpoint_dir)

        # 6. run.json, last
        timings["total_s"] = time.perf_counter() - started
        all_steps = ckpt.remote_complete_steps(out)
        record = {
            "dataset_version": manifest.get("version"),
            "dataset_uri": dataset_uri,
            "spec": spec.to_dict(),
            "overrides": overrides,
            "image": os.environ.get(IMAGE_ENV),
            "git_commit": os.environ.get(GIT_COMMIT_ENV),
            "steps_done": end_step,
            "steps_trained": steps_trained,
            "resumed_from_step": start_step or None,
            "target_steps": total,
            "final_metrics": outcome.final_metrics,
            "history": outcome.history,
            "seconds_per_step": outcome.seconds_per_step,
            "wandb_url": outcome.wandb_url,
            "wandb_offline_uri": wandb_offline,
            "engine": engine,
            "checkpoints": [ckpt.checkpoint_uri(out, s) for s in all_steps],
            "final_uri": out.url(FINAL_PREFIX),
            "base_model_uri": base_model_uri,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "finished_at": _now(),
        }
        out.put_bytes(RUN_JSON, json.dumps(record, indent=2, sort_keys=True, default=str).encode())
        what = "finished the interrupted run" if finishing_only else f"trained steps {start_step + 1}..{end_step}"
        return f"done: {what}; final model {out.url(FINAL_PREFIX)}; record {out.url(RUN_JSON)}"
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)

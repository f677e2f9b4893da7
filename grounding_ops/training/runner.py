"""The training container contract: ``grounding-ops train --engine verl|cpu`` end to end.

:func:`run_training` is one recipe for every engine; each stage is a function here, and what
differs per engine is asked of a :class:`~grounding_ops.training.engines.TrainingEngine`:

1. :func:`fetch_inputs`: the dataset version by its manifest, every checksum verified, and the
   step the run must reach (``engine.target_steps``);
2. :func:`resume`: the latest complete checkpoint of ``OUTPUT/checkpoints/``, if there is one
   (see :mod:`grounding_ops.training.checkpoints` for what "complete" means); then
   :func:`fetch_model` (after the resume check, so a refused run downloads no model);
3. :func:`train`: ``engine.run`` as a subprocess, streaming its log lines (the CPU engine prints
   one readable line per step; VeRL's metric lines are followed by a readable summary), while a
   background thread uploads each checkpoint it finishes to ``OUTPUT/checkpoints/global_step_N/``,
   file by file and then a completion marker (``engine.checkpoints`` says when a step is
   complete and what to do around its upload);
4. finalize: :func:`publish_final_model` (``engine.final_model``: CPU the last checkpoint's model
   and processor, VeRL ``verl.model_merger`` on the last FSDP checkpoint) to ``OUTPUT/final/``,
   :func:`upload_offline_wandb` to ``OUTPUT/wandb/`` and ``engine.base_model_uri``;
5. the :class:`~grounding_ops.training.run_record.RunRecord`, saved as ``OUTPUT/run.json`` last.

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

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from grounding_ops.storage import ObjectStore, StorageError, download_tree, open_store
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.engines import (
    EngineJob,
    EngineOutcome,
    RunError,
    TrainingEngine,
    engine_named,
    parquet_rows,
)
from grounding_ops.training.presets import TINY_MODEL_SCHEME
from grounding_ops.training.processes import Terminator, log
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import GIT_COMMIT_ENV, IMAGE_ENV, RUN_RECORD_FILE, WORK_DIR_ENV

WANDB_PREFIX = "wandb"  # offline W&B runs of the engine, kept next to the run outputs


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the recipe
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
    log(summary)
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
    trainer = engine_named(engine, spec)
    out = open_store(output_uri, s3_client=s3_client)
    with _work_folder(work_dir) as work:
        # 1. inputs
        inputs = fetch_inputs(trainer, dataset_uri, work, s3_client, timings)
        # 2. resume (before the model: a run with nothing to train downloads none)
        checkpoint_dir = trainer.checkpoint_dir(work, output_uri)
        start = resume(out, checkpoint_dir, inputs.total, timings)
        model_dir = fetch_model(spec, trainer, work / "model", s3_client, timings)
        job = EngineJob(
            model_dir=model_dir,
            train=inputs.train,
            val=inputs.val,
            checkpoint_dir=checkpoint_dir,
            total=inputs.total,
            work=work,
            out=out,
        )
        with Terminator() as terminator:
            # 3. train, uploading checkpoints as they appear
            trained = train(trainer, job, start, terminator, timings)
            # 4. finalize: the final model, ...
            final_uri = publish_final_model(trainer, trained.last_dir, work / "final", out, terminator, timings)
        # ... the offline W&B runs, which would die with the container: keep them (`wandb sync` them later)
        wandb_offline = upload_offline_wandb(out, work / "wandb")
        # ... and the base model the run started from (what promotion must beat when there is no champion)
        base_model_uri = trainer.base_model_uri(out, checkpoint_dir)

        # 5. the record, last
        timings["total_s"] = time.perf_counter() - started
        record = RunRecord(
            dataset_version=str(inputs.manifest.get("version") or ""),
            dataset_uri=dataset_uri,
            spec=spec.to_dict(),
            engine=trainer.name,
            overrides=trained.outcome.overrides,
            image=os.environ.get(IMAGE_ENV),
            git_commit=os.environ.get(GIT_COMMIT_ENV),
            steps_done=trained.end_step,
            steps_trained=trained.end_step - start.step,
            resumed_from_step=start.step or None,
            target_steps=inputs.total,
            final_metrics=trained.outcome.final_metrics,
            history=trained.outcome.history,
            seconds_per_step=trained.outcome.seconds_per_step,
            wandb_url=trained.outcome.wandb_url,
            wandb_offline_uri=wandb_offline,
            checkpoints=[ckpt.checkpoint_uri(out, s) for s in ckpt.remote_complete_steps(out)],
            final_uri=final_uri,
            base_model_uri=base_model_uri,
            timings={k: round(v, 3) for k, v in timings.items()},
            finished_at=_now(),
        )
        record_uri = record.save(out)  # last: its presence says the run finished
        what = (
            "finished the interrupted run"
            if start.finishing_only
            else f"trained steps {start.step + 1}..{trained.end_step}"
        )
        return f"done: {what}; final model {final_uri}; record {record_uri}"


@contextmanager
def _work_folder(work_dir: str | Path | None) -> Iterator[Path]:
    """``work_dir``, else ``$GROUNDING_OPS_WORK_DIR``, else a temporary folder deleted afterwards."""
    own_work = work_dir is None and not os.environ.get(WORK_DIR_ENV)
    work = Path(work_dir or os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="grounding-ops-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- 1. inputs
@dataclass(frozen=True)
class Inputs:
    """The verified dataset version and the step the run must reach."""

    manifest: dict[str, Any]
    train: Path
    val: Path | None
    total: int


def fetch_inputs(
    engine: TrainingEngine, dataset_uri: str, work: Path, s3_client: Any | None, timings: dict[str, float]
) -> Inputs:
    t0 = time.perf_counter()
    log(f"fetching dataset {dataset_uri}")
    manifest, train, val = fetch_dataset(dataset_uri, work / "data", s3_client)
    n_rows = parquet_rows(train)
    total = engine.target_steps(manifest, train, val)
    timings["dataset_fetch_s"] = time.perf_counter() - t0
    log(f"dataset version {manifest.get('version')}: {n_rows} training rows verified; target step {total}")
    return Inputs(manifest=manifest, train=train, val=val, total=total)


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
    if parquet_rows(train) == 0:
        raise RunError(f"the dataset {dataset_uri} has no training rows: export more data", code=2)
    if val is not None and parquet_rows(val) == 0:
        val = None
    return manifest, train, val


def fetch_model(
    spec: Any, engine: TrainingEngine, dest: Path, s3_client: Any | None, timings: dict[str, float]
) -> str | None:
    t0 = time.perf_counter()
    model_dir = resolve_model(spec, engine, dest, s3_client)
    timings["model_fetch_s"] = time.perf_counter() - t0
    return model_dir


def resolve_model(spec: Any, engine: TrainingEngine, dest: Path, s3_client: Any | None) -> str | None:
    """A local folder for the model (``None``: hand the name to the engine as is, e.g. a hub id)."""
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
    engine.accept_hub_model(model)
    return None


# --------------------------------------------------------------------------- 2. resume
@dataclass(frozen=True)
class Start:
    """Where the run starts: the step of the checkpoint it resumed from (0: from scratch)."""

    step: int
    uploaded: tuple[int, ...]  # the complete checkpoints already in the output
    total: int

    @property
    def finishing_only(self) -> bool:
        """The checkpoints reach the target already: only the final model and the record are missing."""
        return self.step >= self.total


def resume(out: ObjectStore, checkpoint_dir: Path, total: int, timings: dict[str, float]) -> Start:
    """Download the latest complete checkpoint of the output into an empty ``checkpoint_dir``."""
    t0 = time.perf_counter()
    remote_steps = ckpt.remote_complete_steps(out)
    start = Start(step=remote_steps[-1] if remote_steps else 0, uploaded=tuple(remote_steps), total=total)
    if start.finishing_only and RunRecord.exists(out):
        raise RunError(
            f"nothing to train: {out.url(ckpt.CHECKPOINTS_PREFIX)} is already at step {start.step} and the run "
            f"finished ({out.url(RUN_RECORD_FILE)}); raise total_steps above {start.step} (--set total_steps=N) to "
            "train further, or use a new --output",
            code=2,
        )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    checkpoint_dir.mkdir(parents=True)
    if start.step:
        log(f"resuming from {ckpt.checkpoint_uri(out, start.step)}")
        ckpt.download_checkpoint(out, start.step, checkpoint_dir)
    timings["checkpoint_download_s"] = time.perf_counter() - t0
    return start


# --------------------------------------------------------------------------- 3. train
@dataclass(frozen=True)
class Trained:
    outcome: EngineOutcome
    end_step: int  # the last complete local checkpoint's step
    last_dir: Path  # its folder


def train(
    engine: TrainingEngine, job: EngineJob, start: Start, terminator: Terminator, timings: dict[str, float]
) -> Trained:
    """Run the engine while a background thread uploads each checkpoint it finishes."""
    rules = engine.checkpoints
    uploader = ckpt.CheckpointUploader(
        job.out,
        job.checkpoint_dir,
        already_uploaded=set(start.uploaded),
        log=log,
        is_complete=rules.is_complete,
        before_upload=rules.before_upload,
        after_upload=rules.after_upload,
    )
    outcome = EngineOutcome(returncode=0)
    if start.finishing_only:
        log(
            f"the checkpoints already reach step {start.step} (target {start.total}) but the run has no "
            f"{RUN_RECORD_FILE}: no steps left to train; producing the final model and {RUN_RECORD_FILE} of the "
            "interrupted run"
        )
    else:
        t0 = time.perf_counter()
        uploader.start()
        try:
            outcome = engine.run(job, terminator)
        finally:
            timings["engine_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            try:
                uploader.finish()  # uploads what was saved, even when the engine failed
            finally:
                timings["upload_wait_s"] = time.perf_counter() - t1
        if outcome.terminated:
            raise RunError("terminated by a signal; finished checkpoints were uploaded, the next run resumes", 143)
        if outcome.returncode != 0:
            raise RunError(
                f"the {engine.name} engine failed (exit code {outcome.returncode}); see its log above. "
                "Finished checkpoints were uploaded; the next run resumes from the last one"
            )
    latest = ckpt.latest_local_checkpoint(job.checkpoint_dir, rules.is_complete)
    end_step = latest[0] if latest else 0
    if not start.finishing_only and end_step - start.step <= 0:
        raise RunError(
            f"the {engine.name} engine exited without saving a checkpoint past step {start.step}: no steps were "
            "trained. Check the log above; raise total_steps if the run was already complete"
            + rules.why_incomplete(job.checkpoint_dir)
        )
    if end_step < start.total:
        log(f"warning: the engine stopped at step {end_step}, before the target step {start.total}")
    assert latest is not None
    return Trained(outcome=outcome, end_step=end_step, last_dir=latest[1])


# --------------------------------------------------------------------------- 4. finalize
def publish_final_model(
    engine: TrainingEngine,
    step_dir: Path,
    final_dir: Path,
    out: ObjectStore,
    terminator: Terminator,
    timings: dict[str, float],
) -> str:
    """The last checkpoint as a Hugging Face folder, uploaded to ``OUTPUT/final/``; its URI."""
    t0 = time.perf_counter()
    engine.final_model(step_dir, final_dir, terminator)
    files = ckpt.upload_folder(out, ckpt.FINAL_PREFIX, final_dir)
    timings["final_s"] = time.perf_counter() - t0
    log(f"uploaded the final model ({len(files)} files) to {out.url(ckpt.FINAL_PREFIX)}")
    return out.url(ckpt.FINAL_PREFIX)


def upload_offline_wandb(out: ObjectStore, wandb_dir: Path) -> str | None:
    """Upload the offline W&B run folders under ``wandb_dir`` to ``<output>/wandb/``; their URI or None."""
    runs = sorted(p for p in wandb_dir.glob("offline-run-*") if p.is_dir()) if wandb_dir.is_dir() else []
    for run in runs:
        files = ckpt.upload_folder(out, f"{WANDB_PREFIX}/{run.name}", run)
        log(f"kept the offline W&B run {run.name} ({len(files)} files) at {out.url(WANDB_PREFIX + '/' + run.name)}")
    return out.url(WANDB_PREFIX) if runs else None

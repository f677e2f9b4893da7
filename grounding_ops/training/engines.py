"""The training engines behind ``grounding-ops train --engine cpu|verl``, as one protocol.

The runner (:mod:`grounding_ops.training.runner`) is the same recipe for every engine; what
differs is asked of a :class:`TrainingEngine`:

- ``target_steps(manifest, train, val)``: the step the run must reach (VeRL: after refusing a
  dataset that does not fit the spec, from the rows its overlong-prompt filter keeps);
- ``checkpoint_dir(work, output_uri)``: where the engine writes its ``global_step_N`` folders;
- ``accept_hub_model(model)``: whether a model name that is no folder or URI may go to the
  engine as is (VeRL: a hub id; the CPU engine refuses);
- ``checkpoints``: the uploader's rules for its step folders (:class:`CheckpointRules`);
- ``run(job, terminator)``: train as a subprocess, streaming its log; an :class:`EngineOutcome`;
- ``final_model(step_dir, target, terminator)``: the Hugging Face folder of the last checkpoint;
- ``base_model_uri(out, checkpoint_dir)``: the evaluable model GRPO started from, or ``None``.

Add an engine by implementing these, listing its class in :func:`engine_named` and its name in
``grounding_ops.vocabulary.TRAINING_ENGINES``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from grounding_ops.storage import ObjectStore
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.processes import Terminator, echo, engine_env, log, stream_process

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
class EngineJob:
    """What an engine trains on and where it writes.

    :param model_dir: the local model folder, or ``None`` for a name the engine resolves itself.
    :param train: the training parquet; ``val`` the validation parquet, if any.
    :param checkpoint_dir: where the engine writes ``global_step_N`` (see ``checkpoint_dir``).
    :param total: the step to reach.
    :param work: the run's work folder (engine config, results, offline W&B runs).
    :param out: the run's output store (read only: the uploader and the runner write it).
    """

    model_dir: str | None
    train: Path
    val: Path | None
    checkpoint_dir: Path
    total: int
    work: Path
    out: ObjectStore


@dataclass
class EngineOutcome:
    returncode: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    wandb_url: str | None = None
    seconds_per_step: float | None = None
    terminated: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per step (see run.json)
    overrides: list[str] = field(default_factory=list)  # the engine's configuration overrides (VeRL's Hydra)


class CheckpointRules:
    """How the checkpoint uploader treats an engine's step folders.

    By default a step is complete once the tracker file says so, and is uploaded as it is.
    """

    def is_complete(self, folder: Path) -> bool:
        return True

    def before_upload(self, step: int, folder: Path) -> None:
        return None

    def after_upload(self, step: int, folder: Path) -> None:
        return None

    def why_incomplete(self, checkpoint_dir: Path) -> str:
        """A sentence on step folders that are not checkpoints, for the "nothing trained" error."""
        return ""


class TrainingEngine(Protocol):
    name: str
    checkpoints: CheckpointRules

    def target_steps(self, manifest: dict[str, Any], train: Path, val: Path | None) -> int: ...

    def checkpoint_dir(self, work: Path, output_uri: str) -> Path: ...

    def accept_hub_model(self, model: str) -> None: ...

    def run(self, job: EngineJob, terminator: Terminator) -> EngineOutcome: ...

    def final_model(self, step_dir: Path, target: Path, terminator: Terminator) -> Path: ...

    def base_model_uri(self, out: ObjectStore, checkpoint_dir: Path) -> str | None: ...


def parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def target_steps(spec: Any, n_train_rows: int) -> int:
    """The step a run must reach: ``total_steps``, or ``total_epochs`` over full batches."""
    if spec.total_steps:
        return int(spec.total_steps)
    return max(1, n_train_rows // int(spec.train_batch_size)) * int(spec.total_epochs)


# --------------------------------------------------------------------------- CPU
class CpuEngine:
    """TRL's GRPO trainer on CPU (:mod:`grounding_ops.training.cpu_engine`), for tiny models.

    Checkpoints are Hugging Face folders plus trainer state; the base model is the supervised
    warm-up's model (GRPO's true starting point), uploaded to ``OUTPUT/base/`` once.
    """

    name = "cpu"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.checkpoints = CheckpointRules()

    def target_steps(self, manifest: dict[str, Any], train: Path, val: Path | None) -> int:
        return target_steps(self.spec, parquet_rows(train))

    def checkpoint_dir(self, work: Path, output_uri: str) -> Path:
        return work / "checkpoints"

    def accept_hub_model(self, model: str) -> None:
        raise RunError(
            f"model {model!r} is not a local folder, an s3:// URI or tiny:<family>: the CPU engine cannot "
            "download models; build one with `grounding-ops tiny-model` or copy it to a folder or bucket",
            code=2,
        )

    def run(self, job: EngineJob, terminator: Terminator) -> EngineOutcome:
        from grounding_ops.training.cpu_engine import EngineConfig, EngineResult

        assert job.model_dir is not None
        result_path = job.work / "engine-result.json"
        result_path.unlink(missing_ok=True)
        config_path = job.work / "engine-config.json"
        EngineConfig(
            spec=self.spec.to_dict(),
            model_dir=job.model_dir,
            train_files=[str(job.train)],
            val_files=[str(job.val)] if job.val else [],
            checkpoint_dir=str(job.checkpoint_dir),
            total_steps=job.total,
            result_path=str(result_path),
            need_warmup_model=not job.out.exists(f"{ckpt.BASE_PREFIX}/config.json"),
        ).save(config_path)
        command = [sys.executable, "-m", "grounding_ops.training.cpu_engine", "--config", str(config_path)]
        env = {"WANDB_DIR": str(job.work), **_cpu_engine_env()}  # offline W&B runs land in work/wandb (kept)
        rc = stream_process(command, env=env, on_line=echo, terminator=terminator)
        outcome = EngineOutcome(returncode=rc, terminated=terminator.signalled)
        if result_path.is_file():
            result = EngineResult.from_dict(json.loads(result_path.read_text()), where=str(result_path))
            outcome.final_metrics = dict(result.final_metrics)
            outcome.wandb_url = result.wandb_url
            outcome.seconds_per_step = result.seconds_per_step
            outcome.history = list(result.history)
        return outcome

    def final_model(self, step_dir: Path, target: Path, terminator: Terminator) -> Path:
        """The HF folder of a CPU checkpoint: its files minus the trainer state."""
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in sorted(step_dir.iterdir()):
            if path.is_file() and not _TRAINER_STATE.match(path.name) and path.name != ckpt.MARKER_FILE:
                shutil.copy2(path, target / path.name)
        if not (target / "config.json").is_file():
            raise RunError(f"checkpoint {step_dir} holds no model (config.json missing)")
        return target

    def base_model_uri(self, out: ObjectStore, checkpoint_dir: Path) -> str | None:
        from grounding_ops.training.cpu_engine import WARMUP_DIR

        if out.exists(f"{ckpt.BASE_PREFIX}/config.json"):
            return out.url(ckpt.BASE_PREFIX)
        warmup = checkpoint_dir / WARMUP_DIR
        if not (warmup / "config.json").is_file():
            log("no warm-up model to publish as the base model")
            return None
        files = ckpt.upload_folder(out, ckpt.BASE_PREFIX, warmup)
        log(f"uploaded the warm-started base model ({len(files)} files) to {out.url(ckpt.BASE_PREFIX)}")
        return out.url(ckpt.BASE_PREFIX)


def _cpu_engine_env() -> dict[str, str]:
    from grounding_ops.training.cpu_engine import DEFAULT_THREADS, THREADS_ENV

    env = engine_env()
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # The OpenMP pool follows the engine's thread count (see cpu_engine.THREADS_ENV).
    env["OMP_NUM_THREADS"] = env.get(THREADS_ENV) or str(DEFAULT_THREADS)
    return env


# --------------------------------------------------------------------------- VeRL
class VerlCheckpoints(CheckpointRules):
    """How the runner treats VeRL's checkpoint folders.

    A step counts once ``actor/`` holds every rank's model shard. Before a step is uploaded its
    shards (and LoRA adapter) are merged into ``global_step_N/huggingface/``, so every uploaded
    checkpoint is an evaluable Hugging Face model; after the upload the merged copies of older
    steps are deleted (the newest stays for the final model).
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        # its own: the merges run in the uploader thread, beside the trainer the run's terminator tracks
        self.terminator = Terminator()

    def is_complete(self, folder: Path) -> bool:
        from grounding_ops.training.verl_engine import actor_has_model

        return actor_has_model(folder)

    def before_upload(self, step: int, folder: Path) -> None:
        target = folder / ckpt.HF_DIR
        if (target / "config.json").is_file():
            return
        merge_verl_checkpoint(folder, target, self.terminator, spec=self.spec)

    def after_upload(self, step: int, folder: Path) -> None:
        for other_step, other in ckpt.step_dirs(folder.parent):
            if other != folder and other_step < step:
                shutil.rmtree(other / ckpt.HF_DIR, ignore_errors=True)

    def why_incomplete(self, checkpoint_dir: Path) -> str:
        from grounding_ops.training.verl_engine import incomplete_steps

        return incomplete_steps(checkpoint_dir)


def merge_verl_checkpoint(step_dir: Path, target: Path, terminator: Terminator, spec: Any = None) -> Path:
    """A Hugging Face folder with the trained weights of one VeRL step (LoRA merged in).

    The step's own merged ``huggingface/`` is copied when the uploader made it already."""
    from grounding_ops.training import verl_engine
    from grounding_ops.training.verl_overrides import LORA_EXCLUDE_MODULES

    shutil.rmtree(target, ignore_errors=True)
    merged = step_dir / ckpt.HF_DIR
    if merged != target and (merged / "config.json").is_file():
        shutil.copytree(merged, target)
        return target
    exclude = LORA_EXCLUDE_MODULES if spec is not None and spec.use_lora else None
    command = verl_engine.merge_command(step_dir, target, exclude_modules=exclude)
    log("merging the FSDP checkpoint into a Hugging Face folder: " + " ".join(command[1:]))
    rc = stream_process(command, env=verl_engine.trainer_env(), on_line=echo, terminator=terminator)
    if rc != 0 or not (target / "config.json").is_file():
        raise RunError(f"the model merge of {step_dir} failed (exit code {rc}); the checkpoints are in the output")
    return target


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


class VerlEngine:
    """VeRL's GRPO trainer (``verl.trainer.main_ppo``) on GPUs, one node or several (Ray).

    Checkpoints are FSDP shards, merged into ``huggingface/`` before upload
    (:class:`VerlCheckpoints`); the base model is ``spec.model`` itself when it is a folder or an
    ``s3://`` URI (a hub id is not evaluable).
    """

    name = "verl"

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.checkpoints: CheckpointRules = VerlCheckpoints(spec)

    def target_steps(self, manifest: dict[str, Any], train: Path, val: Path | None) -> int:
        """The run's step target, after refusing a dataset that does not fit the spec (exit 2)."""
        from grounding_ops.training.verl_preflight import DatasetMismatch, check_dataset

        try:
            fit = check_dataset(self.spec, manifest, train, val)
        except DatasetMismatch as exc:
            raise RunError(str(exc), code=2) from exc
        overlong = fit.train.overlong + (fit.val.overlong if fit.val else 0)
        if overlong:
            log(
                f"{overlong} rows may be filtered by VeRL as longer than max_prompt_length={self.spec.max_prompt_length}"
            )
        return fit.steps(self.spec)

    def checkpoint_dir(self, work: Path, output_uri: str) -> Path:
        """The work folder's checkpoints/ on one node; a per-output folder of ``shared_dir`` on several."""
        from grounding_ops.training.verl_overrides import checkpoint_root

        spec = self.spec
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

    def accept_hub_model(self, model: str) -> None:
        return None  # VeRL hands the name to Hugging Face as is

    def overrides(self, job: EngineJob) -> list[str]:
        from grounding_ops.training.verl_overrides import RunPaths, render_overrides

        paths = RunPaths(
            train_file=str(job.train),
            val_file=str(job.val) if job.val else None,
            checkpoint_dir=str(job.checkpoint_dir),
            model_path=job.model_dir,
        )
        return list(render_overrides(self.spec, paths, target_steps=job.total))

    def run(self, job: EngineJob, terminator: Terminator) -> EngineOutcome:
        from grounding_ops.training import verl_engine

        outcome = EngineOutcome(returncode=1, overrides=self.overrides(job))
        times: list[float] = []

        def on_line(line: str) -> None:
            echo(line)
            metrics = verl_engine.parse_log_line(line)
            if metrics is not None:
                log(metrics.summary())
                # the latest value of each metric: validation ones (val_iou, val_acc) only come on validation steps
                outcome.final_metrics.update(
                    {k: v for k, v in metrics.to_dict().items() if v is not None and k != "step"}
                )
                outcome.history.append(verl_history_entry(metrics))
                if metrics.seconds_per_step is not None:
                    times.append(metrics.seconds_per_step)
            match = _WANDB_URL.search(line)
            if match:
                outcome.wandb_url = match.group(1)

        outcome.returncode = stream_process(
            verl_engine.trainer_command(outcome.overrides),
            env={"WANDB_DIR": str(job.work), **verl_engine.trainer_env()},
            on_line=on_line,
            terminator=terminator,
            cwd=str(job.work),
        )
        outcome.terminated = terminator.signalled
        outcome.seconds_per_step = sum(times) / len(times) if times else None
        return outcome

    def final_model(self, step_dir: Path, target: Path, terminator: Terminator) -> Path:
        return merge_verl_checkpoint(step_dir, target, terminator, spec=self.spec)

    def base_model_uri(self, out: ObjectStore, checkpoint_dir: Path) -> str | None:
        model = str(self.spec.model)
        return model if model.startswith("s3://") or Path(model).is_dir() else None


def engine_named(name: str, spec: Any) -> TrainingEngine:
    """The engine called ``name`` (``grounding_ops.vocabulary.TRAINING_ENGINES``), set up for ``spec``."""
    by_name: dict[str, type[CpuEngine] | type[VerlEngine]] = {CpuEngine.name: CpuEngine, VerlEngine.name: VerlEngine}
    if name not in by_name:
        raise RunError(f"unknown engine {name!r}: use one of {', '.join(sorted(by_name))}", code=2)
    return by_name[name](spec)

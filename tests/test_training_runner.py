"""The training runner's stages over the engine protocol, with an engine that writes checkpoints itself.

The real engines run in ``tests/ml`` (``test_cpu_engine.py``, ``test_verl_checkpoints.py``); here a
small engine that honours :class:`~grounding_ops.training.engines.TrainingEngine` (step folders,
tracker file, exit code) drives resume, train (with the background uploader) and the final model
against a real output folder, without the ML stack.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from grounding_ops.storage import ObjectStore, open_store
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.engines import CheckpointRules, EngineJob, EngineOutcome, RunError, engine_named
from grounding_ops.training.processes import Terminator
from grounding_ops.training.run_record import RunRecord
from grounding_ops.training.runner import Start, publish_final_model, resume, train


class StepWriter:
    """Saves steps ``from+1 .. until`` (default: the job's target) as Hugging Face folders, then exits."""

    name = "step-writer"

    def __init__(self, until: int | None = None, returncode: int = 0) -> None:
        self.until = until
        self.returncode = returncode
        self.checkpoints = CheckpointRules()

    def target_steps(self, manifest: dict[str, Any], train: Path, val: Path | None) -> int:
        return 3

    def checkpoint_dir(self, work: Path, output_uri: str) -> Path:
        return work / "checkpoints"

    def accept_hub_model(self, model: str) -> None:
        return None

    def run(self, job: EngineJob, terminator: Terminator) -> EngineOutcome:
        start = ckpt.read_tracker(job.checkpoint_dir) or 0
        for step in range(start + 1, (self.until if self.until is not None else job.total) + 1):
            folder = ckpt.step_dir(job.checkpoint_dir, step)
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"step": step}))
            ckpt.write_tracker(job.checkpoint_dir, step)
        return EngineOutcome(returncode=self.returncode, final_metrics={"reward_mean": 0.5}, overrides=["k=v"])

    def final_model(self, step_dir: Path, target: Path, terminator: Terminator) -> Path:
        shutil.copytree(step_dir, target, dirs_exist_ok=True)
        return target

    def base_model_uri(self, out: ObjectStore, checkpoint_dir: Path) -> str | None:
        return None


def _job(tmp_path: Path, out: ObjectStore, total: int) -> EngineJob:
    work = tmp_path / "work"
    return EngineJob(
        model_dir=None,
        train=tmp_path / "train.parquet",
        val=None,
        checkpoint_dir=work / "checkpoints",
        total=total,
        work=work,
        out=out,
    )


def test_resume_train_and_final_model_over_the_engine_protocol(tmp_path: Path, capsys) -> None:
    out = open_store(tmp_path / "out")
    engine = StepWriter()
    job = _job(tmp_path, out, total=2)
    timings: dict[str, float] = {}
    start = resume(out, job.checkpoint_dir, job.total, timings)
    assert start == Start(step=0, uploaded=(), total=2) and not start.finishing_only
    with Terminator() as terminator:
        trained = train(engine, job, start, terminator, timings)
        final_uri = publish_final_model(engine, trained.last_dir, job.work / "final", out, terminator, timings)
    assert trained.end_step == 2 and trained.outcome.overrides == ["k=v"]
    assert ckpt.remote_complete_steps(out) == [1, 2]  # uploaded by the background uploader
    assert final_uri == out.url("final") and json.loads(out.get_bytes("final/config.json")) == {"step": 2}
    assert {"checkpoint_download_s", "engine_s", "upload_wait_s", "final_s"} <= set(timings)

    # A new work folder resumes from the output alone and trains only the new step.
    shutil.rmtree(job.work)
    job = _job(tmp_path, out, total=3)
    start = resume(out, job.checkpoint_dir, job.total, timings)
    assert start.step == 2 and "resuming from" in capsys.readouterr().out
    with Terminator() as terminator:
        assert train(engine, job, start, terminator, timings).end_step == 3
    assert ckpt.remote_complete_steps(out) == [1, 2, 3]

    # The target is reached but the record is missing (the run died before it): finish, train nothing.
    start = resume(out, job.checkpoint_dir, 3, timings)
    assert start.finishing_only
    with Terminator() as terminator:
        trained = train(StepWriter(returncode=9), job, start, terminator, timings)
    assert trained.end_step == 3 and "no steps left to train" in capsys.readouterr().out

    # ... and once the record exists, the same target is refused.
    out.put_bytes(RunRecord.FILE, b"{}")
    with pytest.raises(RunError, match="nothing to train: .* already at step 3") as refused:
        resume(out, job.checkpoint_dir, 3, timings)
    assert refused.value.code == 2


def test_a_failed_or_idle_engine_is_an_error_after_the_upload(tmp_path: Path) -> None:
    out = open_store(tmp_path / "out")
    job = _job(tmp_path, out, total=3)
    start = resume(out, job.checkpoint_dir, job.total, {})
    with Terminator() as terminator, pytest.raises(RunError, match="the step-writer engine failed \\(exit code 1\\)"):
        train(StepWriter(until=1, returncode=1), job, start, terminator, {})
    assert ckpt.remote_complete_steps(out) == [1]  # what it saved is uploaded, the next run resumes

    start = resume(out, job.checkpoint_dir, job.total, {})
    with Terminator() as terminator, pytest.raises(RunError, match="without saving a checkpoint past step 1"):
        train(StepWriter(until=1), job, start, terminator, {})


def test_engines_by_name() -> None:
    assert [engine_named(name, spec=None).name for name in ("cpu", "verl")] == ["cpu", "verl"]
    with pytest.raises(RunError, match="unknown engine 'tpu'") as unknown:
        engine_named("tpu", spec=None)
    assert unknown.value.code == 2
    with pytest.raises(RunError, match="the CPU engine cannot download models") as refused:
        engine_named("cpu", spec=None).accept_hub_model("Qwen/Qwen2-VL-2B-Instruct")
    assert refused.value.code == 2
    assert engine_named("verl", spec=None).accept_hub_model("Qwen/Qwen2-VL-2B-Instruct") is None

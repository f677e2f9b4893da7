"""What the containers produced, read back as records and logged to MLflow; the best checkpoint on val."""

from __future__ import annotations
import logging
from dataclasses import replace
from typing import Any, Mapping, Sequence
from grounding_ops.evaluation.evaluation_record import EvaluationRecord
from grounding_ops.evaluation.selection import SelectionError, best_checkpoint
from grounding_ops.pipeline.errors import PipelineError
from grounding_ops.pipeline.task_records import (
    CheckpointEvaluation,
    EvaluationPlan,
    TrainingPlan,
    TrainingSummary,
)
from grounding_ops.pipeline.train_params import (
    PROMOTION_METRICS,
)
from grounding_ops.records import RecordError
from grounding_ops.storage import ObjectStore
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import (
    DECISION_SPLIT,
    SELECTION_SPLIT,
)

from grounding_ops.pipeline.urls import mlflow_run_url
from grounding_ops.vocabulary import AIRFLOW_RUN_ENV

log = logging.getLogger(__name__)


def read_training_result(store: ObjectStore, plan: TrainingPlan) -> TrainingSummary:
    """Summary of a finished training from its :class:`RunRecord` (written last by the container)."""
    try:
        run = RunRecord.load(store)
    except RecordError as exc:
        raise PipelineError(f"the training container exited 0 but {exc}; see the container log above") from exc
    if run.steps_done <= 0:
        raise PipelineError(f"training at {store.uri} reports {run.steps_done} steps done: nothing was trained")
    return TrainingSummary(
        output_uri=store.uri,
        dataset_version=run.dataset_version,
        dataset_uri=run.dataset_uri,
        steps_done=run.steps_done,
        final_metrics=dict(run.final_metrics),
        wandb_url=run.wandb_url or "",
        checkpoints=list(run.checkpoints),
        base_model=run.base_model_uri or run.start_model,
        engine=plan.engine,
        image=run.image or "",
        git_commit=run.git_commit or "",
        fingerprint=plan.fingerprint,
    )


def training_summary_line(summary: TrainingSummary) -> str:
    metrics = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
        for k, v in sorted(summary.final_metrics.items())[:6]
    )
    return (
        f"trained {summary.steps_done} steps on dataset {summary.dataset_version} "
        f"({summary.engine} engine) -> {summary.output_uri}" + (f"; {metrics}" if metrics else "")
    )


def record_training(
    store: ObjectStore, summary: TrainingSummary, plan: TrainingPlan, *, tracking_uri: str
) -> TrainingSummary:
    """Log the finished training (its ``run.json``) as an MLflow run; the summary with its id and URL."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import tracking
    from grounding_ops.registry.tracking import dag_run_parent
    from grounding_ops.registry.training_run import log_training_run

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    airflow_run = plan.environment.get(AIRFLOW_RUN_ENV) or None
    try:
        run_id = log_training_run(
            store.uri, client=client, airflow_run=airflow_run, s3_client=getattr(store, "client", None)
        )
        if airflow_run:  # the parent of the DAG run's evaluations, made once before they run in parallel
            dag_run_parent(client, tracking.ensure_experiment(client, tracking.EVALUATION_EXPERIMENT), airflow_run)
    except tracking.TrackingError as exc:
        raise PipelineError(str(exc)) from exc
    experiment_id = str(client.get_run(run_id).info.experiment_id)
    return replace(summary, mlflow_run_id=run_id, mlflow_url=mlflow_run_url(tracking_uri, experiment_id, run_id))


def _metric_summary(flat: Mapping[str, Any]) -> dict[str, float]:
    keys = (*PROMOTION_METRICS, "parse_failure_rate", "n_samples", "samples_per_s")
    return {k: float(flat[k]) for k in keys if isinstance(flat.get(k), (int, float))}


def record_evaluation(store: ObjectStore, plan: EvaluationPlan, *, tracking_uri: str) -> CheckpointEvaluation:
    """Log a finished evaluation (its :class:`EvaluationRecord`) as an MLflow run; the result for ``pick_best``."""
    try:
        record = EvaluationRecord.load(store)
    except RecordError as exc:
        raise PipelineError(f"the evaluation container exited 0 but {exc}; see the container log above") from exc
    run_id, experiment_id = log_to_mlflow(store.uri, tracking_uri, s3_client=getattr(store, "client", None))
    candidate = plan.candidate
    return CheckpointEvaluation(
        candidate=candidate.name,
        role=candidate.role,
        step=candidate.step,
        model_uri=candidate.uri,
        eval_uri=store.uri,
        dataset_version=record.dataset_version,
        split=record.split,
        metrics=_metric_summary(record.flat_metrics),
        mlflow_run_id=run_id,
        mlflow_url=mlflow_run_url(tracking_uri, experiment_id, run_id),
    )


def log_to_mlflow(output_uri: str, tracking_uri: str, *, s3_client: Any | None = None) -> tuple[str, str]:
    """``grounding_ops.registry.tracking.log_evaluation`` for ``output_uri``; (run id, experiment id)."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import tracking

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run_id = str(tracking.log_evaluation(output_uri, client=client, s3_client=s3_client))
    except tracking.TrackingError as exc:
        raise PipelineError(str(exc)) from exc
    return run_id, str(client.get_run(run_id).info.experiment_id)


def evaluation_summary_line(result: CheckpointEvaluation) -> str:
    shown = ", ".join(f"{k}={result.metrics[k]:.4f}" for k in PROMOTION_METRICS if k in result.metrics)
    return (
        f"evaluated {result.role} {result.candidate} ({result.model_uri}) on dataset "
        f"{result.dataset_version} ({result.split}): {shown}; MLflow run {result.mlflow_run_id}"
    )


def evaluation_results(results: Sequence[Mapping[str, Any] | None]) -> list[CheckpointEvaluation]:
    """The evaluate tasks' XCom values as records (a skipped mapped task gives ``None``)."""
    return [CheckpointEvaluation.from_dict(r, where="an evaluate task's result") for r in results if r]


def pick_best(results: Sequence[Mapping[str, Any] | None], metric: str) -> dict[str, Any]:
    """The best candidate by ``metric`` on the selection split (see
    :func:`~grounding_ops.evaluation.selection.best_checkpoint`), and the base model's result if any."""
    if metric not in PROMOTION_METRICS:
        raise PipelineError(f"promotion metric {metric!r} is unknown: use one of {', '.join(PROMOTION_METRICS)}")
    evaluations = evaluation_results(results)
    check_split(evaluations, SELECTION_SPLIT, "pick the best checkpoint")
    candidates = [r for r in evaluations if r.role != "base" and metric in r.metrics]
    try:
        best = best_checkpoint(candidates, metric, value=lambda r: r.metrics[metric], step=lambda r: r.step)
    except SelectionError as exc:
        raise PipelineError(
            f"{exc}: no evaluated checkpoint has the metric {metric!r}; see the evaluate tasks"
        ) from exc
    base = next((r for r in evaluations if r.role == "base"), None)
    table = "; ".join(
        f"{r.candidate}={r.metrics.get(metric, float('nan')):.4f}" for r in sorted(evaluations, key=lambda r: r.step)
    )
    summary = (
        f"best by {metric} on {SELECTION_SPLIT}: {best.candidate} = {best.metrics[metric]:.4f} "
        f"(MLflow run {best.mlflow_run_id}); all: {table}"
    )
    return {
        "best": best.to_dict(),
        "base": base.to_dict() if base else None,
        "metric": metric,
        "split": SELECTION_SPLIT,
        "summary": summary,
    }


def check_split(results: Sequence[CheckpointEvaluation], split: str, what: str) -> None:
    wrong = sorted({r.split for r in results if r.split and r.split != split})
    if wrong:
        raise PipelineError(
            f"evaluations on {', '.join(wrong)} were given to {what}, which uses {split!r} only: "
            f"checkpoints are chosen on {SELECTION_SPLIT!r}, promotion is decided on {DECISION_SPLIT!r}"
        )

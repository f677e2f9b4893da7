"""The container plans of a training DAG run: the training, then one evaluation per candidate and split."""

from __future__ import annotations
import logging
import re
from typing import Any, Mapping, Sequence
from grounding_ops.pipeline.assets import model_name
from grounding_ops.pipeline.errors import PipelineError
from grounding_ops.pipeline.task_records import (
    CheckpointEvaluation,
    EvaluationCandidate,
    EvaluationPlan,
    TrainingPlan,
    TrainingSummary,
)
from grounding_ops.pipeline.train_params import (
    EVAL_ENGINE,
    TRAIN_ENGINE,
    spec_overrides,
)
from grounding_ops.storage import ObjectStore, join_uri
from grounding_ops.training.checkpoints import evaluable_checkpoints
from grounding_ops.vocabulary import (
    DECISION_SPLIT,
    MANIFEST_FILE,
    SELECTION_SPLIT,
    Tag,
)

from grounding_ops.pipeline.datasets import DatasetRef
from grounding_ops.pipeline.model_state import Champion
from grounding_ops.pipeline.urls import mlflow_model_url, s3_http_url
from grounding_ops.vocabulary import AIRFLOW_RUN_ENV

log = logging.getLogger(__name__)


GPU_WORK_VOLUME = "grounding-ops-trainer-work"  # named volume at the GPU trainer's /work


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_segment(text: str) -> str:
    return _SAFE.sub("_", text).strip("._") or "run"


def run_root(bucket: str, dag_id: str, run_id: str) -> str:
    """Where a DAG run writes: ``s3://bucket/runs/<dag>/<run>`` (the same for every try: resume)."""
    return f"s3://{bucket}/runs/{safe_segment(dag_id)}/{safe_segment(run_id)}"


def training_gpus(params: Mapping[str, Any]) -> int:
    """``gpus_per_node`` of the preset with the form's overrides."""
    from grounding_ops.training.presets import get_preset

    return int(get_preset(str(params["preset"])).with_overrides(spec_overrides(dict(params))).gpus_per_node)


def plan_training(
    params: Mapping[str, Any],
    dataset: DatasetRef,
    *,
    output_uri: str,
    fingerprint: str,
    airflow_run: str,
    s3_endpoint: str | None = None,
    tracking_uri: str = "",
) -> TrainingPlan:
    """The training container's plan: engine, argument-list command, lineage and links."""
    engine = params["engine"]
    if engine not in TRAIN_ENGINE:
        raise PipelineError(f"engine {engine!r} is unknown: use one of {', '.join(TRAIN_ENGINE)}")
    command = [
        "train",  # arguments of the image ENTRYPOINT `grounding-ops`
        "--engine",
        TRAIN_ENGINE[engine],
        "--preset",
        str(params["preset"]),
        "--dataset",
        dataset.uri,
        "--output",
        output_uri,
    ]
    for assignment in spec_overrides(params):
        command += ["--set", assignment]
    return TrainingPlan(
        engine=engine,
        command=command,
        # the GPUs the training container gets: the spec's gpus_per_node, never "all"
        gpus=training_gpus(params),
        work_volume=GPU_WORK_VOLUME,
        environment=container_environment(airflow_run),
        output_uri=output_uri,
        dataset_version=dataset.version,
        dataset_uri=dataset.uri,
        fingerprint=fingerprint,
        nodes=int(params.get("nodes") or 1),
        links={
            "manifest": s3_http_url(dataset.manifest_uri, s3_endpoint),
            "mlflow": mlflow_model_url(tracking_uri, model_name()),
        },
        inputs=[dataset.uri],
        outputs=[output_uri],
    )


def container_environment(airflow_run: str) -> dict[str, str]:
    """The environment every container of a DAG run gets (its W&B runs are grouped by DAG run)."""
    return {"PYTHONUNBUFFERED": "1", AIRFLOW_RUN_ENV: airflow_run, "WANDB_RUN_GROUP": airflow_run}


def list_checkpoints(store: ObjectStore, summary: TrainingSummary) -> list[EvaluationCandidate]:
    """Evaluable models of a training run: each Hugging Face checkpoint, ``final``, and the base model.

    ``store`` is the training output; which checkpoints are evaluable is
    :func:`grounding_ops.training.checkpoints.evaluable_checkpoints`'s answer.
    """
    found = [
        EvaluationCandidate(c.name, c.uri, c.step, "candidate")
        for c in evaluable_checkpoints(store, steps_done=summary.steps_done)
    ]
    if not found:
        raise PipelineError(
            f"no evaluable checkpoint under {store.uri} (expected final/ or checkpoints/*/ "
            "with config.json): see the train task's log"
        )
    candidates = sorted(found, key=lambda c: c.step)
    base = summary.base_model
    if base.startswith("s3://") or base.startswith("/") or base.startswith("file://"):
        candidates.append(EvaluationCandidate("base", base, -1, "base"))
    else:
        log.info("base model %r is not a folder or s3:// URI; it is not evaluated (the champion is the bar)", base)
    return candidates


def plan_evaluations(
    params: Mapping[str, Any],
    training: TrainingSummary,
    candidates: Sequence[EvaluationCandidate],
    *,
    run_uri: str,
    airflow_run: str,
    s3_endpoint: str | None = None,
    split: str = SELECTION_SPLIT,
) -> list[EvaluationPlan]:
    """One evaluation-container plan per candidate on ``split`` (the list ``.expand`` maps over)."""
    if split not in (SELECTION_SPLIT, DECISION_SPLIT):
        raise PipelineError(
            f"split {split!r} is neither the selection split {SELECTION_SPLIT!r} nor the "
            f"decision split {DECISION_SPLIT!r}"
        )
    engine = params["engine"]
    manifest = join_uri(training.dataset_uri, MANIFEST_FILE)
    plans = []
    for candidate in candidates:
        folder = safe_segment(candidate.name) if split == SELECTION_SPLIT else f"{split}-{safe_segment(candidate.name)}"
        output_uri = join_uri(run_uri, "eval", folder)
        command = [
            "evaluate",  # arguments of the image ENTRYPOINT `grounding-ops`
            "--model",
            candidate.uri,
            "--dataset",
            training.dataset_uri,
            "--split",
            split,
            "--engine",
            EVAL_ENGINE[engine],
            "--output",
            output_uri,
            "--role",
            candidate.role,
            "--no-mlflow",
            "--tag",
            f"{Tag.DATASET_VERSION}={training.dataset_version}",
            "--tag",
            f"{Tag.TRAIN_FINGERPRINT}={training.fingerprint}",
            "--tag",
            f"{Tag.AIRFLOW_RUN}={airflow_run}",
            "--tag",
            f"{Tag.PREFIX}checkpoint={candidate.name}",
        ]
        if params.get("max_eval_samples"):
            command += ["--max-samples", str(int(params["max_eval_samples"]))]
        plans.append(
            EvaluationPlan(
                engine=engine,
                command=command,
                gpus=1,  # vLLM takes most of its GPU: one each, and the evaluations run one at a time
                environment=container_environment(airflow_run),
                output_uri=output_uri,
                candidate=candidate,
                split=split,
                dataset_version=training.dataset_version,
                fingerprint=training.fingerprint,
                links={"wandb": training.wandb_url, "manifest": s3_http_url(manifest, s3_endpoint)},
                inputs=[training.dataset_uri, candidate.uri],
                outputs=[output_uri],
            )
        )
    return plans


def decision_candidates(
    choice: Mapping[str, Any],
    champion: Champion | None,
    *,
    champion_evaluation: str | None,
    base_evaluation: str | None,
) -> tuple[list[EvaluationCandidate], str]:
    """What to evaluate on the decision split: the chosen candidate, and the bar unless an evaluation of
    it on this dataset version and split exists already (the champion, or the base model when there is
    no champion yet). Returns the candidates and a line saying what is reused."""
    best = CheckpointEvaluation.from_dict(choice["best"], where="the chosen checkpoint")
    models = [EvaluationCandidate(best.candidate, best.model_uri, best.step, "candidate")]
    if champion is not None:
        if champion_evaluation:
            return models, (
                f"champion v{champion.version} already evaluated on {DECISION_SPLIT} "
                f"(MLflow run {champion_evaluation}): reused"
            )
        models.append(EvaluationCandidate(f"champion-v{champion.version}", champion.model_uri, -2, "champion"))
        return models, f"champion v{champion.version} ({champion.model_uri}) is evaluated on {DECISION_SPLIT} too"
    if not choice.get("base"):
        return models, "no champion and no base model evaluation: the gate will say what is missing"
    base = CheckpointEvaluation.from_dict(choice["base"], where="the base model's evaluation")
    if base_evaluation:
        return models, f"base model already evaluated on {DECISION_SPLIT} (MLflow run {base_evaluation}): reused"
    models.append(EvaluationCandidate("base", base.model_uri, -1, "base"))
    return models, f"no champion yet: the base model ({base.model_uri}) is the bar, evaluated on {DECISION_SPLIT}"

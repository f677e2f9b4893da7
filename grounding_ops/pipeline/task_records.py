"""Typed results the training DAG's tasks hand each other through XCom (as their dict form).

Each is written by one task and read back with ``from_dict`` by the next, so a reader never
guesses a key: a missing or unknown one is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grounding_ops.records import Record


@dataclass(frozen=True)
class TrainingSummary(Record):
    """The ``train`` task's result: what the training container produced, logged to MLflow.

    :param output_uri: the run output (``run.json``, ``final/``, ``checkpoints/``).
    :param base_model: the model GRPO started from (evaluated as the bar when there is no champion).
    :param image: the trainer image reference with its digest.
    :param fingerprint: the training settings' hash (decides whether a night retrains).
    """

    output_uri: str
    dataset_version: str
    dataset_uri: str
    steps_done: int
    engine: str
    fingerprint: str
    final_metrics: dict[str, Any] = field(default_factory=dict)
    wandb_url: str = ""
    checkpoints: list[str] = field(default_factory=list)
    base_model: str = ""
    image: str = ""
    git_commit: str = ""
    mlflow_run_id: str = ""
    mlflow_url: str = ""


@dataclass(frozen=True)
class CheckpointEvaluation(Record):
    """An ``evaluate`` task's result: one model evaluated on one split, logged as an MLflow run.

    :param candidate: the checkpoint's name (``global_step_N``, ``final``, ``base``, ``champion-vN``).
    :param role: ``candidate``, ``base`` or ``champion``.
    :param step: the checkpoint step (-1 for the final or base model, -2 for the champion).
    :param metrics: the headline metrics (``acc_at_0_5``, ``mean_iou``, ... ``n_samples``).
    """

    candidate: str
    role: str
    step: int
    model_uri: str
    eval_uri: str
    dataset_version: str
    split: str
    metrics: dict[str, float]
    mlflow_run_id: str
    mlflow_url: str


@dataclass(frozen=True)
class EvaluationCandidate:
    """A model to evaluate: a checkpoint of the run, its final or base model, or the champion."""

    name: str
    uri: str
    step: int  # the checkpoint step; -1 the final or base model, -2 the champion
    role: str  # candidate, base or champion


@dataclass(frozen=True, kw_only=True)
class ContainerPlan(Record):
    """What a container task runs: the argument list of ``grounding-ops`` and where it writes.

    :param engine: the hardware choice (``gpu`` or ``cpu``): which image and which GPU settings.
    :param command: the arguments of the image's ``grounding-ops`` entry point.
    :param output_uri: the folder the container writes (its record last).
    :param links: the task's extra links (name -> URL).
    :param inputs: lineage inputs; ``outputs`` lineage outputs.
    :param lineage: the planning task's own OpenLineage inputs/outputs.
    """

    LEGACY_SCHEMA = 1  # a plan written by hand (or before plans carried a schema) has the same keys

    engine: str
    command: list[str]
    output_uri: str = ""
    dataset_version: str = ""
    fingerprint: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    gpus: int = 1
    links: dict[str, str] = field(default_factory=dict)
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    summary: str = ""
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainingPlan(ContainerPlan):
    """The ``train`` task's container: ``grounding-ops train`` on one dataset version."""

    output_uri: str = field()  # required here (the base plan's default is not inherited)
    dataset_version: str = field()
    fingerprint: str = field()
    dataset_uri: str
    work_volume: str | None = None  # the named volume at the GPU trainer's work folder
    nodes: int = 1


@dataclass(frozen=True, kw_only=True)
class EvaluationPlan(ContainerPlan):
    """An ``evaluate`` task's container: ``grounding-ops evaluate`` of one model on one split."""

    output_uri: str = field()  # required here (the base plan's default is not inherited)
    dataset_version: str = field()
    fingerprint: str = field()
    candidate: EvaluationCandidate
    split: str

    @classmethod
    def _field_from_plain(cls, name: str, value: Any) -> Any:
        if name == "candidate" and isinstance(value, dict):
            return EvaluationCandidate(**value)
        return value

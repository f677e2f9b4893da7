"""``run.json``: the record of one finished training, written last by the training container.

Owned by :mod:`grounding_ops.training.runner` (the writer); every reader (the DAG's train task,
the evaluation's lineage, the MLflow training run) calls :meth:`RunRecord.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grounding_ops.records import Record
from grounding_ops.vocabulary import RUN_RECORD_FILE


@dataclass(frozen=True)
class RunRecord(Record):
    """What a training run produced and from what.

    :param dataset_version: the manifest's version the run trained on.
    :param dataset_uri: the dataset version folder (with its ``manifest.json``).
    :param spec: the :class:`~grounding_ops.training.spec.TrainingSpec` as a dict.
    :param engine: ``cpu`` or ``verl``.
    :param image: the trainer image reference (with its digest) the container ran, if known.
    :param git_commit: the platform's commit, if the image carries it.
    :param steps_done: the last complete checkpoint's step.
    :param steps_trained: steps this run trained (0 when it only finished an interrupted run).
    :param resumed_from_step: the checkpoint step it resumed from, or ``None``.
    :param target_steps: the step count the run aimed at.
    :param final_metrics: the engine's last value of each metric.
    :param history: one entry per step (reward, IoU, KL, ... and a timestamp).
    :param checkpoints: URIs of every complete checkpoint in the output.
    :param final_uri: the final Hugging Face model folder.
    :param base_model_uri: the model GRPO started from, when it is evaluable (else ``None``).
    """

    FILE = RUN_RECORD_FILE
    LEGACY_SCHEMA = 1  # run.json before it carried a schema key had the same keys

    dataset_version: str
    dataset_uri: str
    spec: dict[str, Any]
    engine: str
    steps_done: int
    steps_trained: int
    target_steps: int
    final_uri: str
    image: str | None = None
    git_commit: str | None = None
    resumed_from_step: int | None = None
    overrides: list[str] = field(default_factory=list)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_step: float | None = None
    wandb_url: str | None = None
    wandb_offline_uri: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    base_model_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    finished_at: str = ""

    @property
    def start_model(self) -> str:
        """The ``model`` of the spec: what the run was configured to start from."""
        return str(self.spec.get("model") or "")

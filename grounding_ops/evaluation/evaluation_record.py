"""``metrics.json``: the record of one evaluation, written last by :func:`~grounding_ops.evaluation.evaluate.evaluate`.

Owned by the evaluation (the writer); the DAG's evaluate task and the MLflow logging read it
through :meth:`EvaluationRecord.load`. :class:`ModelLineage` is where the evaluated model came
from, read from the :class:`~grounding_ops.training.run_record.RunRecord` next to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from grounding_ops.records import Record
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import EVALUATION_RECORD_FILE, Tag


@dataclass(frozen=True)
class ModelLineage:
    """The training behind an evaluated model; empty for a model not trained here."""

    training_output_uri: str = ""
    training_dataset_version: str = ""
    training_dataset_uri: str = ""
    image_digest: str = ""
    git_commit: str = ""
    wandb_run: str = ""
    base_model_uri: str = ""

    @classmethod
    def of_run(cls, record: RunRecord, output_uri: str) -> "ModelLineage":
        return cls(
            training_output_uri=output_uri,
            training_dataset_version=record.dataset_version or "",
            training_dataset_uri=record.dataset_uri or "",
            image_digest=record.image or "",
            git_commit=record.git_commit or "",
            wandb_run=record.wandb_url or "",
            base_model_uri=record.start_model,
        )

    def tags(self) -> dict[str, str]:
        """The lineage as MLflow tags (only the known parts)."""
        keys = {
            "training_output_uri": Tag.TRAINING_OUTPUT_URI,
            "training_dataset_version": Tag.TRAINING_DATASET_VERSION,
            "training_dataset_uri": Tag.TRAINING_DATASET_URI,
            "image_digest": Tag.IMAGE_DIGEST,
            "git_commit": Tag.GIT_COMMIT,
            "wandb_run": Tag.WANDB_RUN,
            "base_model_uri": Tag.BASE_MODEL_URI,
        }
        return {keys[f.name]: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass(frozen=True)
class EvaluationRecord(Record):
    """What one evaluation measured, on what, with which settings.

    :param model_uri: the evaluated Hugging Face model folder.
    :param dataset_uri: the dataset version folder.
    :param dataset_version: the manifest's version.
    :param split: the evaluated split (``val`` chooses checkpoints, ``test`` decides promotions).
    :param role: ``candidate``, ``base`` or ``champion``.
    :param metrics: the :class:`~grounding_ops.evaluation.metrics.MetricsReport` as a dict (with intervals).
    :param flat_metrics: every metric as one number (``acc_at_0_5``, ``mean_iou``, per source ...).
    :param files: the output files' URIs by name; ``plots`` the report's figures.
    """

    FILE = EVALUATION_RECORD_FILE

    model_uri: str
    dataset_uri: str
    dataset_version: str
    split: str
    protocol: str
    engine: str
    role: str
    n_samples: int
    metrics: dict[str, Any]
    flat_metrics: dict[str, float]
    dataset_manifest_sha256: str = ""
    batch_size: int | None = None
    max_new_tokens: int | None = None
    max_samples: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    lineage: ModelLineage = field(default_factory=ModelLineage)
    generation_seconds: float = 0.0
    samples_per_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    tool_version: str = ""

    @classmethod
    def _field_from_plain(cls, name: str, value: Any) -> Any:
        if name == "lineage" and isinstance(value, dict):
            known = {f.name for f in fields(ModelLineage)}
            # lineage of records written before it was typed: the keys it had then
            return ModelLineage(**{k: str(v) for k, v in value.items() if k in known})
        return value

    def params(self) -> dict[str, str]:
        """The settings as MLflow params (every evaluation run carries them; promotion reads them back)."""
        values = {
            "model_uri": self.model_uri,
            "dataset_uri": self.dataset_uri,
            "dataset_version": self.dataset_version,
            "split": self.split,
            "protocol": self.protocol,
            "engine": self.engine,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "max_samples": self.max_samples,
            "role": self.role,
        }
        return {k: "" if v is None else str(v) for k, v in values.items()}

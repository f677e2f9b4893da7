"""The platform's names, each defined once: files, MLflow tags, aliases, connections, engines, metrics.

Every module that writes or reads one of these names imports it from here; a test
(``tests/test_vocabulary.py``) fails when one of the literals reappears elsewhere. This module
imports nothing of the project, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# --------------------------------------------------------------------------- files
RUN_RECORD_FILE = "run.json"  # a training's record, written last by the training container
EVALUATION_RECORD_FILE = "metrics.json"  # an evaluation's record, written last by the evaluation
MANIFEST_FILE = "manifest.json"  # a dataset version's manifest

# --------------------------------------------------------------------------- Airflow: connections, Variables, env
S3_CONN_ID = "grounding_s3"
MLFLOW_CONN_ID = "grounding_mlflow"
BUCKET_VARIABLE = "grounding_bucket"
WANDB_VARIABLE = "grounding_wandb_api_key"
DOCKER_CONN_VARIABLE = "grounding_docker_conn_id"
BUCKET_ENV = "GROUNDING_OPS_BUCKET"
IMAGE_ENV = "GROUNDING_OPS_IMAGE"  # the trainer image reference a container runs, set by the operator
GIT_COMMIT_ENV = "GROUNDING_OPS_GIT_COMMIT"
AIRFLOW_RUN_ENV = "GROUNDING_OPS_AIRFLOW_RUN"  # dag_id/run_id, in every container of a DAG run
TRAIN_PRESET_ENV = "GROUNDING_OPS_TRAIN_PRESET"  # the training form's default preset (read at DAG parse)
WORK_DIR_ENV = "GROUNDING_OPS_WORK_DIR"  # the training container's work folder (the GPU image mounts a volume there)

# --------------------------------------------------------------------------- default names
DEFAULT_BUCKET = "grounding-ops"
DEFAULT_DATASET_NAME = "grounding"
# The form's default preset: the tiny CPU model, cheap enough for every test that trains.
DEFAULT_TRAIN_PRESET = "tiny-cpu"
# The embedded local services' default preset (make demo): the CPU twin's learning recipe, short.
DEMO_TRAIN_PRESET = "tiny-cpu-demo"
DEFAULT_MODEL_NAME = "grounding-model"  # the registered model, and the name of its logged pyfunc model

# --------------------------------------------------------------------------- MLflow registry aliases
CHAMPION_ALIAS = "champion"  # the model people load and serve
CHALLENGER_ALIAS = "challenger"  # the last candidate that was evaluated but not promoted

# --------------------------------------------------------------------------- dataset splits
TRAINING_SPLITS = ("train", "val")  # what the trainer reads
SELECTION_SPLIT = "val"  # chooses the checkpoint
DECISION_SPLIT = "test"  # decides the promotion (neither trained on nor used to choose)

# --------------------------------------------------------------------------- engines
# The DAG's choice of hardware, and what it means for training and for evaluation.
HARDWARE_CHOICES: tuple[str, ...] = ("gpu", "cpu")
TRAINING_ENGINES: tuple[str, ...] = ("verl", "cpu")  # `grounding-ops train --engine`
GENERATION_ENGINES: tuple[str, ...] = ("transformers", "vllm")  # `grounding-ops evaluate --engine`
TRAINING_ENGINE_FOR: Mapping[str, str] = {"gpu": "verl", "cpu": "cpu"}
GENERATION_ENGINE_FOR: Mapping[str, str] = {"gpu": "vllm", "cpu": "transformers"}


# --------------------------------------------------------------------------- MLflow tag keys
class Tag:
    """MLflow run, model-version and registered-model tag keys (all under ``grounding.``)."""

    PREFIX = "grounding."
    ROLE = "grounding.role"  # candidate, base or champion (an evaluation run)
    KIND = "grounding.kind"  # evaluation or training (an MLflow run)
    OUTPUT_URI = "grounding.output_uri"  # the folder the run's record came from
    AIRFLOW_RUN = "grounding.airflow_run"
    MODEL_URI = "grounding.model_uri"
    DATASET_VERSION = "grounding.dataset_version"
    DATASET_URI = "grounding.dataset_uri"
    PROTOCOL = "grounding.protocol"
    ENGINE = "grounding.engine"
    IMAGE_DIGEST = "grounding.image_digest"
    GIT_COMMIT = "grounding.git_commit"
    WANDB_RUN = "grounding.wandb_run"
    WANDB_EVAL_RUN = "grounding.wandb_eval_run"
    TRAINING_OUTPUT_URI = "grounding.training_output_uri"
    TRAINING_MLFLOW_RUN_ID = "grounding.training_mlflow_run_id"
    TRAINING_DATASET_VERSION = "grounding.training_dataset_version"
    TRAINING_DATASET_URI = "grounding.training_dataset_uri"
    BASE_MODEL_URI = "grounding.base_model_uri"
    EVALUATION_RUN_ID = "grounding.evaluation_run_id"
    EVALUATION_URI = "grounding.evaluation_uri"
    LOGGED_MODEL_ID = "grounding.logged_model_id"
    TRAIN_FINGERPRINT = "grounding.train_fingerprint"
    PROMOTION_PREFIX = "grounding.promotion."  # + field of the promotion decision
    METRIC_PREFIX = "grounding.metric."  # + metric name: a model version's evaluation metrics


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """An evaluation metric: its name in ``metrics.json`` and MLflow, and which way is better."""

    name: str
    higher_is_better: bool
    label: str


METRICS: Mapping[str, Metric] = {
    m.name: m
    for m in (
        Metric("acc_at_0_5", True, "Acc@0.5"),
        Metric("acc_at_0_75", True, "Acc@0.75"),
        Metric("mean_iou", True, "mean IoU"),
        Metric("mean_score", True, "mean reward"),
        Metric("parse_failure_rate", False, "parse failures"),
    )
}
DEFAULT_METRIC = "acc_at_0_5"  # the promotion gate's and the checkpoint choice's default

"""The identities of what the DAGs publish: the dataset Asset, the registered model, their names.

Light on purpose (no Airflow import): the DAG files, the lineage and the models page all use it.
"""

from __future__ import annotations

import os

from grounding_ops.vocabulary import DEFAULT_DATASET_NAME, DEFAULT_MODEL_NAME

REGISTRY_NAMESPACE = "mlflow://registry"  # the OpenLineage namespace of registered models
DATASET_NAME_ENV = "GROUNDING_OPS_DATASET_NAME"
MODEL_NAME_ENV = "GROUNDING_OPS_MODEL_NAME"


def dataset_name() -> str:
    """The dataset the DAGs publish and train on (``GROUNDING_OPS_DATASET_NAME``)."""
    return os.environ.get(DATASET_NAME_ENV) or DEFAULT_DATASET_NAME


def model_name() -> str:
    """The registered model the training DAG promotes into (``GROUNDING_OPS_MODEL_NAME``)."""
    return os.environ.get(MODEL_NAME_ENV) or DEFAULT_MODEL_NAME


def dataset_asset_uri(bucket: str, name: str) -> str:
    """URI of the Airflow Asset ``grounding_data`` publishes (its event extra names the version)."""
    return f"s3://{bucket}/datasets/{name}"


def model_asset_uri(name: str) -> str:
    """URI of the Airflow Asset of the registered model (an event per promotion decision)."""
    return f"{REGISTRY_NAMESPACE}/models/{name}"


def mlflow_model_ref(name: str, version: str | int) -> dict[str, str]:
    """The OpenLineage dataset of a registered model version (namespace shared with the model Asset)."""
    return {"namespace": REGISTRY_NAMESPACE, "name": f"models/{name}/versions/{version}"}

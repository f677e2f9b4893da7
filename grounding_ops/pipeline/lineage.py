"""Lineage of ``grounding_train``: Airflow Assets and OpenLineage datasets for every task.

Lineage references are either URIs (``s3://bucket/key``, a local path) or an MLflow registered
model version (:func:`mlflow_model_ref`). Operators turn them into OpenLineage datasets in
``get_openlineage_facets_on_complete``; Python tasks made with :func:`lineage_task` report them by
returning a dict with a ``"lineage": {"inputs": [...], "outputs": [...]}`` entry.

The OpenLineage provider sends the events with the transport configured in
``AIRFLOW__OPENLINEAGE__TRANSPORT`` (a file by default in the local services, HTTP when set).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlparse

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator

LineageRef = str | Mapping[str, str]

DEFAULT_DATASET_NAME = "grounding"
DEFAULT_MODEL_NAME = "grounding-model"  # = grounding_ops.registry.promotion.DEFAULT_MODEL_NAME


def dataset_name() -> str:
    return os.environ.get("GROUNDING_OPS_DATASET_NAME") or DEFAULT_DATASET_NAME


def model_name() -> str:
    return os.environ.get("GROUNDING_OPS_MODEL_NAME") or DEFAULT_MODEL_NAME


def dataset_asset_uri(bucket: str, name: str) -> str:
    """URI of the Airflow Asset ``grounding_data`` publishes (its event extra names the version)."""
    return f"s3://{bucket}/datasets/{name}"


def model_asset_uri(name: str) -> str:
    """URI of the Airflow Asset of the registered model (an event per promotion decision)."""
    return f"mlflow://registry/models/{name}"


def mlflow_model_ref(tracking_uri: str, name: str, version: str | int) -> dict[str, str]:
    """An OpenLineage dataset reference for an MLflow registered model version."""
    return {"namespace": tracking_uri.rstrip("/"), "name": f"models/{name}/versions/{version}"}


def to_ol_dataset(ref: LineageRef) -> Any:
    """An OpenLineage ``Dataset`` for a URI or a ``{"namespace", "name"}`` reference."""
    from openlineage.client.event_v2 import Dataset

    if isinstance(ref, Mapping):
        return Dataset(namespace=str(ref["namespace"]), name=str(ref["name"]))
    text = str(ref)
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "gs", "gcs") and parsed.netloc:
        scheme = "gs" if parsed.scheme == "gcs" else parsed.scheme
        return Dataset(namespace=f"{scheme}://{parsed.netloc}", name=parsed.path.strip("/") or "/")
    if parsed.scheme in ("", "file"):
        return Dataset(namespace="file", name=parsed.path if parsed.scheme else text)
    return Dataset(namespace=f"{parsed.scheme}://{parsed.netloc}", name=parsed.path.strip("/") or "/")


def operator_lineage(inputs: Iterable[LineageRef], outputs: Iterable[LineageRef]) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[to_ol_dataset(r) for r in inputs if r],
        outputs=[to_ol_dataset(r) for r in outputs if r],
    )


def lineage_of(result: Any) -> tuple[list[LineageRef], list[LineageRef]]:
    """Inputs/outputs from a task result's ``"lineage"`` entry (for a list: merged over its items)."""
    items = result if isinstance(result, list) else [result]
    inputs: list[LineageRef] = []
    outputs: list[LineageRef] = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("lineage"), Mapping):
            for ref in item["lineage"].get("inputs") or []:
                if ref not in inputs:
                    inputs.append(ref)
            for ref in item["lineage"].get("outputs") or []:
                if ref not in outputs:
                    outputs.append(ref)
    return inputs, outputs


class LineagePythonOperator(_PythonDecoratedOperator):
    """``@task`` whose returned ``"lineage"`` entry becomes the task's OpenLineage inputs/outputs."""

    custom_operator_name = "@task"

    def execute(self, context: Any) -> Any:
        self.lineage_inputs: list[LineageRef] = []
        self.lineage_outputs: list[LineageRef] = []
        result = super().execute(context)
        self.lineage_inputs, self.lineage_outputs = lineage_of(result)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(getattr(self, "lineage_inputs", []), getattr(self, "lineage_outputs", []))


def lineage_task(python_callable: Callable | None = None, **kwargs: Any) -> Any:
    """Like ``@task``, with OpenLineage inputs/outputs taken from the returned ``"lineage"``."""
    from airflow.sdk.bases.decorator import task_decorator_factory

    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=LineagePythonOperator,
        **kwargs,
    )

"""The connections the tasks use, each owned here: S3 (client, endpoint, the bucket) and MLflow.

Tasks and operators call these instead of reading connections themselves, so one place knows
which connection id and which Variable hold what.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name
from grounding_ops.pipeline.errors import PipelineError
from grounding_ops.vocabulary import BUCKET_ENV, BUCKET_VARIABLE, DEFAULT_BUCKET, MLFLOW_CONN_ID, S3_CONN_ID


# ----------------------------------------------------------------------------- S3
def s3_client(conn_id: str = S3_CONN_ID) -> Any:
    """A boto3 S3 client of the Airflow connection ``conn_id`` (S3Hook's credentials and endpoint)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def s3_store(uri: str, conn_id: str = S3_CONN_ID) -> Any:
    """An :class:`~grounding_ops.storage.ObjectStore` for ``uri`` (S3 through ``conn_id``; else local)."""
    from grounding_ops.storage import open_store

    return open_store(uri, s3_client=s3_client(conn_id) if uri.startswith("s3://") else None)


def s3_endpoint(conn_id: str = S3_CONN_ID) -> str | None:
    """The connection's ``endpoint_url`` extra (a local or on-premises S3), if any."""
    from airflow.sdk import BaseHook

    try:
        extra = BaseHook.get_connection(conn_id).extra_dejson
    except Exception:
        return None
    return extra.get("endpoint_url")


# ----------------------------------------------------------------------------- the bucket: one setting
def configured_bucket() -> str:
    """``GROUNDING_OPS_BUCKET``: the bucket of the dataset Asset (read when the DAG files are parsed)."""
    return os.environ.get(BUCKET_ENV) or DEFAULT_BUCKET


def bucket_of(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3:// URI")
    return parsed.netloc


def check_bucket(asset_uri: str, variable_value: str | None) -> str:
    """The Asset's bucket; refuses a ``grounding_bucket`` Variable that names another one.

    The Asset is fixed when the DAG file is parsed; writing the data anywhere else would publish
    an event for a bucket that does not hold the version.
    """
    bucket = bucket_of(asset_uri)
    if variable_value and variable_value.strip() != bucket:
        raise ValueError(
            f"Variable {BUCKET_VARIABLE}={variable_value.strip()!r} differs from the bucket of the dataset Asset "
            f"{asset_uri} ({BUCKET_ENV}={bucket!r} where the DAG files are parsed): set them to the same bucket "
            f"(or delete the Variable)"
        )
    return bucket


def run_bucket(asset_uri: str) -> str:
    """:func:`check_bucket` with the Variable as Airflow has it now (at run time)."""
    from airflow.sdk import Variable

    return check_bucket(asset_uri, Variable.get(BUCKET_VARIABLE, default=None))


def bucket() -> str:
    """The dataset Asset's bucket, checked at run time; :class:`PipelineError` when the Variable differs."""
    try:
        return run_bucket(dataset_asset_uri(configured_bucket(), dataset_name()))
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


# ----------------------------------------------------------------------------- MLflow
def mlflow_tracking_uri(conn_id: str = MLFLOW_CONN_ID) -> str:
    """The MLflow tracking URI of ``grounding_mlflow`` (else ``MLFLOW_TRACKING_URI``), credentials configured."""
    from grounding_ops.pipeline import mlflow_connection

    try:
        return mlflow_connection.tracking_uri(conn_id)
    except mlflow_connection.MlflowConfigError as exc:
        raise PipelineError(str(exc)) from exc

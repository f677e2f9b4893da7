"""Links people follow from a task: the S3 console-style URL of an object, MLflow model and run pages."""

from __future__ import annotations
import logging
from grounding_ops.storage import split_s3_uri

log = logging.getLogger(__name__)


def s3_http_url(uri: str, endpoint_url: str | None) -> str:
    """A browser link for an object: the endpoint's path-style URL, or the AWS console."""
    if not uri.startswith("s3://"):
        return ""
    bucket, key = split_s3_uri(uri)
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{key}"
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}"


def mlflow_model_url(tracking_uri: str, name: str, version: str | None = None) -> str:
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    base = f"{tracking_uri.rstrip('/')}/#/models/{name}"
    return f"{base}/versions/{version}" if version else base


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

"""Data errors fail a task at once; transient S3/MLflow errors are retried."""

from __future__ import annotations

import socket

import pytest


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_s3_connection_error() -> BaseException:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{_refused_port()}",
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    try:
        client.head_bucket(Bucket="x")
    except Exception as exc:  # noqa: BLE001 - the real error is what is classified
        return exc
    raise AssertionError("nothing listens there")


def _real_mlflow_connection_error(monkeypatch) -> BaseException:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        MlflowClient(f"http://127.0.0.1:{_refused_port()}").get_registered_model("x")
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("nothing listens there")


def test_transient_errors_are_retried_and_data_errors_are_not(monkeypatch) -> None:
    from botocore.exceptions import ClientError

    from grounding_ops.pipeline.data_tasks import DataPipelineError
    from grounding_ops.pipeline.retry_policy import fail_fast, is_data_error, is_transient
    from grounding_ops.pipeline.errors import PipelineError
    from grounding_ops.registry.promotion import PromotionError

    s3_down, mlflow_down = _real_s3_connection_error(), _real_mlflow_connection_error(monkeypatch)
    throttled = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    missing = ClientError({"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")
    for exc in (s3_down, mlflow_down, throttled):
        assert is_transient(exc) and not is_data_error(exc), exc
        assert fail_fast(exc) is exc
    try:
        raise PipelineError("could not read the champion") from mlflow_down
    except PipelineError as wrapped:
        assert is_transient(wrapped) and fail_fast(wrapped) is wrapped  # caused by MLflow being down
    for exc in (
        PipelineError("no evaluable checkpoint"),
        DataPipelineError("no annotation file"),
        PromotionError("no MLflow run"),
        ValueError("bad number"),
    ):
        assert is_data_error(exc), exc
        assert type(fail_fast(exc)).__name__ == "AirflowFailException"
    assert not is_transient(missing) and fail_fast(missing) is missing  # unknown: Airflow's default


def test_a_python_task_fails_at_once_on_a_data_error() -> None:
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from grounding_ops.pipeline.lineage import lineage_task
    from grounding_ops.pipeline.errors import PipelineError

    def broken():
        raise PipelineError("dataset version 'x y' is not a version id")

    with DAG("retry_policy_probe", schedule=None):
        task = lineage_task(broken, task_id="broken", retries=3)()
    with pytest.raises(AirflowFailException, match="not retried"):
        task.operator.execute({})


def test_the_bucket_is_one_setting_checked_against_the_asset() -> None:
    from grounding_ops.pipeline.hooks import check_bucket

    assert check_bucket("s3://grounding-prod/datasets/grounding", None) == "grounding-prod"
    assert check_bucket("s3://grounding-prod/datasets/grounding", "grounding-prod") == "grounding-prod"
    with pytest.raises(ValueError, match="grounding_bucket.*differs from the bucket of the dataset Asset"):
        check_bucket("s3://grounding-prod/datasets/grounding", "grounding-dev")

"""Each embedded service is real: traffic goes through it and comes back."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from grounding_ops import services
from grounding_ops.storage import open_store


def test_object_written_through_boto3_reads_back_through_the_endpoint(s3_service):
    client = s3_service.client()
    key = f"probe/{uuid.uuid4().hex}.txt"
    client.put_object(Bucket=s3_service.bucket, Key=key, Body=b"hello grounding")
    assert client.get_object(Bucket=s3_service.bucket, Key=key)["Body"].read() == b"hello grounding"
    # and through the project's own store abstraction
    store = open_store(s3_service.uri("probe"), s3_client=client)
    assert store.get_bytes(key.split("/", 1)[1]) == b"hello grounding"


def test_mlflow_artifact_lands_in_s3(mlflow_env, s3_service, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_env.uri)
    mlflow.set_experiment("services-probe")
    artifact = tmp_path / "note.txt"
    artifact.write_text("artifact body")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(artifact))
        run_id = run.info.run_id
    keys = [o["Key"] for o in s3_service.client().list_objects_v2(
        Bucket=s3_service.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"{run_id}/artifacts/note.txt") for k in keys), keys


def test_airflow_rest_api_lists_the_dags(airflow_service):
    import time

    deadline = time.monotonic() + 180
    dag_ids: set[str] = set()
    while time.monotonic() < deadline:
        dag_ids = {d["dag_id"] for d in airflow_service.api("GET", "/api/v2/dags")["dags"]}
        if {"grounding_data", "grounding_train"} <= dag_ids:
            break
        time.sleep(3)
    assert {"grounding_data", "grounding_train"} <= dag_ids


@pytest.mark.docker
def test_container_runs_python_in_the_base_image(base_image):
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", base_image, "python", "-c",
         "import sys; print('py', sys.version_info[:2])"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "py (3, 11)" in result.stdout


def test_stop_leaves_no_process_behind(tmp_path):
    settings = services.isolated_settings(tmp_path)
    services.start_s3(settings)
    pid = services.s3_process(settings).pid()
    assert pid is not None
    services.stop(settings)
    assert not services._group_alive(pid)
    assert not services.status(settings)["s3"]


def test_port_taken_by_a_stranger_is_reported(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        settings = services.ServiceSettings(state_dir=tmp_path, s3_port=sock.getsockname()[1])
        with pytest.raises(services.ServiceError, match="GROUNDING_OPS_S3_PORT"):
            services.start_s3(settings)


def test_a_fresh_in_memory_s3_starts_mlflow_with_an_empty_store_too(tmp_path):
    settings = services.isolated_settings(tmp_path)
    stale = settings.state_dir / "mlflow" / "mlflow.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"registry rows pointing at objects of a previous S3 process")
    try:
        services.start(settings, ["s3"])
        assert not stale.exists()
    finally:
        services.stop(settings)

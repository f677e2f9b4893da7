"""Each embedded service is real: traffic goes through it and comes back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

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
    pages = s3_service.client().get_paginator("list_objects_v2").paginate(Bucket=s3_service.bucket, Prefix="mlflow/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]  # other tests' artifacts: > 1000 keys
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


def test_the_training_forms_default_preset_is_the_deployments(airflow_service):
    """The services hand their train preset to Airflow (the DAG file reads it at parse time), and the
    demo reads it back through the REST API to refuse services started with another one."""
    from grounding_ops.demo import AirflowRestClient
    from grounding_ops.vocabulary import DEFAULT_TRAIN_PRESET, TRAIN_PRESET_ENV

    settings = airflow_service.settings
    assert settings.train_preset == DEFAULT_TRAIN_PRESET  # the tests' deployments train the cheap preset
    assert services.airflow_env(settings)[TRAIN_PRESET_ENV] == DEFAULT_TRAIN_PRESET
    client = AirflowRestClient(settings)
    client.wait_for_dag("grounding_train", timeout=180)
    assert client.form_default("grounding_train", "preset") == DEFAULT_TRAIN_PRESET


def test_the_local_services_train_the_learning_recipe_unless_told_otherwise(monkeypatch):
    from grounding_ops.training.presets import PRESET_NAMES
    from grounding_ops.vocabulary import DEMO_TRAIN_PRESET, TRAIN_PRESET_ENV

    monkeypatch.delenv(TRAIN_PRESET_ENV, raising=False)
    assert services.ServiceSettings.from_env().train_preset == DEMO_TRAIN_PRESET in PRESET_NAMES
    monkeypatch.setenv(TRAIN_PRESET_ENV, "tiny-cpu")
    assert services.ServiceSettings.from_env().train_preset == "tiny-cpu"


@pytest.mark.docker
def test_container_runs_python_in_the_base_image(base_image):
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            base_image,
            "python",
            "-c",
            "import sys; print('py', sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
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


# --------------------------------------------------------------------------- secrets (local profile)


def test_secrets_are_private_files_and_stay_out_of_the_task_environment(tmp_path):
    settings = services.isolated_settings(tmp_path)
    env = services.airflow_env(settings)
    folder = settings.state_dir / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert {"fernet-key", "jwt-secret", "sql-alchemy-conn"} <= {p.name for p in files}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o600}
    values = "\n".join(env.values())
    for path in files:
        assert path.read_text().strip() not in values, f"{path.name} is in the environment tasks inherit"
    assert {
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    }.isdisjoint(env)
    # Airflow resolves the *_CMD options to the secrets themselves.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airflow.configuration import conf; print(conf.get('core', 'fernet_key')); "
            "print(conf.get('database', 'sql_alchemy_conn'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [
        (folder / "fernet-key").read_text().strip(),
        f"sqlite:///{settings.airflow_home / 'airflow.db'}",
    ]


def test_the_admin_password_is_shown_once_then_where_it_is_kept(tmp_path):
    settings = services.isolated_settings(tmp_path)
    first = services.airflow_login_line(settings)
    password = services.airflow_password(settings)
    assert password in first
    again = services.airflow_login_line(settings)
    assert password not in again and str(settings.state_dir / "secrets" / "airflow-admin-password") in again
    assert (settings.state_dir / "secrets" / "airflow-admin-password").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- celery profile


@pytest.fixture(scope="module")
def celery_services():
    """S3, MLflow, Postgres, Redis, Airflow and two Celery workers on 127.0.0.1; stopped by PID after."""
    import tempfile

    if not shutil.which("redis-server") or not (
        shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    ):
        pytest.fail(
            "the celery profile needs Debian's postgresql and redis-server: apt-get install -y postgresql redis-server"
        )
    state = Path(tempfile.mkdtemp(prefix="grounding-celery-"))
    state.chmod(0o711)  # postgres (its own user when we are root) must traverse to its data folder
    settings = services.isolated_settings(state, profile="celery")
    with pytest.MonkeyPatch.context() as env:
        # No nightly run on unpausing (Feb 29 last fell before the DAG's start date): only the test's run.
        env.setenv("GROUNDING_OPS_TRAIN_CRON", "0 0 29 2 *")
        try:
            services.start(settings, ["s3", "mlflow", "airflow"])
            yield settings
        finally:
            services.stop(settings)
            shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.heavy
def test_grounding_train_under_celery_runs_gpu_tasks_on_the_gpu_worker(celery_services, trainer_cpu_image, tmp_path):
    """grounding_train end to end (CPU engine) with CeleryExecutor, Postgres and Redis: the task
    instances say train and the evaluations (val and test) ran on the gpu-queue worker, everything else
    elsewhere."""
    from grounding_ops.data.prepare import PrepareSettings, prepare
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.demo import AirflowRestClient
    from grounding_ops.pipeline.assets import dataset_name
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    settings = celery_services
    data = generate_synthetic(tmp_path / "synthetic", n_images=12)
    dataset = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=f"s3://{settings.bucket}/datasets/{dataset_name()}",
        settings=PrepareSettings(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        s3_client=services.s3_client(settings),
    )
    client = AirflowRestClient(settings)
    client.wait_for_dag("grounding_train", timeout=300)
    client.unpause("grounding_train")
    run_id = client.trigger(
        "grounding_train", {"dataset_version": dataset.version, "total_steps": 2, "max_eval_samples": 2, "force": True}
    )
    state = client.wait_for_run("grounding_train", run_id, timeout=900)
    path = f"/dags/grounding_train/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=100"
    tis = client._request("GET", path)["task_instances"]
    summary = {(t["task_id"], t["map_index"]): (t["state"], t["queue"], t["hostname"]) for t in tis}
    assert state == "success", summary
    gpu_tasks = ("train", "evaluate", "evaluate_test")  # the training and every evaluation (val and test)
    gpu = {k: v for k, v in summary.items() if k[0] in gpu_tasks}
    rest = {k: v for k, v in summary.items() if k[0] not in gpu_tasks}
    assert ("train", -1) in gpu and sum(k[0] == "evaluate" for k in gpu) >= 2, summary  # final + base at least
    assert all(q == "gpu" and host.startswith("celery-gpu.") for _, q, host in gpu.values()), gpu
    assert rest and all(q == "default" and host.startswith("celery-default.") for _, q, host in rest.values()), rest

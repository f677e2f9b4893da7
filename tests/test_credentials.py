"""Credentials of the platform: what the trainer containers get from the AWS connection (a role
assumed through moto's STS on 127.0.0.1), and what the MLflow clients get from ``grounding_mlflow``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

ROLE_ARN = "arn:aws:iam::123456789012:role/grounding-trainer"
BASE_KEY, BASE_SECRET = "AKIABASEKEYFORROLE01", "base-secret-used-only-to-assume-the-role"


@pytest.fixture()
def role_connection(s3_service, monkeypatch: pytest.MonkeyPatch) -> str:
    """``grounding_s3`` as a role-based connection: the base keys only assume the trainer role.

    The global ``endpoint_url`` is wrong on purpose: S3 (and STS) use their ``service_config``
    endpoints, as S3Hook does.
    """
    endpoint = s3_service.endpoint
    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": BASE_KEY,
                "password": BASE_SECRET,
                "extra": {
                    "role_arn": ROLE_ARN,
                    "region_name": "eu-west-1",
                    "endpoint_url": "http://127.0.0.1:9",
                    "service_config": {"s3": {"endpoint_url": endpoint}, "sts": {"endpoint_url": endpoint}},
                },
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_VAR_GROUNDING_WANDB_API_KEY", "wandb-key-for-the-container-0123456789")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return endpoint


def _boto3_as_container(env: dict[str, str], bucket: str, key: str) -> dict[str, str]:
    """Run boto3 in a fresh process whose only AWS settings are ``env`` (as the container's are)."""
    script = (
        "import boto3, json, sys\n"
        "identity = boto3.client('sts').get_caller_identity()\n"
        "s3 = boto3.client('s3')\n"
        f"s3.put_object(Bucket={bucket!r}, Key={key!r}, Body=b'written with temporary credentials')\n"
        f"body = s3.get_object(Bucket={bucket!r}, Key={key!r})['Body'].read().decode()\n"
        "print(json.dumps({'arn': identity['Arn'], 'body': body}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, **env, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _plan() -> dict:
    return {
        "engine": "cpu",
        "command": ["grounding-ops", "train"],
        "environment": {"PYTHONUNBUFFERED": "1"},
        "output_uri": "s3://b/runs/x/train",
        "dataset_version": "v1",
        "dataset_uri": "s3://b/datasets/grounding/v1",
        "fingerprint": "fp",
    }


def _context(run_id: str) -> dict:
    return {"ti": SimpleNamespace(dag_id="grounding_train", run_id=run_id, task_id="train", try_number=1, map_index=-1)}


def test_role_connection_gives_the_container_working_temporary_credentials(role_connection, s3_service) -> None:
    from airflow.sdk.log import redact

    from grounding_ops.pipeline.docker_tasks import TrainContainerOperator

    op = TrainContainerOperator(task_id="train", plan=_plan())  # parsing reads no secret
    assert op.credentials._env is None
    op.apply_plan(_context("manual__creds"))
    env = op.container_environment()
    assert env["AWS_ACCESS_KEY_ID"] != BASE_KEY and env["AWS_SECRET_ACCESS_KEY"] != BASE_SECRET
    assert env["AWS_SESSION_TOKEN"], "temporary credentials come with their session token"
    assert env["AWS_ENDPOINT_URL"] == role_connection  # service_config.s3 before the global endpoint_url
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not any(k.startswith("MLFLOW") for k in env), "containers get no MLflow settings"
    for secret in (env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"], env["WANDB_API_KEY"]):
        assert redact(f"value {secret}") == "value ***", "the credentials are masked in the task logs"
    public = json.dumps([op.command, op.environment, op.container_name, op.image, repr(op.credentials)])
    assert env["AWS_SECRET_ACCESS_KEY"] not in public and env["AWS_SESSION_TOKEN"] not in public

    seen = _boto3_as_container(env, s3_service.bucket, f"creds-test/{uuid.uuid4().hex}.txt")
    assert seen["arn"].startswith("arn:aws:sts::123456789012:assumed-role/grounding-trainer/")
    assert seen["body"] == "written with temporary credentials"

    op.apply_plan(_context("manual__creds"))  # the next try assumes the role again
    assert op.container_environment()["AWS_SESSION_TOKEN"] != env["AWS_SESSION_TOKEN"]


# One line (container arguments carry no newlines): what the process inside sees of its own limits.
LOCKDOWN_PROBE = "; ".join(
    [
        "import hashlib, os",
        "st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)",
        "cg = lambda *ns: next((open('/sys/fs/cgroup/' + n).read().strip() for n in ns "
        "if os.path.exists('/sys/fs/cgroup/' + n)), 'missing')",  # cgroup v2, else v1
        "print('probe', 'nnp=' + st['NoNewPrivs'].strip(), 'capeff=' + st['CapEff'].strip(), "
        "'pids=' + cg('pids.max', 'pids/pids.max'), 'mem=' + cg('memory.max', 'memory/memory.limit_in_bytes'), "
        "'uid=' + str(os.getuid()), "
        "'token=' + hashlib.sha256(os.environ.get('AWS_SESSION_TOKEN', '').encode()).hexdigest()[:16], "
        "'mlflow=' + str(any(k.startswith('MLFLOW') for k in os.environ)), "
        "'image=' + os.environ.get('GROUNDING_OPS_IMAGE', ''))",
    ]
)


@pytest.mark.docker
def test_container_gets_the_role_credentials_and_runs_locked_down(
    role_connection, base_image, monkeypatch, capfd: pytest.CaptureFixture
) -> None:
    from grounding_ops.pipeline import docker_tasks

    monkeypatch.setattr(docker_tasks, "image_override", lambda engine: base_image)
    monkeypatch.setenv(docker_tasks.MEM_LIMIT_ENV, "2g")
    monkeypatch.setenv(docker_tasks.PIDS_LIMIT_ENV, "256")
    plan = {"engine": "cpu", "command": ["python3", "-c", LOCKDOWN_PROBE]}
    op = docker_tasks.GroundingContainerOperator(task_id="train", plan=plan)
    op.execute(_context(f"manual__lockdown-{uuid.uuid4().hex[:8]}"))
    out = capfd.readouterr()
    line = next(line for line in (out.out + out.err).splitlines() if "probe nnp=" in line)  # the task log
    fields = dict(part.split("=", 1) for part in line.split("probe ", 1)[1].split()[:8])
    assert fields["nnp"] == "1" and int(fields["capeff"], 16) == 0
    assert fields["pids"] == "256" and fields["mem"] == str(2 * 1024**3)
    assert fields["uid"] == "1000" and fields["mlflow"] == "False"
    assert fields["image"].startswith(f"{base_image}@sha256:"), "the run records the exact image"
    token = op.container_environment()["AWS_SESSION_TOKEN"]
    assert fields["token"] == hashlib.sha256(token.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- MLflow connection


def test_mlflow_connection_credentials_reach_the_clients_and_never_the_uri(monkeypatch) -> None:
    from grounding_ops.pipeline import mlflow_connection
    from grounding_ops.pipeline.hooks import mlflow_tracking_uri

    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_MLFLOW",
        json.dumps(
            {
                "conn_type": "http",
                "host": "mlflow.internal",
                "schema": "https",
                "port": 5000,
                "login": "svc-grounding",
                "password": "conn-password-9Xq",
            }
        ),
    )
    for key in mlflow_connection.CREDENTIAL_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    assert mlflow_tracking_uri() == "https://mlflow.internal:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "svc-grounding"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "conn-password-9Xq"
    from mlflow.utils.credentials import get_default_host_creds  # what MLflow's REST clients read per request

    creds = get_default_host_creds("https://mlflow.internal:5000")
    assert (creds.username, creds.password) == ("svc-grounding", "conn-password-9Xq")

    monkeypatch.setenv(
        "AIRFLOW_CONN_GROUNDING_MLFLOW",
        json.dumps(
            {
                "conn_type": "http",
                "host": "http://embedded:url-password-7Zr@127.0.0.1:5310/",
                "extra": {"token": "bearer-token-3Kp"},
            }
        ),
    )
    uri = mlflow_tracking_uri()
    assert uri == "http://127.0.0.1:5310" and "url-password" not in uri
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "url-password-7Zr"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "bearer-token-3Kp"

"""Security: secrets never leak, containers are locked down, paths stay inside their roots,
manifests are verified before use, and the plugin needs an authenticated user.

Known fake secrets are set in the environment and the outputs of a real export (to the local S3)
and a real evaluation logging (to the local MLflow server) are grepped for them: every object
written, the CLI's stdout/stderr, captured logs, MLflow params/tags/artifacts, W&B offline files
and the plugin's JSON.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from grounding_ops.storage import StorageError, open_store

GROUNDING_OPS = Path(sys.executable).parent / "grounding-ops"
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY7Q4XZ0RELI",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-Zq81pL0vNc3Rk5",
    "WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd",
    "MLFLOW_TRACKING_TOKEN": "fake-mlflow-token-Yt92Lm",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-Hq55",
}


def _leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [name for name, value in SECRETS.items() if value in text]


def _grep_store(store: Any) -> dict[str, list[str]]:
    found = {}
    for info in store.list():
        leaked = _leaks(store.get_bytes(info.key))
        if leaked:
            found[info.key] = leaked
    return found


def _grep_tree(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            leaked = _leaks(path.read_bytes())
            if leaked:
                found[str(path)] = leaked
    return found


# --------------------------------------------------------------------------- secrets


def test_export_never_writes_or_prints_credentials(s3_service, tmp_path: Path) -> None:
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "synthetic", n_images=6, n_invalid=2)
    output = s3_service.uri(f"sec-{uuid.uuid4().hex[:8]}", "datasets")
    env = {**os.environ, **s3_service.env, **SECRETS}  # moto accepts any key pair
    proc = subprocess.run(
        [
            str(GROUNDING_OPS),
            "prepare",
            str(data.annotations),
            "--images-root",
            str(data.images_root),
            "--output",
            output,
            "--max-quarantine-fraction",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _leaks(proc.stdout + proc.stderr) == []
    store = open_store(output, s3_client=s3_service.client())
    written = [info.key for info in store.list()]
    assert any(k.endswith("manifest.json") for k in written) and any(k.endswith("quarantine.jsonl") for k in written)
    assert _grep_store(store) == {}


@pytest.mark.slow
def test_evaluation_logging_and_plugin_never_expose_credentials(
    mlflow_env, s3_service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from grounding_ops.pipeline.models_page import create_app
    from grounding_ops.registry.promotion import promote
    from grounding_ops.registry.tracking import log_evaluation, mlflow_client
    from test_faults import _evaluation

    for key, value in SECRETS.items():
        if not key.startswith("AWS_"):  # the S3 keys must stay valid for the artifact store
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    caplog.set_level(logging.DEBUG)
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    model = f"grounding-{prefix}"
    client = mlflow_client(mlflow_env.uri)
    log_evaluation(
        _evaluation(s3_service, prefix, "base", 0.2, "base"),
        client=client,
        experiment=prefix,
        wandb_dir=tmp_path / "wandb",
    )
    run_id = log_evaluation(
        _evaluation(s3_service, prefix, "cand", 0.7, "candidate"),
        client=client,
        experiment=prefix,
        wandb_dir=tmp_path / "wandb",
    )
    decision = promote(run_id, model_name=model, client=client, min_samples=10)
    assert decision.promoted

    run = client.get_run(run_id)
    assert _leaks(json.dumps({"params": run.data.params, "tags": run.data.tags})) == []
    version = client.get_model_version(model, decision.version)
    assert (
        _leaks(json.dumps({"tags": version.tags, "source": version.source, "description": version.description})) == []
    )
    artifacts = tmp_path / "artifacts"
    client.download_artifacts(run_id, "", str(artifacts))
    assert any(artifacts.rglob("metrics.json"))
    assert _grep_tree(artifacts) == {}
    if (tmp_path / "wandb").exists():
        assert _grep_tree(tmp_path / "wandb") == {}
    assert _leaks("\n".join(r.getMessage() for r in caplog.records)) == []

    async def any_user(request: Any, credentials: Any) -> dict[str, str]:
        return {"user": "test"}

    from grounding_ops.pipeline.models_page import PAGE_MLFLOW_VARIABLES

    for key in PAGE_MLFLOW_VARIABLES:  # the page shortens MLflow's timeouts in its process: undo after
        monkeypatch.delenv(key, raising=False)
    app = create_app(mlflow_env.uri, user_dependency=any_user, authorizer=lambda request, user: None, models=(model,))
    with TestClient(app) as http:
        response = http.get("/api/models", params={"model": model})
        assert response.status_code == 200, response.text
        assert decision.version in response.text
        assert _leaks(response.text) == []
        page = http.get("/models", params={"model": model})
        assert page.status_code == 200 and _leaks(page.text) == []


def test_container_credentials_only_as_private_environment() -> None:
    from grounding_ops.pipeline.docker_tasks import GroundingContainerOperator, docker_kwargs, s3_environment

    private = s3_environment(
        SECRETS["AWS_ACCESS_KEY_ID"],
        SECRETS["AWS_SECRET_ACCESS_KEY"],
        "fake-session-token-77",
        endpoint_url="http://127.0.0.1:9",
    )
    private["WANDB_API_KEY"] = SECRETS["WANDB_API_KEY"]
    command = [
        "grounding-ops",
        "train",
        "--engine",
        "cpu",
        "--preset",
        "tiny-cpu",
        "--dataset",
        "s3://b/d/v1",
        "--output",
        "s3://b/r/1",
    ]
    for engine in ("cpu", "gpu"):
        kwargs = docker_kwargs(
            engine=engine,
            command=command,
            container_name="c",
            private_environment=private,
            environment={"PYTHONUNBUFFERED": "1"},
            gpus=1 if engine == "gpu" else None,
        )
        public = {k: v for k, v in kwargs.items() if k != "private_environment"}
        assert _leaks(repr(public)) == [] and "fake-session-token-77" not in repr(public)
        assert kwargs["private_environment"]["AWS_SECRET_ACCESS_KEY"] == SECRETS["AWS_SECRET_ACCESS_KEY"]
    assert "private_environment" not in GroundingContainerOperator.template_fields
    with pytest.raises(ValueError, match="credentials"):
        docker_kwargs(
            engine="cpu",
            command=command,
            container_name="c",
            private_environment={},
            environment={"AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"]},
        )


def test_training_plan_and_lineage_carry_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan is rendered into the task's template fields, XCom and OpenLineage facets."""
    from grounding_ops.pipeline.lineage import operator_lineage
    from grounding_ops.pipeline.datasets import DatasetRef
    from grounding_ops.pipeline.plans import plan_training

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    ref = DatasetRef("v1", "s3://b/datasets/d/v1", "s3://b/datasets/d/v1/manifest.json", "param")
    plan = plan_training(
        {"engine": "cpu", "preset": "tiny-cpu"},
        ref,
        output_uri="s3://b/runs/r1",
        fingerprint="f",
        airflow_run="grounding_train/r1",
        s3_endpoint="http://127.0.0.1:9",
        tracking_uri="http://127.0.0.1:5",
    )
    assert _leaks(json.dumps(plan.to_dict())) == []
    facets = operator_lineage(plan.inputs, plan.outputs)
    assert _leaks(repr(facets)) == []


# --------------------------------------------------------------------------- container lockdown


@pytest.mark.parametrize("engine", ["cpu", "gpu"])
def test_training_container_is_locked_down(engine: str) -> None:
    from grounding_ops.pipeline.docker_tasks import docker_kwargs, host_config_options

    gpu = engine == "gpu"
    kwargs = docker_kwargs(
        engine=engine,
        command=["grounding-ops", "train"],
        container_name="c",
        private_environment={},
        gpus=8 if gpu else None,
        work_volume="grounding-ops-trainer-work" if gpu else None,
    )
    host = host_config_options(engine)
    assert host["cap_drop"] == ["ALL"] and host["security_opt"] == ["no-new-privileges:true"]
    assert host["pids_limit"] > 0 and kwargs["mem_limit"]
    user = str(kwargs["user"])
    assert user and user.split(":")[0] not in ("0", "root")
    assert kwargs["privileged"] is False
    assert not kwargs["cap_add"]
    # at most the named work volume: never a host path
    assert all(m["Type"] == "volume" and m["Source"] == "grounding-ops-trainer-work" for m in kwargs["mounts"])
    assert kwargs["mount_tmp_dir"] is False
    assert "docker.sock" not in repr(kwargs)
    assert isinstance(kwargs["command"], list)
    assert kwargs["auto_remove"] == "force"
    assert kwargs["retrieve_output"] is False
    assert (kwargs["device_requests"] is not None) == (engine == "gpu")


def test_trainer_image_runs_as_non_root(trainer_cpu_image) -> None:
    image = "grounding-ops/trainer-cpu:latest"
    inspect = subprocess.run(
        ["docker", "image", "inspect", image, "-f", "{{.Config.User}}"], capture_output=True, text=True, timeout=60
    )
    assert inspect.returncode == 0, inspect.stderr
    user = inspect.stdout.strip()
    assert user and user.split(":")[0] not in ("0", "root"), f"the image's default user is {user!r}"


# --------------------------------------------------------------------------- paths stay inside their roots


@pytest.mark.parametrize(
    "ref",
    [
        "../x.png",
        "a/../../x.png",
        "/etc/passwd",
        "..\\..\\x.png",
        "s3://other/x.png",
        "http://127.0.0.1/x.png",
        "file:///etc/passwd",
        "s3://imgs/../x.png",
    ],
)
def test_image_refs_cannot_escape_the_local_root(ref: str, tmp_path: Path) -> None:
    from grounding_ops.data.images import ImageResolver, UnsafeImagePath

    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafeImagePath):
        ImageResolver(root).locate(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "s3://imgs/other-prefix/x.png",
        "s3://imgs/data/../other/x.png",
        "/x.png",
        "s3://elsewhere/data/x.png",
        "../x.png",
    ],
)
def test_image_refs_cannot_escape_the_s3_root(ref: str) -> None:
    from grounding_ops.data.images import ImageResolver, UnsafeImagePath

    resolver = ImageResolver("s3://imgs/data", s3_client=object())
    with pytest.raises(UnsafeImagePath):
        resolver.locate(ref)
    assert resolver.locate("sub/x.png") == ("s3://imgs", "data/sub/x.png")


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    from grounding_ops.data.images import ImageResolver, UnsafeImagePath

    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UnsafeImagePath):
        ImageResolver(root).locate("link.png")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a/../../../etc/passwd"])
def test_store_keys_cannot_escape(key: str, tmp_path: Path) -> None:
    from grounding_ops.storage import S3Store

    with pytest.raises(StorageError):
        open_store(str(tmp_path / "store")).put_bytes(key, b"x")
    with pytest.raises(StorageError):
        S3Store("bucket", "prefix", client=object()).url(key)


@pytest.mark.parametrize("rel", ["../../escaped.bin", "/ABS/escaped.bin"])
def test_checkpoint_marker_cannot_write_outside_the_checkpoint(rel: str, tmp_path: Path) -> None:
    """A checkpoint's completion marker comes from the (shared) output bucket: the file names it
    lists must not make the trainer write outside its checkpoint folder."""
    from grounding_ops.training.checkpoints import MARKER_FILE, download_checkpoint

    outside = tmp_path / "outside"
    outside.mkdir()
    rel = rel.replace("/ABS", str(outside))
    store = open_store(str(tmp_path / "output"))
    remote = "checkpoints/global_step_1"
    store.put_bytes(f"{remote}/model.bin", b"weights")
    if rel.startswith("/"):  # the object an absolute name maps to under the checkpoint prefix
        store.put_bytes(f"{remote}/{rel.lstrip('/')}", b"pwned")
    store.put_bytes(f"{remote}/{MARKER_FILE}", json.dumps({"step": 1, "files": {"model.bin": 7, rel: 5}}).encode())
    local = tmp_path / "work" / "checkpoints"
    try:
        download_checkpoint(store, 1, local)
    except (StorageError, ValueError):
        pass
    escaped = [p for p in tmp_path.rglob("escaped.bin") if "output" not in p.parts]
    assert escaped == [], f"the marker made the trainer write {escaped}"


# --------------------------------------------------------------------------- manifests verified before use


def test_training_fetch_verifies_the_manifest(tmp_path: Path) -> None:
    from grounding_ops.data.prepare import PrepareSettings, prepare
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.training import runner

    data = generate_synthetic(tmp_path / "synthetic", n_images=6)
    result = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=str(tmp_path / "ds"),
        settings=PrepareSettings(),
    )
    train = Path(result.dataset_uri) / "train.parquet"
    blob = bytearray(train.read_bytes())
    blob[len(blob) // 3] ^= 0x55
    train.write_bytes(bytes(blob))
    with pytest.raises(Exception, match="does not match its manifest") as failure:
        runner.fetch_dataset(str(tmp_path / "ds"), tmp_path / "dest", None)
    assert "Traceback" not in str(failure.value)


def test_container_network_is_a_setting_host_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from grounding_ops.pipeline.docker_tasks import NETWORK_ENV, docker_kwargs

    def network() -> str:
        return docker_kwargs(engine="cpu", command=["grounding-ops"], container_name="c")["network_mode"]

    assert network() == "host"  # the local profile: its dockerd has no bridge
    monkeypatch.setenv(NETWORK_ENV, "grounding-trainers")
    assert network() == "grounding-trainers"
    for bad in ("container:airflow-worker", "a b"):
        monkeypatch.setenv(NETWORK_ENV, bad)
        with pytest.raises(ValueError, match=NETWORK_ENV):
            network()

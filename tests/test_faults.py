"""Fault injection against the real local services: the platform fails loudly and recovers.

1. S3 endpoint gone in the middle of an export: clear error, no visible partial version, a retry
   after it returns completes and uploads only what was missing.
2. MLflow server down during promotion: clear error; after a restart a retry leaves exactly one
   model version and consistent aliases.
3. Disk full / unwritable output: clear one-line error, no corrupt or half-written files.
4. Training container SIGKILLed mid-run: the rerun resumes from the last S3 checkpoint and ends
   at the target step.
5. Task killed from Airflow: DockerOperator.on_kill stops and removes the container; names are
   unique per try so a retry never collides with a leftover.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from grounding_ops import services
from grounding_ops.storage import StorageError, open_store, s3_client_from_env

REPO = Path(__file__).resolve().parent.parent
GROUNDING_OPS = Path(sys.executable).parent / "grounding-ops"
TRAINER_IMAGE = "grounding-ops/trainer-cpu:latest"
BASE_IMAGE = "grounding-ops/base:latest"


# --------------------------------------------------------------------------- helpers


class TcpEndpoint:
    """A loopback TCP forwarder standing in for "the S3 endpoint" the clients talk to.

    ``stop()`` closes the listener and every open connection (the endpoint is gone: clients get
    connection refused/reset); ``start()`` brings it back on the same port. The object store
    behind it (a moto server started here) keeps its state, as a real S3 does through an outage;
    moto keeps objects in memory only, so stopping moto itself would also erase what a retry must
    find.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = services.free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept() (close() alone would not on Linux)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class CountingStore:
    """An ObjectStore that counts uploads and can run a hook after the n-th one."""

    def __init__(self, inner: Any, after_upload: Any = None) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.uploaded: list[str] = []
        self.bytes = 0
        self.after_upload = after_upload

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, key: str, size: int) -> None:
        self.uploaded.append(key)
        self.bytes += size
        if self.after_upload is not None:
            self.after_upload(len(self.uploaded))

    def upload_file(self, key: str, path: Any, **kwargs: Any) -> None:
        self.inner.upload_file(key, path, **kwargs)
        self._count(key, Path(path).stat().st_size)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)
        self._count(key, len(data))


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = int(item["Size"])
    return out


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------- 1. S3 endpoint down mid-export


@pytest.fixture()
def own_s3(tmp_path: Path):
    """A moto server of this test only (so it can be taken away) behind a TcpEndpoint."""
    settings = services.isolated_settings(tmp_path / "s3-state")
    services.start_s3(settings)
    endpoint = TcpEndpoint(settings.s3_port)
    endpoint.start()
    try:
        yield settings, endpoint
    finally:
        endpoint.stop()
        services.s3_process(settings).stop()


def _s3_client(settings: Any, endpoint_url: str) -> Any:
    return s3_client_from_env(
        endpoint_url=endpoint_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name="us-east-1",
    )


@pytest.mark.slow
def test_s3_endpoint_lost_mid_export_then_retry_uploads_only_missing(own_s3, tmp_path: Path) -> None:
    from grounding_ops.data.prepare import PrepareSettings, export_and_publish, validate_inputs
    from grounding_ops.data.synthetic import generate_synthetic

    settings, endpoint = own_s3
    direct = services.s3_client(settings)  # behind the endpoint: what really is in the bucket
    data = generate_synthetic(tmp_path / "synthetic", n_images=12)
    work = tmp_path / "work"
    validate_inputs(
        [str(data.annotations)], images_root=str(data.images_root), settings=PrepareSettings(), work_dir=work
    )
    output = f"s3://{settings.bucket}/datasets/demo"

    def lose_endpoint(n_uploaded: int) -> None:
        if n_uploaded == 2:
            endpoint.stop()

    client = _s3_client(settings, endpoint.url)
    first = CountingStore(open_store(output, s3_client=client), after_upload=lose_endpoint)
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        export_and_publish(work, output_uri=output, store=first)
    assert time.monotonic() - started < 120, "an unreachable endpoint must fail fast, not hang"
    message = str(failure.value)
    assert output in message and ("connect" in message.lower() or "endpoint" in message.lower()), message

    visible = _keys(direct, settings.bucket, "datasets/demo/")
    assert not any(k.endswith("manifest.json") or k.endswith("latest.json") for k in visible), visible
    assert len(visible) == len(first.uploaded) == 2, (visible, first.uploaded)

    endpoint.start()
    retry = CountingStore(open_store(output, s3_client=_s3_client(settings, endpoint.url)))
    result = export_and_publish(work, output_uri=output, store=retry)
    after = _keys(direct, settings.bucket, "datasets/demo/")
    assert f"datasets/demo/{result.version}/manifest.json" in after
    assert "datasets/demo/latest.json" in after
    assert not set(first.uploaded) & set(retry.uploaded), (
        f"the retry uploaded {first.uploaded} again although the first attempt had stored them "
        f"(retry uploaded {len(retry.uploaded)} objects, {retry.bytes} bytes)"
    )
    assert len(retry.uploaded) == len(after) - len(first.uploaded)

    # and a third run with the endpoint up uploads nothing at all
    again = CountingStore(open_store(output, s3_client=_s3_client(settings, endpoint.url)))
    assert export_and_publish(work, output_uri=output, store=again).bytes_uploaded == 0
    assert again.uploaded == []


@pytest.mark.slow
def test_s3_endpoint_down_cli_prepare_one_line_error(own_s3, tmp_path: Path) -> None:
    from grounding_ops.data.synthetic import generate_synthetic

    settings, endpoint = own_s3
    endpoint.stop()
    data = generate_synthetic(tmp_path / "synthetic", n_images=4)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(
        [
            str(GROUNDING_OPS),
            "prepare",
            str(data.annotations),
            "--images-root",
            str(data.images_root),
            "--output",
            f"s3://{settings.bucket}/datasets/x",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _no_traceback(proc)
    assert f"s3://{settings.bucket}/datasets/x" in line


def test_s3_upload_refused_by_server_is_a_storage_error(s3_service, tmp_path: Path) -> None:
    """A server-side refusal during upload_file (here: no such bucket) must surface as StorageError
    (the CLI turns that into a one-line error), not boto3's S3UploadFailedError."""
    store = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", s3_client=s3_service.client())
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    with pytest.raises(StorageError, match="no-such-bucket"):
        store.upload_file("f.bin", path)


# --------------------------------------------------------------------------- 2. MLflow down during promotion


@pytest.fixture()
def own_mlflow(s3_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An MLflow server of this test only (artifacts in the session's S3), fast-failing clients."""
    settings = dataclasses.replace(
        s3_env.settings, state_dir=tmp_path / "mlflow-state", mlflow_port=services.free_port()
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    services.start_mlflow(settings)
    try:
        yield settings
    finally:
        services.mlflow_process(settings).stop()


def _evaluation(s3: Any, prefix: str, name: str, acc: float, role: str) -> str:
    from grounding_ops.testing import write_stand_in_evaluation

    n, hits = 50, round(acc * 50)
    output = write_stand_in_evaluation(
        s3.uri(prefix, "evaluations", name),
        ious=[0.8 if i < hits else 0.2 for i in range(n)],
        model_uri=s3.uri(prefix, "models", name),
        dataset_uri=s3.uri(prefix, "datasets", "v1"),
        dataset_version="v1",
        role=role,
        phrase="the box",
    )
    if role == "candidate":  # a stand-in model folder: promotion logs the candidate as an MLflow model
        key = f"{prefix}/models/{name}/config.json"
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b'{"model_type": "qwen2_5_vl"}')
    return output


class _ServerDiesAfter:
    """An MlflowClient whose server is stopped right after ``method`` succeeded once."""

    def __init__(self, client: Any, method: str, kill: Any) -> None:
        self._client, self._method, self._kill = client, method, kill

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self._kill()
            return result

        return call


@pytest.mark.slow
def test_mlflow_down_during_promotion_then_retry_is_consistent(own_mlflow, s3_service, tmp_path: Path) -> None:
    from grounding_ops.registry.promotion import PromotionError, promote
    from grounding_ops.vocabulary import CHALLENGER_ALIAS as CHALLENGER, CHAMPION_ALIAS as CHAMPION
    from grounding_ops.registry.tracking import log_evaluation, mlflow_client

    settings = own_mlflow
    prefix = f"fault-mlflow-{uuid.uuid4().hex[:8]}"
    model = f"grounding-{prefix}"
    client = mlflow_client(settings.mlflow_uri)
    log_evaluation(_evaluation(s3_service, prefix, "base", 0.2, "base"), client=client, experiment=prefix)
    run_id = log_evaluation(
        _evaluation(s3_service, prefix, "candidate", 0.6, "candidate"), client=client, experiment=prefix
    )

    stop = lambda: services.mlflow_process(settings).stop()  # noqa: E731
    flaky = _ServerDiesAfter(client, "create_model_version", stop)
    with pytest.raises(PromotionError) as failure:
        promote(run_id, model_name=model, client=flaky, min_samples=10)
    assert settings.mlflow_uri in str(failure.value), str(failure.value)

    services.start_mlflow(settings)
    client = mlflow_client(settings.mlflow_uri)
    decision = promote(run_id, model_name=model, client=client, min_samples=10)
    assert decision.promoted, decision.summary()
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == 1, [v.version for v in versions]
    aliases = dict(client.get_registered_model(model).aliases)
    assert aliases == {CHAMPION: decision.version, CHALLENGER: decision.version}

    again = promote(run_id, model_name=model, client=client, min_samples=10)
    assert not again.changed and again.version == decision.version
    assert len(client.search_model_versions(f"name = '{model}'")) == 1


@pytest.mark.slow
def test_mlflow_down_cli_promote_one_line_error(own_mlflow, tmp_path: Path) -> None:
    services.mlflow_process(own_mlflow).stop()
    env = {**os.environ, "MLFLOW_TRACKING_URI": own_mlflow.mlflow_uri}
    proc = subprocess.run(
        [str(GROUNDING_OPS), "promote", "--candidate", "0" * 32], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    line = _no_traceback(proc)
    assert own_mlflow.mlflow_uri in line, line


# --------------------------------------------------------------------------- 3. disk full / unwritable output


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and (p.name.endswith(".part") or p.name.startswith("."))]


@pytest.mark.parametrize("limit", [20_000, 300_000])
def test_disk_full_during_prepare_clean_error_no_corrupt_files(limit: int, tmp_path: Path) -> None:
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "synthetic", n_images=12)
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [
            str(GROUNDING_OPS),
            "prepare",
            str(data.annotations),
            "--images-root",
            str(data.images_root),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(limit),
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    line = _no_traceback(proc)
    assert "too large" in line.lower() or "disk" in line.lower(), line
    if out.exists():
        assert not list(out.rglob("manifest.json")) and not (out / "latest.json").exists()
        assert _partials(out) == [], "temporary files are removed on failure"


def test_output_under_a_regular_file_is_a_clean_error(tmp_path: Path) -> None:
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "synthetic", n_images=4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where a folder should be\n")
    proc = subprocess.run(
        [
            str(GROUNDING_OPS),
            "prepare",
            str(data.annotations),
            "--images-root",
            str(data.images_root),
            "--output",
            str(blocker / "datasets"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _no_traceback(proc)
    assert str(blocker) in line, line
    assert blocker.read_text().startswith("a regular file")


def test_local_store_write_past_limit_leaves_old_object_intact(tmp_path: Path) -> None:
    """LocalStore writes a temporary name and renames: a failed write keeps the previous object."""
    root = tmp_path / "store"
    open_store(str(root)).put_bytes("v1/manifest.json", b'{"old": true}')
    code = (
        "import sys\n"
        "from grounding_ops.storage import open_store, StorageError\n"
        "try:\n"
        "    open_store(sys.argv[1]).put_bytes('v1/manifest.json', b'x' * 100000)\n"
        "except StorageError as exc:\n"
        "    print('refused:', exc); sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(10_000),
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "cannot write" in proc.stdout
    assert (root / "v1" / "manifest.json").read_bytes() == b'{"old": true}'
    assert sorted(p.name for p in (root / "v1").iterdir()) == ["manifest.json"]


# --------------------------------------------------------------------------- 4. training container SIGKILL


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def _image_has_runner(image: str) -> bool:
    if _docker("image", "inspect", image, check=False).returncode != 0:
        return False
    probe = _docker(
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import grounding_ops.training.runner",
        check=False,
        timeout=300,
    )
    return probe.returncode == 0


def _entrypoint(image: str) -> list[str]:
    out = _docker("image", "inspect", image, "-f", "{{json .Config.Entrypoint}}").stdout.strip()
    return json.loads(out) or []


def _entry_args(image: str, subcommand: str) -> list[str]:
    """The container arguments that run ``grounding-ops <subcommand>`` given the image's entrypoint."""
    return [subcommand] if _entrypoint(image) == ["grounding-ops"] else ["grounding-ops", subcommand]


@pytest.mark.docker
def test_train_task_command_matches_the_image_entrypoint(trainer_cpu_image) -> None:
    """The DAG's container command, appended to the image's ENTRYPOINT, must be a valid CLI call."""
    from grounding_ops.pipeline.datasets import DatasetRef
    from grounding_ops.pipeline.plans import plan_training

    ref = DatasetRef("v1", "s3://b/datasets/d/v1", "s3://b/datasets/d/v1/manifest.json", "param")
    plan = plan_training(
        {"engine": "cpu", "preset": "tiny-cpu"}, ref, output_uri="s3://b/runs/r1", fingerprint="f", airflow_run="r"
    )
    argv = _entrypoint(TRAINER_IMAGE) + plan.command
    proc = _docker(
        "run", "--rm", "--network", "host", TRAINER_IMAGE, *plan.command[:1], "--help", check=False, timeout=300
    )
    assert argv[:2] == ["grounding-ops", "train"], f"the container would run {argv[:4]}"
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


@pytest.mark.slow
@pytest.mark.docker
def test_training_container_sigkill_resumes_to_target(trainer_cpu_image, s3_service, tmp_path: Path) -> None:
    from grounding_ops.data.prepare import PrepareSettings, prepare
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.training.checkpoints import remote_complete_steps

    assert _image_has_runner(TRAINER_IMAGE)
    from grounding_ops.training.presets import get_preset

    preset = get_preset("tiny-cpu")
    target = 30  # enough steps (~0.3 s each) that the kill lands mid-run
    prefix = f"fault-train-{uuid.uuid4().hex[:8]}"
    client = s3_service.client()
    data = generate_synthetic(tmp_path / "synthetic", n_images=16)
    dataset = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=s3_service.uri(prefix, "datasets"),
        settings=PrepareSettings(min_pixels=preset.min_pixels, max_pixels=preset.max_pixels),
        s3_client=client,
    )
    output = s3_service.uri(prefix, "run")
    store = open_store(output, s3_client=client)
    env_args = [a for k, v in s3_service.env.items() for a in ("-e", f"{k}={v}")]

    def start(name: str) -> None:
        _docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--user",
            "1000:1000",
            *env_args,
            "-e",
            "WANDB_MODE=disabled",
            TRAINER_IMAGE,
            *_entry_args(TRAINER_IMAGE, "train"),
            "--engine",
            "cpu",
            "--preset",
            "tiny-cpu",
            "--set",
            f"total_steps={target}",
            "--set",
            "save_freq=1",
            "--dataset",
            dataset.dataset_uri,
            "--output",
            output,
        )

    def wait_exit(name: str, timeout: float) -> int:
        return int(_docker("wait", name, timeout=timeout).stdout.strip())

    first, second, third = (f"{prefix}-try{i}" for i in (1, 2, 3))
    try:
        start(first)
        deadline = time.monotonic() + 900
        while not remote_complete_steps(store):
            state = _docker("inspect", "-f", "{{.State.Running}}", first).stdout.strip()
            if state != "true":
                logs = _docker("logs", first, check=False)
                pytest.fail(
                    f"the first training run ended before its first checkpoint reached S3:\n"
                    f"{(logs.stdout + logs.stderr)[-4000:]}"
                )
            assert time.monotonic() < deadline, "no checkpoint reached S3 within 15 minutes"
            time.sleep(0.5)
        _docker("kill", "--signal", "KILL", first)
        killed_at = max(remote_complete_steps(store))
        assert killed_at < target, "the kill must land mid-run (raise total_steps if training got faster)"
        assert not store.exists("run.json"), "a killed run must not leave a final run.json"

        start(second)
        code = wait_exit(second, 1800)
        logs = _docker("logs", second, check=False)
        assert code == 0, (logs.stdout + logs.stderr)[-4000:]
        assert f"global_step_{killed_at}" in logs.stdout + logs.stderr, "the rerun resumes from the S3 checkpoint"
        run = json.loads(store.get_bytes("run.json"))
        assert run["steps_done"] == target, run
        assert max(remote_complete_steps(store)) == target

        start(third)  # resuming at the target trains zero steps: that is a failure, not a success
        assert wait_exit(third, 1800) != 0
    finally:
        for name in (first, second, third):
            _docker("rm", "-f", name, check=False)


# --------------------------------------------------------------------------- 5. task killed from Airflow


def _container_exists(name: str) -> bool:
    out = _docker("ps", "-a", "--filter", f"name=^/{name}$", "--format", "{{.Names}}", check=False).stdout
    return name in out.split()


def _operator(monkeypatch: pytest.MonkeyPatch, command: list[str]) -> Any:
    from grounding_ops.pipeline import docker_tasks

    monkeypatch.setattr(docker_tasks, "airflow_private_environment", lambda *a, **k: {"AWS_SECRET_ACCESS_KEY": "s"})
    monkeypatch.setattr(docker_tasks, "image_override", lambda engine: BASE_IMAGE)
    return docker_tasks.GroundingContainerOperator(task_id="train", plan={"engine": "cpu", "command": command})


def _context(run_id: str, try_number: int) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="grounding_train", run_id=run_id, task_id="train", try_number=try_number, map_index=-1)
    return {"ti": ti}


@pytest.mark.docker
def test_on_kill_stops_and_removes_the_container(base_image, monkeypatch: pytest.MonkeyPatch) -> None:
    from grounding_ops.pipeline.docker_tasks import container_name

    run_id = f"manual__fault-{uuid.uuid4().hex[:8]}"
    name = container_name("grounding_train", run_id, "train", 1)
    op = _operator(monkeypatch, ["sleep", "600"])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = op.execute(_context(run_id, 1))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not _docker("ps", "--filter", f"name=^/{name}$", "--format", "{{.Names}}").stdout.strip():
            assert thread.is_alive(), outcome
            assert time.monotonic() < deadline, "the container never started"
            time.sleep(0.5)
        inspect = json.loads(_docker("inspect", name).stdout)[0]
        assert inspect["Config"]["User"] == "1000:1000"
        assert inspect["HostConfig"]["Privileged"] is False
        assert inspect["HostConfig"]["NetworkMode"] == "host"
        assert not inspect["Mounts"], inspect["Mounts"]
        op.on_kill()
        thread.join(60)
        assert not thread.is_alive(), "execute() returns once the container is stopped"
        assert "error" in outcome, "a killed task fails"
        assert not _container_exists(name), "on_kill removes the container"
    finally:
        _docker("rm", "-f", name, check=False)


@pytest.mark.docker
def test_retry_never_collides_with_a_leftover_container(base_image, monkeypatch: pytest.MonkeyPatch) -> None:
    from grounding_ops.pipeline.docker_tasks import container_name

    run_id = f"scheduled__2026-01-01T02:00:00+00:00-{uuid.uuid4().hex[:6]}"
    names = {container_name("grounding_train", run_id, "train", t, m) for t in (1, 2, 3) for m in (-1, 0, 1)}
    assert len(names) == 9
    long_a = container_name("grounding_train", "x" * 300 + "a", "train", 1)
    long_b = container_name("grounding_train", "x" * 300 + "b", "train", 1)
    assert long_a != long_b and len(long_a) <= 128

    leftover = container_name("grounding_train", run_id, "train", 1)
    _docker("run", "-d", "--name", leftover, "--network", "host", BASE_IMAGE, "sleep", "600")
    try:
        op = _operator(monkeypatch, ["true"])
        op.execute(_context(run_id, 2))  # try 2 runs although try 1's container is still there
        assert not _container_exists(container_name("grounding_train", run_id, "train", 2))
        assert _container_exists(leftover)
    finally:
        _docker("rm", "-f", leftover, check=False)


# --------------------------------------------------------------------------- 6. scheduler restarted


@pytest.mark.slow
def test_scheduler_restart_mid_run_completes_without_repeating_finished_work(airflow_service) -> None:
    """Stop the scheduler (and with it the tasks it runs) once the first task has finished, start it
    again: the DAG run still succeeds, and the finished task is not run a second time."""
    from grounding_ops import services

    dag_id = "grounding_data"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            airflow_service.api("GET", f"/api/v2/dags/{dag_id}")
            break
        except Exception:
            time.sleep(3)
    airflow_service.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run = airflow_service.api(
        "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {"input_uri": "demo"}}
    )
    run_path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"

    def task(task_id: str) -> dict[str, Any]:
        return airflow_service.api("GET", f"{run_path}/taskInstances/{task_id}")

    deadline = time.monotonic() + 300
    while task("locate").get("state") != "success":
        assert time.monotonic() < deadline, "the first task did not finish within 5 minutes"
        time.sleep(1)
    scheduler = next(p for p in services.airflow_processes(airflow_service.settings) if p.name == "airflow-scheduler")
    assert scheduler.stop(), "the scheduler was not running"
    time.sleep(3)
    scheduler.start()

    deadline = time.monotonic() + 600
    state = ""
    while time.monotonic() < deadline:
        state = airflow_service.api("GET", run_path)["state"]
        if state in ("success", "failed"):
            break
        time.sleep(3)
    assert state == "success", {t: task(t).get("state") for t in ("locate", "validate", "export", "publish")}
    assert task("locate")["try_number"] == 1, "the finished task ran again after the restart"

"""Pytest fixtures that start the REAL embedded services for a test session.

Loaded by the test suites with ``pytest_plugins = ["grounding_ops.testing"]``. Each
service runs on free 127.0.0.1 ports with its own state directory, so tests never
touch a developer's ``make services`` instance, and each is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from grounding_ops import services
from grounding_ops.settings import ServiceSettings


# Fixtures that start a real process, by the marker a test using them gets (see
# :func:`pytest_collection_modifyitems`): `make test-unit` deselects them, so it needs no service.
SERVICE_FIXTURES: dict[str, str] = {
    "s3_service": "services",
    "s3_env": "services",
    "mlflow_service": "services",
    "mlflow_env": "services",
    "airflow_service": "services",
    "airflow_db": "services",
    "ray_head": "services",
    "docker_daemon": "docker",
    "base_image": "docker",
    "trainer_cpu_image": "docker",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "services: starts a real local service (S3, MLflow, Airflow, Ray); "
        "added automatically from the fixtures a test uses",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it really starts, from the fixtures it uses (directly or not)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker in sorted({SERVICE_FIXTURES[name] for name in names & set(SERVICE_FIXTURES)}):
            item.add_marker(marker)


@dataclass(frozen=True)
class S3Service:
    settings: ServiceSettings

    @property
    def endpoint(self) -> str:
        return self.settings.s3_endpoint

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.settings.client_env().items() if k.startswith("AWS_")}

    def client(self) -> Any:
        return services.s3_client(self.settings)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class MlflowService:
    settings: ServiceSettings

    @property
    def uri(self) -> str:
        return self.settings.mlflow_uri

    @property
    def env(self) -> dict[str, str]:
        return self.settings.client_env()


@dataclass(frozen=True)
class AirflowService:
    settings: ServiceSettings

    @property
    def url(self) -> str:
        return self.settings.airflow_url

    @property
    def username(self) -> str:
        return self.settings.airflow_admin

    @property
    def password(self) -> str:
        return services.airflow_password(self.settings)

    @property
    def env(self) -> dict[str, str]:
        return services.airflow_env(self.settings)

    def api_token(self) -> str:
        return services.airflow_token(self.settings)

    def api(self, method: str, path: str, body: Any | None = None) -> Any:
        """Call Airflow's REST API (``/api/v2/...``) as the admin user; returns parsed JSON."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_token()}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            raw = response.read()
        return json.loads(raw) if raw else None


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory: pytest.TempPathFactory) -> ServiceSettings:
    return services.isolated_settings(Path(tmp_path_factory.mktemp("services")))


@pytest.fixture(scope="session")
def s3_service(service_settings: ServiceSettings) -> Iterator[S3Service]:
    services.start_s3(service_settings)
    try:
        yield S3Service(service_settings)
    finally:
        services.s3_process(service_settings).stop()


@pytest.fixture()
def s3_env(s3_service: S3Service, monkeypatch: pytest.MonkeyPatch) -> S3Service:
    """Point boto3's standard configuration (this test's environment) at the local S3."""
    for key, value in s3_service.env.items():
        monkeypatch.setenv(key, value)
    return s3_service


@pytest.fixture(scope="session")
def mlflow_service(s3_service: S3Service) -> Iterator[MlflowService]:
    settings = s3_service.settings
    services.start_mlflow(settings)
    try:
        yield MlflowService(settings)
    finally:
        services.mlflow_process(settings).stop()


@pytest.fixture()
def mlflow_env(mlflow_service: MlflowService, monkeypatch: pytest.MonkeyPatch) -> MlflowService:
    for key, value in mlflow_service.env.items():
        monkeypatch.setenv(key, value)
    return mlflow_service


@pytest.fixture(scope="session")
def airflow_service(mlflow_service: MlflowService) -> Iterator[AirflowService]:
    settings = mlflow_service.settings
    services.start_airflow(settings)
    try:
        yield AirflowService(settings)
    finally:
        for proc in reversed(services.airflow_processes(settings)):
            proc.stop()


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reachable Docker daemon; started here (as root on Debian) and stopped after, if none is."""
    host = os.environ.get("DOCKER_HOST", f"unix://{services.DOCKER_SOCKET}")
    if services.docker_reachable():
        yield host
        return
    settings = ServiceSettings(state_dir=Path(tmp_path_factory.mktemp("docker")))
    services.start_docker(settings)  # raises with the log path when it cannot
    try:
        yield host
    finally:
        services.docker_process(settings).stop()


@pytest.fixture(scope="session")
def base_image(docker_daemon: str) -> str:
    """The project's base image, built (offline) once per session; cached rebuilds take seconds."""
    from grounding_ops.images import build_base_image

    return build_base_image()


@pytest.fixture(scope="session")
def trainer_cpu_image(docker_daemon: str) -> str:
    """The CPU trainer image with this checkout's code (its pinned-deps layer is cached by pin hash)."""
    from grounding_ops.images import build_trainer_cpu_image

    return build_trainer_cpu_image()


def write_verl_step(
    root: Path, step: int, *, world_size: int = 1, ranks: tuple[int, ...] | None = None, tracker: bool = True
) -> Path:
    """A ``global_step_N`` folder laid out as verl 0.9.1's FSDP checkpoint manager writes it
    (``actor/`` shards of ``ranks``, ``fsdp_config.json``, ``huggingface/config.json``, ``data.pt``),
    with placeholder bytes; the tracker file is moved to ``step`` when ``tracker``."""
    from grounding_ops.training import checkpoints as ckpt

    folder = ckpt.step_dir(root, step)
    actor = folder / "actor"
    (actor / "huggingface").mkdir(parents=True, exist_ok=True)
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world_size}))
    (actor / "huggingface" / "config.json").write_text("{}")
    for rank in range(world_size) if ranks is None else ranks:
        (actor / f"model_world_size_{world_size}_rank_{rank}.pt").write_bytes(b"shard")
    (folder / "data.pt").write_bytes(b"dataloader state")
    if tracker:
        ckpt.write_tracker(root, max(step, ckpt.read_tracker(root) or 0))
    return folder


def write_stand_in_evaluation(
    output_uri: str,
    *,
    ious: list[float],
    model_uri: str,
    dataset_uri: str,
    dataset_version: str,
    split: str = "val",
    role: str = "candidate",
    tags: dict[str, str] | None = None,
    lineage: Any = None,
    phrase: str = "the red circle",
    s3_client: Any | None = None,
) -> str:
    """What ``grounding-ops evaluate`` writes, for one sample per IoU in ``ious`` (no model runs).

    The predictions, report and ``metrics.json`` are the real writer's
    (:func:`grounding_ops.evaluation.evaluate.write_outputs`); only the answers are made up:
    every sample's predicted box scores the given IoU. Returns ``output_uri``.
    """
    import io

    from PIL import Image

    from grounding_ops.evaluation.evaluate import EvalSample, EvaluationSettings, Prediction, write_outputs
    from grounding_ops.evaluation.evaluation_record import ModelLineage

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 180, 40)).save(buffer, format="PNG")
    png = buffer.getvalue()
    box = [4.0, 4.0, 20.0, 20.0]
    samples = [
        EvalSample(f"{split}-{i}", "synthetic", phrase, "qwen2.5-vl", png, [box], (32, 24), (28, 28))
        for i in range(len(ious))
    ]
    predictions = [
        Prediction(f"{split}-{i}", "synthetic", phrase, "[...]", [box], [box], iou, iou, iou, True, "", 1, 1)
        for i, iou in enumerate(ious)
    ]
    settings = EvaluationSettings(
        model_uri=model_uri,
        dataset_uri=dataset_uri,
        dataset_version=dataset_version,
        dataset_manifest_sha256="",
        split=split,
        protocol="qwen2.5-vl",
        engine="transformers",
        batch_size=8,
        max_new_tokens=64,
        max_samples=None,
        role=role,
        tags=dict(tags or {}),
        lineage=lineage if lineage is not None else ModelLineage(),
    )
    write_outputs(output_uri, info=settings, samples=samples, predictions=predictions, seconds=1.0, s3_client=s3_client)
    return output_uri


def marked_records(output: str, marker: str) -> list[Any]:
    """The JSON values a child process printed after ``marker`` (e.g. ``"STATES "``), in order.

    A log line another thread writes can land on the same line as the printed value, before or
    after it; each value is decoded on its own from right after its marker, whatever follows it.
    """
    decoder = json.JSONDecoder()
    found = []
    for chunk in output.split(marker)[1:]:
        try:
            value, _ = decoder.raw_decode(chunk)
        except ValueError:
            continue
        found.append(value)
    return found

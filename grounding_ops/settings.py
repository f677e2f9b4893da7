"""Platform configuration, read from environment variables with embedded defaults.

Every knob has one environment variable; ``grounding-ops services env`` prints the
values the embedded local services use so a shell can ``eval`` them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from grounding_ops.vocabulary import BUCKET_ENV, DEFAULT_BUCKET, DEMO_TRAIN_PRESET, TRAIN_PRESET_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _port(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={port} is outside 1..65535")
    return port


PROFILES = ("local", "celery")


def _profile(value: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"GROUNDING_OPS_PROFILE={value!r} is unknown: use one of {', '.join(PROFILES)}")
    return value


@dataclass(frozen=True)
class ServiceSettings:
    """Where the embedded local services live and listen (always 127.0.0.1)."""

    state_dir: Path
    host: str = "127.0.0.1"
    s3_port: int = 9310
    mlflow_port: int = 5310
    airflow_port: int = 8310
    bucket: str = "grounding-ops"
    # Fake credentials for the local S3 endpoint only; real deployments use connections.
    s3_access_key: str = "grounding-local"
    s3_secret_key: str = field(default="grounding-local-secret", repr=False)
    airflow_admin: str = "admin"
    # "local": SQLite + LocalExecutor (make demo); "celery": Postgres + Redis + CeleryExecutor.
    profile: str = "local"
    # The training form's default preset in this deployment (the asset-triggered and nightly runs
    # train it): the CPU twin's learning recipe, so that the demo's first night learns for real.
    train_preset: str = DEMO_TRAIN_PRESET

    @classmethod
    def from_env(cls) -> "ServiceSettings":
        return cls(
            state_dir=Path(_env("GROUNDING_OPS_STATE_DIR", str(REPO_ROOT / ".services"))).resolve(),
            s3_port=_port("GROUNDING_OPS_S3_PORT", 9310),
            mlflow_port=_port("GROUNDING_OPS_MLFLOW_PORT", 5310),
            airflow_port=_port("GROUNDING_OPS_AIRFLOW_PORT", 8310),
            bucket=_env(BUCKET_ENV, DEFAULT_BUCKET),
            profile=_profile(_env("GROUNDING_OPS_PROFILE", "local")),
            train_preset=_env(TRAIN_PRESET_ENV, DEMO_TRAIN_PRESET),
        )

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def input_roots(self) -> str:
        """Where the embedded Airflow's data form may read (``GROUNDING_OPS_INPUT_ROOTS``): the
        bucket's ``incoming/`` prefix and the demo's local folder, unless set in the environment."""
        return _env("GROUNDING_OPS_INPUT_ROOTS", f"s3://{self.bucket}/incoming,{self.state_dir / 'demo'}")

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def client_env(self) -> dict[str, str]:
        """Environment that points boto3, MLflow and W&B clients at the local services."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            BUCKET_ENV: self.bucket,
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        }

"""Operator extra links of the trainer-container tasks: the W&B run, the MLflow run, the dataset manifest.

In Airflow 3 the worker computes each link right after the task ran (``get_link`` with the
operator object that executed) and stores it as an XCom; the api-server shows the stored value.
The operator fills ``operator.links`` (``wandb``, ``mlflow``, ``manifest``) while it runs. The
classes are registered by the ``grounding_models`` plugin so the api-server can deserialize them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseOperatorLink


def _safe(url: Any) -> str:
    """Only http(s) links are shown (no ``javascript:`` or other schemes)."""
    if not isinstance(url, str):
        return ""
    scheme = urlparse(url).scheme.lower()
    return url if scheme in ("http", "https") else ""


class _GroundingLink(BaseOperatorLink):
    key = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _safe((getattr(operator, "links", None) or {}).get(self.key))


class WandbRunLink(_GroundingLink):
    name = "W&B run"
    key = "wandb"


class MlflowRunLink(_GroundingLink):
    name = "MLflow run"
    key = "mlflow"


class DatasetManifestLink(_GroundingLink):
    name = "Dataset manifest"
    key = "manifest"


LINK_CLASSES: tuple[type[BaseOperatorLink], ...] = (WandbRunLink, MlflowRunLink, DatasetManifestLink)

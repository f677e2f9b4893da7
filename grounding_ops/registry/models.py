"""Registered model versions with their metrics and lineage, page by page.

Used by the "Grounding models" Airflow page and its JSON endpoint. Metrics, dataset
version and lineage come from the version's tags (written at promotion), so a page
costs one registry query plus one lookup of the registered model's aliases; for
versions registered without those tags the evaluation run is read instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from grounding_ops.registry.promotion import LISTED_METRICS
from grounding_ops.registry.tracking import mlflow_client, quote_filter_value
from grounding_ops.vocabulary import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, Tag

MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class ModelVersionRow:
    """One registered version as the models page shows it."""

    name: str
    version: str
    source: str
    created_at: str
    aliases: list[str]
    is_champion: bool
    metrics: dict[str, float | None]
    dataset_version: str | None
    training_output_uri: str | None
    evaluation_run_id: str | None
    wandb_run: str | None
    git_commit: str | None
    image_digest: str | None
    mlflow_url: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelVersionPage:
    rows: list[ModelVersionRow]
    next_page_token: str | None
    model_name: str
    champion: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "champion": self.champion,
            "next_page_token": self.next_page_token,
            "rows": [row.to_dict() for row in self.rows],
        }


def _ui_base(tracking_uri: str) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def _float(text: Any) -> float | None:
    """A finite float, else None (a ``nan``/``inf`` tag must not break a JSON answer)."""
    try:
        value = None if text in (None, "", "None") else float(text)
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def list_model_versions(
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    page_size: int = 25,
    page_token: str | None = None,
    client: Any | None = None,
    ui_base_url: str | None = None,
) -> ModelVersionPage:
    """Versions of ``model_name``, newest first, ``page_size`` per page.

    Pass the returned ``next_page_token`` to get the next page (None on the last).
    An unknown model name gives an empty page. ``ui_base_url`` (default: the tracking
    URI when it is http) is used to build links to the MLflow UI.
    """
    from mlflow.exceptions import MlflowException

    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    client = client if client is not None else mlflow_client()
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return ModelVersionPage([], None, model_name, None)
        raise
    alias_map = dict(registered.aliases or {})
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in alias_map.items():
        aliases_by_version.setdefault(str(version), []).append(alias)

    versions = client.search_model_versions(
        f"name = {quote_filter_value(model_name)}",
        max_results=page_size,
        order_by=["version_number DESC"],
        page_token=page_token,
    )
    base = ui_base_url or _ui_base(str(client.tracking_uri))
    rows = [_row(client, model_name, v, aliases_by_version, base) for v in versions]
    return ModelVersionPage(rows, versions.token or None, model_name, alias_map.get(CHAMPION_ALIAS))


def _row(client: Any, name: str, version: Any, aliases: dict[str, list[str]], base: str | None) -> ModelVersionRow:
    tags = dict(version.tags or {})
    metrics = {m: _float(tags.get(Tag.METRIC_PREFIX + m)) for m in LISTED_METRICS}
    evaluation_run_id = tags.get(Tag.EVALUATION_RUN_ID) or version.run_id or None
    if evaluation_run_id and all(v is None for v in metrics.values()):
        try:
            run = client.get_run(evaluation_run_id)
            metrics = {m: _float(run.data.metrics.get(m)) for m in LISTED_METRICS}
            tags.setdefault(Tag.DATASET_VERSION, run.data.params.get("dataset_version", ""))
        except Exception:  # a deleted run leaves the metrics empty, not the page broken
            pass
    number = str(version.version)
    created = datetime.fromtimestamp(int(version.creation_timestamp) / 1000, tz=timezone.utc)
    version_aliases = sorted(aliases.get(number, []))
    return ModelVersionRow(
        name=name,
        version=number,
        source=version.source,
        created_at=created.isoformat(timespec="seconds"),
        aliases=version_aliases,
        is_champion=CHAMPION_ALIAS in version_aliases,
        metrics=metrics,
        dataset_version=tags.get(Tag.DATASET_VERSION) or None,
        training_output_uri=tags.get(Tag.TRAINING_OUTPUT_URI) or None,
        evaluation_run_id=evaluation_run_id,
        wandb_run=tags.get(Tag.WANDB_RUN) or None,
        git_commit=tags.get(Tag.GIT_COMMIT) or None,
        image_digest=tags.get(Tag.IMAGE_DIGEST) or None,
        mlflow_url=f"{base}/#/models/{quote(name, safe='')}/versions/{number}" if base else None,
        tags=tags,
    )

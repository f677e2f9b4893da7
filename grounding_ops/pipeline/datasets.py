"""Which dataset version a training run uses: the published versions, the form's choice, the asset event."""

from __future__ import annotations
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name
from grounding_ops.pipeline.errors import NoDatasetYet, PipelineError
from grounding_ops.pipeline.train_params import (
    VERSION_PATTERN,
)
from grounding_ops.storage import ObjectStore, StorageError, join_uri
from grounding_ops.vocabulary import (
    DECISION_SPLIT,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetRef:
    version: str
    uri: str  # the version folder
    manifest_uri: str
    source: str  # "asset event", "param" or "latest.json"


def datasets_root(bucket: str, name: str | None = None) -> str:
    return dataset_asset_uri(bucket, name or dataset_name())


def resolve_dataset(
    requested: str,
    *,
    store: ObjectStore,
    asset_event_extras: Sequence[Mapping[str, Any]] = (),
) -> DatasetRef:
    """The dataset version to train on.

    ``requested`` is a version id or ``latest``; ``latest`` means the newest asset event of the
    dataset Asset (its extra carries ``version``), else ``latest.json`` under the datasets root
    (``store``). The version's ``manifest.json`` must exist (it is written last, so it proves the
    version is complete).
    """
    if not re.fullmatch(VERSION_PATTERN, requested or ""):
        raise PipelineError(
            f"dataset version {requested!r} is not a version id; use 'latest' or e.g. 20250101T000000-abc"
        )
    source = "param"
    version = requested
    if requested == "latest":
        version = ""
        for extra in reversed(list(asset_event_extras)):
            candidate = str((extra or {}).get("version") or "")
            if candidate:
                version, source = candidate, "asset event"
                break
        if not version:
            try:
                latest = json.loads(store.get_bytes("latest.json"))
            except StorageError as exc:
                raise NoDatasetYet(
                    f"no dataset version has been published under {store.uri} yet: run the grounding_data DAG "
                    "first, or set dataset_version"
                ) from exc
            except ValueError as exc:
                raise PipelineError(
                    f"{store.url('latest.json')} is not JSON ({exc}): publish the dataset again "
                    "with grounding_data, or set dataset_version"
                ) from exc
            version, source = str(latest.get("version") or ""), "latest.json"
        if not re.fullmatch(VERSION_PATTERN, version) or version == "latest":
            raise PipelineError(f"the published dataset version {version!r} is not a valid version id")
    manifest_key = f"{version}/manifest.json"
    if not store.exists(manifest_key):
        raise PipelineError(
            f"dataset version {version!r} has no manifest at {store.url(manifest_key)}: it was not published "
            "(completely); pick a published version or run grounding_data"
        )
    return DatasetRef(
        version=version, uri=join_uri(store.uri, version), manifest_uri=store.url(manifest_key), source=source
    )


def check_test_split(manifest: Mapping[str, Any], dataset: DatasetRef) -> None:
    """Refuse a dataset version without a test split (published before test splits existed)."""
    if f"{DECISION_SPLIT}.parquet" not in (manifest.get("files") or {}):
        raise PipelineError(
            f"dataset version {dataset.version} has no {DECISION_SPLIT} split ({DECISION_SPLIT}.parquet is not in "
            f"{dataset.manifest_uri}): it was published before held-out test splits existed, and promotion is "
            "decided on the test split only; publish the data again with grounding_data (it writes train, val "
            "and test) and train on the new version"
        )

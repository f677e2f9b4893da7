"""Dataset versions: manifest, atomic publish and verified download.

Layout: ``<output>/<version>/{train.parquet, val.parquet, quarantine.jsonl,
validation/..., manifest.json}`` and ``<output>/latest.json``. Files are uploaded
first and ``manifest.json`` last, so a version without a manifest is invisible (and
is completed by the next run); ``latest.json`` moves only after the manifest exists.
A rerun on unchanged input finds the version's manifest with the same checksums and
uploads nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from grounding_ops.storage import ObjectStore, StorageError, join_uri, local_path_for_key, open_store, sha256_file
from grounding_ops.vocabulary import MANIFEST_FILE

MANIFEST = MANIFEST_FILE
LATEST = "latest.json"
# Files whose content does not define the version (GX results carry run timestamps).
EVIDENCE_PREFIX = "validation/"

log = logging.getLogger(__name__)


class DatasetVerificationError(RuntimeError):
    """A published dataset is missing, incomplete or does not match its manifest."""


@dataclass
class PublishReport:
    version: str
    version_uri: str
    manifest_uri: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    reused: bool = False
    latest_updated: bool = False


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``, or None when absent or unreadable."""
    if not store.exists(key):
        return None
    try:
        data = json.loads(store.get_bytes(key))
    except (ValueError, StorageError):
        return None
    return data if isinstance(data, dict) else None


def _existing_matches(
    store: ObjectStore, version: str, manifest: dict[str, Any], local: dict[str, dict[str, Any]]
) -> bool:
    """True when ``manifest`` (already published) covers the same data files and every
    file it lists is still there with its size."""
    files = manifest.get("files") or {}
    for name, entry in local.items():
        if name.startswith(EVIDENCE_PREFIX):
            continue
        if files.get(name) != entry:
            return False
    return all(store.size(f"{version}/{name}") == info.get("size") for name, info in files.items())


def publish_version(
    store: ObjectStore,
    version: str,
    local_files: dict[str, Path],
    manifest: dict[str, Any],
    *,
    update_latest: bool,
    before_manifest: Callable[[], None] | None = None,
) -> PublishReport:
    """Upload ``local_files`` under ``<version>/``, then ``manifest.json``, then ``latest.json``.

    ``manifest["files"]`` is filled in here with each file's sha256 and size. Files already
    under ``<version>/`` with the same size and sha256 (recorded at upload) are not uploaded
    again, so a retry after an interrupted publish sends only what is missing; when nothing
    changed, nothing is written at all.
    """
    entries = {name: file_entry(path) for name, path in sorted(local_files.items())}
    version_uri = join_uri(store.uri, version)
    report = PublishReport(version, version_uri, join_uri(version_uri, MANIFEST))
    existing = read_json(store, f"{version}/{MANIFEST}")
    if (
        existing is not None
        and existing.get("version") == version
        and existing.get("accepted") == manifest.get("accepted")
        and _existing_matches(store, version, existing, entries)
    ):
        report.reused = True
        report.skipped = sorted(existing.get("files", {}))
        log.info("version %s is already published with the same content; uploading nothing", version)
    else:
        for name, entry in entries.items():
            key = f"{version}/{name}"
            # Already there (an earlier, interrupted publish of this version): keep it.
            if store.size(key) == entry["size"] and store.checksum(key) == entry["sha256"]:
                report.skipped.append(name)
                continue
            store.upload_file(key, local_files[name], sha256=entry["sha256"])
            report.uploaded.append(name)
            report.bytes_uploaded += entry["size"]
        if before_manifest is not None:
            before_manifest()
        manifest = dict(manifest, files=entries)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        store.put_bytes(f"{version}/{MANIFEST}", body)
        report.uploaded.append(MANIFEST)
        report.bytes_uploaded += len(body)
    if update_latest:
        pointer = {"version": version, "manifest": report.manifest_uri}
        if read_json(store, LATEST) != pointer:
            body = json.dumps(pointer, indent=2, sort_keys=True).encode()
            store.put_bytes(LATEST, body)
            report.latest_updated = True
            report.bytes_uploaded += len(body)
    return report


def list_versions(output_uri: str, *, s3_client: Any | None = None) -> list[str]:
    """Versions under ``output_uri`` that have a manifest (i.e. are visible)."""
    store = open_store(output_uri, s3_client=s3_client)
    return sorted(
        {
            info.key.split("/")[0]
            for info in store.list()
            if info.key.count("/") == 1 and info.key.endswith("/" + MANIFEST)
        }
    )


def resolve_version_uri(uri: str, *, s3_client: Any | None = None) -> str:
    """The version folder for ``uri``: a version folder, its manifest.json, or a dataset
    output folder (then the version ``latest.json`` points at)."""
    text = str(uri).rstrip("/")
    if text.endswith("/" + MANIFEST):
        return text[: -len(MANIFEST) - 1]
    store = open_store(text, s3_client=s3_client)
    if store.exists(MANIFEST):
        return text
    latest = read_json(store, LATEST)
    if latest is not None and latest.get("version"):
        return join_uri(text, str(latest["version"]))
    if store.exists("train.parquet") or any(True for _ in store.list("train.parquet")):
        raise DatasetVerificationError(
            f"{text} has no {MANIFEST}: the version is incomplete (its publish did not finish). "
            "Re-run `grounding-ops prepare` to complete it, or use a published version."
        )
    raise DatasetVerificationError(
        f"no dataset at {text}: expected a version folder with {MANIFEST} or a dataset folder with {LATEST} "
        "(the --output of `grounding-ops prepare`)"
    )


def load_verified_dataset(
    uri: str,
    dest_dir: str | Path,
    *,
    s3_client: Any | None = None,
    files: tuple[str, ...] | None = ("train.parquet", "val.parquet", "quarantine.jsonl"),
    allow_rejected: bool = False,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Download a published dataset version to ``dest_dir`` and verify every checksum.

    ``uri`` is a version folder, its ``manifest.json`` or the dataset folder (then the
    ``latest.json`` version). ``files`` limits the download (None: every file in the
    manifest). Returns ``(manifest, {name: local path})``; raises
    :class:`DatasetVerificationError` naming the file when a checksum or size differs.
    """
    version_uri = resolve_version_uri(uri, s3_client=s3_client)
    store = open_store(version_uri, s3_client=s3_client)
    manifest = read_json(store, MANIFEST)
    if manifest is None:
        raise DatasetVerificationError(
            f"{join_uri(version_uri, MANIFEST)} is missing or not JSON: the version is incomplete. "
            "Re-run `grounding-ops prepare` to publish it."
        )
    if not manifest.get("accepted", True) and not allow_rejected:
        raise DatasetVerificationError(
            f"dataset version {manifest.get('version')} was rejected by validation "
            f"({manifest.get('counts', {}).get('quarantined')} of {manifest.get('counts', {}).get('received')} rows "
            f"quarantined, over the threshold); see {join_uri(version_uri, 'quarantine.jsonl')}"
        )
    listed: dict[str, dict[str, Any]] = manifest.get("files") or {}
    wanted = sorted(listed) if files is None else list(files)
    missing = [name for name in wanted if name not in listed]
    if missing:
        raise DatasetVerificationError(f"{join_uri(version_uri, MANIFEST)} lists no {', '.join(missing)}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in wanted:
        try:
            target = local_path_for_key(dest, str(name))
        except StorageError as exc:
            raise DatasetVerificationError(
                f"{join_uri(version_uri, MANIFEST)} names a file that is not inside the "
                f"version folder: {exc}; the manifest was tampered with"
            ) from exc
        try:
            store.download_file(name, target)
        except StorageError as exc:
            raise DatasetVerificationError(f"cannot download {join_uri(version_uri, name)}: {exc}") from exc
        expected = listed[name]
        size = target.stat().st_size
        digest = sha256_file(target)
        if size != expected.get("size") or digest != expected.get("sha256"):
            target.unlink(missing_ok=True)
            raise DatasetVerificationError(
                f"{join_uri(version_uri, name)} does not match its manifest (sha256 {digest[:12]}..., "
                f"{size} bytes; expected {str(expected.get('sha256'))[:12]}..., {expected.get('size')} bytes): "
                "the file was changed after publishing. Re-run `grounding-ops prepare` to publish a clean version."
            )
        paths[name] = target
    return manifest, paths

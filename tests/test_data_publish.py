"""Publishing against the real local S3 endpoint: atomic versions, zero-byte reruns, verified
downloads, and the ``grounding-ops prepare`` command line."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from grounding_ops.data.manifest import DatasetVerificationError, list_versions, load_verified_dataset
from grounding_ops.data.prepare import PrepareSettings, export_and_publish, prepare, validate_inputs
from grounding_ops.data.synthetic import generate_synthetic
from grounding_ops.storage import open_store

SETTINGS = PrepareSettings(min_pixels=56 * 56, max_pixels=112 * 112, val_fraction=0.25)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return generate_synthetic(tmp_path_factory.mktemp("demo"), n_images=16, seed=1, n_invalid=0)


def _objects(client, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def test_rerun_uploads_zero_bytes_to_s3(s3_env, demo, tmp_path: Path) -> None:
    output = s3_env.uri("datasets", f"test-{uuid.uuid4().hex[:8]}")
    first = prepare([str(demo.annotations)], images_root=str(demo.images_root), output_uri=output, settings=SETTINGS)
    assert first.accepted and first.bytes_uploaded > 0 and not first.reused
    client = s3_env.client()
    prefix = output.split("/", 3)[3] + "/"
    before = _objects(client, s3_env.bucket, prefix)
    assert f"{prefix}{first.version}/manifest.json" in before and f"{prefix}latest.json" in before
    time.sleep(1.1)  # LastModified has one-second resolution
    second = prepare([str(demo.annotations)], images_root=str(demo.images_root), output_uri=output, settings=SETTINGS)
    assert (second.version, second.reused, second.bytes_uploaded, second.files_uploaded) == (first.version, True, 0, [])
    assert _objects(client, s3_env.bucket, prefix) == before  # nothing was rewritten
    manifest, paths = load_verified_dataset(output, tmp_path / "dl")
    assert manifest["version"] == first.version and set(paths) == {"train.parquet", "val.parquet", "quarantine.jsonl"}
    assert manifest["counts"]["received"] == manifest["counts"]["valid"] + manifest["counts"]["quarantined"]
    assert "secret" not in json.dumps(manifest).lower() and "grounding-local" not in json.dumps(manifest)


class _FailBeforeManifest:
    """The real S3 store, failing the manifest write (a crash between files and manifest)."""

    def __init__(self, store) -> None:
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_bytes(self, key: str, data: bytes) -> None:
        if key.endswith("manifest.json"):
            raise ConnectionError("injected failure before the manifest")
        self._store.put_bytes(key, data)


def test_failure_before_manifest_leaves_no_visible_version(s3_env, demo, tmp_path: Path) -> None:
    output = s3_env.uri("datasets", f"atomic-{uuid.uuid4().hex[:8]}")
    work = tmp_path / "work"
    validate_inputs([str(demo.annotations)], images_root=str(demo.images_root), settings=SETTINGS, work_dir=work)
    store = open_store(output, s3_client=s3_env.client())
    with pytest.raises(ConnectionError, match="injected"):
        export_and_publish(work, output_uri=output, store=_FailBeforeManifest(store))
    uploaded = [info.key for info in store.list()]
    assert any(key.endswith("train.parquet") for key in uploaded)  # files went first ...
    assert list_versions(output, s3_client=s3_env.client()) == []  # ... but no version is visible
    assert not store.exists("latest.json")
    version = uploaded[0].split("/")[0]
    with pytest.raises(DatasetVerificationError, match="incomplete"):
        load_verified_dataset(f"{output}/{version}", tmp_path / "dl")
    with pytest.raises(DatasetVerificationError, match="no dataset"):
        load_verified_dataset(output, tmp_path / "dl")
    # the next run completes the version
    result = export_and_publish(work, output_uri=output, s3_client=s3_env.client())
    assert result.version == version and list_versions(output, s3_client=s3_env.client()) == [version]


def test_tampered_file_fails_verification(s3_env, demo, tmp_path: Path) -> None:
    output = s3_env.uri("datasets", f"tamper-{uuid.uuid4().hex[:8]}")
    result = prepare([str(demo.annotations)], images_root=str(demo.images_root), output_uri=output, settings=SETTINGS)
    store = open_store(result.dataset_uri, s3_client=s3_env.client())
    data = bytearray(store.get_bytes("train.parquet"))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes("train.parquet", bytes(data))
    with pytest.raises(DatasetVerificationError, match="train.parquet does not match its manifest"):
        load_verified_dataset(result.dataset_uri, tmp_path / "dl")
    assert not (tmp_path / "dl" / "train.parquet").exists()
    manifest, paths = load_verified_dataset(result.manifest_uri, tmp_path / "dl2", files=("val.parquet",))
    assert list(paths) == ["val.parquet"]


def test_cli_prepare_prints_uri_and_fails_over_threshold(s3_env, tmp_path: Path, capsys) -> None:
    from grounding_ops.cli import main

    data = generate_synthetic(tmp_path / "syn", n_images=8, seed=2, n_invalid=5)
    output = s3_env.uri("datasets", f"cli-{uuid.uuid4().hex[:8]}")
    args = [
        str(data.annotations),
        "--images-root",
        str(data.images_root),
        "--output",
        output,
        "--min-pixels",
        "3136",
        "--max-pixels",
        "12544",
    ]
    code = main(["prepare", *args, "--max-quarantine-fraction", "0.05"])
    captured = capsys.readouterr()
    assert code == 1
    assert "quarantined" in captured.err and "image_exists" in captured.err and "quarantine.jsonl" in captured.err
    version_uri = captured.out.strip().splitlines()[-1]
    store = open_store(version_uri, s3_client=s3_env.client())
    assert store.exists("manifest.json") and store.exists("quarantine.jsonl")
    assert json.loads(store.get_bytes("manifest.json"))["accepted"] is False
    assert not open_store(output, s3_client=s3_env.client()).exists("latest.json")
    with pytest.raises(DatasetVerificationError, match="rejected"):
        load_verified_dataset(version_uri, tmp_path / "dl")
    assert len(store.get_bytes("quarantine.jsonl").decode().splitlines()) == 5

    code = main(["prepare", *args, "--max-quarantine-fraction", "0.5"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip().startswith(output + "/")
    assert open_store(output, s3_client=s3_env.client()).exists("latest.json")


def test_cli_reports_user_errors(tmp_path: Path, capsys) -> None:
    from grounding_ops.cli import main

    code = main(
        ["prepare", str(tmp_path / "missing.jsonl"), "--images-root", str(tmp_path), "--output", str(tmp_path / "out")]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err

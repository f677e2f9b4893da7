"""Trust boundaries: the data form reads only from configured input roots, object listings never
escape their folder, and no object key or manifest name can write outside its destination.

S3 cases run against the real local S3 service (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from grounding_ops.data.manifest import DatasetVerificationError, load_verified_dataset
from grounding_ops.pipeline.data_tasks import DataPipelineError, locate
from grounding_ops.pipeline.input_roots import InputRoot, check_location, configured_roots, parse_root
from grounding_ops.storage import StorageError, download_tree, local_path_for_key, open_store


@pytest.fixture()
def run_prefix(s3_service) -> str:
    return f"runs/{uuid.uuid4().hex[:8]}"


def _put(s3_service, key: str, body: bytes = b"{}") -> None:
    s3_service.client().put_object(Bucket=s3_service.bucket, Key=key, Body=body)


# --------------------------------------------------------------------------- listings stay in their folder


def test_listing_a_step_never_returns_a_longer_steps_objects(s3_service, run_prefix: str) -> None:
    _put(s3_service, f"{run_prefix}/global_step_10/config.json", b"ten")
    _put(s3_service, f"{run_prefix}/global_step_100/config.json", b"hundred")
    _put(s3_service, f"{run_prefix}/global_step_100/model.safetensors", b"w")
    store = open_store(s3_service.uri(run_prefix, "global_step_10"), s3_client=s3_service.client())
    assert [info.key for info in store.list()] == ["config.json"]
    parent = open_store(s3_service.uri(run_prefix), s3_client=s3_service.client())
    assert [info.key for info in parent.list("global_step_10")] == ["global_step_10/config.json"]
    assert sorted(info.key for info in parent.list("global_step_10/")) == ["global_step_10/config.json"]


def test_evaluating_step_10_of_a_run_that_reached_100_downloads_only_step_10(
    s3_service, run_prefix: str, tmp_path: Path
) -> None:
    from grounding_ops.evaluation.evaluate import fetch_model

    _put(s3_service, f"{run_prefix}/global_step_10/config.json", b"ten")
    _put(s3_service, f"{run_prefix}/global_step_100/config.json", b"hundred")
    _put(s3_service, f"{run_prefix}/global_step_100/extra.bin", b"x")
    dest = tmp_path / "model"
    folder = fetch_model(s3_service.uri(run_prefix, "global_step_10"), dest, s3_client=s3_service.client())
    assert sorted(p.relative_to(dest).as_posix() for p in folder.rglob("*") if p.is_file()) == ["config.json"]
    assert (dest / "config.json").read_bytes() == b"ten"


@pytest.mark.parametrize("hostile", ["/etc/evil.py", "../../evil.py", "a/../../evil.py", "./x", "a\\..\\b"])
def test_download_tree_refuses_keys_that_leave_the_destination(
    s3_service, run_prefix: str, tmp_path: Path, hostile: str
) -> None:
    _put(s3_service, f"{run_prefix}/model/config.json")
    # `//` in a key makes the relative key absolute after the prefix is stripped
    _put(
        s3_service, f"{run_prefix}/model/{hostile}" if not hostile.startswith("/") else f"{run_prefix}/model/{hostile}"
    )
    store = open_store(s3_service.uri(run_prefix, "model"), s3_client=s3_service.client())
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match="refusing object key"):
        download_tree(store, dest)
    assert not (tmp_path / "evil.py").exists() and not Path("/etc/evil.py").exists()
    assert not dest.exists() or not any(dest.rglob("*"))  # refused before anything was written


def test_runner_model_download_refuses_hostile_keys(s3_service, run_prefix: str, tmp_path: Path) -> None:
    from grounding_ops.training.engines import CpuEngine
    from grounding_ops.training.runner import RunError, resolve_model

    _put(s3_service, f"{run_prefix}/base/config.json")
    _put(s3_service, f"{run_prefix}/base//tmp/escaped.json")

    class Spec:
        model = s3_service.uri(run_prefix, "base")
        model_family = "qwen2.5-vl"

    with pytest.raises(RunError, match="refusing object key"):
        resolve_model(Spec(), CpuEngine(Spec()), tmp_path / "m", s3_service.client())


def test_local_path_for_key_accepts_plain_nested_keys(tmp_path: Path) -> None:
    assert local_path_for_key(tmp_path, "a/b/c.json") == (tmp_path / "a" / "b" / "c.json").resolve()
    for key in ("", "/abs", "a//b", "a/./b", "a/../b", "nul\x00x"):
        with pytest.raises(StorageError):
            local_path_for_key(tmp_path, key)


def test_a_manifest_naming_a_file_outside_its_version_is_refused(tmp_path: Path) -> None:
    version = tmp_path / "out" / "v1"
    version.mkdir(parents=True)
    (tmp_path / "out" / "secret.txt").write_text("s")
    manifest = {"version": "v1", "accepted": True, "files": {"../secret.txt": {"size": 1, "sha256": "0" * 64}}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetVerificationError, match="not inside the version folder"):
        load_verified_dataset(str(version), tmp_path / "dl", files=None)
    assert not (tmp_path / "secret.txt").exists()


# --------------------------------------------------------------------------- the data form's input roots


@pytest.mark.parametrize(
    "params",
    [
        {"input_uri": "/proc/self/environ", "format": "jsonl", "images_root": "/"},
        {"input_uri": "/etc/passwd", "format": "jsonl", "images_root": "/etc"},
        {"input_uri": "s3://other-bucket/private/annotations.jsonl", "images_root": "s3://other-bucket/private"},
        {"input_uri": "s3://grounding-ops/incoming-evil/a.jsonl", "images_root": "s3://grounding-ops/incoming-evil"},
        {"input_uri": "s3://grounding-ops/incoming/../datasets/x.jsonl", "images_root": "s3://grounding-ops/incoming"},
        {"input_uri": "s3://grounding-ops/incoming/a.jsonl", "images_root": "/"},
    ],
)
def test_the_form_refuses_locations_outside_the_input_roots(params: dict) -> None:
    with pytest.raises(DataPipelineError, match="input roots|not a plain"):
        locate(params, bucket="grounding-ops", s3_client=object())


def test_the_form_refuses_undeclared_conf_keys() -> None:
    with pytest.raises(DataPipelineError, match="does not declare: 'dataset_name'"):
        locate(
            {"input_uri": "s3://grounding-ops/incoming/a.jsonl"},
            bucket="grounding-ops",
            s3_client=object(),
            conf_keys=["dataset_name"],
        )


def test_configured_local_roots_allow_their_folders_and_refuse_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "annotations"
    (root / "set1").mkdir(parents=True)
    (root / "set1" / "a.jsonl").write_text("{}\n")
    (root / "escape").symlink_to("/etc")
    roots = configured_roots("b", {"GROUNDING_OPS_INPUT_ROOTS": f"{root}, s3://b/drop"})
    assert roots == (InputRoot(folder=root.resolve()), InputRoot(bucket="b", prefix="drop"))
    assert check_location(str(root / "set1" / "a.jsonl"), roots, "input_uri") == str(
        (root / "set1" / "a.jsonl").resolve()
    )
    assert check_location("s3://b/drop/x/y.jsonl", roots, "input_uri") == "s3://b/drop/x/y.jsonl"
    with pytest.raises(ValueError, match="outside the configured input roots"):
        check_location(str(root / "escape" / "passwd"), roots, "input_uri")
    with pytest.raises(ValueError, match="outside the configured input roots"):
        check_location(str(tmp_path / "annotations-other"), roots, "images_root")
    with pytest.raises(ValueError, match="absolute path"):
        check_location("annotations/a.jsonl", roots, "input_uri")
    located = locate(
        {"input_uri": str(root / "set1"), "images_root": str(root / "set1")}, bucket="b", input_roots=roots
    )
    assert located["inputs"] == [str((root / "set1" / "a.jsonl").resolve())]


def test_the_default_input_root_is_the_buckets_incoming_prefix() -> None:
    assert configured_roots("bk", {}) == (InputRoot(bucket="bk", prefix="incoming"),)
    assert parse_root("s3://bk/") == InputRoot(bucket="bk", prefix="")


def test_the_form_is_built_from_the_library_constants() -> None:
    from grounding_ops.data.readers import FORMATS
    from grounding_ops.pipeline.data_params import PARAM_SCHEMAS
    from grounding_ops.protocols import PROTOCOL_NAMES

    assert PARAM_SCHEMAS["format"]["enum"][1:] == list(FORMATS)
    assert PARAM_SCHEMAS["protocol"]["enum"] == list(PROTOCOL_NAMES)
    assert "test_fraction" in PARAM_SCHEMAS


# --------------------------------------------------------------------------- the quarantine echoes bounded input


def test_quarantine_never_echoes_unbounded_raw_input(tmp_path: Path) -> None:
    from grounding_ops.data.prepare import PrepareSettings, prepare

    secret_tail = "SECRET-AFTER-THE-PREVIEW"
    line = "X=" + "a" * 5000 + secret_tail
    (tmp_path / "in.jsonl").write_text(line + "\n" + json.dumps({"id": "z" * 3000, "image": 5}) + "\n")
    (tmp_path / "images").mkdir()
    result = prepare(
        [str(tmp_path / "in.jsonl")],
        images_root=str(tmp_path / "images"),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(max_quarantine_fraction=1.0),
    )
    text = (Path(result.dataset_uri) / "quarantine.jsonl").read_text()
    assert secret_tail not in text
    entries = [json.loads(row) for row in text.splitlines()]
    assert len(entries) == 2 and all(len(row) < 3000 for row in text.splitlines())
    assert entries[0]["raw"]["truncated"] is True and entries[0]["raw"]["chars"] > 2000


# --------------------------------------------------------------------------- export trusts only what validate staged


def _validated(tmp_path: Path) -> tuple[dict, dict]:
    from grounding_ops.data.synthetic import generate_synthetic
    from grounding_ops.pipeline.data_tasks import validate

    data = generate_synthetic(tmp_path / "syn", n_images=6, seed=3)
    located = {"inputs": [str(data.annotations)], "images_root": str(data.images_root), "output": str(tmp_path / "out")}
    validated = validate(
        located, {"max_quarantine_fraction": 1.0, "min_pixels": 3136, "max_pixels": 112 * 112}, run_id="manual__1"
    )
    return located, validated


def test_export_refuses_staging_objects_changed_after_validation(tmp_path: Path) -> None:
    from grounding_ops.pipeline.data_tasks import export

    located, validated = _validated(tmp_path)
    stage = Path(validated["staging"])
    summary = json.loads((stage / "summary.json").read_text())
    summary["images_root"] = "/"  # a writer of the staging prefix points export at the whole disk
    (stage / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DataPipelineError, match="changed after validation"):
        export(validated, located)
    assert not any((tmp_path / "out").rglob("manifest.json"))


def test_export_ignores_objects_added_to_staging_and_publishes_what_was_validated(tmp_path: Path) -> None:
    from grounding_ops.pipeline.data_tasks import export

    located, validated = _validated(tmp_path)
    stage = Path(validated["staging"])
    (stage / "validation").mkdir(exist_ok=True)
    (stage / "validation" / "planted.html").write_text("<script>alert(1)</script>")
    exported = export(validated, located)
    manifest = json.loads(Path(exported["manifest"]).read_text())
    assert "validation/planted.html" not in manifest["files"]
    assert exported["counts"]["received"] == exported["counts"]["valid"] + exported["counts"]["quarantined"]

"""The logic of the ``grounding_data`` DAG as plain functions; the DAG file only wires them.

locate (the input, or the synthetic demo set) -> validate (Great Expectations; rows and
quarantine staged in S3) -> export (parquet, version, atomic publish) -> publish (the
dataset Asset event, its extra naming the version).

Functions named ``*_task`` take the Airflow context and do the Airflow lookups (the S3
connection, the bucket Variable); the rest take plain values and are tested without
Airflow. Each task returns a dict with a one-line ``summary`` (also logged) and a
``lineage`` entry (OpenLineage inputs/outputs).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from grounding_ops.pipeline import hooks
from grounding_ops.pipeline.data_params import DEMO_INPUT, UndeclaredParams, check_declared
from grounding_ops.pipeline.errors import DataPipelineError, PipelineError
from grounding_ops.vocabulary import MANIFEST_FILE
from grounding_ops.pipeline.input_roots import InputLocationRefused, InputRoot, check_location, configured_roots
from grounding_ops.storage import (
    ObjectStore,
    StorageError,
    join_uri,
    local_path_for_key,
    open_store,
    sha256_file,
    split_s3_uri,
)

log = logging.getLogger(__name__)

DEMO_PREFIX = "incoming/demo"
DEMO_IMAGES = 40
DEMO_INVALID = 1  # one broken row, to show the quarantine in the demo
STAGING = "_staging"
INPUT_SUFFIXES = (".jsonl", ".json", ".csv")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _emit(summary: str) -> str:
    log.info("%s", summary)
    print(summary, flush=True)
    return summary


# ----------------------------------------------------------------------------- locate


def ensure_demo_input(bucket_uri: str, *, s3_client: Any | None = None, work_dir: Path) -> tuple[str, str]:
    """Upload the synthetic demo set under ``<bucket_uri>/incoming/demo`` unless it is there
    already; return ``(annotations uri, images root uri)``."""
    from grounding_ops.data.synthetic import generate_synthetic

    root = join_uri(bucket_uri, DEMO_PREFIX)
    store = open_store(root, s3_client=s3_client)
    annotations = join_uri(root, "annotations.jsonl")
    if not store.exists("annotations.jsonl"):
        data = generate_synthetic(work_dir / "demo", n_images=DEMO_IMAGES, seed=0, n_invalid=DEMO_INVALID)
        for path in sorted(data.images_root.rglob("*")):
            if path.is_file() and path != data.annotations:
                store.upload_file(path.relative_to(data.images_root).as_posix(), path)
        store.upload_file("annotations.jsonl", data.annotations)  # last: its presence means "complete"
        _emit(f"uploaded the synthetic demo set ({data.n_records} rows, {data.n_images} images) to {root}")
    return annotations, root


def locate_inputs(input_uri: str, *, s3_client: Any | None = None) -> list[str]:
    """The annotation files at ``input_uri``: the file itself, or the annotation files
    (``.jsonl``, ``.json``, ``.csv``) directly under that folder/prefix."""
    text = input_uri.rstrip("/")
    if text.startswith("s3://"):
        bucket, key = split_s3_uri(text)
        parent = f"s3://{bucket}/{PurePosixPath(key).parent.as_posix()}" if "/" in key else f"s3://{bucket}"
        if open_store(parent, s3_client=s3_client).exists(PurePosixPath(key).name):
            return [text]
        store = open_store(text, s3_client=s3_client)
        found = [
            store.url(info.key) for info in store.list() if "/" not in info.key and info.key.endswith(INPUT_SUFFIXES)
        ]
    else:
        path = Path(text.removeprefix("file://"))
        if path.is_file():
            return [str(path)]
        found = sorted(str(p) for p in path.glob("*") if p.is_file() and p.suffix in INPUT_SUFFIXES)
    if not found:
        raise DataPipelineError(
            f"no annotation file at {input_uri} (expected a file, or .jsonl/.json/.csv files "
            "directly under that folder); set the input_uri parameter"
        )
    return sorted(found)


def locate(
    params: Mapping[str, Any],
    *,
    bucket: str,
    s3_client: Any | None = None,
    input_roots: tuple[InputRoot, ...] | None = None,
    conf_keys: Iterable[str] = (),
) -> dict[str, Any]:
    """Check the form's values and find the input files.

    Undeclared keys (in ``params`` or the run's ``conf_keys``) are refused; the input and the
    images root must lie under ``input_roots`` (default: :func:`configured_roots`), checked
    before anything is read.
    """
    from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name

    try:
        check_declared([*params, *conf_keys])
    except UndeclaredParams as exc:
        raise DataPipelineError(str(exc)) from None
    roots = input_roots if input_roots is not None else configured_roots(bucket)
    input_uri = str(params.get("input_uri") or DEMO_INPUT).strip()
    images_root = str(params.get("images_root") or "").strip()
    try:
        if input_uri != DEMO_INPUT:
            input_uri = check_location(input_uri, roots, "input_uri")
        if images_root:
            images_root = check_location(images_root, roots, "images_root")
    except InputLocationRefused as exc:
        raise DataPipelineError(str(exc)) from None
    if input_uri == DEMO_INPUT:
        with tempfile.TemporaryDirectory(prefix="grounding-demo-") as tmp:
            input_uri, demo_root = ensure_demo_input(f"s3://{bucket}", s3_client=s3_client, work_dir=Path(tmp))
        images_root = images_root or demo_root
    if not images_root:
        raise DataPipelineError(
            f"set the images_root parameter: the folder or s3:// prefix the image paths in {input_uri} are relative to"
        )
    inputs = locate_inputs(input_uri, s3_client=s3_client)
    output = dataset_asset_uri(bucket, dataset_name())
    summary = _emit(f"located {len(inputs)} input file(s) at {input_uri}; images under {images_root}; dataset {output}")
    return {
        "inputs": inputs,
        "images_root": images_root,
        "output": output,
        "summary": summary,
        "lineage": {"inputs": inputs, "outputs": []},
    }


# ----------------------------------------------------------------------------- validate


def settings_from_params(params: Mapping[str, Any]) -> Any:
    from grounding_ops.data.prepare import PrepareSettings
    from grounding_ops.data.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    fmt = str(params.get("format") or "auto")
    return PrepareSettings(
        protocol=str(params.get("protocol") or "qwen2.5-vl"),
        model_family="" if str(params.get("model_family") or "auto") == "auto" else str(params["model_family"]),
        input_format=None if fmt == "auto" else fmt,
        val_fraction=float(params.get("val_fraction", 0.1)),
        test_fraction=float(params.get("test_fraction", 0.1)),
        max_quarantine_fraction=float(params.get("max_quarantine_fraction", 0.05)),
        multi_reader=str(params.get("multi_reader") or "fuse"),
        group_by=str(params.get("group_by") or "auto"),
        source_split=bool(params.get("source_split", False)),
        min_pixels=int(params.get("min_pixels") or DEFAULT_MIN_PIXELS),
        max_pixels=int(params.get("max_pixels") or DEFAULT_MAX_PIXELS),
    )


def staging_uri(output: str, run_id: str) -> str:
    return join_uri(output, STAGING, _SAFE.sub("-", run_id).strip("-") or "run")


def _upload_tree(store: ObjectStore, local: Path) -> dict[str, str]:
    """Upload the validation output; return ``{key: sha256}`` of every staged object."""
    staged: dict[str, str] = {}
    for path in sorted(local.rglob("*")):
        if path.is_file() and "inputs" not in path.relative_to(local).parts[:1]:
            key = path.relative_to(local).as_posix()
            digest = sha256_file(path)
            store.upload_file(key, path, sha256=digest)
            staged[key] = digest
    return staged


def _download_staged(store: ObjectStore, staged: Mapping[str, str], local: Path) -> None:
    """Download exactly the objects ``validate`` staged and check each against the digest it
    recorded (carried in XCom, not read back from the bucket): a writer of the staging prefix
    cannot change what export embeds, nor add files to it."""
    for key, expected in sorted(staged.items()):
        target = local_path_for_key(local, key)
        store.download_file(key, target)
        digest = sha256_file(target)
        if digest != expected:
            raise DataPipelineError(
                f"staged object {store.url(key)} changed after validation (sha256 {digest[:12]}..., validate "
                f"recorded {expected[:12]}...): something else writes to the staging prefix; re-run the DAG and "
                "restrict write access to the dataset prefix to the platform"
            )


def validate(
    located: Mapping[str, Any], params: Mapping[str, Any], *, run_id: str, s3_client: Any | None = None
) -> dict[str, Any]:
    """Validate the located inputs; stage valid rows, quarantine and GX results for export."""
    from grounding_ops.data.prepare import VALIDATION_DIR, PrepareError, validate_inputs
    from grounding_ops.pipeline.lineage import dataset_ref, gx_assertions

    settings = settings_from_params(params)
    stage = staging_uri(str(located["output"]), run_id)
    with tempfile.TemporaryDirectory(prefix="grounding-validate-") as tmp:
        try:
            summary = validate_inputs(
                list(located["inputs"]),
                images_root=str(located["images_root"]),
                settings=settings,
                work_dir=tmp,
                s3_client=s3_client,
            )
        except PrepareError as exc:
            raise DataPipelineError(str(exc)) from None
        staged = _upload_tree(open_store(stage, s3_client=s3_client), Path(tmp))
        assertions = gx_assertions(Path(tmp) / VALIDATION_DIR / "results")
    counts = summary.counts
    top = summary.top_reasons()
    reasons = ", ".join(f"{r} ({n})" for r, n in top) or "none"
    summary_line = _emit(
        f"validated: received {counts['received']}, valid {counts['valid']}, quarantined {counts['quarantined']} "
        f"({summary.quarantine_fraction:.1%}); top quarantine reasons: {reasons}"
    )
    return {
        "staging": stage,
        "staged": staged,
        "counts": counts,
        "top_reasons": top,
        "summary": summary_line,
        "quarantine_fraction": summary.quarantine_fraction,
        # The inputs with the suite's results; the staged rows are not a dataset (export publishes them).
        "lineage": {"inputs": [dataset_ref(uri, assertions=assertions) for uri in located["inputs"]], "outputs": []},
    }


# ----------------------------------------------------------------------------- export


def export(validated: Mapping[str, Any], located: Mapping[str, Any], *, s3_client: Any | None = None) -> dict[str, Any]:
    """Write and publish the version from the staged validation; remove the staging area.

    Raises :class:`QuarantineThresholdExceeded` (after publishing the version with its
    quarantine and manifest) when too many rows were quarantined.
    """
    from grounding_ops.data.prepare import PrepareError, export_and_publish

    stage_store = open_store(str(validated["staging"]), s3_client=s3_client)
    with tempfile.TemporaryDirectory(prefix="grounding-export-") as tmp:
        staged = validated.get("staged")
        if not isinstance(staged, Mapping) or not staged:
            raise DataPipelineError(
                "the validate task's result names no staged objects: re-run the whole DAG run (validate, then export)"
            )
        _download_staged(stage_store, staged, Path(tmp))
        try:
            result = export_and_publish(
                tmp, output_uri=str(located["output"]), s3_client=s3_client, images_root=str(located["images_root"])
            )
        except PrepareError as exc:
            raise DataPipelineError(str(exc)) from None
    for info in list(stage_store.list()):
        try:
            stage_store.delete(info.key)
        except StorageError as exc:  # leftovers are harmless; say so and go on
            log.warning("could not remove staging object %s: %s", info.key, exc)
    for line in result.summary_lines():
        _emit(line)
    if not result.accepted and result.rejection.startswith("the acceptance suite"):
        raise DataPipelineError(
            f"{result.rejection}; see {result.report_uri}. The version was written but not published as latest."
        )
    if not result.accepted:
        raise QuarantineThresholdExceeded(
            f"{result.counts['quarantined']} of {result.counts['received']} rows quarantined "
            f"({result.quarantine_fraction:.1%} > {result.max_quarantine_fraction:.1%}); top reasons: "
            + ", ".join(f"{r} ({n})" for r, n in result.top_reasons)
            + f". Quarantine: {result.quarantine_uri} — fix those rows or raise max_quarantine_fraction. "
            "The version was written but not published as latest."
        )
    return {
        "version": result.version,
        "uri": result.dataset_uri,
        "manifest": result.manifest_uri,
        "output": result.output_uri,
        "quarantine": result.quarantine_uri,
        "counts": result.counts,
        "reused": result.reused,
        "bytes_uploaded": result.bytes_uploaded,
        "summary": result.summary_lines()[0],
        "lineage": {"inputs": list(located["inputs"]), "outputs": export_lineage_outputs(result, s3_client=s3_client)},
    }


def export_lineage_outputs(result: Any, *, s3_client: Any | None = None) -> list[dict[str, Any]]:
    """What ``export`` wrote, with facets: the version (its identity), each parquet file and the
    published quarantine (version, schema, rows, bytes from the manifest), and the manifest."""
    from grounding_ops.data.manifest import read_json
    from grounding_ops.data.prepare import QUARANTINE, SPLIT_FILES
    from grounding_ops.pipeline.lineage import dataset_ref, export_schema_fields

    store = open_store(result.dataset_uri, s3_client=s3_client)
    files = (read_json(store, MANIFEST_FILE) or {}).get("files") or {}
    schema = export_schema_fields()
    counts = dict(result.counts)

    def size(name: str) -> int | None:
        return (files.get(name) or {}).get("size")

    parquet = {split: name for split, name in SPLIT_FILES.items() if name in files}
    total = sum(size(n) or 0 for n in files)
    outputs = [
        dataset_ref(
            result.dataset_uri,
            version=result.version,
            schema=schema,
            rows=sum(int(counts.get(s) or 0) for s in parquet),
            size=total,
            files=len(files),
        )
    ]
    outputs += [
        dataset_ref(
            join_uri(result.dataset_uri, name),
            version=result.version,
            schema=schema,
            rows=int(counts.get(split) or 0),
            size=size(name),
            files=1,
        )
        for split, name in sorted(parquet.items())
    ]
    outputs.append(
        dataset_ref(
            result.quarantine_uri,
            version=result.version,
            rows=int(counts.get("quarantined") or 0),
            size=size(QUARANTINE),
            files=1,
        )
    )
    outputs.append(dataset_ref(result.manifest_uri, version=result.version))
    return outputs


class QuarantineThresholdExceeded(DataPipelineError):
    """More rows were quarantined than the threshold allows."""


def asset_extra(exported: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset Asset event's extra: the version and where to find it (no credentials)."""
    return {
        "version": exported["version"],
        "uri": exported["uri"],
        "manifest": exported["manifest"],
        "counts": dict(exported["counts"]),
    }


# ----------------------------------------------------------------------------- Airflow wrappers


def bucket() -> str:
    """The dataset Asset's bucket, checked at run time; a differing ``grounding_bucket`` Variable fails the task."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return hooks.bucket()
    except PipelineError as exc:
        raise AirflowFailException(str(exc)) from None


def _conf_keys(context: Mapping[str, Any]) -> list[str]:
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    return list(conf) if isinstance(conf, Mapping) else []


def locate_task(context: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return locate(context["params"], bucket=bucket(), s3_client=hooks.s3_client(), conf_keys=_conf_keys(context))
    except DataPipelineError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


def validate_task(context: Mapping[str, Any], located: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return validate(located, context["params"], run_id=str(context["run_id"]), s3_client=hooks.s3_client())
    except DataPipelineError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


def export_task(context: Mapping[str, Any], validated: Mapping[str, Any], located: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return export(validated, located, s3_client=hooks.s3_client())
    except DataPipelineError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None  # no retry: the data, not the run, is at fault


def publish_task(context: Mapping[str, Any], exported: Mapping[str, Any], asset: Any) -> dict[str, Any]:
    extra = asset_extra(exported)
    context["outlet_events"][asset].extra = extra
    summary = _emit(f"published dataset version {extra['version']} as an event of {asset.uri}: {extra['uri']}")
    return {**extra, "summary": summary, "lineage": {"inputs": [exported["manifest"]], "outputs": [asset.uri]}}

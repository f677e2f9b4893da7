"""The malformed-input corpus (tests/data/bad/) through the real code paths.

* annotations and images: ``prepare`` (readers, image checks, the Great Expectations suite,
  export, publish); counts reconcile (received == valid + quarantined) and each rejected row
  lands in quarantine.jsonl with the expected reason;
* Params: the ``grounding_train`` form (the DAG's own ``Param`` objects) refuses them;
* model responses: the reward never raises and scores them 0;
* manifests: ``load_verified_dataset`` refuses tampered, missing and unknown versions;
* the CLI: ``grounding-ops prepare`` on bad input exits with a one-line error, never a traceback.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "data" / "bad"
sys.path.insert(0, str(BAD))
import make_cases  # noqa: E402

from grounding_ops.data.manifest import DatasetVerificationError, load_verified_dataset  # noqa: E402
from grounding_ops.data.prepare import PrepareError, PrepareSettings, prepare  # noqa: E402

INDEX = json.loads((BAD / "index.json").read_text())
CASES = INDEX["cases"]
ANNOTATION_CASES = [c for c in CASES if c["kind"] in ("annotation", "image")]
PARAM_CASES = [c for c in CASES if c["kind"] == "params"]
PARAM_NORMALIZED_CASES = [c for c in CASES if c["kind"] == "params-normalized"]
REWARD_CASES = [c for c in make_cases.REWARD_CASES]
MANIFEST_CASES = [c for c in CASES if c["kind"] == "manifest"]
DATA_FORM_CASES = [c for c in CASES if c["kind"] == "data-form"]
GROUNDING_OPS = Path(sys.executable).parent / "grounding-ops"


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in cases]


@pytest.fixture(scope="module")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bad-images")
    return make_cases.write_images(base / "images", outside=base / "outside.png")


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_files_match_their_definitions(tmp_path: Path) -> None:
    """index.json and annotations/ are exactly what make_cases.py writes (no drift)."""
    make_cases.write_corpus(tmp_path)
    committed = sorted(p.relative_to(BAD).as_posix() for p in (BAD / "annotations").iterdir())
    generated = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "annotations").iterdir())
    assert committed == generated, "run: python tests/data/bad/make_cases.py"
    for name in generated + ["index.json"]:
        assert (BAD / name).read_bytes() == (tmp_path / name).read_bytes(), f"{name} is stale: run make_cases.py"


def test_corpus_covers_every_class() -> None:
    assert len(CASES) >= 40
    assert len({c["id"] for c in CASES}) == len(CASES), "case ids must be unique"
    kinds = {c["kind"] for c in CASES}
    assert kinds == {"annotation", "image", "params", "params-normalized", "reward", "manifest", "data-form"}
    formats = {c["format"] for c in ANNOTATION_CASES}
    assert formats == {"jsonl", "coco", "vindr-csv", "mscxr", "normalized"}
    for case in CASES:
        assert case["expect"], case["id"]
        assert case["what"], case["id"]


# --------------------------------------------------------------------------- annotations and images


def _quarantine(version_dir: Path) -> list[dict[str, Any]]:
    text = (version_dir / "quarantine.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", ANNOTATION_CASES, ids=_ids(ANNOTATION_CASES))
def test_annotation_case_is_quarantined_with_its_reason(
    case: dict[str, Any], images_root: Path, tmp_path: Path
) -> None:
    expect = case["expect"]
    settings = PrepareSettings(input_format=case["format"], max_quarantine_fraction=1.0, **case.get("settings", {}))
    inputs = [str(BAD / case["file"])]
    if "error" in expect:
        with pytest.raises(PrepareError, match=expect["error"]):
            prepare(inputs, images_root=str(images_root), output_uri=str(tmp_path / "out"), settings=settings)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))
        return
    result = prepare(inputs, images_root=str(images_root), output_uri=str(tmp_path / "out"), settings=settings)
    counts = result.counts
    assert counts["received"] == counts["valid"] + counts["quarantined"]
    for key in ("received", "valid", "quarantined"):
        assert counts[key] == expect[key], (key, counts, result.top_reasons)
    assert counts.get("skipped", 0) == expect.get("skipped", 0)
    assert counts["train"] + counts["val"] + counts["test"] == counts["valid"]

    version_dir = Path(result.dataset_uri)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["counts"]["received"] == manifest["counts"]["valid"] + manifest["counts"]["quarantined"]
    entries = _quarantine(version_dir)
    assert len(entries) == counts["quarantined"]
    assert sorted(e["reason"] for e in entries) == sorted(q["reason"] for q in expect["quarantine"])
    for wanted in expect["quarantine"]:
        matching = [e for e in entries if e["reason"] == wanted["reason"]]
        assert any(wanted["detail"] in e["detail"] for e in matching), (wanted, matching)
        assert all(e["line"] and e["detail"] for e in matching), "quarantine lines say where and why"

    if case["kind"] == "image" and expect["quarantined"] == 0:
        _assert_trainer_can_read(version_dir, images_root / case["image"])


def _assert_trainer_can_read(version_dir: Path, image_path: Path) -> None:
    """An accepted odd image (CMYK, 16-bit, alpha, wrong extension) decodes to RGB from the parquet, at
    the size the model sees (the export resizes to ``resized_size``; unchanged bytes when no resize)."""
    import pyarrow.parquet as pq
    from PIL import Image

    original = image_path.read_bytes()
    rows = 0
    for split in ("train", "val", "test"):
        for row in pq.read_table(version_dir / f"{split}.parquet").to_pylist():
            data = row["images"][0]["bytes"]
            image = Image.open(io.BytesIO(data))
            rgb = image.convert("RGB")
            assert rgb.size == tuple(row["extra_info"]["resized_size"])
            if tuple(row["extra_info"]["resized_size"]) == tuple(row["extra_info"]["image_size"]):
                assert data == original, "an image the model sees at its own size is exported unchanged"
            rows += 1
    assert rows, "the accepted image is exported"


def test_quarantine_lines_are_strict_json(images_root: Path, tmp_path: Path) -> None:
    """quarantine.jsonl must parse with a strict JSON parser (no bare NaN/Infinity tokens):
    other tools (jq, Spark, browsers) read it."""
    case = next(c for c in ANNOTATION_CASES if c["id"] == "jsonl-nan-box")
    result = prepare(
        [str(BAD / case["file"])],
        images_root=str(images_root),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(max_quarantine_fraction=1.0),
    )

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    for line in (Path(result.dataset_uri) / "quarantine.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_all_bad_cases_in_one_run_reconcile(images_root: Path, tmp_path: Path) -> None:
    """Every auto-detectable annotation file of the corpus in ONE prepare run: the counts still add up
    (cases that need their own size caps are left out)."""
    one_run = [
        c
        for c in ANNOTATION_CASES
        if c["format"] != "normalized" and "error" not in c["expect"] and "settings" not in c
    ]
    files = [str(BAD / c["file"]) for c in one_run]
    result = prepare(
        files,
        images_root=str(images_root),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(max_quarantine_fraction=1.0),
    )
    counts = result.counts
    assert counts["received"] == counts["valid"] + counts["quarantined"]
    expected_bad = sum(c["expect"]["quarantined"] for c in one_run)
    # ids are unique across the corpus, so nothing is quarantined for a clash between files
    assert counts["quarantined"] == expected_bad
    assert len(_quarantine(Path(result.dataset_uri))) == expected_bad


# --------------------------------------------------------------------------- Params


@pytest.fixture(scope="module")
def dag_params() -> dict[str, Any]:
    """The Param objects of the real grounding_train DAG (parsed from dags/)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags" / "grounding_train.py"))
    assert not bag.import_errors, bag.import_errors
    params = bag.dags["grounding_train"].params
    return {name: params.get_param(name) for name in params}


def _param(dag_params: dict[str, Any], name: str) -> Any:
    return dag_params[name]


@pytest.mark.parametrize("case", PARAM_CASES, ids=_ids(PARAM_CASES))
def test_params_refuse_bad_values(case: dict[str, Any], dag_params: dict[str, Any]) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    param = _param(dag_params, case["param"])
    with pytest.raises(ParamValidationError):
        param.resolve(case["value"])


@pytest.mark.parametrize("case", PARAM_NORMALIZED_CASES, ids=_ids(PARAM_NORMALIZED_CASES))
def test_params_pass_integral_numbers_to_the_trainer_as_integers(
    case: dict[str, Any], dag_params: dict[str, Any]
) -> None:
    """JSON Schema cannot tell 2.0 from 2: the form accepts it, and the trainer gets the integer."""
    from grounding_ops.pipeline.train_params import spec_overrides

    value = _param(dag_params, case["param"]).resolve(case["value"])
    assert case["expect"]["override"] in spec_overrides({case["param"]: value})


def test_params_accept_their_defaults(dag_params: dict[str, Any]) -> None:
    """The refusals above are not the form refusing everything."""
    for name in dag_params:
        param = _param(dag_params, name)
        param.resolve(param.value)
    _param(dag_params, "dataset_version").resolve("a1b2c3d4e5f60718")
    _param(dag_params, "learning_rate").resolve(1e-6)


@pytest.mark.parametrize("value", ["v1\n", "latest\n", "a1b2\r\n"])
def test_dataset_version_refuses_trailing_newline(value: str, dag_params: dict[str, Any]) -> None:
    """JSON-schema ``pattern`` is searched with Python's ``re``, where ``$`` also matches before a
    final newline: the pattern must not let a newline through."""
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        _param(dag_params, "dataset_version").resolve(value)


@pytest.mark.parametrize("arg", ["v1\n--privileged", "a\x00b", "x\r"])
def test_container_command_refuses_control_characters(arg: str) -> None:
    from grounding_ops.pipeline.docker_tasks import check_command

    with pytest.raises(ValueError, match="control character"):
        check_command(["grounding-ops", "train", "--dataset", arg])
    with pytest.raises(ValueError, match="argument"):
        check_command("grounding-ops train --dataset x; rm -rf /")  # a shell string


def test_hostile_values_stay_single_arguments() -> None:
    """Whatever passes the form is one argv element: no shell ever parses the command."""
    from grounding_ops.pipeline.train_params import spec_overrides
    from grounding_ops.pipeline.datasets import DatasetRef
    from grounding_ops.pipeline.plans import plan_training

    with pytest.raises(ValueError):
        spec_overrides({"learning_rate": "1e-6; rm -rf /"})
    fields = {f for f in DatasetRef.__dataclass_fields__}
    ref = DatasetRef(**{f: "s3://b/datasets/d/v1 $(id)" if f in ("uri", "manifest_uri") else "v1" for f in fields})
    plan = plan_training(
        {"engine": "cpu", "preset": "tiny-cpu", "learning_rate": 1e-6},
        ref,
        output_uri="s3://b/runs/r1",
        fingerprint="f",
        airflow_run="r",
    )
    assert isinstance(plan.command, list)
    assert "s3://b/datasets/d/v1 $(id)" in plan.command  # one element, never split or expanded
    assert plan.command[plan.command.index("--set") + 1] == "learning_rate=1e-06"


# --------------------------------------------------------------------------- reward


@pytest.mark.parametrize("case", REWARD_CASES, ids=_ids(REWARD_CASES))
def test_reward_never_raises(case: dict[str, Any]) -> None:
    from grounding_ops.protocols import PROTOCOL_NAMES
    from grounding_ops.reward import compute_score, score_response

    response = make_cases.reward_response(case)
    gt = [[4.0, 4.0, 40.0, 30.0]]
    for protocol in PROTOCOL_NAMES:
        out = score_response(response, gt, image_size=(64, 48), protocol=protocol)
        assert math.isfinite(out["score"]) and out["score"] == 0.0, (protocol, out)
        assert math.isfinite(out["iou"])
        truth = {"boxes": gt, "protocol": protocol, "image_size": [64, 48], "resized_size": [56, 56]}
        verl = compute_score("grounding/bad", response, truth)
        assert verl["score"] == 0.0
        verl = compute_score("grounding/bad", response, json.dumps(truth), extra_info={"index": 0})
        assert verl["score"] == 0.0


def test_reward_positive_control() -> None:
    """A correct answer scores > 0 (the zeros above are not a broken reward)."""
    from grounding_ops.protocols import get_protocol
    from grounding_ops.reward import score_response

    gt = [[4.0, 4.0, 40.0, 30.0]]
    answer = get_protocol("qwen2.5-vl").format_answer(gt, (64, 48), (56, 56))
    assert score_response(answer, gt, image_size=(64, 48), protocol="qwen2.5-vl", resized_size=(56, 56))["score"] > 0.9


# --------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, images_root: Path) -> Path:
    """A clean dataset folder (latest.json + one version) to copy and tamper with."""
    out = tmp_path_factory.mktemp("published") / "datasets"
    case = next(c for c in ANNOTATION_CASES if c["id"] == "jsonl-duplicate-id")
    prepare(
        [str(BAD / case["file"])],
        images_root=str(images_root),
        output_uri=str(out),
        settings=PrepareSettings(max_quarantine_fraction=1.0),
    )
    return out


def _tamper(root: Path, how: str) -> str:
    latest = json.loads((root / "latest.json").read_text())
    version = root / latest["version"]
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if how == "rewrite_train":
        data = bytearray((version / "train.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (version / "train.parquet").write_bytes(bytes(data))
        return str(root)
    if how == "delete_val":
        (version / "val.parquet").unlink()
        return str(version)
    if how == "unknown_version":
        return str(root / "0123456789abcdef")
    if how == "delete_manifest":
        manifest_path.unlink()
        return str(version)
    if how == "garbage_manifest":
        manifest_path.write_text("{not json")
        return str(manifest_path)
    if how == "drop_listing":
        manifest["files"].pop("train.parquet")
        manifest_path.write_text(json.dumps(manifest))
        return str(version)
    if how == "wrong_size":
        manifest["files"]["train.parquet"]["size"] += 1
        manifest_path.write_text(json.dumps(manifest))
        return str(root)
    if how == "rejected":
        manifest["accepted"] = False
        manifest_path.write_text(json.dumps(manifest))
        return str(version)
    if how == "dangling_latest":
        (root / "latest.json").write_text(json.dumps({"version": "fedcba9876543210", "manifest": "x"}))
        return str(root)
    raise AssertionError(how)


@pytest.mark.parametrize("case", DATA_FORM_CASES, ids=_ids(DATA_FORM_CASES))
def test_data_form_refuses_hostile_values(case: dict[str, Any]) -> None:
    """The grounding_data form reads nothing outside the configured input roots, and refuses keys it
    does not declare, before a byte is read (no S3 client is even used)."""
    from grounding_ops.pipeline.data_tasks import DataPipelineError, locate

    conf = dict(case["conf"])
    declared = {k: v for k, v in conf.items() if k != "dataset_name"}
    with pytest.raises(DataPipelineError, match=case["expect"]["error"]):
        locate(declared, bucket="grounding-ops", s3_client=object(), conf_keys=list(conf))


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=_ids(MANIFEST_CASES))
def test_manifest_refused(case: dict[str, Any], published: Path, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    shutil.copytree(published, root)
    load_verified_dataset(str(root), tmp_path / "ok")  # the copy is sound before tampering
    uri = _tamper(root, case["tamper"])
    dest = tmp_path / "dest"
    with pytest.raises(DatasetVerificationError, match=case["expect"]["error"]):
        load_verified_dataset(
            uri,
            dest,
            files=None if case["tamper"] == "delete_val" else ("train.parquet", "val.parquet", "quarantine.jsonl"),
        )
    if dest.exists():  # a file that failed its checksum is not left for anyone to use
        assert not any(p.name == "train.parquet" for p in dest.iterdir()) or case["tamper"] == "delete_val"


def test_evaluation_refuses_tampered_dataset(published: Path, tmp_path: Path) -> None:
    from grounding_ops.evaluation.evaluate import EvaluationError, fetch_dataset

    root = tmp_path / "datasets"
    shutil.copytree(published, root)
    version = root / json.loads((root / "latest.json").read_text())["version"]
    data = bytearray((version / "val.parquet").read_bytes())
    data[-20] ^= 0x01
    (version / "val.parquet").write_bytes(bytes(data))
    with pytest.raises(EvaluationError, match="does not match its manifest"):
        fetch_dataset(str(root), tmp_path / "dest", "val")


# --------------------------------------------------------------------------- the CLI: no tracebacks


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([str(GROUNDING_OPS), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert message in errors[0], errors[0]


def test_cli_rows_over_threshold_exit_1_with_summary(images_root: Path, tmp_path: Path) -> None:
    case = next(c for c in ANNOTATION_CASES if c["id"] == "jsonl-path-traversal")
    proc = _cli(
        "prepare",
        str(BAD / case["file"]),
        "--images-root",
        str(images_root),
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, 1, "quarantined")
    assert "image_inside_root (1)" in proc.stderr
    assert not (tmp_path / "out" / "latest.json").exists(), "a rejected version does not move latest.json"


def test_cli_missing_input_is_one_line_error(images_root: Path, tmp_path: Path) -> None:
    proc = _cli(
        "prepare",
        str(tmp_path / "nope.jsonl"),
        "--images-root",
        str(images_root),
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, 2, "does not exist")
    assert proc.stderr.strip().count("\n") == 0


def test_cli_empty_input_is_one_line_error(images_root: Path, tmp_path: Path) -> None:
    case = next(c for c in ANNOTATION_CASES if c["id"] == "jsonl-blank-lines-only")
    proc = _cli(
        "prepare",
        str(BAD / case["file"]),
        "--images-root",
        str(images_root),
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, 2, "no annotation rows")


def test_cli_unknown_extension_is_one_line_error(images_root: Path, tmp_path: Path) -> None:
    odd = tmp_path / "annotations.txt"
    odd.write_text("hello\n")
    proc = _cli("prepare", str(odd), "--images-root", str(images_root), "--output", str(tmp_path / "out"), cwd=tmp_path)
    _assert_clean_failure(proc, 2, "--format")


def test_cli_unparseable_coco_no_traceback(images_root: Path, tmp_path: Path) -> None:
    """A document with no valid row at all: quarantined, reported, exit 1 — not a crash."""
    case = next(c for c in ANNOTATION_CASES if c["id"] == "coco-not-json")
    proc = _cli(
        "prepare",
        str(BAD / case["file"]),
        "--images-root",
        str(images_root),
        "--output",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, 1, "quarantined")


def test_cli_accepts_with_threshold(images_root: Path, tmp_path: Path) -> None:
    case = next(c for c in ANNOTATION_CASES if c["id"] == "jsonl-nan-box")
    proc = _cli(
        "prepare",
        str(BAD / case["file"]),
        "--images-root",
        str(images_root),
        "--output",
        str(tmp_path / "out"),
        "--max-quarantine-fraction",
        "0.5",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    uri = proc.stdout.strip().splitlines()[-1]
    assert Path(uri, "manifest.json").is_file()


def test_validation_pages_escape_annotation_text(images_root: Path, tmp_path: Path) -> None:
    """An id (or phrase, or source) that is HTML reaches the published Data Docs escaped: GX
    renders failing rows' ids into the pages as they are (stored XSS)."""
    path = tmp_path / "html.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "<script>alert(1)</script>",
                "image": make_cases.GOOD_IMAGE,
                "phrase": "<img src=x onerror=alert(2)>",
                "source": "<b>lab</b>",
                "boxes": [[40, 4, 4, 30]],
            }
        )
        + "\n"
        + json.dumps({"id": "ok", "image": make_cases.GOOD_IMAGE, "phrase": "p", "boxes": [make_cases.GOOD_BOX]})
        + "\n"
    )
    result = prepare(
        [str(path)],
        images_root=str(images_root),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(max_quarantine_fraction=1.0),
    )
    pages = [p for p in (Path(result.dataset_uri) / "validation" / "docs").rglob("*.html")]
    text = "".join(p.read_text(encoding="utf-8") for p in pages)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the failing row is listed, escaped
    for raw in ("<script>alert", "<img src=x", "<b>lab</b>"):
        assert raw not in text
    (entry,) = _quarantine(Path(result.dataset_uri))
    assert entry["id"] == "<script>alert(1)</script>"  # the quarantine keeps the id as it was

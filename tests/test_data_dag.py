"""``grounding_data`` end to end with ``dag.test()`` against the real local S3: the demo set is
validated, exported and published, and the dataset Asset event carries the version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from grounding_ops.testing import marked_records

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "grounding_data.py"

_RUN_DAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from sqlalchemy import select

bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["grounding_data"]
for name, conf in (("demo", {}), ("strict", {"max_quarantine_fraction": 0.0})):
    run = dag.test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("STATES " + json.dumps({"name": name, "run": str(run.state), **states}), flush=True)
with create_session() as session:
    rows = session.execute(select(AssetModel.uri, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)).all()
    print("EVENTS " + json.dumps([[uri, extra] for uri, extra in rows]), flush=True)
"""


@pytest.mark.slow
def test_grounding_data_dag_publishes_demo_dataset(airflow_db, s3_service, tmp_path: Path) -> None:
    from grounding_ops.data.manifest import load_verified_dataset

    name = f"dagtest-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GROUNDING_OPS_BUCKET": s3_service.bucket,
        "GROUNDING_OPS_DATASET_NAME": name,
        "AIRFLOW_VAR_GROUNDING_BUCKET": s3_service.bucket,
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_service.env["AWS_ACCESS_KEY_ID"],
                "password": s3_service.env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_service.endpoint, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(tmp_path / "ol.jsonl"), "append": True}
        ),
    }
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)  # the DAG must get S3 from the Airflow connection
    out = subprocess.run(
        [sys.executable, "-c", _RUN_DAG, str(DAG_FILE)], capture_output=True, text=True, timeout=900, env=env
    )
    logs = out.stdout + out.stderr
    states = marked_records(out.stdout, "STATES ")
    assert out.returncode == 0 and len(states) == 2, (out.stdout[-4000:], out.stderr[-4000:])
    demo, strict = states
    assert demo["run"] == "success" and all(demo[t] == "success" for t in ("locate", "validate", "export", "publish"))
    assert "top quarantine reasons: box_x2_within_width (1)" in logs  # counts and reasons in the task logs
    # over the threshold: export fails loudly, naming the quarantine; publish does not run
    assert strict["run"] == "failed" and strict["export"] == "failed" and strict["publish"] != "success", strict
    assert "quarantine.jsonl — fix those rows or raise max_quarantine_fraction" in logs

    (events,) = marked_records(out.stdout, "EVENTS ")
    asset_uri = f"s3://{s3_service.bucket}/datasets/{name}"
    extras = [extra for uri, extra in events if uri == asset_uri]
    assert len(extras) == 1, events
    extra = extras[0]
    assert extra["version"] and extra["uri"] == f"{asset_uri}/{extra['version']}"
    assert extra["counts"]["received"] == extra["counts"]["valid"] + extra["counts"]["quarantined"]

    client = s3_service.client()
    manifest, paths = load_verified_dataset(asset_uri, tmp_path / "dl", s3_client=client)
    assert manifest["version"] == extra["version"]
    staging = client.list_objects_v2(Bucket=s3_service.bucket, Prefix=f"datasets/{name}/_staging/")
    assert staging.get("KeyCount", 0) == 0  # export cleans up the staged validation output


def test_locate_inputs_file_folder_and_missing(tmp_path: Path) -> None:
    from grounding_ops.pipeline.data_tasks import DataPipelineError, locate_inputs, staging_uri

    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.csv").write_text("x\n")
    (tmp_path / "notes.txt").write_text("x")
    assert locate_inputs(str(tmp_path / "a.jsonl")) == [str(tmp_path / "a.jsonl")]
    assert locate_inputs(str(tmp_path)) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv")]
    with pytest.raises(DataPipelineError, match="input_uri"):
        locate_inputs(str(tmp_path / "empty"))
    assert (
        staging_uri("s3://b/datasets/g", "manual__2025-01-01T00:00:00+00:00")
        == "s3://b/datasets/g/_staging/manual__2025-01-01T00-00-00-00-00"
    )


def test_asset_extra_names_the_version_without_credentials() -> None:
    from grounding_ops.pipeline.data_tasks import asset_extra

    extra = asset_extra(
        {
            "version": "abc",
            "uri": "s3://b/datasets/g/abc",
            "manifest": "s3://b/datasets/g/abc/manifest.json",
            "counts": {"received": 3, "valid": 2, "quarantined": 1},
            "bytes_uploaded": 5,
        }
    )
    assert extra == {
        "version": "abc",
        "uri": "s3://b/datasets/g/abc",
        "manifest": "s3://b/datasets/g/abc/manifest.json",
        "counts": {"received": 3, "valid": 2, "quarantined": 1},
    }

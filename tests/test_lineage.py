"""The OpenLineage graph of a demo-like run connects: from the annotations file to the registered model
version, through the dataset version, its parquet files, the training run, the checkpoints and the
evaluations, with the facets that say what each dataset is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from grounding_ops.testing import marked_records

REPO = Path(__file__).resolve().parent.parent
MLFLOW_PASSWORD = "mlflow-conn-password-Zk7q"

_RUN_BOTH = """
import json, sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
for dag_id, conf in (("grounding_data", json.loads(sys.argv[2])), ("grounding_train", json.loads(sys.argv[3]))):
    run = bag.dags[dag_id].test(run_conf=conf)
    states = {ti.task_id + ("" if ti.map_index < 0 else f"[{ti.map_index}]"): str(ti.state)
              for ti in run.get_task_instances()}
    print("STATES " + json.dumps({"dag": dag_id, "run": str(run.state), **states}), flush=True)
"""


def lineage_graph(events: list[dict[str, Any]]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """Directed edges dataset -> job -> dataset from the COMPLETE events (jobs as ("job", name))."""
    edges: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for event in events:
        if event.get("eventType") != "COMPLETE":
            continue
        job = ("job", event["job"]["name"])
        for item in event.get("inputs") or []:
            edges.setdefault((item["namespace"], item["name"]), set()).add(job)
        for item in event.get("outputs") or []:
            edges.setdefault(job, set()).add((item["namespace"], item["name"]))
    return edges


def path_between(edges: dict, start: tuple[str, str], goal: tuple[str, str]) -> list[tuple[str, str]] | None:
    queue, seen = deque([[start]]), {start}
    while queue:
        path = queue.popleft()
        if path[-1] == goal:
            return path
        for nxt in sorted(edges.get(path[-1], ())):
            if nxt not in seen:
                seen.add(nxt)
                queue.append([*path, nxt])
    return None


def _datasets(events: list[dict[str, Any]], job: str, side: str) -> list[dict[str, Any]]:
    return [d for e in events if e["job"]["name"] == job and e["eventType"] == "COMPLETE" for d in e.get(side) or []]


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.heavy
def test_demo_run_lineage_walks_from_annotations_to_model_version(
    airflow_db, s3_service, mlflow_service, trainer_cpu_image, tmp_path: Path
) -> None:
    model = f"lineage-model-{time.time_ns()}"
    events_file = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GROUNDING_OPS_MODEL_NAME": model,
        "GROUNDING_OPS_DATASET_NAME": f"lineage-{time.time_ns()}",
        "GROUNDING_OPS_BUCKET": s3_service.bucket,
        "AIRFLOW_VAR_GROUNDING_BUCKET": s3_service.bucket,
        "AIRFLOW_CONN_GROUNDING_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_service.env["AWS_ACCESS_KEY_ID"],
                "password": s3_service.env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_service.endpoint, "region_name": "us-east-1"},
            }
        ),
        # credentials the server does not ask for, to prove they never reach the events or the logs
        "AIRFLOW_CONN_GROUNDING_MLFLOW": json.dumps(
            {"conn_type": "http", "host": mlflow_service.uri, "login": "lineage-user", "password": MLFLOW_PASSWORD}
        ),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "grounding-test",
        "WANDB_MODE": "offline",
    }
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    # as `make demo` does: the demo set, resized for the tiny model's processor
    data_conf = {"protocol": "qwen2.5-vl", "val_fraction": 0.25, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    train_conf = {"total_steps": 2, "max_eval_samples": 4, "force": True}
    out = subprocess.run(
        [sys.executable, "-c", _RUN_BOTH, str(REPO / "dags"), json.dumps(data_conf), json.dumps(train_conf)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    states = marked_records(out.stdout, "STATES ")
    (tmp_path / "run.log").write_text(out.stdout + out.stderr)
    errors = "\n".join(
        line for line in (out.stdout + out.stderr).splitlines() if "ERROR" in line or "Error" in line or "error" in line
    )[-6000:]
    assert out.returncode == 0 and len(states) == 2, (out.stdout[-4000:], out.stderr[-4000:])
    assert all(s["run"] == "success" for s in states), (states, errors, str(tmp_path / "run.log"))

    raw_events = events_file.read_text()
    secrets = [MLFLOW_PASSWORD, s3_service.env["AWS_SECRET_ACCESS_KEY"]]
    for where, text in (("lineage events", raw_events), ("task logs", out.stdout + out.stderr)):
        assert not [s for s in secrets if s in text], f"a credential is in the {where}"
    events = [json.loads(line) for line in raw_events.splitlines() if line.strip()]
    bucket = f"s3://{s3_service.bucket}"
    names = {(d["namespace"], d["name"]) for e in events for side in ("inputs", "outputs") for d in e.get(side) or []}
    assert not [n for n in names if "_staging" in n[1]], "no task reports the staging area export deletes"
    assert not [n for n in names if n[0].startswith("http")], "no dataset is named by a server address"

    versions = [d for d in names if d[0] == "mlflow://registry" and d[1].startswith(f"models/{model}/versions/")]
    assert versions, sorted(names)
    edges = lineage_graph(events)
    path = path_between(edges, (bucket, "incoming/demo/annotations.jsonl"), versions[0])
    assert path, f"no lineage path; datasets: {sorted(names)}"
    jobs = [step[1] for step in path if step[0] == "job"]
    assert jobs[0] == "grounding_data.export" and jobs[-1] == "grounding_train.promote", path
    # the model version's lineage goes through the training: annotations -> ... -> train -> ... -> version
    to_train = path_between(edges, (bucket, "incoming/demo/annotations.jsonl"), ("job", "grounding_train.train"))
    from_train = path_between(edges, ("job", "grounding_train.train"), versions[0])
    assert to_train and from_train, (to_train, from_train, sorted(names))
    assert "grounding_train.list_checkpoints" in [step[1] for step in from_train if step[0] == "job"], from_train
    # the promotion is decided on the test evaluation of the checkpoint the val evaluations chose
    assert path_between(edges, ("job", "grounding_train.evaluate_test"), versions[0]), sorted(names)
    assert path_between(edges, ("job", "grounding_train.evaluate"), ("job", "grounding_train.pick_best")), sorted(names)
    print("lineage path: " + " -> ".join(step[1] for step in [*to_train, *from_train[1:]]))

    # what export wrote, with its facets
    written = {d["name"]: d for d in _datasets(events, "grounding_data.export", "outputs")}
    version_dir = next(n for n in written if n.count("/") == 2 and n.startswith("datasets/"))
    train_file = written[f"{version_dir}/train.parquet"]
    assert train_file["facets"]["version"]["datasetVersion"] == version_dir.rsplit("/", 1)[1]
    assert "prompt" in {f["name"] for f in train_file["facets"]["schema"]["fields"]}
    stats = train_file["outputFacets"]["outputStatistics"]
    assert stats["rowCount"] > 0 and stats["size"] > 0
    quarantine = written[f"{version_dir}/quarantine.jsonl"]
    assert quarantine["outputFacets"]["outputStatistics"]["rowCount"] >= 1  # the demo's broken row
    # the Great Expectations results, on validate's input
    [validated] = _datasets(events, "grounding_data.validate", "inputs")
    assertions = validated["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert assertions and any(not a["success"] for a in assertions) and any(a["success"] for a in assertions)
    # train reads the version and the parquet files export wrote
    read = {d["name"] for d in _datasets(events, "grounding_train.train", "inputs")}
    assert {version_dir, f"{version_dir}/train.parquet", f"{version_dir}/val.parquet"} <= read

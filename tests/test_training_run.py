"""A training's run.json becomes an MLflow run (real MLflow server, artifacts in the local S3)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from grounding_ops.pipeline.task_records import TrainingPlan
from grounding_ops.pipeline.results import read_training_result, record_training
from grounding_ops.registry.tracking import EVALUATION_EXPERIMENT, mlflow_client
from grounding_ops.registry.training_run import log_training_run
from grounding_ops.training.run_record import RunRecord
from grounding_ops.storage import open_store


def test_run_json_becomes_a_training_run_with_step_history(mlflow_env, s3_service, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    token = uuid.uuid4().hex[:8]
    started = time.time()
    history = [
        {
            "step": step,
            "reward_mean": 0.1 * step,
            "iou": 0.05 * step,
            "acc": 0.0,
            "kl": 0.01,
            "entropy": 1.5,
            "response_length": 20.0 + step,
            "seconds_per_step": 2.0,
            "tokens_per_s": 40.0,
            "timestamp": started + step,
        }
        for step in (1, 2, 3)
    ]
    output = s3_service.uri(f"test-{token}", "train")
    record = RunRecord(
        dataset_version="v7",
        dataset_uri=s3_service.uri("datasets", "shapes", "v7"),
        engine="cpu",
        spec={"total_steps": 3, "learning_rate": 1e-4, "logger": ["console"]},
        image="sha256:" + "cd" * 32,
        git_commit="0123abcd",
        steps_done=3,
        steps_trained=3,
        target_steps=3,
        final_uri=output + "/final",
        history=history,
    )
    record.save(open_store(output))
    client = mlflow_client(mlflow_env.uri)
    # what the training task does after the container: log the run, prepare the DAG run's parent run
    airflow_run = f"grounding_train/{token}"
    plan = TrainingPlan(
        engine="cpu",
        command=["train"],
        environment={"GROUNDING_OPS_AIRFLOW_RUN": airflow_run},
        output_uri=output,
        dataset_version="v7",
        dataset_uri=record.dataset_uri,
        fingerprint="fp",
    )
    summary = record_training(
        open_store(output), read_training_result(open_store(output), plan), plan, tracking_uri=mlflow_env.uri
    )
    run_id = summary.mlflow_run_id
    assert summary.mlflow_url.startswith(mlflow_env.uri) and run_id in summary.mlflow_url
    assert log_training_run(output, client=client) == run_id  # logged once
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(EVALUATION_EXPERIMENT).experiment_id],
        filter_string=f"tags.`grounding.airflow_run` = '{airflow_run}'",
    )
    assert parent.data.tags["grounding.kind"] == "dag-run"

    run = client.get_run(run_id)
    assert run.data.params["spec.learning_rate"] == "0.0001" and run.data.params["spec.logger"] == '["console"]'
    assert run.data.tags["grounding.image_digest"] == record.image
    assert run.data.tags["grounding.git_commit"] == "0123abcd"
    assert run.data.tags["grounding.airflow_run"] == airflow_run
    for key in ("reward_mean", "iou", "kl", "entropy", "response_length", "seconds_per_step", "tokens_per_s"):
        metrics = client.get_metric_history(run_id, key)
        assert [m.step for m in metrics] == [1, 2, 3]
        assert [m.timestamp for m in metrics] == [int((started + s) * 1000) for s in (1, 2, 3)]
    assert client.get_metric_history(run_id, "reward_mean")[-1].value == pytest.approx(0.3)
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("shapes", "v7")
    assert json.loads(dataset.dataset.source) == {"uri": record.dataset_uri}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/training_curves.png"]

"""
### grounding_train — GRPO-train a grounding model, evaluate every checkpoint, promote the best

`resolve_dataset` (skips the run while no dataset version is published) → `decide` (skips everything
below when neither the dataset version nor the training settings changed since the champion) →
`train` (trainer container) → `list_checkpoints` → `evaluate` (one trainer container per checkpoint
on the **val** split, logged to MLflow) → `pick_best` (on val) → `plan_decision` → `evaluate_test`
(the chosen checkpoint and the bar on the held-out **test** split: the champion, re-evaluated on this
dataset version unless that evaluation exists, or the base model before the first promotion) →
`promote` (paired bootstrap gate on test).

Runs nightly (cron `GROUNDING_OPS_TRAIN_CRON`, default 02:00 in `GROUNDING_OPS_TRAIN_TIMEZONE`,
default UTC) and whenever `grounding_data` publishes a new dataset version. Trigger it by hand
from the form; every field is validated before any task runs.

Configuration: connections `grounding_s3` (aws) and `grounding_mlflow` (http), Variables
`grounding_bucket`, `grounding_wandb_api_key`, `grounding_trainer_image_cpu`/`_gpu`.
Queues: `train` and `evaluate` run on the executor queue `GROUNDING_OPS_GPU_QUEUE` (default `gpu`;
CeleryExecutor workers of the GPU nodes consume it), every other task on the default queue.
The logic lives in `grounding_ops.pipeline`; this file only wires it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag

from grounding_ops.pipeline import train_tasks as tt
from grounding_ops.pipeline.docker_tasks import EvaluateContainerOperator, TrainContainerOperator, gpu_queue
from grounding_ops.vocabulary import S3_CONN_ID
from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name, model_asset_uri, model_name
from grounding_ops.pipeline.hooks import configured_bucket
from grounding_ops.pipeline.lineage import lineage_task
from grounding_ops.pipeline.notify import FailureNotifier, PromotionNotifier
from grounding_ops.pipeline.pools import gpu_pool
from grounding_ops.pipeline.train_params import build_params

CRON = os.environ.get("GROUNDING_OPS_TRAIN_CRON") or "0 2 * * *"
TIMEZONE = os.environ.get("GROUNDING_OPS_TRAIN_TIMEZONE") or "UTC"
GPU_QUEUE = gpu_queue()
GPU_POOL = gpu_pool()
# What every evaluation container task shares: the GPU queue and pool, one at a time, retried.
GPU_EVALUATION = dict(
    s3_conn_id=S3_CONN_ID,
    queue=GPU_QUEUE,
    retries=2,
    execution_timeout=timedelta(hours=4),
    pool=GPU_POOL,
    max_active_tis_per_dagrun=1,  # one GPU each; vLLM takes most of it: one at a time
)
DATASET_ASSET = Asset(dataset_asset_uri(configured_bucket(), dataset_name()))
MODEL_ASSET = Asset(model_asset_uri(model_name()))

default_args = {
    "owner": "grounding-ops",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=10),
    "on_failure_callback": [FailureNotifier()],  # alert: Variable grounding_notify
}


@dag(
    dag_id="grounding_train",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone=TIMEZONE), assets=DATASET_ASSET),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=build_params(),
    default_args=default_args,
    tags=["grounding", "training"],
    doc_md=__doc__,
    dagrun_timeout=timedelta(hours=48),
)
def grounding_train():
    @lineage_task(
        task_id="resolve_dataset",
        inlets=[DATASET_ASSET],
        retries=3,
        doc_md="Finds the dataset version: the form's value, or the newest event of the dataset "
        "asset published by grounding_data, or its latest.json. Read-only; retried.",
    )
    def resolve_dataset(**context):
        return tt.resolve_dataset_task(context, DATASET_ASSET)

    @lineage_task(
        task_id="decide",
        retries=3,
        doc_md="Skips the rest of the run when the dataset version and the training settings are "
        "those of the current champion (or of the last rejected candidate); otherwise plans "
        "the training container. Read-only; retried.",
    )
    def decide(dataset: dict, **context):
        return tt.decide_task(context, dataset)

    train = TrainContainerOperator(
        task_id="train",
        plan=decide(resolve_dataset()),
        s3_conn_id=S3_CONN_ID,
        queue=GPU_QUEUE,
        retries=1,  # a retry resumes from the checkpoints in S3
        execution_timeout=timedelta(hours=24),
        pool=GPU_POOL,
        doc_md="Runs `grounding-ops train` in the trainer image (gpu: VeRL on gpus_per_node GPUs; cpu: the TRL twin). "
        "Checkpoints go to S3 as they are saved; a retry resumes from the latest one. "
        f"Executor queue `{GPU_QUEUE}` (a GPU worker; `GROUNDING_OPS_GPU_QUEUE`).",
    )

    @lineage_task(
        task_id="list_checkpoints",
        doc_md="Lists the evaluable checkpoints of the training run (Hugging Face folders under "
        "checkpoints/, final/, and the base model) and plans one evaluation per checkpoint.",
    )
    def list_checkpoints(training: dict, **context):
        return tt.list_checkpoints_task(context, training)

    checkpoints = list_checkpoints(train.output)
    evaluate = EvaluateContainerOperator.partial(
        task_id="evaluate",
        **GPU_EVALUATION,
        doc_md="Runs `grounding-ops evaluate` on one checkpoint in the trainer image, then logs the "
        "evaluation (metrics, predictions, report) as an MLflow run. Idempotent; retried. "
        f"Executor queue `{GPU_QUEUE}` (a GPU worker; `GROUNDING_OPS_GPU_QUEUE`).",
    ).expand(plan=checkpoints)

    @lineage_task(
        task_id="pick_best",
        retries=1,
        execution_timeout=timedelta(minutes=5),
        doc_md="Picks the checkpoint with the best promotion metric on the val split (ties: the later one).",
    )
    def pick_best(results, **context):
        return tt.pick_best_task(context, list(results))

    @lineage_task(
        task_id="plan_decision",
        retries=3,
        execution_timeout=timedelta(minutes=5),
        doc_md="Plans the evaluations on the test split: the chosen checkpoint, and the bar (the "
        "champion unless it was already evaluated on this dataset version's test split, or "
        "the base model before the first promotion). Read-only; retried.",
    )
    def plan_decision(choice: dict, training: dict, **context):
        return tt.plan_decision_task(context, choice, training)

    choice = pick_best(evaluate.output)
    evaluate_test = EvaluateContainerOperator.partial(
        task_id="evaluate_test",
        **GPU_EVALUATION,
        doc_md="Runs `grounding-ops evaluate` on the test split for the chosen checkpoint and the bar, then "
        "logs each evaluation (metrics, per-sample predictions, report) as an MLflow run. Idempotent; retried. "
        f"Executor queue `{GPU_QUEUE}` (a GPU worker; `GROUNDING_OPS_GPU_QUEUE`).",
    ).expand(plan=plan_decision(choice, train.output))

    @lineage_task(
        task_id="promote",
        outlets=[MODEL_ASSET],
        retries=2,
        on_success_callback=[PromotionNotifier()],
        doc_md="Registers the chosen checkpoint in the MLflow Model Registry and moves the champion "
        "alias only when the paired bootstrap interval of its gain over the bar (champion, or "
        "base model) on the same test samples clears the minimum delta. The log states the "
        "decision: metric, both values, difference with interval, n, dataset version and "
        "split, reason. Idempotent; retried.",
    )
    def promote(choice: dict, decision_results, **context):
        return tt.promote_task(context, choice, list(decision_results), MODEL_ASSET)

    promote(choice, evaluate_test.output)


grounding_train()

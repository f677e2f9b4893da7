"""
### grounding_data — validate box annotations and publish a versioned VeRL dataset

`locate` (the input file or folder; `demo` uploads and uses the synthetic demo set) →
`validate` (Great Expectations; every rejected row goes to the quarantine with its reason) →
`export` (group split, VeRL parquet, content version, files first and manifest last) →
`publish` (an event of the dataset Asset `s3://<bucket>/datasets/<name>`, its extra naming the
version; `grounding_train` runs on it).

The run fails, naming the quarantine file, when more rows than `max_quarantine_fraction` are
quarantined (the version and its quarantine are still written, `latest.json` is not moved).
Re-running on unchanged input publishes the same version and uploads nothing.

Inputs and images must lie under a configured input root (`GROUNDING_OPS_INPUT_ROOTS` on the workers;
default `s3://<bucket>/incoming`); keys the form does not declare are refused.

Configuration: connection `grounding_s3` (aws), Variable `grounding_bucket`.
The logic lives in `grounding_ops.pipeline.data_tasks`; this file only wires it.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag

from grounding_ops.pipeline import data_params
from grounding_ops.pipeline import data_tasks as dt
from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name
from grounding_ops.pipeline.hooks import configured_bucket
from grounding_ops.pipeline.lineage import lineage_task
from grounding_ops.pipeline.notify import FailureNotifier

DATASET_ASSET = Asset(dataset_asset_uri(configured_bucket(), dataset_name()))

default_args = {
    "owner": "grounding-ops",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": [FailureNotifier()],  # alert: Variable grounding_notify
}


@dag(
    dag_id="grounding_data",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["grounding", "data"],
    doc_md=__doc__,
    params=data_params.build_params(),
)
def grounding_data():
    @lineage_task(task_id="locate", retries=3, doc_md="Finds the input files (uploads the demo set for 'demo').")
    def locate(**context):
        return dt.locate_task(context)

    @lineage_task(task_id="validate", doc_md="Runs the Great Expectations suite; stages rows and quarantine.")
    def validate(located: dict, **context):
        return dt.validate_task(context, located)

    @lineage_task(
        task_id="export",
        doc_md="Writes the parquet files and publishes the version (fails, naming the quarantine, over the threshold).",
    )
    def export(validated: dict, located: dict, **context):
        return dt.export_task(context, validated, located)

    @lineage_task(
        task_id="publish",
        outlets=[DATASET_ASSET],
        retries=3,
        doc_md="Emits the dataset Asset event with the version in its extra.",
    )
    def publish(exported: dict, **context):
        return dt.publish_task(context, exported, DATASET_ASSET)

    located = locate()
    publish(export(validate(located), located))


grounding_data()

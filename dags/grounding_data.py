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

Configuration: connection `grounding_s3` (aws), Variable `grounding_bucket`.
The logic lives in `grounding_ops.pipeline.data_tasks`; this file only wires it.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag

from grounding_ops.pipeline import data_tasks as dt
from grounding_ops.pipeline.lineage import dataset_asset_uri, dataset_name, lineage_task

DATASET_ASSET = Asset(dataset_asset_uri(dt.default_bucket(), dataset_name()))
FORMATS = ["auto", "jsonl", "coco", "vindr-csv", "mscxr", "normalized"]
PROTOCOLS = ["qwen2.5-vl", "qwen2-vl", "qwen3-vl", "click-xywh", "normalized-xyxy"]

default_args = {
    "owner": "grounding-ops",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=2),
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
    params={
        "input_uri": Param(dt.DEMO_INPUT, type="string", minLength=1, title="Annotations",
                           description="An annotation file or folder (s3://bucket/key or a path on the workers); "
                                       "'demo' uploads and uses the synthetic demo set."),
        "images_root": Param("", type="string", title="Images root",
                             description="Folder or s3:// prefix the image paths are relative to "
                                         "(empty for the demo)."),
        "format": Param("auto", enum=FORMATS, title="Input format"),
        "protocol": Param("qwen2.5-vl", enum=PROTOCOLS, title="Answer protocol"),
        "val_fraction": Param(0.1, type="number", minimum=0, maximum=0.9, title="Validation share"),
        "max_quarantine_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                                         title="Maximum quarantined share"),
        "min_pixels": Param(3136, type="integer", minimum=1, title="Smallest resized image (pixels)"),
        "max_pixels": Param(1003520, type="integer", minimum=1, title="Largest resized image (pixels)"),
    },
)
def grounding_data():
    @lineage_task(task_id="locate", retries=3, doc_md="Finds the input files (uploads the demo set for 'demo').")
    def locate(**context):
        return dt.locate_task(context)

    @lineage_task(task_id="validate", doc_md="Runs the Great Expectations suite; stages rows and quarantine.")
    def validate(located: dict, **context):
        return dt.validate_task(context, located)

    @lineage_task(task_id="export", doc_md="Writes the parquet files and publishes the version "
                                           "(fails, naming the quarantine, over the threshold).")
    def export(validated: dict, located: dict, **context):
        return dt.export_task(context, validated, located)

    @lineage_task(task_id="publish", outlets=[DATASET_ASSET], retries=3,
                  doc_md="Emits the dataset Asset event with the version in its extra.")
    def publish(exported: dict, **context):
        return dt.publish_task(context, exported, DATASET_ASSET)

    located = locate()
    publish(export(validate(located), located))


grounding_data()

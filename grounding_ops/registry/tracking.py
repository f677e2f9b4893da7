"""Turn an evaluation output folder into an MLflow run (and a W&B run).

The evaluation itself writes files only (the trainer images carry no MLflow); this
module runs in the platform environment and logs what it finds under the output
URI: params (model URI, dataset version, protocol, engine, ...), every metric with
its confidence interval, lineage tags, and the files as artifacts (to the tracking
server's artifact store, S3 in the services).

Logging the same output twice returns the first run instead of creating another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounding_ops.vocabulary import Tag

if TYPE_CHECKING:
    from grounding_ops.evaluation.evaluation_record import EvaluationRecord

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
EVALUATION_EXPERIMENT = "grounding-evaluation"
DIGEST_TAG = Tag.PREFIX + "metrics_sha256"  # the logged record's digest: logging it again finds the run
PARENT_TAG = "mlflow.parentRunId"
WANDB_TABLE_ROWS = 32  # predictions shown with their boxes in the W&B table
_MAX_METRICS_PER_BATCH = 1000


class TrackingError(RuntimeError):
    """Logging to the tracking server failed; the message says what to fix."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or a local SQLite file for a bare demo."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mlflow_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` for the tracking and registry server at ``uri`` (default: :func:`tracking_uri`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def quote_filter_value(value: str) -> str:
    """``value`` as a quoted string literal of an MLflow search filter."""
    text = str(value)
    if "'" in text and '"' in text:
        raise TrackingError(f"cannot search MLflow for a value holding both quote characters: {text!r}")
    return f'"{text}"' if "'" in text else f"'{text}'"


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing (safe against a concurrent create)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it or pick another name")
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def evaluation_tags(record: "EvaluationRecord", output_uri: str, digest: str) -> dict[str, str]:
    """The MLflow tags of an evaluation run: what was evaluated, on what, and the model's lineage."""
    tags = {
        Tag.ROLE: record.role,
        Tag.OUTPUT_URI: output_uri,
        DIGEST_TAG: digest,
        Tag.MODEL_URI: record.model_uri,
        Tag.DATASET_VERSION: record.dataset_version,
        Tag.DATASET_URI: record.dataset_uri,
        Tag.PROTOCOL: record.protocol,
        Tag.KIND: "evaluation",
        **record.lineage.tags(),
    }
    for key, value in record.tags.items():
        tags[key if key.startswith(Tag.PREFIX) or "." in key else f"{Tag.PREFIX}{key}"] = str(value)
    return {k: v for k, v in tags.items() if v != ""}


def dag_run_parent(client: Any, experiment_id: str, airflow_run: str) -> str:
    """The parent run of the DAG run ``airflow_run`` in ``experiment_id``, created when missing."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.AIRFLOW_RUN}` = {quote_filter_value(airflow_run)} and tags.`{Tag.KIND}` = 'dag-run'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"dag-run {airflow_run}", tags={Tag.AIRFLOW_RUN: airflow_run, Tag.KIND: "dag-run"}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _find_logged_run(client: Any, experiment_id: str, output_uri: str, digest: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{Tag.OUTPUT_URI}` = {quote_filter_value(output_uri)} "
            f"and tags.`{DIGEST_TAG}` = {quote_filter_value(digest)} and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _wandb_predictions(store: Any, tmp: Path) -> list[dict[str, Any]] | None:
    """The evaluation's drawn examples (image bytes and boxes) for a W&B table, if it wrote them."""
    import pyarrow.parquet as pq

    from grounding_ops.evaluation.evaluate import EXAMPLES_FILE

    if not store.exists(EXAMPLES_FILE):
        return None
    store.download_file(EXAMPLES_FILE, tmp / EXAMPLES_FILE)
    return pq.read_table(tmp / EXAMPLES_FILE).slice(0, WANDB_TABLE_ROWS).to_pylist()


def log_evaluation(
    output_uri: str,
    *,
    client: Any | None = None,
    experiment: str = EVALUATION_EXPERIMENT,
    s3_client: Any | None = None,
    wandb_dir: str | Path | None = None,
) -> str:
    """Log the evaluation under ``output_uri`` as an MLflow run; return its run id.

    Reads ``metrics.json`` (and uploads ``predictions.parquet``, ``report.html`` and
    ``metrics.json`` as artifacts). The metrics also go to W&B (see
    :mod:`grounding_ops.tracking_wandb`). A second call for the same, unchanged output
    returns the run of the first.
    """
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from grounding_ops.evaluation.evaluate import (
        OUTPUT_FILES,
        PLOTS_PREFIX,
        EvaluationError,
        read_evaluation_record,
    )
    from grounding_ops.evaluation.plots import EVALUATION_PLOTS
    from grounding_ops.tracking_wandb import wandb_mode
    from grounding_ops.storage import StorageError, open_store

    try:
        record = read_evaluation_record(output_uri, s3_client=s3_client)
    except (EvaluationError, StorageError) as exc:
        raise TrackingError(str(exc)) from exc
    store = open_store(output_uri, s3_client=s3_client)
    output = store.uri
    digest = hashlib.sha256(json.dumps(record.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()
    client = client if client is not None else mlflow_client()

    try:
        experiment_id = ensure_experiment(client, experiment)
        existing = _find_logged_run(client, experiment_id, output, digest)
        if existing:
            log.info("evaluation %s is already logged as MLflow run %s", output, existing)
            return existing
        tags = evaluation_tags(record, output, digest)
        airflow_run = tags.get(Tag.AIRFLOW_RUN)
        if airflow_run:  # the evaluations of one DAG run are nested under one parent run
            tags[PARENT_TAG] = dag_run_parent(client, experiment_id, airflow_run)
        model_name = (record.model_uri or "model").rstrip("/").rsplit("/", 1)[-1]
        run_name = f"eval-{model_name}-{record.dataset_version or 'dataset'}"
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    except MlflowException as exc:
        raise TrackingError(f"cannot create an MLflow run at {client.tracking_uri}: {exc.message}") from exc

    run_id = run.info.run_id
    try:
        flat = {k: float(v) for k, v in record.flat_metrics.items()}
        params = [Param(k, v) for k, v in record.params().items()]
        client.log_batch(run_id, params=params)
        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, 0) for k, v in sorted(flat.items())]
        for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH])

        with tempfile.TemporaryDirectory(prefix="grounding-eval-log-") as tmp:
            for name in OUTPUT_FILES:
                if store.exists(name):
                    store.download_file(name, Path(tmp) / name)
                    client.log_artifact(run_id, str(Path(tmp) / name))
            for name in EVALUATION_PLOTS:  # images in the run's artifacts, under plots/
                key = f"{PLOTS_PREFIX}/{name}"
                if store.exists(key):
                    store.download_file(key, Path(tmp) / key)
                    client.log_artifact(run_id, str(Path(tmp) / key), PLOTS_PREFIX)
            table = _wandb_predictions(store, Path(tmp)) if wandb_mode() != "disabled" else None

        from grounding_ops.tracking_wandb import log_run

        wandb_run = log_run(
            name=run_name,
            config={**record.params(), "mlflow_run_id": run_id, "output_uri": output},
            metrics=flat,
            job_type="evaluation",
            tags=(record.role,),
            directory=wandb_dir,
            group=airflow_run,
            predictions=table,
        )
        if wandb_run is not None:
            client.set_tag(run_id, Tag.WANDB_EVAL_RUN, wandb_run.reference)
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception:  # the server may be what failed
            pass
        detail = exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"
        raise TrackingError(f"logging evaluation {output} to MLflow run {run_id} failed: {detail}") from exc
    log.info("logged evaluation %s as MLflow run %s", output, run_id)
    return run_id

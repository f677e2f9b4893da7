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
from typing import Any, Mapping

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
EVALUATION_EXPERIMENT = "grounding-evaluation"
TAG_PREFIX = "grounding."
ROLE_TAG = "grounding.role"
OUTPUT_TAG = "grounding.output_uri"
DIGEST_TAG = "grounding.metrics_sha256"
WANDB_TAG = "grounding.wandb_run"
EVAL_WANDB_TAG = "grounding.wandb_eval_run"
AIRFLOW_RUN_TAG = "grounding.airflow_run"
WANDB_TABLE_ROWS = 32  # predictions shown with their boxes in the W&B table
# Params every evaluation run carries (promotion reads them back).
PARAM_KEYS = (
    "model_uri",
    "dataset_uri",
    "dataset_version",
    "split",
    "protocol",
    "engine",
    "batch_size",
    "max_new_tokens",
    "max_samples",
    "role",
)
# Lineage keys copied to tags (from the training run.json next to the model).
LINEAGE_KEYS = (
    "training_run_id",
    "training_output_uri",
    "training_dataset_version",
    "training_dataset_uri",
    "image_digest",
    "git_commit",
    "wandb_run",
    "base_model_uri",
)
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


def _params(document: Mapping[str, Any]) -> dict[str, str]:
    params = {}
    for key in PARAM_KEYS:
        value = document.get(key)
        params[key] = "" if value is None else str(value)
    return params


def _tags(document: Mapping[str, Any], output_uri: str, digest: str) -> dict[str, str]:
    lineage = dict(document.get("lineage") or {})
    tags = {
        ROLE_TAG: str(document.get("role") or "candidate"),
        OUTPUT_TAG: output_uri,
        DIGEST_TAG: digest,
        "grounding.model_uri": str(document.get("model_uri") or ""),
        "grounding.dataset_version": str(document.get("dataset_version") or ""),
        "grounding.dataset_uri": str(document.get("dataset_uri") or ""),
        "grounding.protocol": str(document.get("protocol") or ""),
        "grounding.kind": "evaluation",
    }
    for key in LINEAGE_KEYS:
        if lineage.get(key):
            tags[f"{TAG_PREFIX}{key}"] = str(lineage[key])
    for key, value in dict(document.get("tags") or {}).items():
        tags[key if key.startswith(TAG_PREFIX) or "." in key else f"{TAG_PREFIX}{key}"] = str(value)
    return {k: v for k, v in tags.items() if v != ""}


def _find_logged_run(client: Any, experiment_id: str, output_uri: str, digest: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{OUTPUT_TAG}` = {quote_filter_value(output_uri)} "
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
        read_metrics_document,
    )
    from grounding_ops.evaluation.plots import EVALUATION_PLOTS
    from grounding_ops.tracking_wandb import wandb_mode
    from grounding_ops.storage import StorageError, open_store

    try:
        document = read_metrics_document(output_uri, s3_client=s3_client)
    except (EvaluationError, StorageError) as exc:
        raise TrackingError(str(exc)) from exc
    store = open_store(output_uri, s3_client=s3_client)
    output = store.uri
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()
    client = client if client is not None else mlflow_client()

    try:
        experiment_id = ensure_experiment(client, experiment)
        existing = _find_logged_run(client, experiment_id, output, digest)
        if existing:
            log.info("evaluation %s is already logged as MLflow run %s", output, existing)
            return existing
        tags = _tags(document, output, digest)
        airflow_run = tags.get(AIRFLOW_RUN_TAG)
        if airflow_run:  # the evaluations of one DAG run are nested under one parent run
            from grounding_ops.registry.training_run import PARENT_TAG, dag_run_parent

            tags[PARENT_TAG] = dag_run_parent(client, experiment_id, airflow_run)
        model_name = str(document.get("model_uri", "model")).rstrip("/").rsplit("/", 1)[-1]
        run_name = f"eval-{model_name}-{document.get('dataset_version') or 'dataset'}"
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    except MlflowException as exc:
        raise TrackingError(f"cannot create an MLflow run at {client.tracking_uri}: {exc.message}") from exc

    run_id = run.info.run_id
    try:
        flat = {k: float(v) for k, v in dict(document.get("flat_metrics") or {}).items()}
        params = [Param(k, v) for k, v in _params(document).items()]
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
            config={**_params(document), "mlflow_run_id": run_id, "output_uri": output},
            metrics=flat,
            job_type="evaluation",
            tags=(str(document.get("role") or "candidate"),),
            directory=wandb_dir,
            group=airflow_run,
            predictions=table,
        )
        if wandb_run is not None:
            client.set_tag(run_id, EVAL_WANDB_TAG, wandb_run.reference)
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

"""A finished training as an MLflow run, and the parent run of a DAG run's evaluations.

The trainer writes ``run.json`` (the spec, the dataset, the per-step ``history``) and
no MLflow (the trainer images need no tracking credentials); this module, in the
platform environment, turns it into a run of the ``grounding-training`` experiment:

* params: the training spec (flattened) and the engine;
* metrics: every step of the history (``reward_mean``, ``iou``, ``acc``, ``kl``,
  ``entropy``, ``response_length``, ``seconds_per_step``, ``tokens_per_s``) with its
  step and the wall-clock time the trainer recorded for it;
* the dataset as an input (name, version as digest, source URI);
* tags: output URI, dataset version, trainer image digest, git commit, Airflow run;
* artifacts: ``run.json`` and the training curves as a figure.

Logging the same ``run.json`` twice returns the first run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from grounding_ops.records import RecordError
from grounding_ops.registry.tracking import (
    DIGEST_TAG,
    TrackingError,
    ensure_experiment,
    mlflow_client,
    quote_filter_value,
)
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import RUN_RECORD_FILE, Tag

log = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "grounding-training"
HISTORY_METRICS = (
    "reward_mean",
    "iou",
    "acc",
    "format_ok",
    "ended",  # CPU engine: share of rollouts that ended before the length limit
    "kl",
    "entropy",
    "loss",
    "response_length",
    "seconds_per_step",
    "tokens_per_s",
)
_MAX_PARAM_CHARS = 6000
_MAX_BATCH = 1000


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
        return
    text = json.dumps(value) if isinstance(value, (list, tuple)) else ("" if value is None else str(value))
    out[prefix] = text[:_MAX_PARAM_CHARS]


def training_params(record: RunRecord) -> dict[str, str]:
    """The spec of ``run.json`` as flat MLflow params (``spec.<field>``), plus engine and steps."""
    params: dict[str, str] = {}
    _flatten("spec", record.spec, params)
    for key, value in (
        ("engine", record.engine),
        ("target_steps", record.target_steps),
        ("dataset_version", record.dataset_version),
        ("dataset_uri", record.dataset_uri),
        ("base_model_uri", record.base_model_uri),
    ):
        if value is not None:
            params[key] = str(value)[:_MAX_PARAM_CHARS]
    return params


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def history_metrics(history: list[Mapping[str, Any]], fallback_ms: int) -> list[Any]:
    """``Metric`` entities for each step of the history, stamped with the step's recorded time."""
    from mlflow.entities import Metric

    metrics = []
    for entry in history:
        if "step" not in entry:
            continue
        step = int(entry["step"])
        stamp = _finite(entry.get("timestamp"))
        timestamp_ms = int(stamp * 1000) if stamp is not None else fallback_ms
        for key in HISTORY_METRICS:
            value = _finite(entry.get(key))
            if value is not None:
                metrics.append(Metric(key, value, timestamp_ms, step))
    return metrics


def dataset_input(record: RunRecord) -> Any:
    """The training dataset as an MLflow ``DatasetInput`` (name, version as digest, source URI)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    uri = (record.dataset_uri or "").rstrip("/")
    version = record.dataset_version or ""
    name = uri.rsplit("/", 2)[-2] if uri.count("/") >= 3 else (uri or "dataset")
    dataset = Dataset(
        name=name,
        digest=version[:36] or "unknown",
        source_type="s3" if uri.startswith("s3://") else "local",
        source=json.dumps({"uri": uri}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value="train")])


def log_training_run(
    output_uri: str,
    *,
    client: Any | None = None,
    experiment: str = TRAINING_EXPERIMENT,
    airflow_run: str | None = None,
    s3_client: Any | None = None,
) -> str:
    """Log the training whose ``run.json`` is under ``output_uri`` as an MLflow run; return its id."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    from grounding_ops.evaluation.plots import TRAINING_CURVES, training_curves
    from grounding_ops.storage import StorageError, open_store

    store = open_store(output_uri, s3_client=s3_client)
    try:
        raw = store.get_bytes(RUN_RECORD_FILE)
        record = RunRecord.from_dict(json.loads(raw), where=store.url(RUN_RECORD_FILE))
    except (StorageError, ValueError) as exc:
        detail = str(exc) if isinstance(exc, RecordError) else f"the training has not finished ({exc})"
        raise TrackingError(f"no readable {RUN_RECORD_FILE} under {output_uri}: {detail}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    client = client if client is not None else mlflow_client()
    output = store.uri.rstrip("/")
    try:
        experiment_id = ensure_experiment(client, experiment)
        existing = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{Tag.OUTPUT_URI}` = {quote_filter_value(output)} and tags.`{DIGEST_TAG}` = "
            f"{quote_filter_value(digest)} and attributes.status = 'FINISHED'",
            max_results=1,
        )
        if existing:
            return existing[0].info.run_id
        tags = {
            Tag.KIND: "training",
            Tag.OUTPUT_URI: output,
            DIGEST_TAG: digest,
            Tag.DATASET_VERSION: record.dataset_version,
            Tag.DATASET_URI: record.dataset_uri,
            Tag.IMAGE_DIGEST: record.image or "",
            Tag.GIT_COMMIT: record.git_commit or "",
            Tag.WANDB_RUN: record.wandb_url or "",
            Tag.ENGINE: record.engine,
        }
        if airflow_run:
            tags[Tag.AIRFLOW_RUN] = airflow_run
        if record.git_commit:
            tags["mlflow.source.git.commit"] = record.git_commit
        tags = {k: v for k, v in tags.items() if v}
        run = client.create_run(experiment_id, tags=tags, run_name=f"train-{record.dataset_version or 'dataset'}")
    except MlflowException as exc:
        raise TrackingError(f"cannot create an MLflow training run at {client.tracking_uri}: {exc.message}") from exc

    run_id = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        params = [Param(k, v) for k, v in sorted(training_params(record).items())]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        history = [dict(h) for h in record.history]
        metrics = history_metrics(history, now_ms)
        for start in range(0, len(metrics), _MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _MAX_BATCH])
        client.log_inputs(run_id, datasets=[dataset_input(record)])
        with tempfile.TemporaryDirectory(prefix="grounding-train-log-") as tmp:
            (Path(tmp) / RUN_RECORD_FILE).write_bytes(raw)
            client.log_artifact(run_id, str(Path(tmp) / RUN_RECORD_FILE))
            (Path(tmp) / TRAINING_CURVES).write_bytes(training_curves(history))
            client.log_artifact(run_id, str(Path(tmp) / TRAINING_CURVES), "plots")
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception:  # the server may be what failed
            pass
        detail = exc.message if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {exc}"
        raise TrackingError(f"logging training {output} to MLflow run {run_id} failed: {detail}") from exc
    log.info("logged training %s (%d history steps) as MLflow run %s", output, len(history), run_id)
    return run_id

"""The logic of the ``grounding_train`` DAG as plain functions; the DAG file only wires them.

resolve dataset (skip when none is published yet) -> decide (skip when nothing changed) -> plan + train
(container) -> list checkpoints -> evaluate each on ``val`` (container, mapped) -> pick the best on ``val``
-> plan the decision evaluations on ``test`` (the best candidate, and the bar: the champion, re-evaluated
on this dataset version unless an evaluation exists, or the base model) -> evaluate them (mapped) ->
promote on ``test``. Selection and decision never share a split (``SELECTION_SPLIT``, ``DECISION_SPLIT``).

Functions named ``*_task`` take the Airflow context and do the Airflow lookups (connections,
Variables, asset events); everything else takes plain values and is tested without Airflow.
Each task returns a dict with a one-line ``summary`` (also logged) and, where it reads or writes
data, a ``lineage`` entry that becomes its OpenLineage inputs/outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

from grounding_ops.evaluation.evaluation_record import EvaluationRecord
from grounding_ops.evaluation.selection import SelectionError, best_checkpoint
from grounding_ops.pipeline.assets import dataset_asset_uri, dataset_name, mlflow_model_ref, model_name
from grounding_ops.pipeline.errors import NoDatasetYet, PipelineError
from grounding_ops.pipeline.hooks import bucket, mlflow_tracking_uri, s3_client, s3_endpoint, s3_store
from grounding_ops.pipeline.task_records import (
    CheckpointEvaluation,
    EvaluationCandidate,
    EvaluationPlan,
    TrainingPlan,
    TrainingSummary,
)
from grounding_ops.pipeline.train_params import (
    EVAL_ENGINE,
    PROMOTION_METRICS,
    TRAIN_ENGINE,
    VERSION_PATTERN,
    spec_overrides,
    training_values,
)
from grounding_ops.registry.gate import DEFAULT_CONFIDENCE, DEFAULT_MIN_SAMPLES
from grounding_ops.records import RecordError
from grounding_ops.storage import ObjectStore, StorageError, join_uri, split_s3_uri
from grounding_ops.training.checkpoints import evaluable_checkpoints
from grounding_ops.training.run_record import RunRecord
from grounding_ops.vocabulary import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    DECISION_SPLIT,
    MANIFEST_FILE,
    S3_CONN_ID,
    SELECTION_SPLIT,
    Tag,
)

GPU_WORK_VOLUME = "grounding-ops-trainer-work"  # named volume at the GPU trainer's /work
AIRFLOW_RUN_ENV = "GROUNDING_OPS_AIRFLOW_RUN"  # dag_id/run_id, in every container of a DAG run

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DatasetRef:
    version: str
    uri: str  # the version folder
    manifest_uri: str
    source: str  # "asset event", "param" or "latest.json"


def datasets_root(bucket: str, name: str | None = None) -> str:
    return dataset_asset_uri(bucket, name or dataset_name())


def resolve_dataset(
    requested: str,
    *,
    store: ObjectStore,
    asset_event_extras: Sequence[Mapping[str, Any]] = (),
) -> DatasetRef:
    """The dataset version to train on.

    ``requested`` is a version id or ``latest``; ``latest`` means the newest asset event of the
    dataset Asset (its extra carries ``version``), else ``latest.json`` under the datasets root
    (``store``). The version's ``manifest.json`` must exist (it is written last, so it proves the
    version is complete).
    """
    if not re.fullmatch(VERSION_PATTERN, requested or ""):
        raise PipelineError(
            f"dataset version {requested!r} is not a version id; use 'latest' or e.g. 20250101T000000-abc"
        )
    source = "param"
    version = requested
    if requested == "latest":
        version = ""
        for extra in reversed(list(asset_event_extras)):
            candidate = str((extra or {}).get("version") or "")
            if candidate:
                version, source = candidate, "asset event"
                break
        if not version:
            try:
                latest = json.loads(store.get_bytes("latest.json"))
            except StorageError as exc:
                raise NoDatasetYet(
                    f"no dataset version has been published under {store.uri} yet: run the grounding_data DAG "
                    "first, or set dataset_version"
                ) from exc
            except ValueError as exc:
                raise PipelineError(
                    f"{store.url('latest.json')} is not JSON ({exc}): publish the dataset again "
                    "with grounding_data, or set dataset_version"
                ) from exc
            version, source = str(latest.get("version") or ""), "latest.json"
        if not re.fullmatch(VERSION_PATTERN, version) or version == "latest":
            raise PipelineError(f"the published dataset version {version!r} is not a valid version id")
    manifest_key = f"{version}/manifest.json"
    if not store.exists(manifest_key):
        raise PipelineError(
            f"dataset version {version!r} has no manifest at {store.url(manifest_key)}: it was not published "
            "(completely); pick a published version or run grounding_data"
        )
    return DatasetRef(
        version=version, uri=join_uri(store.uri, version), manifest_uri=store.url(manifest_key), source=source
    )


# ----------------------------------------------------------------------------- skip decision


def training_fingerprint(params: Mapping[str, Any], image: str | None = None) -> str:
    """A short hash of the form values that change what is trained (not the dataset version), and of
    the trainer image (``repo@sha256:...``) when given."""
    chosen = training_values(params)
    if image:
        chosen["image"] = image
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelState:
    """What a registered model version was trained from (read from its evaluation run's tags)."""

    alias: str
    version: str
    dataset_version: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Decision:
    train: bool
    reason: str


def decide_training(
    dataset_version: str,
    fingerprint: str,
    champion: ModelState | None,
    challenger: ModelState | None = None,
    *,
    force: bool = False,
) -> Decision:
    """Train only when the dataset version or the training settings differ from the champion's
    (and from the last challenger's, so a rejected candidate is not retrained every night)."""
    if force:
        return Decision(True, f"forced by the form (dataset {dataset_version}, settings {fingerprint})")
    if champion is None:
        return Decision(True, f"no champion yet: training on dataset {dataset_version}")
    for state in (champion, challenger):
        if state is None:
            continue
        if state.dataset_version == dataset_version and state.fingerprint == fingerprint:
            what = "the champion" if state.alias == CHAMPION_ALIAS else "the last candidate (not promoted)"
            return Decision(
                False,
                f"nothing changed: {what}, version {state.version}, was trained on dataset {dataset_version} "
                f"with the same settings ({fingerprint}); publish a new dataset version, change a setting "
                "or trigger with force=true to train anyway",
            )
    if champion.dataset_version != dataset_version:
        return Decision(
            True,
            f"new dataset version {dataset_version} (champion v{champion.version} was "
            f"trained on {champion.dataset_version or 'an unknown version'})",
        )
    return Decision(
        True,
        f"training settings changed ({champion.fingerprint or 'unknown'} -> {fingerprint}) "
        f"on dataset {dataset_version}",
    )


def model_states(tracking_uri: str, name: str) -> tuple[ModelState | None, ModelState | None]:
    """The champion's and the challenger's :class:`ModelState` (None where the alias is unset)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    states: list[ModelState | None] = []
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                states.append(None)
                continue
            raise
        tags = dict(version.tags or {})
        run_id = tags.get(Tag.EVALUATION_RUN_ID) or version.run_id
        if run_id:
            try:
                tags = {**client.get_run(run_id).data.tags, **tags}
            except MlflowException:
                pass
        states.append(
            ModelState(
                alias=alias,
                version=str(version.version),
                dataset_version=tags.get(Tag.DATASET_VERSION),
                fingerprint=tags.get(Tag.TRAIN_FINGERPRINT),
            )
        )
    return states[0], states[1]


# ----------------------------------------------------------------------------- training


def safe_segment(text: str) -> str:
    return _SAFE.sub("_", text).strip("._") or "run"


def run_root(bucket: str, dag_id: str, run_id: str) -> str:
    """Where a DAG run writes: ``s3://bucket/runs/<dag>/<run>`` (the same for every try: resume)."""
    return f"s3://{bucket}/runs/{safe_segment(dag_id)}/{safe_segment(run_id)}"


def s3_http_url(uri: str, endpoint_url: str | None) -> str:
    """A browser link for an object: the endpoint's path-style URL, or the AWS console."""
    if not uri.startswith("s3://"):
        return ""
    bucket, key = split_s3_uri(uri)
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/{key}"
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}"


def mlflow_model_url(tracking_uri: str, name: str, version: str | None = None) -> str:
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    base = f"{tracking_uri.rstrip('/')}/#/models/{name}"
    return f"{base}/versions/{version}" if version else base


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def training_gpus(params: Mapping[str, Any]) -> int:
    """``gpus_per_node`` of the preset with the form's overrides."""
    from grounding_ops.training.presets import get_preset

    return int(get_preset(str(params["preset"])).with_overrides(spec_overrides(dict(params))).gpus_per_node)


def plan_training(
    params: Mapping[str, Any],
    dataset: DatasetRef,
    *,
    output_uri: str,
    fingerprint: str,
    airflow_run: str,
    s3_endpoint: str | None = None,
    tracking_uri: str = "",
) -> TrainingPlan:
    """The training container's plan: engine, argument-list command, lineage and links."""
    engine = params["engine"]
    if engine not in TRAIN_ENGINE:
        raise PipelineError(f"engine {engine!r} is unknown: use one of {', '.join(TRAIN_ENGINE)}")
    command = [
        "train",  # arguments of the image ENTRYPOINT `grounding-ops`
        "--engine",
        TRAIN_ENGINE[engine],
        "--preset",
        str(params["preset"]),
        "--dataset",
        dataset.uri,
        "--output",
        output_uri,
    ]
    for assignment in spec_overrides(params):
        command += ["--set", assignment]
    return TrainingPlan(
        engine=engine,
        command=command,
        # the GPUs the training container gets: the spec's gpus_per_node, never "all"
        gpus=training_gpus(params),
        work_volume=GPU_WORK_VOLUME,
        environment=container_environment(airflow_run),
        output_uri=output_uri,
        dataset_version=dataset.version,
        dataset_uri=dataset.uri,
        fingerprint=fingerprint,
        nodes=int(params.get("nodes") or 1),
        links={
            "manifest": s3_http_url(dataset.manifest_uri, s3_endpoint),
            "mlflow": mlflow_model_url(tracking_uri, model_name()),
        },
        inputs=[dataset.uri],
        outputs=[output_uri],
    )


def container_environment(airflow_run: str) -> dict[str, str]:
    """The environment every container of a DAG run gets (its W&B runs are grouped by DAG run)."""
    return {"PYTHONUNBUFFERED": "1", AIRFLOW_RUN_ENV: airflow_run, "WANDB_RUN_GROUP": airflow_run}


def read_training_result(store: ObjectStore, plan: TrainingPlan) -> TrainingSummary:
    """Summary of a finished training from its :class:`RunRecord` (written last by the container)."""
    try:
        run = RunRecord.load(store)
    except RecordError as exc:
        raise PipelineError(f"the training container exited 0 but {exc}; see the container log above") from exc
    if run.steps_done <= 0:
        raise PipelineError(f"training at {store.uri} reports {run.steps_done} steps done: nothing was trained")
    return TrainingSummary(
        output_uri=store.uri,
        dataset_version=run.dataset_version,
        dataset_uri=run.dataset_uri,
        steps_done=run.steps_done,
        final_metrics=dict(run.final_metrics),
        wandb_url=run.wandb_url or "",
        checkpoints=list(run.checkpoints),
        base_model=run.base_model_uri or run.start_model,
        engine=plan.engine,
        image=run.image or "",
        git_commit=run.git_commit or "",
        fingerprint=plan.fingerprint,
    )


def training_summary_line(summary: TrainingSummary) -> str:
    metrics = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
        for k, v in sorted(summary.final_metrics.items())[:6]
    )
    return (
        f"trained {summary.steps_done} steps on dataset {summary.dataset_version} "
        f"({summary.engine} engine) -> {summary.output_uri}" + (f"; {metrics}" if metrics else "")
    )


def record_training(
    store: ObjectStore, summary: TrainingSummary, plan: TrainingPlan, *, tracking_uri: str
) -> TrainingSummary:
    """Log the finished training (its ``run.json``) as an MLflow run; the summary with its id and URL."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import tracking
    from grounding_ops.registry.tracking import dag_run_parent
    from grounding_ops.registry.training_run import log_training_run

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    airflow_run = plan.environment.get(AIRFLOW_RUN_ENV) or None
    try:
        run_id = log_training_run(
            store.uri, client=client, airflow_run=airflow_run, s3_client=getattr(store, "client", None)
        )
        if airflow_run:  # the parent of the DAG run's evaluations, made once before they run in parallel
            dag_run_parent(client, tracking.ensure_experiment(client, tracking.EVALUATION_EXPERIMENT), airflow_run)
    except tracking.TrackingError as exc:
        raise PipelineError(str(exc)) from exc
    experiment_id = str(client.get_run(run_id).info.experiment_id)
    return replace(summary, mlflow_run_id=run_id, mlflow_url=mlflow_run_url(tracking_uri, experiment_id, run_id))


# ----------------------------------------------------------------------------- checkpoints


def list_checkpoints(store: ObjectStore, summary: TrainingSummary) -> list[EvaluationCandidate]:
    """Evaluable models of a training run: each Hugging Face checkpoint, ``final``, and the base model.

    ``store`` is the training output; which checkpoints are evaluable is
    :func:`grounding_ops.training.checkpoints.evaluable_checkpoints`'s answer.
    """
    found = [
        EvaluationCandidate(c.name, c.uri, c.step, "candidate")
        for c in evaluable_checkpoints(store, steps_done=summary.steps_done)
    ]
    if not found:
        raise PipelineError(
            f"no evaluable checkpoint under {store.uri} (expected final/ or checkpoints/*/ "
            "with config.json): see the train task's log"
        )
    candidates = sorted(found, key=lambda c: c.step)
    base = summary.base_model
    if base.startswith("s3://") or base.startswith("/") or base.startswith("file://"):
        candidates.append(EvaluationCandidate("base", base, -1, "base"))
    else:
        log.info("base model %r is not a folder or s3:// URI; it is not evaluated (the champion is the bar)", base)
    return candidates


def plan_evaluations(
    params: Mapping[str, Any],
    training: TrainingSummary,
    candidates: Sequence[EvaluationCandidate],
    *,
    run_uri: str,
    airflow_run: str,
    s3_endpoint: str | None = None,
    split: str = SELECTION_SPLIT,
) -> list[EvaluationPlan]:
    """One evaluation-container plan per candidate on ``split`` (the list ``.expand`` maps over)."""
    if split not in (SELECTION_SPLIT, DECISION_SPLIT):
        raise PipelineError(
            f"split {split!r} is neither the selection split {SELECTION_SPLIT!r} nor the "
            f"decision split {DECISION_SPLIT!r}"
        )
    engine = params["engine"]
    manifest = join_uri(training.dataset_uri, MANIFEST_FILE)
    plans = []
    for candidate in candidates:
        folder = safe_segment(candidate.name) if split == SELECTION_SPLIT else f"{split}-{safe_segment(candidate.name)}"
        output_uri = join_uri(run_uri, "eval", folder)
        command = [
            "evaluate",  # arguments of the image ENTRYPOINT `grounding-ops`
            "--model",
            candidate.uri,
            "--dataset",
            training.dataset_uri,
            "--split",
            split,
            "--engine",
            EVAL_ENGINE[engine],
            "--output",
            output_uri,
            "--role",
            candidate.role,
            "--no-mlflow",
            "--tag",
            f"{Tag.DATASET_VERSION}={training.dataset_version}",
            "--tag",
            f"{Tag.TRAIN_FINGERPRINT}={training.fingerprint}",
            "--tag",
            f"{Tag.AIRFLOW_RUN}={airflow_run}",
            "--tag",
            f"{Tag.PREFIX}checkpoint={candidate.name}",
        ]
        if params.get("max_eval_samples"):
            command += ["--max-samples", str(int(params["max_eval_samples"]))]
        plans.append(
            EvaluationPlan(
                engine=engine,
                command=command,
                gpus=1,  # vLLM takes most of its GPU: one each, and the evaluations run one at a time
                environment=container_environment(airflow_run),
                output_uri=output_uri,
                candidate=candidate,
                split=split,
                dataset_version=training.dataset_version,
                fingerprint=training.fingerprint,
                links={"wandb": training.wandb_url, "manifest": s3_http_url(manifest, s3_endpoint)},
                inputs=[training.dataset_uri, candidate.uri],
                outputs=[output_uri],
            )
        )
    return plans


# ----------------------------------------------------------------------------- evaluation results


def _metric_summary(flat: Mapping[str, Any]) -> dict[str, float]:
    keys = (*PROMOTION_METRICS, "parse_failure_rate", "n_samples", "samples_per_s")
    return {k: float(flat[k]) for k in keys if isinstance(flat.get(k), (int, float))}


def record_evaluation(store: ObjectStore, plan: EvaluationPlan, *, tracking_uri: str) -> CheckpointEvaluation:
    """Log a finished evaluation (its :class:`EvaluationRecord`) as an MLflow run; the result for ``pick_best``."""
    try:
        record = EvaluationRecord.load(store)
    except RecordError as exc:
        raise PipelineError(f"the evaluation container exited 0 but {exc}; see the container log above") from exc
    run_id, experiment_id = log_to_mlflow(store.uri, tracking_uri, s3_client=getattr(store, "client", None))
    candidate = plan.candidate
    return CheckpointEvaluation(
        candidate=candidate.name,
        role=candidate.role,
        step=candidate.step,
        model_uri=candidate.uri,
        eval_uri=store.uri,
        dataset_version=record.dataset_version,
        split=record.split,
        metrics=_metric_summary(record.flat_metrics),
        mlflow_run_id=run_id,
        mlflow_url=mlflow_run_url(tracking_uri, experiment_id, run_id),
    )


def log_to_mlflow(output_uri: str, tracking_uri: str, *, s3_client: Any | None = None) -> tuple[str, str]:
    """``grounding_ops.registry.tracking.log_evaluation`` for ``output_uri``; (run id, experiment id)."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import tracking

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run_id = str(tracking.log_evaluation(output_uri, client=client, s3_client=s3_client))
    except tracking.TrackingError as exc:
        raise PipelineError(str(exc)) from exc
    return run_id, str(client.get_run(run_id).info.experiment_id)


def evaluation_summary_line(result: CheckpointEvaluation) -> str:
    shown = ", ".join(f"{k}={result.metrics[k]:.4f}" for k in PROMOTION_METRICS if k in result.metrics)
    return (
        f"evaluated {result.role} {result.candidate} ({result.model_uri}) on dataset "
        f"{result.dataset_version} ({result.split}): {shown}; MLflow run {result.mlflow_run_id}"
    )


def evaluation_results(results: Sequence[Mapping[str, Any] | None]) -> list[CheckpointEvaluation]:
    """The evaluate tasks' XCom values as records (a skipped mapped task gives ``None``)."""
    return [CheckpointEvaluation.from_dict(r, where="an evaluate task's result") for r in results if r]


def pick_best(results: Sequence[Mapping[str, Any] | None], metric: str) -> dict[str, Any]:
    """The best candidate by ``metric`` on the selection split (see
    :func:`~grounding_ops.evaluation.selection.best_checkpoint`), and the base model's result if any."""
    if metric not in PROMOTION_METRICS:
        raise PipelineError(f"promotion metric {metric!r} is unknown: use one of {', '.join(PROMOTION_METRICS)}")
    evaluations = evaluation_results(results)
    _check_split(evaluations, SELECTION_SPLIT, "pick the best checkpoint")
    candidates = [r for r in evaluations if r.role != "base" and metric in r.metrics]
    try:
        best = best_checkpoint(candidates, metric, value=lambda r: r.metrics[metric], step=lambda r: r.step)
    except SelectionError as exc:
        raise PipelineError(
            f"{exc}: no evaluated checkpoint has the metric {metric!r}; see the evaluate tasks"
        ) from exc
    base = next((r for r in evaluations if r.role == "base"), None)
    table = "; ".join(
        f"{r.candidate}={r.metrics.get(metric, float('nan')):.4f}" for r in sorted(evaluations, key=lambda r: r.step)
    )
    summary = (
        f"best by {metric} on {SELECTION_SPLIT}: {best.candidate} = {best.metrics[metric]:.4f} "
        f"(MLflow run {best.mlflow_run_id}); all: {table}"
    )
    return {
        "best": best.to_dict(),
        "base": base.to_dict() if base else None,
        "metric": metric,
        "split": SELECTION_SPLIT,
        "summary": summary,
    }


def _check_split(results: Sequence[CheckpointEvaluation], split: str, what: str) -> None:
    wrong = sorted({r.split for r in results if r.split and r.split != split})
    if wrong:
        raise PipelineError(
            f"evaluations on {', '.join(wrong)} were given to {what}, which uses {split!r} only: "
            f"checkpoints are chosen on {SELECTION_SPLIT!r}, promotion is decided on {DECISION_SPLIT!r}"
        )


@dataclass(frozen=True)
class Champion:
    version: str
    model_uri: str


def current_champion(tracking_uri: str, name: str) -> Champion | None:
    """The registered model's ``champion`` version and its model URI (None when no champion yet)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    from grounding_ops.registry.pyfunc_model import weights_uri

    # the weights the champion's evaluations name (the version's source is its logged MLflow model)
    return Champion(version=str(version.version), model_uri=weights_uri(version))


def existing_evaluation(tracking_uri: str, model_uri: str, dataset_version: str, split: str) -> str | None:
    """The id of a finished evaluation run of ``model_uri`` on ``dataset_version``/``split``, if any."""
    from grounding_ops.registry import promotion

    return promotion.find_evaluation(promotion.mlflow_client(tracking_uri), model_uri, dataset_version, split)


def decision_candidates(
    choice: Mapping[str, Any],
    champion: Champion | None,
    *,
    champion_evaluation: str | None,
    base_evaluation: str | None,
) -> tuple[list[EvaluationCandidate], str]:
    """What to evaluate on the decision split: the chosen candidate, and the bar unless an evaluation of
    it on this dataset version and split exists already (the champion, or the base model when there is
    no champion yet). Returns the candidates and a line saying what is reused."""
    best = CheckpointEvaluation.from_dict(choice["best"], where="the chosen checkpoint")
    models = [EvaluationCandidate(best.candidate, best.model_uri, best.step, "candidate")]
    if champion is not None:
        if champion_evaluation:
            return models, (
                f"champion v{champion.version} already evaluated on {DECISION_SPLIT} "
                f"(MLflow run {champion_evaluation}): reused"
            )
        models.append(EvaluationCandidate(f"champion-v{champion.version}", champion.model_uri, -2, "champion"))
        return models, f"champion v{champion.version} ({champion.model_uri}) is evaluated on {DECISION_SPLIT} too"
    if not choice.get("base"):
        return models, "no champion and no base model evaluation: the gate will say what is missing"
    base = CheckpointEvaluation.from_dict(choice["base"], where="the base model's evaluation")
    if base_evaluation:
        return models, f"base model already evaluated on {DECISION_SPLIT} (MLflow run {base_evaluation}): reused"
    models.append(EvaluationCandidate("base", base.model_uri, -1, "base"))
    return models, f"no champion yet: the base model ({base.model_uri}) is the bar, evaluated on {DECISION_SPLIT}"


def check_test_split(manifest: Mapping[str, Any], dataset: DatasetRef) -> None:
    """Refuse a dataset version without a test split (published before test splits existed)."""
    if f"{DECISION_SPLIT}.parquet" not in (manifest.get("files") or {}):
        raise PipelineError(
            f"dataset version {dataset.version} has no {DECISION_SPLIT} split ({DECISION_SPLIT}.parquet is not in "
            f"{dataset.manifest_uri}): it was published before held-out test splits existed, and promotion is "
            "decided on the test split only; publish the data again with grounding_data (it writes train, val "
            "and test) and train on the new version"
        )


# ----------------------------------------------------------------------------- promotion


def decided_on(choice: Mapping[str, Any], decision_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The chosen candidate's evaluation on the decision split (never the one that chose it)."""
    results = evaluation_results(decision_results)
    _check_split(results, DECISION_SPLIT, "decide the promotion")
    if choice.get("split", SELECTION_SPLIT) == DECISION_SPLIT:
        raise PipelineError(f"the checkpoint was chosen on {DECISION_SPLIT!r}: the decision must use another split")
    best = choice["best"]
    for result in results:
        if result.role == "candidate" and result.model_uri == best["model_uri"]:
            return result.to_dict()
    raise PipelineError(
        f"no {DECISION_SPLIT} evaluation of the chosen candidate {best['candidate']} "
        f"({best['model_uri']}): see the evaluate_test tasks"
    )


def promote_best(
    choice: Mapping[str, Any],
    decision_results: Sequence[Mapping[str, Any]] = (),
    *,
    min_delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    tracking_uri: str,
    name: str | None = None,
    airflow_run: str = "",
    s3_client: Any | None = None,
) -> dict[str, Any]:
    """Register the chosen candidate (evaluated on the decision split) and let the gate decide on
    ``champion`` with the paired comparison on that split.

    ``s3_client`` reads the candidate's model folder (it is logged as an MLflow model)."""
    from mlflow.tracking import MlflowClient

    from grounding_ops.registry import promotion

    name = name or model_name()
    selection = choice["best"]
    best = decided_on(choice, decision_results)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        decision = promotion.promote(
            best["mlflow_run_id"],
            metric=choice["metric"],
            min_delta=float(min_delta),
            model_name=name,
            client=client,
            confidence=float(confidence),
            min_samples=int(min_samples),
            s3_client=s3_client,
        )
    except promotion.PromotionError as exc:
        raise PipelineError(str(exc)) from exc
    data = _as_dict(decision)
    version = str(data.get("version") or "")
    if version and airflow_run:
        client.set_model_version_tag(name, version, Tag.AIRFLOW_RUN, airflow_run)
    summary = (
        f"{decision.summary()} [checkpoint {selection['candidate']} chosen on {SELECTION_SPLIT}: "
        f"{choice['metric']}={selection['metrics'].get(choice['metric'], float('nan')):.4f}]"
    )
    return {
        "model_name": name,
        "version": version,
        "promoted": bool(data.get("promoted")),
        "decision": data,
        "metric": choice["metric"],
        "selection_split": choice.get("split", SELECTION_SPLIT),
        "decision_split": best.get("split") or DECISION_SPLIT,
        "summary": summary,
        "model_url": mlflow_model_url(tracking_uri, name, version or None),
        "lineage": {
            "inputs": [best["eval_uri"], best["model_uri"]],
            "outputs": [mlflow_model_ref(name, version)] if version else [],
        },
    }


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "to_dict"):
        return dict(value.to_dict())
    try:
        return asdict(value)
    except TypeError:
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- Airflow glue


def airflow_run_ref(context: Mapping[str, Any]) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}"


def asset_event_extras(context: Mapping[str, Any], asset: Any) -> list[dict[str, Any]]:
    """Extras of the dataset asset's events, oldest first: the events that triggered this run, then
    the newest event of the asset overall (declared as the task's inlet)."""
    extras: list[dict[str, Any]] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        extras.extend(dict(e.extra or {}) for e in events)
    try:
        events = context["inlet_events"][asset]
        if len(events):
            extras.append(dict(events[-1].extra or {}))
    except (KeyError, IndexError, TypeError):
        pass
    return extras


def _emit(summary: str) -> str:
    log.info("%s", summary)
    print(summary, flush=True)  # the task log shows it even where logging is configured quietly
    return summary


def resolve_dataset_task(context: Mapping[str, Any], asset: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    params = context["params"]
    root = datasets_root(bucket())
    try:
        dataset = resolve_dataset(
            str(params["dataset_version"]), store=s3_store(root), asset_event_extras=asset_event_extras(context, asset)
        )
    except NoDatasetYet as exc:
        # the first scheduled run after unpausing, before grounding_data published anything: not a failure
        raise AirflowSkipException(_emit(f"SKIP: {exc}; this run trains nothing")) from None
    summary = _emit(f"dataset version {dataset.version} ({dataset.source}) at {dataset.uri}")
    return {**asdict(dataset), "summary": summary, "lineage": {"inputs": [dataset.manifest_uri], "outputs": []}}


def trainer_image_reference(engine: str) -> str:
    """The trainer image the run would use, pinned to its digest (part of the training fingerprint)."""
    from grounding_ops.pipeline.trainer_images import image_override, image_reference, resolve_image

    return image_reference(resolve_image(engine, image_override(engine)))


def decide_task(context: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    params = dict(context["params"])
    ref = DatasetRef(**{k: dataset[k] for k in ("version", "uri", "manifest_uri", "source")})
    fingerprint = training_fingerprint(params, image=trainer_image_reference(str(params["engine"])))
    tracking = mlflow_tracking_uri()
    champion, challenger = model_states(tracking, model_name())
    decision = decide_training(ref.version, fingerprint, champion, challenger, force=bool(params.get("force")))
    if not decision.train:
        _emit(f"SKIP training: {decision.reason}")
        raise AirflowSkipException(decision.reason)
    try:
        manifest = json.loads(s3_store(ref.uri).get_bytes(MANIFEST_FILE))
    except (StorageError, ValueError) as exc:
        raise PipelineError(f"cannot read {ref.manifest_uri}: {exc}") from exc
    check_test_split(manifest, ref)
    ti = context["ti"]
    plan = plan_training(
        params,
        ref,
        output_uri=join_uri(run_root(bucket(), ti.dag_id, ti.run_id), "train"),
        fingerprint=fingerprint,
        airflow_run=airflow_run_ref(context),
        s3_endpoint=s3_endpoint(S3_CONN_ID),
        tracking_uri=tracking,
    )
    summary = _emit(
        f"TRAIN: {decision.reason}; preset {params['preset']} on the {params['engine']} engine -> {plan.output_uri}"
    )
    return replace(plan, summary=summary, lineage={"inputs": [ref.uri], "outputs": []}).to_dict()


def list_checkpoints_task(context: Mapping[str, Any], training: Mapping[str, Any]) -> list[dict[str, Any]]:

    params = dict(context["params"])
    summary = TrainingSummary.from_dict(training, where="the train task's result")
    store = s3_store(summary.output_uri)
    candidates = list_checkpoints(store, summary)
    ti = context["ti"]
    plans = plan_evaluations(
        params,
        summary,
        candidates,
        run_uri=run_root(bucket(), ti.dag_id, ti.run_id),
        airflow_run=airflow_run_ref(context),
        s3_endpoint=s3_endpoint(S3_CONN_ID),
    )
    _emit(f"{len(plans)} models to evaluate: " + ", ".join(f"{c.name} ({c.role})" for c in candidates))
    return [
        replace(plan, lineage={"inputs": [summary.output_uri], "outputs": [plan.candidate.uri]}).to_dict()
        for plan in plans
    ]


def pick_best_task(context: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    choice = pick_best(results, str(context["params"]["promotion_metric"]))
    _emit(choice["summary"])
    choice["lineage"] = {"inputs": [r["eval_uri"] for r in results if r], "outputs": []}
    return choice


def plan_decision_task(
    context: Mapping[str, Any], choice: Mapping[str, Any], training: Mapping[str, Any]
) -> list[dict[str, Any]]:

    params = dict(context["params"])
    summary = TrainingSummary.from_dict(training, where="the train task's result")
    tracking = mlflow_tracking_uri()
    version = summary.dataset_version
    champion = current_champion(tracking, model_name())
    champion_evaluation = base_evaluation = None
    if champion is not None:
        champion_evaluation = existing_evaluation(tracking, champion.model_uri, version, DECISION_SPLIT)
    elif choice.get("base"):
        base_evaluation = existing_evaluation(tracking, choice["base"]["model_uri"], version, DECISION_SPLIT)
    models, note = decision_candidates(
        choice, champion, champion_evaluation=champion_evaluation, base_evaluation=base_evaluation
    )
    ti = context["ti"]
    plans = plan_evaluations(
        params,
        summary,
        models,
        run_uri=run_root(bucket(), ti.dag_id, ti.run_id),
        airflow_run=airflow_run_ref(context),
        s3_endpoint=s3_endpoint(S3_CONN_ID),
        split=DECISION_SPLIT,
    )
    _emit(
        f"{len(plans)} models to evaluate on {DECISION_SPLIT} of dataset {version}: "
        + ", ".join(f"{m.name} ({m.role})" for m in models)
        + f"; {note}"
    )
    return [
        replace(plan, lineage={"inputs": [summary.dataset_uri], "outputs": [plan.candidate.uri]}).to_dict()
        for plan in plans
    ]


def promote_task(
    context: Mapping[str, Any], choice: Mapping[str, Any], decision_results: Sequence[Mapping[str, Any]], asset: Any
) -> dict[str, Any]:
    params = context["params"]

    result = promote_best(
        choice,
        list(decision_results),
        min_delta=float(params["min_delta"]),
        confidence=float(params["confidence"]),
        min_samples=int(params["min_test_samples"]),
        tracking_uri=mlflow_tracking_uri(),
        airflow_run=airflow_run_ref(context),
        s3_client=s3_client(S3_CONN_ID),
    )
    _emit(result["summary"])
    context["outlet_events"][asset].extra = {
        "model_name": result["model_name"],
        "version": result["version"],
        "promoted": result["promoted"],
        "metric": result["metric"],
    }
    return result

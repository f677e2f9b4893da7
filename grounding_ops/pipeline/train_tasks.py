"""The ``grounding_train`` DAG's tasks: each takes the Airflow context, does the Airflow lookups
(params, connections, asset events) and calls the plain functions of its concept:

resolve dataset (:mod:`~grounding_ops.pipeline.datasets`; skip when none is published yet) -> decide
(:mod:`~grounding_ops.pipeline.model_state`; skip when nothing changed) -> plan + train
(:mod:`~grounding_ops.pipeline.plans`, a container) -> list checkpoints -> evaluate each on ``val``
(containers, mapped) -> pick the best on ``val`` (:mod:`~grounding_ops.pipeline.results`) -> plan the
decision evaluations on ``test`` (the best candidate, and the bar: the champion, re-evaluated on this
dataset version unless an evaluation exists, or the base model) -> evaluate them (mapped) -> promote on
``test`` (:mod:`~grounding_ops.pipeline.decision`). Selection and decision never share a split.

Each task returns a dict with a one-line ``summary`` (also logged) and, where it reads or writes data, a
``lineage`` entry that becomes its OpenLineage inputs/outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from typing import Any, Mapping, Sequence

from grounding_ops.pipeline.assets import model_name
from grounding_ops.pipeline.errors import NoDatasetYet, PipelineError
from grounding_ops.pipeline.hooks import bucket, mlflow_tracking_uri, s3_client, s3_endpoint, s3_store
from grounding_ops.pipeline.task_records import TrainingSummary
from grounding_ops.storage import StorageError, join_uri
from grounding_ops.vocabulary import DECISION_SPLIT, MANIFEST_FILE, S3_CONN_ID
from grounding_ops.pipeline.datasets import DatasetRef, check_test_split, datasets_root, resolve_dataset
from grounding_ops.pipeline.model_state import (
    current_champion,
    decide_training,
    existing_evaluation,
    model_states,
    training_fingerprint,
)
from grounding_ops.pipeline.plans import (
    decision_candidates,
    list_checkpoints,
    plan_evaluations,
    plan_training,
    run_root,
)
from grounding_ops.pipeline.results import pick_best
from grounding_ops.pipeline.decision import promote_best

log = logging.getLogger(__name__)


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

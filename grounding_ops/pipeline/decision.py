"""The promotion decision of a DAG run: the chosen checkpoint's test evaluation against the bar, through the gate."""

from __future__ import annotations
import logging
from dataclasses import asdict
from typing import Any, Mapping, Sequence
from grounding_ops.pipeline.assets import mlflow_model_ref, model_name
from grounding_ops.pipeline.errors import PipelineError
from grounding_ops.registry.gate import DEFAULT_CONFIDENCE, DEFAULT_MIN_SAMPLES
from grounding_ops.vocabulary import (
    DECISION_SPLIT,
    SELECTION_SPLIT,
    Tag,
)

from grounding_ops.pipeline.results import check_split, evaluation_results
from grounding_ops.pipeline.urls import mlflow_model_url

log = logging.getLogger(__name__)


def decided_on(choice: Mapping[str, Any], decision_results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The chosen candidate's evaluation on the decision split (never the one that chose it)."""
    results = evaluation_results(decision_results)
    check_split(results, DECISION_SPLIT, "decide the promotion")
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

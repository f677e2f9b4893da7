"""Promotion of an evaluated candidate in the MLflow Model Registry (aliases, no stages).

``promote(eval_run_id)``:

1. reads the candidate's evaluation run (metric value, model URI, dataset version, split);
2. logs the model at the model URI as an MLflow pyfunc model and registers a version
   from it (:mod:`grounding_ops.registry.pyfunc_model`; tag ``grounding.model_uri``
   keeps the weights' URI), or finds the version registered before for this evaluation
   run or model URI, and tags it with lineage;
3. points alias ``challenger`` at it;
4. finds the bar (:func:`find_bar`): the current ``champion`` evaluated on the SAME dataset
   version and split (its own evaluation run when it matches, otherwise another evaluation of
   the champion's model URI there; with none, it refuses and says what to evaluate). With no
   champion yet the bar is the base model's evaluation (run tag ``grounding.role=base``);
5. joins the two evaluations' ``predictions.parquet`` on the sample id (:func:`paired_values`)
   and lets the pure gate (:func:`grounding_ops.registry.gate.decide`) decide on the paired
   per-sample differences: a seeded paired bootstrap interval whose lower bound must exceed
   ``min_delta``, on at least ``min_samples`` samples;
6. records the decision (:func:`record_decision`) and moves ``champion`` only when promoted.

The decision line states the metric, both values, the difference with its interval, n, the
dataset version and split, and the reason; it is logged, stored as tags on the version and on
the evaluation run, and returned. Promoting the same candidate again with the same settings
returns the stored decision and changes nothing.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grounding_ops.registry.gate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_SEED,
    GateError,
    GateResult,
    decide,
)

from grounding_ops.registry.tracking import mlflow_client, quote_filter_value
from grounding_ops.vocabulary import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    DEFAULT_METRIC,
    DEFAULT_MODEL_NAME,
    METRICS,
    Tag,
)

log = logging.getLogger(__name__)

DEFAULT_MIN_DELTA = 0.01
# Metrics copied onto each version so listings need no extra run lookups.
LISTED_METRICS = tuple(METRICS)
# Evaluation-run tags copied onto the registered version.
LINEAGE_TAGS = (
    Tag.DATASET_VERSION,
    Tag.DATASET_URI,
    Tag.TRAINING_OUTPUT_URI,
    Tag.IMAGE_DIGEST,
    Tag.GIT_COMMIT,
    Tag.WANDB_RUN,
    Tag.WANDB_EVAL_RUN,
    Tag.PROTOCOL,
    Tag.BASE_MODEL_URI,
)
PREDICTIONS_ARTIFACT = "predictions.parquet"


class PromotionError(RuntimeError):
    """Promotion cannot proceed (missing run, metric, params); the message says what to fix."""


@dataclass(frozen=True)
class PromotionDecision:
    """What the promotion gate decided, with the numbers it compared."""

    promoted: bool
    reason: str
    model_name: str
    metric: str
    min_delta: float
    candidate_run_id: str
    candidate_value: float
    baseline: str  # "champion", "base" or "none" (nothing to compare with: refused)
    baseline_value: float | None
    baseline_run_id: str | None
    champion_before: str | None
    champion_after: str | None
    version: str | None
    dataset_version: str
    created_version: bool
    changed: bool
    split: str = ""
    n: int = 0
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    min_samples: int = DEFAULT_MIN_SAMPLES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "NOT PROMOTED"
        bar = (
            "champion v" + self.champion_before
            if self.baseline == "champion" and self.champion_before
            else self.baseline
        )

        def name(version: str | None) -> str:
            return f"v{version}" if version else "none"

        if self.baseline_value is None or self.difference is None:
            numbers = f"{self.metric} {self.candidate_value:.4f} vs no bar"
        else:
            numbers = (
                f"{self.metric} {self.candidate_value:.4f} vs {bar} {self.baseline_value:.4f}, difference "
                f"{self.difference:+.4f} ({self.confidence:.0%} CI {self.ci_low:+.4f}..{self.ci_high:+.4f}), "
                f"n={self.n}"
            )
        return (
            f"{verdict}: {self.model_name} v{self.version} (eval run {self.candidate_run_id}): {numbers} on dataset "
            f"{self.dataset_version} ({self.split or 'val'}); champion: {name(self.champion_before)} -> "
            f"{name(self.champion_after)}. {self.reason}"
        )


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if _is_missing(exc):
            raise PromotionError(
                f"no MLflow run {run_id!r} at {client.tracking_uri}: pass an evaluation run id"
            ) from exc
        raise


def _ensure_registered_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
    try:
        client.create_registered_model(
            name, description="Vision-language grounding models trained with GRPO and an IoU reward."
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.get_registered_model(name)


def _find_version(client: Any, name: str, run_id: str, source: str) -> Any | None:
    """The version registered before for this evaluation run, else for the same model URI."""
    base = f"name = {quote_filter_value(name)}"
    from grounding_ops.registry.pyfunc_model import weights_uri

    for clause in (f"run_id = {quote_filter_value(run_id)}", f"tags.`{Tag.MODEL_URI}` = {quote_filter_value(source)}"):
        found = client.search_model_versions(f"{base} and {clause}", max_results=50)
        found = [v for v in found if (weights_uri(v) == source if "tags." in clause else v.run_id == run_id)]
        if found:
            return min(found, key=lambda v: int(v.version))
    return None


def _metric_of(run: Any, metric: str) -> float | None:
    value = run.data.metrics.get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _recorded(
    version: Any, run_id: str, metric: str, min_delta: float, confidence: float, min_samples: int
) -> dict[str, str] | None:
    tags = dict(version.tags or {})
    if (
        tags.get(Tag.PROMOTION_PREFIX + "eval_run_id") == run_id
        and tags.get(Tag.PROMOTION_PREFIX + "metric") == metric
        and tags.get(Tag.PROMOTION_PREFIX + "min_delta") == repr(float(min_delta))
        and tags.get(Tag.PROMOTION_PREFIX + "confidence") == repr(float(confidence))
        and tags.get(Tag.PROMOTION_PREFIX + "min_samples") == str(int(min_samples))
        and Tag.PROMOTION_PREFIX + "promoted" in tags
    ):
        return tags
    return None


def _float_or_none(text: str | None) -> float | None:
    if text in (None, "", "None"):
        return None
    return float(text)


def _search_evaluations(
    client: Any, experiment_ids: list[str], clauses: list[str], exclude_run: str | None = None
) -> Any | None:
    filter_string = " and ".join([*clauses, "attributes.status = 'FINISHED'"])
    runs = client.search_runs(
        sorted(set(experiment_ids)),
        filter_string=filter_string,
        max_results=20,
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.run_id != exclude_run:
            return run
    return None


def find_evaluation(client: Any, model_uri: str, dataset_version: str, split: str) -> str | None:
    """The newest finished evaluation run of ``model_uri`` on ``dataset_version``/``split`` in the
    evaluation experiment, or None."""
    from grounding_ops.registry.tracking import EVALUATION_EXPERIMENT

    experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
    if experiment is None:
        return None
    run = _search_evaluations(
        client,
        [experiment.experiment_id],
        [
            f"params.model_uri = {quote_filter_value(model_uri)}",
            f"params.dataset_version = {quote_filter_value(dataset_version)}",
            f"params.split = {quote_filter_value(split)}",
        ],
    )
    return run.info.run_id if run is not None else None


def _same_evaluation_set(run: Any, dataset_version: str, split: str) -> bool:
    params = run.data.params
    return params.get("dataset_version") == dataset_version and params.get("split", "val") == split


def _lower_is_better(metric: str) -> bool:
    known = METRICS.get(metric.rsplit("/", 1)[-1])
    return known is not None and not known.higher_is_better


def promote(
    candidate_run_id: str,
    *,
    metric: str = DEFAULT_METRIC,
    min_delta: float = DEFAULT_MIN_DELTA,
    model_name: str = DEFAULT_MODEL_NAME,
    client: Any | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    seed: int = DEFAULT_SEED,
    s3_client: Any | None = None,
) -> PromotionDecision:
    """Register the evaluated candidate and move ``champion`` to it if it clears the bar.

    ``s3_client`` reads the candidate's model folder when it is logged as an MLflow model
    (default: boto3's standard configuration)."""
    from mlflow.exceptions import MlflowException

    from grounding_ops.registry.pyfunc_model import GroundingModelError

    if not (min_delta >= 0.0 and math.isfinite(min_delta)):
        raise PromotionError(f"min-delta must be a finite number >= 0, got {min_delta}")
    if not (0.5 <= confidence < 1.0):
        raise PromotionError(f"the confidence level must be in [0.5, 1), e.g. 0.95; got {confidence}")
    if int(min_samples) < 1:
        raise PromotionError(f"the minimum number of test samples must be >= 1, got {min_samples}")
    client = client if client is not None else mlflow_client()
    gate = {"confidence": float(confidence), "min_samples": int(min_samples), "seed": int(seed)}
    try:
        return _promote(client, candidate_run_id, metric, float(min_delta), model_name, gate, s3_client=s3_client)
    except GroundingModelError as exc:
        raise PromotionError(str(exc)) from exc
    except MlflowException as exc:
        raise PromotionError(f"MLflow at {client.tracking_uri} refused the promotion: {exc.message}") from exc


def register_candidate(
    client: Any,
    model_name: str,
    run: Any,
    source: str,
    dataset_version: str,
    split: str,
    *,
    s3_client: Any | None = None,
) -> Any:
    """Register the candidate evaluated in ``run`` as a new version of ``model_name`` (the ONE place
    a version is created): the weights at ``source`` are logged as an MLflow pyfunc model
    (loadable and servable from the registry), with lineage and metrics as tags; returns the version."""
    from grounding_ops.registry.pyfunc_model import register_grounding_model

    run_id, run_tags = run.info.run_id, run.data.tags
    lineage = {key: run_tags[key] for key in LINEAGE_TAGS if run_tags.get(key)}
    lineage.update({Tag.MODEL_URI: source, Tag.DATASET_VERSION: dataset_version, Tag.EVALUATION_RUN_ID: run_id})
    if run_tags.get(Tag.OUTPUT_URI):
        lineage[Tag.EVALUATION_URI] = run_tags[Tag.OUTPUT_URI]
    for name in LISTED_METRICS:
        value = _metric_of(run, name)
        if value is not None:
            lineage[Tag.METRIC_PREFIX + name] = repr(value)
    version = register_grounding_model(
        client,
        model_name,
        source=source,
        run_id=run_id,
        tags=lineage,
        description=f"{source} evaluated on dataset {dataset_version} ({split}) in run {run_id}",
        s3_client=s3_client,
    )
    log.info("registered %s as %s version %s", source, model_name, version.version)
    return version


@dataclass(frozen=True)
class Bar:
    """What the candidate must beat: an evaluation run of the champion or of the base model."""

    kind: str  # "champion" or "base"
    run: Any
    note: str


def find_bar(
    client: Any, run: Any, model_name: str, champion_before: str | None, dataset_version: str, split: str
) -> Bar | str:
    """The evaluation to compare ``run`` with on the same dataset version and split, or why there is none."""
    from mlflow.exceptions import MlflowException

    from grounding_ops.registry.pyfunc_model import weights_uri

    run_id = run.info.run_id
    experiments = [run.info.experiment_id]
    if champion_before is not None:
        champion = client.get_model_version(model_name, champion_before)
        champion_run_id = (champion.tags or {}).get(Tag.EVALUATION_RUN_ID) or champion.run_id
        champion_run = None
        if champion_run_id:
            try:
                champion_run = client.get_run(champion_run_id)
                experiments.append(champion_run.info.experiment_id)
            except MlflowException as exc:
                if not _is_missing(exc):
                    raise
        if champion_run is not None and _same_evaluation_set(champion_run, dataset_version, split):
            return Bar("champion", champion_run, f"champion v{champion_before}, evaluation run {champion_run_id}")
        champion_dataset = (champion_run.data.params.get("dataset_version") if champion_run is not None else None) or (
            champion.tags or {}
        ).get(Tag.DATASET_VERSION, "unknown")
        bar_run = _search_evaluations(
            client,
            experiments,
            [
                f"params.model_uri = {quote_filter_value(weights_uri(champion))}",
                f"params.dataset_version = {quote_filter_value(dataset_version)}",
                f"params.split = {quote_filter_value(split)}",
            ],
            exclude_run=run_id,
        )
        if bar_run is None:
            return (
                f"champion v{champion_before} was evaluated on dataset {champion_dataset}, the candidate on "
                f"{dataset_version}, and no evaluation of the champion ({weights_uri(champion)}) on {dataset_version} "
                f"({split}) exists: evaluate it there (grounding-ops evaluate --model {weights_uri(champion)} "
                f"--dataset <{dataset_version} URI> --split {split} ...; the grounding_train DAG does this "
                "itself) and promote again; champion unchanged"
            )
        return Bar(
            "champion",
            bar_run,
            f"champion v{champion_before} (trained on {champion_dataset}) re-evaluated in run {bar_run.info.run_id}",
        )
    clauses = [
        f"tags.`{Tag.ROLE}` = 'base'",
        f"params.dataset_version = {quote_filter_value(dataset_version)}",
        f"params.split = {quote_filter_value(split)}",
    ]
    bar_run = None
    base_model = run.data.tags.get(Tag.BASE_MODEL_URI)
    if base_model:
        # prefer the evaluation of the very model the candidate was trained from
        bar_run = _search_evaluations(
            client,
            experiments,
            [*clauses, f"params.model_uri = {quote_filter_value(base_model)}"],
            exclude_run=run_id,
        )
    if bar_run is None:
        bar_run = _search_evaluations(client, experiments, clauses, exclude_run=run_id)
    if bar_run is None:
        return (
            f"no champion yet and no base-model evaluation on dataset {dataset_version} ({split}): evaluate "
            f"the base model first (grounding-ops evaluate --role base --model <base model> --dataset "
            f"<{dataset_version} URI> --split {split} ...) so the first champion has a bar to beat"
        )
    return Bar(
        "base", bar_run, f"base model {bar_run.data.params.get('model_uri')}, evaluation run {bar_run.info.run_id}"
    )


def _per_sample(client: Any, run: Any, metric: str) -> dict[str, float]:
    """``{sample id: value of metric}`` from the run's ``predictions.parquet`` artifact."""
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException

    from grounding_ops.evaluation.metrics import per_sample

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="promotion-") as tmp:
        try:
            path = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            raise PromotionError(
                f"evaluation run {run_id} has no readable {PREDICTIONS_ARTIFACT} artifact ({exc}): the gate "
                "compares per-sample results; log the evaluation with `grounding-ops log-evaluation`"
            ) from exc
        table = pq.read_table(Path(path), columns=["id", "iou", "score", "format_ok"]).to_pydict()
    ids = [str(i) for i in table["id"]]
    if len(set(ids)) != len(ids):
        raise PromotionError(
            f"{PREDICTIONS_ARTIFACT} of evaluation run {run_id} holds duplicate sample ids: "
            "samples cannot be paired; evaluate again"
        )
    values = per_sample(metric, table["iou"], table["score"], table["format_ok"])
    return dict(zip(ids, (float(v) for v in values)))


def paired_values(client: Any, candidate_run: Any, bar_run: Any, metric: str) -> tuple[list[float], list[float], str]:
    """The per-sample ``metric`` of both evaluations on the samples they share (joined on sample id)."""
    candidate = _per_sample(client, candidate_run, metric)
    bar = _per_sample(client, bar_run, metric)
    shared = sorted(set(candidate) & set(bar))
    note = ""
    if len(shared) != len(candidate) or len(shared) != len(bar):
        note = (
            f" (paired on the {len(shared)} samples both evaluated: the candidate has {len(candidate)}, "
            f"the bar {len(bar)})"
        )
    return [candidate[i] for i in shared], [bar[i] for i in shared], note


@dataclass(frozen=True)
class Candidate:
    """The evaluation run a promotion is asked for, with what the decision needs from it."""

    run: Any
    value: float  # its value of the promotion metric
    source: str  # the evaluated model
    dataset_version: str
    split: str


def read_candidate(client: Any, run_id: str, metric: str) -> Candidate:
    """The candidate's evaluation run; :class:`PromotionError` when it cannot be promoted."""
    run = _get_run(client, run_id)
    params, run_tags = run.data.params, run.data.tags
    if run_tags.get(Tag.ROLE) == "base":
        raise PromotionError(f"run {run_id} evaluates the base model (tag {Tag.ROLE}=base): promote a candidate's run")
    value = _metric_of(run, metric)
    if value is None:
        known = ", ".join(sorted(k for k in run.data.metrics if "/" not in k and "_ci_" not in k))
        raise PromotionError(f"run {run_id} has no metric {metric!r}; it has: {known or 'no metrics'}")
    source = params.get("model_uri")
    dataset_version = params.get("dataset_version")
    if not source or not dataset_version:
        raise PromotionError(
            f"run {run_id} lacks the model_uri/dataset_version params of an evaluation run "
            "(log evaluations with `grounding-ops evaluate` or `grounding-ops log-evaluation`)"
        )
    return Candidate(run, value, source, dataset_version, params.get("split") or "val")


def _promote(
    client: Any,
    run_id: str,
    metric: str,
    min_delta: float,
    model_name: str,
    gate: dict[str, Any],
    *,
    s3_client: Any | None = None,
) -> PromotionDecision:
    """Read the candidate -> register it (or find its version and an earlier decision) -> find the bar
    -> pair the per-sample values -> let the gate decide -> record the decision."""
    candidate = read_candidate(client, run_id, metric)
    run = candidate.run

    registered = _ensure_registered_model(client, model_name)
    aliases = dict(registered.aliases or {})
    version = _find_version(client, model_name, run_id, candidate.source)
    created = version is None
    if version is None:
        version = register_candidate(
            client, model_name, run, candidate.source, candidate.dataset_version, candidate.split, s3_client=s3_client
        )
    else:
        recorded = _recorded(version, run_id, metric, min_delta, gate["confidence"], gate["min_samples"])
        if recorded is not None:
            decision = _decision_from_tags(recorded, model_name, version.version, aliases.get(CHAMPION_ALIAS))
            log.info("already decided, nothing changed: %s", decision.summary())
            return decision
    number = str(version.version)
    if aliases.get(CHALLENGER_ALIAS) != number:
        client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, number)
    champion_before = aliases.get(CHAMPION_ALIAS)
    common = dict(
        model_name=model_name,
        metric=metric,
        min_delta=min_delta,
        candidate_run_id=run_id,
        candidate_value=candidate.value,
        champion_before=champion_before,
        version=number,
        dataset_version=candidate.dataset_version,
        created_version=created,
        split=candidate.split,
        confidence=gate["confidence"],
        min_samples=gate["min_samples"],
    )
    if champion_before == number:
        decision = PromotionDecision(
            promoted=True,
            reason=f"version {number} is already the champion",
            baseline="champion",
            baseline_value=candidate.value,
            baseline_run_id=run_id,
            champion_after=number,
            changed=created,
            **common,
        )
        log.info(decision.summary())
        return decision

    bar = find_bar(client, run, model_name, champion_before, candidate.dataset_version, candidate.split)
    if isinstance(bar, str):
        return _refuse(client, bar, common)
    decision = gate_decision(client, run, bar, metric=metric, min_delta=min_delta, gate=gate, common=common)
    record_decision(client, decision, run)
    return decision


def gate_decision(
    client: Any, run: Any, bar: Bar, *, metric: str, min_delta: float, gate: dict[str, Any], common: dict[str, Any]
) -> PromotionDecision:
    """The paired comparison of the candidate's run with the bar's on the same samples, decided by the gate."""
    candidate_values, bar_values, pairing = paired_values(client, run, bar.run, metric)
    try:
        result = decide(
            candidate_values,
            bar_values,
            metric=metric,
            min_delta=min_delta,
            lower_is_better=_lower_is_better(metric),
            confidence=gate["confidence"],
            min_samples=gate["min_samples"],
            seed=gate["seed"],
        )
    except GateError as exc:
        raise PromotionError(f"{exc} (candidate run {run.info.run_id}, bar run {bar.run.info.run_id})") from exc
    decision = decision_of(result, bar, common)
    return PromotionDecision(**{**decision.to_dict(), "reason": decision.reason + pairing})


def decision_of(result: GateResult, bar: Bar, common: dict[str, Any]) -> PromotionDecision:
    """The registry's decision from the gate's result (no side effects)."""
    champion_before = common["champion_before"]
    if result.promoted:
        outcome = f"v{common['version']} is the new champion"
    else:
        outcome = f"champion {'stays v' + champion_before if champion_before else 'not set'}"
    return PromotionDecision(
        promoted=result.promoted,
        reason=f"{result.reason}; {outcome} (bar: {bar.note})",
        baseline=bar.kind,
        baseline_value=result.bar_value,
        baseline_run_id=bar.run.info.run_id,
        champion_after=common["version"] if result.promoted else champion_before,
        changed=True,
        n=result.n,
        difference=result.difference,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        **{**common, "candidate_value": result.candidate_value},
    )


def record_decision(client: Any, decision: PromotionDecision, run: Any) -> None:
    """Store the decision as tags (version and evaluation run), then move ``champion`` if promoted."""
    if decision.promoted:
        client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, decision.version)
        if not decision.created_version:
            # a version registered before for the same weights: its evaluation is now this run
            _retag_evaluation(client, decision.model_name, decision.version, run, decision.dataset_version)
    _record(client, decision)
    log.info(decision.summary())


def _retag_evaluation(client: Any, model_name: str, number: str, run: Any, dataset_version: str) -> None:
    client.set_model_version_tag(model_name, number, Tag.EVALUATION_RUN_ID, run.info.run_id)
    client.set_model_version_tag(model_name, number, Tag.DATASET_VERSION, dataset_version)
    for name in LISTED_METRICS:
        value = _metric_of(run, name)
        if value is not None:
            client.set_model_version_tag(model_name, number, Tag.METRIC_PREFIX + name, repr(value))


def _refuse(client: Any, reason: str, common: dict[str, Any]) -> PromotionDecision:
    """A decision without a comparison: not recorded, so a later call (after the missing
    evaluation exists) decides afresh."""
    decision = PromotionDecision(
        promoted=False,
        reason=reason,
        baseline="none",
        baseline_value=None,
        baseline_run_id=None,
        champion_after=common["champion_before"],
        changed=common["created_version"],
        **common,
    )
    client.set_tag(decision.candidate_run_id, Tag.PROMOTION_PREFIX + "reason", reason[:5000])
    log.info(decision.summary())
    return decision


def _decision_tags(decision: PromotionDecision) -> dict[str, str]:
    return {
        Tag.PROMOTION_PREFIX + "eval_run_id": decision.candidate_run_id,
        Tag.PROMOTION_PREFIX + "metric": decision.metric,
        Tag.PROMOTION_PREFIX + "min_delta": repr(float(decision.min_delta)),
        Tag.PROMOTION_PREFIX + "confidence": repr(float(decision.confidence)),
        Tag.PROMOTION_PREFIX + "min_samples": str(int(decision.min_samples)),
        Tag.PROMOTION_PREFIX + "split": decision.split,
        Tag.PROMOTION_PREFIX + "n": str(int(decision.n)),
        Tag.PROMOTION_PREFIX + "candidate_value": repr(decision.candidate_value),
        Tag.PROMOTION_PREFIX + "baseline": decision.baseline,
        Tag.PROMOTION_PREFIX + "baseline_value": repr(decision.baseline_value),
        Tag.PROMOTION_PREFIX + "difference": repr(decision.difference),
        Tag.PROMOTION_PREFIX + "ci_low": repr(decision.ci_low),
        Tag.PROMOTION_PREFIX + "ci_high": repr(decision.ci_high),
        Tag.PROMOTION_PREFIX + "baseline_run_id": decision.baseline_run_id or "",
        Tag.PROMOTION_PREFIX + "champion_before": decision.champion_before or "",
        Tag.PROMOTION_PREFIX + "reason": decision.reason[:5000],
        Tag.PROMOTION_PREFIX + "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # written last: its presence marks a complete record
        Tag.PROMOTION_PREFIX + "promoted": "true" if decision.promoted else "false",
    }


def _record(client: Any, decision: PromotionDecision) -> None:
    for key, value in _decision_tags(decision).items():
        if key != Tag.PROMOTION_PREFIX + "promoted":
            client.set_tag(decision.candidate_run_id, key, value)
        client.set_model_version_tag(decision.model_name, decision.version, key, value)
    client.set_tag(
        decision.candidate_run_id, Tag.PROMOTION_PREFIX + "promoted", "true" if decision.promoted else "false"
    )
    client.set_tag(decision.candidate_run_id, Tag.PROMOTION_PREFIX + "version", str(decision.version))


def _decision_from_tags(tags: dict[str, str], model_name: str, version: str, champion: str | None) -> PromotionDecision:
    return PromotionDecision(
        promoted=tags[Tag.PROMOTION_PREFIX + "promoted"] == "true",
        reason="already decided: " + tags.get(Tag.PROMOTION_PREFIX + "reason", ""),
        model_name=model_name,
        metric=tags[Tag.PROMOTION_PREFIX + "metric"],
        min_delta=float(tags[Tag.PROMOTION_PREFIX + "min_delta"]),
        candidate_run_id=tags[Tag.PROMOTION_PREFIX + "eval_run_id"],
        candidate_value=float(tags[Tag.PROMOTION_PREFIX + "candidate_value"]),
        baseline=tags.get(Tag.PROMOTION_PREFIX + "baseline", "none"),
        baseline_value=_float_or_none(tags.get(Tag.PROMOTION_PREFIX + "baseline_value")),
        baseline_run_id=tags.get(Tag.PROMOTION_PREFIX + "baseline_run_id") or None,
        champion_before=tags.get(Tag.PROMOTION_PREFIX + "champion_before") or None,
        champion_after=champion,
        version=str(version),
        dataset_version=tags.get(Tag.DATASET_VERSION, ""),
        created_version=False,
        changed=False,
        split=tags.get(Tag.PROMOTION_PREFIX + "split", ""),
        n=int(tags.get(Tag.PROMOTION_PREFIX + "n") or 0),
        difference=_float_or_none(tags.get(Tag.PROMOTION_PREFIX + "difference")),
        ci_low=_float_or_none(tags.get(Tag.PROMOTION_PREFIX + "ci_low")),
        ci_high=_float_or_none(tags.get(Tag.PROMOTION_PREFIX + "ci_high")),
        confidence=float(tags.get(Tag.PROMOTION_PREFIX + "confidence") or DEFAULT_CONFIDENCE),
        min_samples=int(tags.get(Tag.PROMOTION_PREFIX + "min_samples") or DEFAULT_MIN_SAMPLES),
    )


__all__ = [
    "Bar",
    "PromotionDecision",
    "PromotionError",
    "find_bar",
    "find_evaluation",
    "paired_values",
    "promote",
    "record_decision",
    "register_candidate",
]

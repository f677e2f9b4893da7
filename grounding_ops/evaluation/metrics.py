"""Grounding metrics with bootstrap confidence intervals (numpy only).

Per sample the evaluation knows the IoU of the answer with the ground truth, the
reward score and whether the answer could be parsed. From those:

- ``acc_at_0_5`` / ``acc_at_0_75``: share of samples with IoU >= 0.5 / 0.75,
- ``mean_iou``, ``mean_score``: means over all samples (unparsable answers count as IoU 0),
- ``parse_failure_rate``: share of answers that do not follow the protocol,

overall and per ``source``, each with a percentile bootstrap confidence interval
(resampling samples with replacement, seeded, vectorized over resamples).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from grounding_ops.vocabulary import METRICS

METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
# Metrics where a smaller value is better (the promotion gate needs the direction).
LOWER_IS_BETTER: frozenset[str] = frozenset(m.name for m in METRICS.values() if not m.higher_is_better)
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
# Bound the (resamples x samples) index matrix held in memory at once.
_MAX_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class MetricValue:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class GroupMetrics:
    """The metrics of one group of samples (all of them, or one source)."""

    n: int
    acc_at_0_5: MetricValue
    acc_at_0_75: MetricValue
    mean_iou: MetricValue
    mean_score: MetricValue
    parse_failure_rate: MetricValue

    def metric(self, name: str) -> MetricValue:
        if name not in METRIC_NAMES:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
        return getattr(self, name)


@dataclass(frozen=True)
class MetricsReport:
    """Overall and per-source metrics; JSON-serializable through :meth:`to_dict`."""

    overall: GroupMetrics
    per_source: dict[str, GroupMetrics]
    n_samples: int
    confidence: float
    n_resamples: int
    seed: int
    thresholds: tuple[float, ...] = field(default=(0.5, 0.75))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetricsReport":
        def group(raw: Mapping[str, Any]) -> GroupMetrics:
            values = {name: MetricValue(**raw[name]) for name in METRIC_NAMES}
            return GroupMetrics(n=int(raw["n"]), **values)

        return cls(
            overall=group(data["overall"]),
            per_source={k: group(v) for k, v in data["per_source"].items()},
            n_samples=int(data["n_samples"]),
            confidence=float(data["confidence"]),
            n_resamples=int(data["n_resamples"]),
            seed=int(data["seed"]),
            thresholds=tuple(data.get("thresholds", (0.5, 0.75))),
        )

    def flat(self) -> dict[str, float]:
        """Flat ``name -> number`` metrics for trackers (MLflow, W&B).

        Overall metrics keep their bare names (``acc_at_0_5``), intervals get
        ``_ci_low``/``_ci_high`` suffixes, per-source ones a ``source/<name>/`` prefix.
        """
        out: dict[str, float] = {"n_samples": float(self.n_samples)}
        out.update(_flat_group(self.overall, ""))
        for source, metrics in sorted(self.per_source.items()):
            out.update(_flat_group(metrics, f"source/{metric_key(source)}/"))
        return out


def metric_key(text: str) -> str:
    """``text`` reduced to characters every tracker accepts in a metric name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(text)).strip("_")
    return cleaned or "unknown"


def _flat_group(group: GroupMetrics, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {f"{prefix}n": float(group.n)} if prefix else {}
    for name in METRIC_NAMES:
        value = group.metric(name)
        out[f"{prefix}{name}"] = value.value
        out[f"{prefix}{name}_ci_low"] = value.ci_low
        out[f"{prefix}{name}_ci_high"] = value.ci_high
    return out


def _as_1d(values: Sequence[Any] | np.ndarray, dtype: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {array.shape}")
    return array


def bootstrap_means(
    columns: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of each column of ``columns`` (n samples x k) and their percentile bootstrap CI.

    Resamples are drawn as an index matrix, chunked so memory stays bounded; all
    columns share the same resamples. Returns ``(point, low, high)``, each of length k.
    """
    data = np.asarray(columns, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError("columns must be a 2-D array (samples x metrics)")
    n, k = data.shape
    if n == 0:
        nan = np.full(k, math.nan)
        return nan, nan.copy(), nan.copy()
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    point = data.mean(axis=0)
    chunk = max(1, min(n_resamples, _MAX_CHUNK_ELEMENTS // n))
    means = np.empty((n_resamples, k), dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    # Percentile intervals of a mean can miss the point estimate by rounding only;
    # keep the reported interval consistent with the estimate it belongs to.
    return point, np.minimum(low, point), np.maximum(high, point)


def per_sample(
    name: str,
    iou: np.ndarray,
    score: np.ndarray,
    format_ok: np.ndarray,
    thresholds: tuple[float, float] = (0.5, 0.75),
) -> np.ndarray:
    """The per-sample values whose mean is metric ``name`` (what a paired comparison resamples)."""
    iou = np.asarray(iou, dtype=np.float64)
    if name == "acc_at_0_5":
        return (iou >= thresholds[0]).astype(np.float64)
    if name == "acc_at_0_75":
        return (iou >= thresholds[1]).astype(np.float64)
    if name == "mean_iou":
        return iou
    if name == "mean_score":
        return np.asarray(score, dtype=np.float64)
    if name == "parse_failure_rate":
        return (~np.asarray(format_ok, dtype=bool)).astype(np.float64)
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")


def _group_metrics(
    iou: np.ndarray,
    score: np.ndarray,
    format_ok: np.ndarray,
    thresholds: tuple[float, float],
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
) -> GroupMetrics:
    columns = np.stack([per_sample(name, iou, score, format_ok, thresholds) for name in METRIC_NAMES], axis=1)
    point, low, high = bootstrap_means(columns, n_resamples=n_resamples, confidence=confidence, rng=rng)
    values = {name: MetricValue(float(point[i]), float(low[i]), float(high[i])) for i, name in enumerate(METRIC_NAMES)}
    return GroupMetrics(n=int(iou.shape[0]), **values)


def compute_metrics(
    iou: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    format_ok: Sequence[bool] | np.ndarray,
    sources: Sequence[str] | np.ndarray | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
    thresholds: tuple[float, float] = (0.5, 0.75),
) -> MetricsReport:
    """All metrics, overall and per source, with bootstrap CIs.

    ``iou`` is the per-sample IoU in [0, 1] (0 for unparsable answers), ``score``
    the reward score, ``format_ok`` whether the answer followed the protocol and
    ``sources`` the sample's source name (one group "all" when omitted). The same
    ``seed`` gives the same intervals.
    """
    iou_arr = _as_1d(iou, np.float64, "iou")
    score_arr = _as_1d(score, np.float64, "score")
    ok_arr = _as_1d(format_ok, bool, "format_ok")
    n = iou_arr.shape[0]
    if score_arr.shape[0] != n or ok_arr.shape[0] != n:
        raise ValueError(
            f"iou, score and format_ok must have the same length, got {n}, {score_arr.shape[0]}, {ok_arr.shape[0]}"
        )
    if n and (not np.all(np.isfinite(iou_arr)) or iou_arr.min() < 0.0 or iou_arr.max() > 1.0 + 1e-9):
        raise ValueError("iou values must be finite and within [0, 1]")
    if n and not np.all(np.isfinite(score_arr)):
        raise ValueError("score values must be finite")
    source_arr = np.asarray(["all"] * n if sources is None else [str(s) for s in sources], dtype=object)
    if source_arr.shape[0] != n:
        raise ValueError(f"sources has {source_arr.shape[0]} entries for {n} samples")

    rng = np.random.default_rng(seed)
    args = (thresholds, n_resamples, confidence)
    overall = _group_metrics(iou_arr, score_arr, ok_arr, *args, rng)
    per_source: dict[str, GroupMetrics] = {}
    for source in sorted(set(source_arr.tolist())):
        mask = source_arr == source
        per_source[source] = _group_metrics(iou_arr[mask], score_arr[mask], ok_arr[mask], *args, rng)
    return MetricsReport(
        overall=overall,
        per_source=per_source,
        n_samples=int(n),
        confidence=float(confidence),
        n_resamples=int(n_resamples),
        seed=int(seed),
        thresholds=tuple(float(t) for t in thresholds),
    )

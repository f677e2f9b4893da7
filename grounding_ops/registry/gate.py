"""The promotion gate's decision: a pure function of paired per-sample values.

The candidate and the bar (the champion, or the base model for the first promotion) were
evaluated on the same test samples; ``decide`` gets one value of the promotion metric per
sample for each (joined on the sample id by the caller). It bootstraps the per-sample
difference (seeded, resampling samples with replacement, so both models are resampled together)
and promotes only when the lower bound of the interval of the improvement exceeds ``min_delta``.
Fewer paired samples than ``min_samples``, a tie on every sample, or no gain beyond the noise:
not promoted, with the reason. NaN values are refused (the evaluation behind them is broken).

No MLflow, no I/O: the registry side (:mod:`grounding_ops.registry.promotion`) finds the bar,
loads the samples and records what this returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_SAMPLES = 100
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


class GateError(ValueError):
    """The paired values cannot be decided on (NaN, mismatched lengths, bad settings)."""


@dataclass(frozen=True)
class GateResult:
    """The numbers the gate compared and what it concluded.

    ``difference`` and its interval are candidate minus bar in the metric's own units (negative is
    better for lower-is-better metrics); ``improvement_low`` is the bound compared with ``min_delta``.
    """

    promoted: bool
    reason: str
    metric: str
    n: int
    candidate_value: float
    bar_value: float
    difference: float
    ci_low: float
    ci_high: float
    improvement_low: float
    confidence: float
    min_delta: float
    min_samples: int
    lower_is_better: bool
    seed: int
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numbers(self) -> str:
        """``metric 0.41 vs 0.30, difference +0.11 (95% CI +0.08..+0.14), n=120``."""
        direction = ", lower is better" if self.lower_is_better else ""
        return (
            f"{self.metric} {self.candidate_value:.4f} vs {self.bar_value:.4f}, difference "
            f"{self.difference:+.4f} ({self.confidence:.0%} CI {self.ci_low:+.4f}..{self.ci_high:+.4f}"
            f"{direction}), n={self.n}"
        )


def decide(
    candidate: Sequence[float],
    bar: Sequence[float],
    *,
    metric: str,
    min_delta: float,
    lower_is_better: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    seed: int = DEFAULT_SEED,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> GateResult:
    """Decide on the paired per-sample values ``candidate[i]`` and ``bar[i]`` of the same sample ``i``."""
    import numpy as np

    from grounding_ops.evaluation.metrics import bootstrap_means

    if not (math.isfinite(min_delta) and min_delta >= 0):
        raise GateError(f"min_delta must be a finite number >= 0, got {min_delta}")
    if not 0.5 <= confidence < 1.0:
        raise GateError(f"the confidence level must be in [0.5, 1), got {confidence}")
    if int(min_samples) < 1 or int(n_resamples) < 1:
        raise GateError(f"min_samples and n_resamples must be >= 1, got {min_samples} and {n_resamples}")
    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(bar, dtype=np.float64)
    if cand.ndim != 1 or cand.shape != base.shape:
        raise GateError(f"the gate needs one candidate and one bar value per sample, got {cand.shape} and {base.shape}")
    bad = ~np.isfinite(cand) | ~np.isfinite(base)
    if bad.any():
        raise GateError(
            f"{int(bad.sum())} of {cand.size} paired {metric} values are NaN or infinite "
            f"({int((~np.isfinite(cand)).sum())} of the candidate, {int((~np.isfinite(base)).sum())} of the bar): "
            "the evaluation behind them is broken; evaluate again, nothing is decided on these values"
        )
    n = int(cand.size)
    settings = dict(
        metric=metric,
        n=n,
        confidence=float(confidence),
        min_delta=float(min_delta),
        min_samples=int(min_samples),
        lower_is_better=bool(lower_is_better),
        seed=int(seed),
        n_resamples=int(n_resamples),
    )
    if n == 0:
        nan = math.nan
        return GateResult(
            promoted=False,
            reason="no paired samples: the candidate and the bar share no test sample",
            candidate_value=nan,
            bar_value=nan,
            difference=nan,
            ci_low=nan,
            ci_high=nan,
            improvement_low=nan,
            **settings,
        )
    sign = -1.0 if lower_is_better else 1.0
    improvement = sign * (cand - base)
    point, low, high = bootstrap_means(
        improvement[:, None],
        n_resamples=int(n_resamples),
        confidence=float(confidence),
        rng=np.random.default_rng(int(seed)),
    )
    imp_point, imp_low, imp_high = float(point[0]), float(low[0]), float(high[0])
    # back to candidate minus bar in the metric's units
    difference = sign * imp_point
    ci_low, ci_high = sorted((sign * imp_low, sign * imp_high))
    level = f"{confidence:.0%}"
    if n < min_samples:
        reason = (
            f"only {n} paired test samples, fewer than the minimum {min_samples}: a difference on so few "
            "samples cannot be told from noise; publish more test data (a larger test fraction) or lower "
            "the minimum"
        )
        promoted = False
    elif np.all(improvement == 0):
        reason = f"a tie: the candidate and the bar score the same {metric} on every one of the {n} samples"
        promoted = False
    elif imp_low > min_delta:
        reason = (
            f"the {level} interval's lower bound of the improvement, {imp_low:+.4f}, exceeds min_delta {min_delta:g}"
        )
        promoted = True
    elif imp_point <= 0:
        reason = (
            f"the candidate is not better (mean improvement {imp_point:+.4f}; the {level} interval's lower "
            f"bound {imp_low:+.4f} does not exceed min_delta {min_delta:g})"
        )
        promoted = False
    else:
        reason = (
            f"the gain is within the noise: the {level} interval's lower bound of the improvement, "
            f"{imp_low:+.4f}, does not exceed min_delta {min_delta:g}"
        )
        promoted = False
    return GateResult(
        promoted=promoted,
        reason=reason,
        candidate_value=float(cand.mean()),
        bar_value=float(base.mean()),
        difference=difference,
        ci_low=ci_low,
        ci_high=ci_high,
        improvement_low=imp_low,
        **settings,
    )


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_MIN_SAMPLES", "GateError", "GateResult", "decide"]

"""The promotion gate's pure decision on tables of paired per-sample values (no MLflow)."""

from __future__ import annotations

import math

import pytest

from grounding_ops.registry.gate import GateError, decide


def _binary(n: int, hits: int) -> list[float]:
    return [1.0] * hits + [0.0] * (n - hits)


def _pairs(n: int, *, both: int, only_candidate: int, only_bar: int) -> tuple[list[float], list[float]]:
    """Paired 0/1 outcomes: ``both`` samples right for both, then discordant pairs, the rest wrong for both."""
    cand = [1.0] * both + [1.0] * only_candidate + [0.0] * only_bar
    bar = [1.0] * both + [0.0] * only_candidate + [1.0] * only_bar
    rest = n - len(cand)
    return cand + [0.0] * rest, bar + [0.0] * rest


# (name, candidate, bar, min_delta, promoted, words in the reason)
TABLE = [
    ("clear gain", *_pairs(200, both=40, only_candidate=40, only_bar=2), 0.01, True, "exceeds min_delta"),
    ("gain inside the noise", *_pairs(200, both=40, only_candidate=6, only_bar=3), 0.0, False, "within the noise"),
    ("worse", *_pairs(200, both=40, only_candidate=2, only_bar=30), 0.0, False, "not better"),
    (
        "clear gain but too few samples",
        *_pairs(40, both=5, only_candidate=30, only_bar=0),
        0.01,
        False,
        "fewer than the minimum 100",
    ),
    ("tie on every sample", _binary(150, 60), _binary(150, 60), 0.0, False, "tie"),
    (
        "gain smaller than min_delta",
        *_pairs(400, both=40, only_candidate=60, only_bar=20),
        0.2,
        False,
        "does not exceed min_delta 0.2",
    ),
]


@pytest.mark.parametrize("name,candidate,bar,min_delta,promoted,words", TABLE, ids=[row[0] for row in TABLE])
def test_gate_table(name, candidate, bar, min_delta, promoted, words):
    result = decide(candidate, bar, metric="acc_at_0_5", min_delta=min_delta)
    assert result.promoted is promoted, result
    assert words in result.reason, result.reason
    assert result.n == len(candidate)
    assert result.candidate_value == pytest.approx(sum(candidate) / len(candidate))
    assert result.bar_value == pytest.approx(sum(bar) / len(bar))
    assert result.difference == pytest.approx(result.candidate_value - result.bar_value)
    assert result.ci_low <= result.difference <= result.ci_high


def test_the_decision_follows_the_interval_not_the_means():
    """Same means (0.60 vs 0.55): consistent per-sample gains promote, the same gain scattered
    over many discordant pairs does not (an unpaired comparison could not tell them apart)."""
    consistent = _pairs(200, both=110, only_candidate=10, only_bar=0)
    scattered = _pairs(200, both=50, only_candidate=70, only_bar=60)
    assert sum(consistent[0]) == sum(scattered[0]) and sum(consistent[1]) == sum(scattered[1])
    assert decide(*consistent, metric="acc_at_0_5", min_delta=0.0).promoted
    noisy = decide(*scattered, metric="acc_at_0_5", min_delta=0.0)
    assert not noisy.promoted and noisy.ci_low < 0 < noisy.ci_high


def test_lower_is_better_metrics():
    """parse_failure_rate: fewer failures is the improvement; the difference is reported as is (negative)."""
    fewer, more = _pairs(200, both=10, only_candidate=0, only_bar=40)  # candidate fails on 10, bar on 50
    better = decide(fewer, more, metric="parse_failure_rate", min_delta=0.01, lower_is_better=True)
    assert better.promoted and better.difference == pytest.approx(-0.20)
    assert better.ci_high < 0 and better.improvement_low > 0.01
    assert "lower is better" in better.numbers()
    worse = decide(more, fewer, metric="parse_failure_rate", min_delta=0.0, lower_is_better=True)
    assert not worse.promoted and "not better" in worse.reason
    # read as higher-is-better the same numbers would promote the worse model
    assert decide(more, fewer, metric="parse_failure_rate", min_delta=0.0).promoted


@pytest.mark.parametrize("where", ["candidate", "bar"])
def test_nan_is_refused_with_a_clear_message(where):
    cand, bar = _pairs(200, both=40, only_candidate=40, only_bar=0)
    (cand if where == "candidate" else bar)[7] = math.nan
    with pytest.raises(GateError, match=r"1 of 200 paired mean_iou values are NaN.*evaluate again"):
        decide(cand, bar, metric="mean_iou", min_delta=0.0)


def test_mismatched_and_empty_inputs():
    with pytest.raises(GateError, match="one candidate and one bar value per sample"):
        decide([1.0, 0.0], [1.0], metric="mean_iou", min_delta=0.0)
    empty = decide([], [], metric="mean_iou", min_delta=0.0)
    assert not empty.promoted and "no paired samples" in empty.reason
    with pytest.raises(GateError, match="confidence"):
        decide([1.0], [0.0], metric="mean_iou", min_delta=0.0, confidence=1.5)
    with pytest.raises(GateError, match="min_delta"):
        decide([1.0], [0.0], metric="mean_iou", min_delta=math.nan)


def test_seeded_and_configurable():
    cand, bar = _pairs(120, both=30, only_candidate=14, only_bar=5)
    first = decide(cand, bar, metric="acc_at_0_5", min_delta=0.0, seed=3)
    assert first == decide(cand, bar, metric="acc_at_0_5", min_delta=0.0, seed=3)
    wide = decide(cand, bar, metric="acc_at_0_5", min_delta=0.0, seed=3, confidence=0.99)
    narrow = decide(cand, bar, metric="acc_at_0_5", min_delta=0.0, seed=3, confidence=0.8)
    assert wide.ci_low < first.ci_low < narrow.ci_low
    assert not decide(cand, bar, metric="acc_at_0_5", min_delta=0.0, min_samples=500).promoted
    assert decide(
        *_pairs(40, both=5, only_candidate=30, only_bar=0), metric="acc_at_0_5", min_delta=0.0, min_samples=20
    ).promoted

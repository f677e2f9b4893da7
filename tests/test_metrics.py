"""Evaluation metrics and bootstrap intervals on constructed predictions with known IoUs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from grounding_ops.evaluation.metrics import METRIC_NAMES, MetricsReport, bootstrap_means, compute_metrics

# 10 samples from two sources with hand-picked IoUs.
IOUS = [0.9, 0.8, 0.76, 0.74, 0.6, 0.5, 0.49, 0.2, 0.0, 0.0]
SCORES = [0.9, 0.8, 0.76, 0.74, 0.6, 0.5, 0.49, 0.2, 0.0, 0.1]
FORMAT_OK = [True, True, True, True, True, True, True, True, False, False]
SOURCES = ["a", "a", "a", "a", "a", "b", "b", "b", "b", "b"]


def test_exact_point_values_overall_and_per_source() -> None:
    report = compute_metrics(IOUS, SCORES, FORMAT_OK, SOURCES)
    o = report.overall
    assert report.n_samples == o.n == 10
    assert o.acc_at_0_5.value == pytest.approx(6 / 10)  # 0.5 counts as a hit (>=)
    assert o.acc_at_0_75.value == pytest.approx(3 / 10)
    assert o.mean_iou.value == pytest.approx(sum(IOUS) / 10)
    assert o.mean_score.value == pytest.approx(sum(SCORES) / 10)
    assert o.parse_failure_rate.value == pytest.approx(0.2)

    a, b = report.per_source["a"], report.per_source["b"]
    assert (a.n, b.n) == (5, 5)
    assert a.acc_at_0_5.value == pytest.approx(1.0)
    assert a.acc_at_0_75.value == pytest.approx(3 / 5)
    assert a.mean_iou.value == pytest.approx((0.9 + 0.8 + 0.76 + 0.74 + 0.6) / 5)
    assert a.parse_failure_rate.value == 0.0
    assert b.acc_at_0_5.value == pytest.approx(1 / 5)
    assert b.acc_at_0_75.value == 0.0
    assert b.mean_iou.value == pytest.approx((0.5 + 0.49 + 0.2) / 5)
    assert b.parse_failure_rate.value == pytest.approx(2 / 5)


def test_intervals_contain_the_estimate_and_are_seeded() -> None:
    report = compute_metrics(IOUS, SCORES, FORMAT_OK, SOURCES, seed=7)
    for group in (report.overall, *report.per_source.values()):
        for name in METRIC_NAMES:
            value = group.metric(name)
            assert value.ci_low <= value.value <= value.ci_high, (name, value)
            assert 0.0 <= value.ci_low and value.ci_high <= 1.0
    # source "a" always hits at 0.5: every resample has accuracy 1, a zero-width interval
    a = report.per_source["a"].acc_at_0_5
    assert (a.ci_low, a.ci_high) == (1.0, 1.0)
    # a mixed metric has a real interval
    assert report.overall.mean_iou.ci_high - report.overall.mean_iou.ci_low > 0.1
    assert compute_metrics(IOUS, SCORES, FORMAT_OK, SOURCES, seed=7) == report
    assert compute_metrics(IOUS, SCORES, FORMAT_OK, SOURCES, seed=8) != report


def test_interval_width_matches_the_binomial_standard_error() -> None:
    # 400 samples, 30% hits: a 95% interval is about +-1.96 * sqrt(p(1-p)/n) = +-0.045.
    n, hits = 400, 120
    ious = np.array([0.9] * hits + [0.1] * (n - hits))
    report = compute_metrics(ious, ious, np.ones(n, bool), n_resamples=4000, seed=1)
    acc = report.overall.acc_at_0_5
    assert acc.value == pytest.approx(0.3)
    half_width = (acc.ci_high - acc.ci_low) / 2
    expected = 1.96 * math.sqrt(0.3 * 0.7 / n)
    assert half_width == pytest.approx(expected, rel=0.15)
    assert acc.ci_low < 0.3 < acc.ci_high


def test_bootstrap_resamples_are_chunked_without_changing_shape() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((3000, 2))
    point, low, high = bootstrap_means(data, n_resamples=2000, rng=np.random.default_rng(3))
    assert point.shape == low.shape == high.shape == (2,)
    assert np.all(low <= point) and np.all(point <= high)
    assert np.allclose(point, data.mean(axis=0))


def test_json_round_trip_and_flat_names() -> None:
    report = compute_metrics(IOUS, SCORES, FORMAT_OK, ["x ray/chest", *SOURCES[1:]])
    text = json.dumps(report.to_dict())
    assert MetricsReport.from_dict(json.loads(text)) == report
    flat = report.flat()
    assert flat["acc_at_0_5"] == report.overall.acc_at_0_5.value
    assert flat["n_samples"] == 10.0
    assert "acc_at_0_5_ci_low" in flat and "acc_at_0_5_ci_high" in flat
    assert flat["source/x_ray_chest/n"] == 1.0
    assert flat["source/b/acc_at_0_5"] == pytest.approx(1 / 5)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        compute_metrics([0.1, 0.2], [0.1], [True, True])
    with pytest.raises(ValueError, match="within"):
        compute_metrics([1.5], [0.1], [True])
    with pytest.raises(ValueError, match="sources"):
        compute_metrics([0.1], [0.1], [True], ["a", "b"])

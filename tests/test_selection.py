"""One rule picks the best checkpoint: the metric's own direction, ties to the later step."""

from __future__ import annotations

import pytest

from grounding_ops.evaluation.selection import SelectionError, best_checkpoint

CHECKPOINTS = [  # (step, acc_at_0_5, parse_failure_rate)
    (10, 0.30, 0.20),
    (20, 0.55, 0.05),
    (30, 0.55, 0.05),
    (40, 0.40, 0.01),
]


@pytest.mark.parametrize(
    ("metric", "column", "best_step"),
    [
        ("acc_at_0_5", 1, 30),  # higher is better; the tie 20/30 goes to the later step
        ("parse_failure_rate", 2, 40),  # lower is better
    ],
)
def test_best_checkpoint_follows_the_metric_direction_and_breaks_ties_by_step(metric, column, best_step):
    best = best_checkpoint(CHECKPOINTS, metric, value=lambda c: c[column], step=lambda c: c[0])
    assert best[0] == best_step


def test_best_checkpoint_refuses_nothing_and_unknown_metrics():
    with pytest.raises(SelectionError, match="no evaluated checkpoint"):
        best_checkpoint([], "acc_at_0_5", value=lambda c: 0.0, step=lambda c: 0)
    with pytest.raises(SelectionError, match="unknown"):
        best_checkpoint(CHECKPOINTS, "accuracy", value=lambda c: c[1], step=lambda c: c[0])

"""Choosing the best checkpoint: one rule, used wherever a best one is picked.

The best is the one with the best value of the metric in the metric's own direction (see
:data:`grounding_ops.vocabulary.METRICS`); of equal values, the later step wins (it trained longer
on the same data, and the choice is stable when a run is resumed and evaluated again).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from grounding_ops.vocabulary import METRICS

T = TypeVar("T")


class SelectionError(ValueError):
    """Nothing to choose from, or a metric this platform does not compute."""


def best_checkpoint(items: Sequence[T], metric: str, *, value: Callable[[T], float], step: Callable[[T], int]) -> T:
    """The best of ``items`` by ``metric`` (``value`` reads it, ``step`` the checkpoint step)."""
    known = METRICS.get(metric)
    if known is None:
        raise SelectionError(f"metric {metric!r} is unknown: use one of {', '.join(METRICS)}")
    if not items:
        raise SelectionError(f"no evaluated checkpoint to choose by {metric}")
    sign = 1.0 if known.higher_is_better else -1.0
    return max(items, key=lambda item: (sign * float(value(item)), int(step(item))))

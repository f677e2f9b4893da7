"""Deterministic, leakage-safe train/val/test split by group.

Each group id (patient, study or image) hashes to a stable number ``f`` in [0, 1). A group
goes to ``val`` when ``f < val_fraction``, to ``test`` when ``val_fraction <= f <
val_fraction + test_fraction``, and to ``train`` otherwise. Every record of a group lands in
the same split, and the same input always gives the same split, whatever the order or
batching. Adding a test split leaves the val split of the same data unchanged.

Checkpoints are chosen on ``val``; the promotion decision is taken on ``test`` only, so the
model that is promoted was neither trained on nor selected with the samples that judge it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

TRAIN = "train"
VAL = "val"
TEST = "test"
SPLITS: tuple[str, ...] = (TRAIN, VAL, TEST)
# The held-out splits in the order a small dataset fills them.
HELD_OUT: tuple[str, ...] = (VAL, TEST)
RECENT_GROUPS = 1 << 16  # groups the split planner remembers, to skip the rows of a group after its first


def group_fraction(group: str, salt: str = "") -> float:
    """A stable number in [0, 1) for ``group``."""
    digest = hashlib.sha256(f"{salt}\x00{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    """Refuse fractions that leave no training data or are not numbers in [0, 1)."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:  # also refuses NaN
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not val_fraction + test_fraction < 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 (some data must train), got {val_fraction} + {test_fraction}"
        )


def split_of_fraction(fraction: float, val_fraction: float, test_fraction: float = 0.0) -> str:
    """The split of a group whose hash is ``fraction`` (see :func:`group_fraction`)."""
    if fraction < val_fraction:
        return VAL
    if fraction < val_fraction + test_fraction:
        return TEST
    return TRAIN


def assign_split(group: str, val_fraction: float, salt: str = "", test_fraction: float = 0.0) -> str:
    check_fractions(val_fraction, test_fraction)
    return split_of_fraction(group_fraction(group, salt), val_fraction, test_fraction)


@dataclass
class SplitPlan:
    """Groups moved from ``train`` to a held-out split that the hash left empty (small
    datasets), and notes on the held-out splits that stay empty, for the summary."""

    moved: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def split_of(self, group: str, val_fraction: float, salt: str = "", test_fraction: float = 0.0) -> str:
        return self.moved.get(group) or assign_split(group, val_fraction, salt, test_fraction)


def plan_small_splits(
    groups: Iterable[str], val_fraction: float, salt: str = "", test_fraction: float = 0.0
) -> SplitPlan:
    """Keep train, and every requested held-out split, non-empty when the data allows it.

    A split the hash left without a group takes one whole group (the one with the highest
    hash) from a split that has at least two: train first, then val, then test, so one group
    trains, two give train and val, three fill all three. When there are too few groups the
    plan says which split stays empty and why. One pass; memory bounded by three groups per
    split, whatever the number of groups.
    """
    check_fractions(val_fraction, test_fraction)
    wanted = [TRAIN] + [name for name, fraction in ((VAL, val_fraction), (TEST, test_fraction)) if fraction > 0]
    samples: dict[str, list[tuple[float, str]]] = {name: [] for name in SPLITS}  # highest hashes first
    recent: OrderedDict[str, None] = OrderedDict()  # groups just seen: their rows often come together
    for group in groups:
        if group in recent:
            continue
        recent[group] = None
        if len(recent) > RECENT_GROUPS:
            recent.popitem(last=False)
        fraction = group_fraction(group, salt)
        split = split_of_fraction(fraction, val_fraction, test_fraction)
        sample = samples[split]
        if (fraction, group) in sample or (len(sample) == 3 and (fraction, group) < sample[-1]):
            continue
        sample.append((fraction, group))
        sample.sort(reverse=True)
        del sample[3:]
    plan = SplitPlan()
    for name in wanted:
        if samples[name]:
            continue
        keep = 0 if name == TRAIN else 1  # train comes first: it may take a held-out split's only group
        donors = [other for other in (TRAIN, *HELD_OUT) if other != name and len(samples[other]) > keep]
        if not donors:
            seen = sum(len(sample) for sample in samples.values())
            plan.notes.append(
                f"the {name} split is empty: the data has only {seen} group(s), too few to fill " + ", ".join(wanted)
            )
            continue
        donor = max(donors, key=lambda other: (other == TRAIN, len(samples[other])))
        entry = samples[donor].pop(0)
        samples[name].append(entry)
        plan.moved[entry[1]] = name
    return plan

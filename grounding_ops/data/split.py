"""Deterministic, leakage-safe train/val split by group.

A record goes to ``val`` when the hash of its group id (patient, study or image) falls
below ``val_fraction``; every record of a group lands on the same side, and the same
input always gives the same split, whatever the order or batching.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

TRAIN = "train"
VAL = "val"


def group_fraction(group: str, salt: str = "") -> float:
    """A stable number in [0, 1) for ``group``."""
    digest = hashlib.sha256(f"{salt}\x00{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(group: str, val_fraction: float, salt: str = "") -> str:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return VAL if group_fraction(group, salt) < val_fraction else TRAIN


def fallback_val_group(groups: Iterable[str], val_fraction: float, salt: str = "") -> str | None:
    """The group to put in val when the hash split left val empty (small datasets).

    Returns None when val already has a group, ``val_fraction`` is 0, or there is only
    one group. Otherwise the group with the smallest hash: still deterministic, and it
    keeps whole groups together. One pass, constant memory.
    """
    if val_fraction <= 0:
        return None
    first: str | None = None
    several = False
    best: tuple[float, str] | None = None
    for group in groups:
        fraction = group_fraction(group, salt)
        if fraction < val_fraction:
            return None
        if first is None:
            first = group
        elif group != first:
            several = True
        if best is None or (fraction, group) < best:
            best = (fraction, group)
    return best[1] if several and best is not None else None

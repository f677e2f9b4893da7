"""IoU of axis-aligned boxes and optimal one-to-one matching."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Box = Sequence[float]


def box_iou(a: Box, b: Box) -> float:
    """IoU of two pixel-xyxy boxes (0.0 when the union is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if not union > 0:
        return 0.0
    return min(max(inter / union, 0.0), 1.0)


def iou_matrix(pred: Sequence[Box], gt: Sequence[Box]):
    """``len(pred) x len(gt)`` numpy array of IoUs."""
    import numpy as np

    p = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(p[:, None, 2], g[None, :, 2]) - np.maximum(p[:, None, 0], g[None, :, 0])
    ih = np.minimum(p[:, None, 3], g[None, :, 3]) - np.maximum(p[:, None, 1], g[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = area_p[:, None] + area_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class Match:
    """Optimal one-to-one assignment: ``pairs`` of (pred index, gt index, IoU)."""

    pairs: tuple[tuple[int, int, float], ...]
    n_pred: int
    n_gt: int

    @property
    def total_iou(self) -> float:
        return float(sum(p[2] for p in self.pairs))


def match_boxes(pred: Sequence[Box], gt: Sequence[Box]) -> Match:
    """Assignment of predictions to ground truth maximising the summed IoU.

    Each box is used at most once, so extra or duplicated predictions can
    only stay unmatched. Uses scipy's Hungarian solver for more than one box.
    """
    n_pred, n_gt = len(pred), len(gt)
    if n_pred == 0 or n_gt == 0:
        return Match((), n_pred, n_gt)
    if n_pred == 1 or n_gt == 1:
        # the best single pair is the optimum: no solver needed
        best = (0, 0, -1.0)
        for i, p in enumerate(pred):
            for j, g in enumerate(gt):
                v = box_iou(p, g)
                if v > best[2]:
                    best = (i, j, v)
        return Match((best,), n_pred, n_gt)
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if n_pred * n_gt <= 64:  # small: pure Python beats numpy's per-call overhead
        m = np.array([[box_iou(p, g) for g in gt] for p in pred])
    else:
        m = iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(m, maximize=True)
    return Match(tuple((int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols)), n_pred, n_gt)

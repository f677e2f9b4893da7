"""The draft guide's reward, reproduced for comparison only (benchmarks, docs).

It parses only ``<click>x, y, w, h</click>`` and returns the MAXIMUM IoU over
every (predicted, ground-truth) pair, so extra boxes can only help: a model
that prints a grid of boxes, or the right box plus any others, is paid as if
it had answered exactly. Do not train with it; use
:func:`grounding_ops.reward.score_response`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_GUIDE_PATTERN = re.compile(r"<click>(\d+(?:\.\d+)?),\s*(\d+(?:\.\d+)?),\s*(\d+(?:\.\d+)?),\s*(\d+(?:\.\d+)?)</click>")


def _guide_iou(b1: dict[str, float], b2: dict[str, float]) -> float:
    x1_1, y1_1 = b1["x"], b1["y"]
    x2_1, y2_1 = x1_1 + b1["width"], y1_1 + b1["height"]
    x1_2, y1_2 = b2["x"], b2["y"]
    x2_2, y2_2 = x1_2 + b2["width"], y1_2 + b2["height"]
    xi1, yi1 = max(x1_1, x1_2), max(y1_1, y1_2)
    xi2, yi2 = min(x2_1, x2_2), min(y2_1, y2_2)
    if xi2 <= xi1 or yi2 <= yi1:
        return 0.0
    inter = (xi2 - xi1) * (yi2 - yi1)
    union = (x2_1 - x1_1) * (y2_1 - y1_1) + (x2_2 - x1_2) * (y2_2 - y1_2) - inter
    return inter / union if union > 0 else 0.0


def guide_reward(response: str, gt_boxes_xyxy: Sequence[Sequence[float]]) -> float:
    """The guide's ``grounding_reward_function`` for pixel-xyxy ground truth."""
    predicted = [
        {"x": float(a), "y": float(b), "width": float(c), "height": float(d)}
        for a, b, c, d in _GUIDE_PATTERN.findall(response)
    ]
    if not predicted:
        return 0.0
    truth = [{"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1} for x1, y1, x2, y2 in gt_boxes_xyxy]
    best = 0.0
    for p in predicted:
        for g in truth:
            best = max(best, _guide_iou(p, g))
    return best

"""The grounding reward: optimal one-to-one IoU between answer and ground truth.

``score = sum of matched IoUs / max(n_gt, n_pred)`` — every predicted box must
pay for itself, so printing a grid of boxes, duplicating a box or adding
extras can only lower the score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from grounding_ops import protocols as _protocols
from grounding_ops.reward.matching import match_boxes

ACC_IOU_THRESHOLD = 0.5
# Scores are rounded to this many decimals so that an exact answer whose
# coordinates went through a float round trip scores exactly 1.0.
SCORE_DECIMALS = 9


def _plain(value: Any) -> Any:
    """numpy arrays / scalars (as datasets and parquet hand them over) -> Python objects."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def normalize_boxes(boxes: Any) -> list[tuple[float, float, float, float]]:
    """Ground-truth boxes from lists, tuples, numpy arrays (incl. object arrays of arrays) or JSON text."""
    boxes = _plain(boxes)
    if isinstance(boxes, (str, bytes)):
        boxes = json.loads(boxes)
    if boxes is None:
        raise ValueError("ground truth has no boxes; expected [[x1, y1, x2, y2], ...] in pixels")
    items = list(boxes)
    if len(items) == 4 and all(isinstance(_plain(v), (int, float)) for v in items):
        items = [items]  # a single flat box
    out = []
    for item in items:
        if type(item) not in (list, tuple):
            item = _plain(item)
        try:
            vals = [float(v) for v in item]
        except (TypeError, ValueError):
            vals = []
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            raise ValueError(f"ground-truth box {item!r} is not four finite numbers x1, y1, x2, y2")
        x1, y1, x2, y2 = vals
        out.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return out


def _size(value: Any) -> tuple[float, float] | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    vals = [float(_plain(v)) for v in value]
    if len(vals) != 2:
        raise ValueError(f"expected a size [width, height], got {value!r}")
    return vals[0], vals[1]


def score_response(
    response: str,
    gt_boxes: Any,
    *,
    image_size: Sequence[float],
    protocol: str,
    resized_size: Sequence[float] | None = None,
    max_boxes: int = _protocols.DEFAULT_MAX_BOXES,
    format_weight: float = 0.0,
    max_answer_chars: int | None = _protocols.DEFAULT_MAX_ANSWER_CHARS,
) -> dict[str, Any]:
    """Score one response against pixel-xyxy ground-truth boxes of the original image.

    Returns ``score`` (in [0, 1]), ``iou`` (mean IoU of matched pairs),
    ``acc`` (1.0 when predictions and ground truth match one-to-one with every
    pair at IoU >= 0.5 and no extra box), ``format_ok``, ``n_pred``, ``n_gt``
    and ``reason`` ("" or the first problem found in the answer).

    With ``format_weight`` w > 0, ``score = (1 - w) * match + w * format_ok``.
    More than ``max_boxes`` predicted boxes score 0 (reason ``too_many_boxes``),
    so does an answer longer than ``max_answer_chars`` (``answer_too_long``).
    Never raises on the response; raises ValueError for invalid ground truth,
    sizes or protocol (a data or configuration error).
    """
    proto = _protocols.get_protocol(protocol)
    gt = normalize_boxes(gt_boxes)
    if not 0.0 <= float(format_weight) <= 1.0:
        raise ValueError(f"format_weight must be between 0 and 1, got {format_weight!r}")
    parsed = proto.parse(
        response, image_size, resized_size, max_boxes=max_boxes, max_answer_chars=max_answer_chars
    )
    n_pred, n_gt = len(parsed.boxes), len(gt)
    result: dict[str, Any] = {
        "score": 0.0,
        "iou": 0.0,
        "acc": 0.0,
        "format_ok": parsed.format_ok,
        "n_pred": n_pred,
        "n_gt": n_gt,
        "reason": parsed.reason,
    }
    if parsed.too_many:
        result["n_pred"] = int(max_boxes) + 1
        return result
    if n_gt == 0:
        # nothing to find: only an explicit, well-formed empty answer is right
        match_score = 1.0 if (n_pred == 0 and parsed.format_ok) else 0.0
        result["acc"] = match_score
    else:
        match = match_boxes(parsed.boxes, gt)
        ious = [p[2] for p in match.pairs]
        match_score = sum(ious) / max(n_gt, n_pred)
        result["iou"] = round(sum(ious) / len(ious), SCORE_DECIMALS) if ious else 0.0
        result["acc"] = 1.0 if (n_pred == n_gt and all(v >= ACC_IOU_THRESHOLD for v in ious)) else 0.0
    w = float(format_weight)
    score = (1.0 - w) * match_score + w * (1.0 if parsed.format_ok else 0.0)
    result["score"] = min(max(round(float(score), SCORE_DECIMALS), 0.0), 1.0)
    return result


def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """VeRL 0.9.1 custom reward: ``reward.custom_reward_function.{path,name}``.

    ``ground_truth`` is ``reward_model.ground_truth`` of the exported row:
    ``{"boxes", "protocol", "image_size", "resized_size"}`` as a dict (values
    may be numpy arrays) or JSON text; protocol and sizes fall back to
    ``extra_info``. Optional ``reward_kwargs``: ``protocol`` (used when the row
    names none), ``max_boxes``, ``format_weight``, ``max_answer_chars``.
    """
    gt = _plain(ground_truth)
    if isinstance(gt, (str, bytes)):
        gt = json.loads(gt)
    info = dict(extra_info or {}) if isinstance(extra_info, Mapping) else {}
    if isinstance(gt, Mapping):
        boxes = gt.get("boxes")
        fields = {k: gt.get(k) for k in ("protocol", "image_size", "resized_size")}
    else:
        boxes, fields = gt, {}
    for key in ("protocol", "image_size", "resized_size"):
        if fields.get(key) is None:
            fields[key] = info.get(key)
    protocol = fields.get("protocol") or kwargs.get("protocol")
    if protocol is None:
        raise ValueError(
            f"no answer protocol for data_source={data_source!r}: ground_truth/extra_info must carry "
            "'protocol' (or set reward.custom_reward_function.reward_kwargs.protocol)"
        )
    image_size = _size(fields.get("image_size"))
    if image_size is None:
        raise ValueError(
            f"no image_size for data_source={data_source!r}: ground_truth or extra_info must carry [width, height]"
        )
    if isinstance(protocol, bytes):
        protocol = protocol.decode()
    return score_response(
        solution_str if isinstance(solution_str, str) else ("" if solution_str is None else str(solution_str)),
        boxes,
        image_size=image_size,
        protocol=str(protocol),
        resized_size=_size(fields.get("resized_size")),
        max_boxes=int(kwargs.get("max_boxes", _protocols.DEFAULT_MAX_BOXES)),
        format_weight=float(kwargs.get("format_weight", 0.0)),
        max_answer_chars=kwargs.get("max_answer_chars", _protocols.DEFAULT_MAX_ANSWER_CHARS),
    )

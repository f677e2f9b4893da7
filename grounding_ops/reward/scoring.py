"""The grounding reward: optimal one-to-one IoU between answer and ground truth.

``score = sum of matched IoUs / max(n_gt, n_pred)`` where ``n_pred`` counts every box
entry of the final answer, valid or not — every entry must pay for itself, so printing
a grid of boxes, duplicating a box, adding extras or padding with invalid entries can
only lower the score.
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
    return [_gt_box(item) for item in items]


def _gt_box(item: Any) -> tuple[float, float, float, float]:
    if type(item) is not list and type(item) is not tuple:
        item = _plain(item)
    if isinstance(item, (str, bytes)):
        raise ValueError(f"ground-truth box {item!r} is not four finite numbers x1, y1, x2, y2")
    try:
        x1, y1, x2, y2 = item
        x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
    except (TypeError, ValueError):
        x1 = y1 = x2 = y2 = math.nan
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        raise ValueError(f"ground-truth box {item!r} is not four finite numbers x1, y1, x2, y2")
    return (x1 if x1 < x2 else x2, y1 if y1 < y2 else y2, x2 if x2 > x1 else x1, y2 if y2 > y1 else y1)


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


def _format_weight(value: Any) -> float:
    w = float(value)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"format_weight must be between 0 and 1, got {value!r}")
    return w


def _score(
    proto: _protocols.Protocol,
    frame: tuple[float, float, float, float],
    gt: Sequence[tuple[float, float, float, float]],
    response: Any,
    max_boxes: int,
    format_weight: float,
    max_answer_chars: int | None,
    fast: bool = True,
    ended: bool = True,
) -> dict[str, Any]:
    boxes, n_pred, format_ok, reason, too_many = proto.read(response, frame, max_boxes, max_answer_chars, fast)
    n_gt = len(gt)
    if too_many:
        return {
            "score": 0.0,
            "iou": 0.0,
            "acc": 0.0,
            "format_ok": format_ok,
            "n_pred": max_boxes + 1,
            "n_gt": n_gt,
            "reason": reason,
        }
    iou = 0.0
    if n_gt == 0:
        # nothing to find: only an explicit, well-formed empty answer is right
        match_score = acc = 1.0 if (n_pred == 0 and format_ok) else 0.0
    elif n_pred == 1 and n_gt == 1 and boxes:
        # one box against one box (most rows): box_iou, inlined
        (a1, b1, a2, b2), (g1, h1, g2, h2) = boxes[0], gt[0]
        iw = (a2 if a2 < g2 else g2) - (a1 if a1 > g1 else g1)
        ih = (b2 if b2 < h2 else h2) - (b1 if b1 > h1 else h1)
        match_score = 0.0
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (a2 - a1) * (b2 - b1) + (g2 - g1) * (h2 - h1) - inter
            if union > 0:
                match_score = inter / union
                match_score = 0.0 if match_score < 0.0 else (1.0 if match_score > 1.0 else match_score)
        iou = round(match_score, SCORE_DECIMALS)
        acc = 1.0 if match_score >= ACC_IOU_THRESHOLD else 0.0
        if not format_weight:
            return {
                "score": iou,
                "iou": iou,
                "acc": acc,
                "format_ok": format_ok,
                "n_pred": 1,
                "n_gt": 1,
                "reason": reason,
            }
    else:
        # invalid entries have no box but count in the denominator all the same
        ious = [p[2] for p in match_boxes(boxes, gt).pairs]
        match_score = sum(ious) / max(n_gt, n_pred)
        if ious:
            iou = round(sum(ious) / len(ious), SCORE_DECIMALS)
        ok = n_pred == n_gt == len(ious) and all(v >= ACC_IOU_THRESHOLD for v in ious)
        acc = 1.0 if ok else 0.0
    if format_weight:
        match_score = (1.0 - format_weight) * match_score + format_weight * (1.0 if format_ok and ended else 0.0)
    return {
        "score": min(max(round(match_score, SCORE_DECIMALS), 0.0), 1.0),
        "iou": iou,
        "acc": acc,
        "format_ok": format_ok,
        "n_pred": n_pred,
        "n_gt": n_gt,
        "reason": reason,
    }


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
    ended: bool = True,
) -> dict[str, Any]:
    """Score one response against pixel-xyxy ground-truth boxes of the original image.

    Only the final answer is read: reasoning up to the last ``</think>`` is ignored, and
    the last complete ``<answer>…</answer>`` after it is the answer (see
    :func:`grounding_ops.answer_parsing.extract_answer`).

    Returns ``score`` (in [0, 1]), ``iou`` (mean IoU of matched pairs),
    ``acc`` (1.0 when predictions and ground truth match one-to-one with every
    pair at IoU >= 0.5 and no extra or invalid entry), ``format_ok``, ``n_pred``
    (box entries the answer emitted, valid or not), ``n_gt`` and ``reason`` ("" or
    the first problem found in the answer, including recovered forms).

    ``score = sum of matched IoUs / max(n_gt, n_pred)``: every entry must pay for itself.
    With ``format_weight`` w > 0, ``score = (1 - w) * match + w * (format_ok and ended)``:
    ``ended=False`` says the response was cut at the generation's length limit (it ran on past
    its answer), which earns no format share.
    More than ``max_boxes`` entries score 0 (reason ``too_many_boxes``),
    so does an answer longer than ``max_answer_chars`` (``answer_too_long``).
    Never raises on the response; raises ValueError for invalid ground truth,
    sizes or protocol (a data or configuration error).
    """
    proto = _protocols.get_protocol(protocol)
    gt = normalize_boxes(gt_boxes)
    return _score(
        proto,
        proto.frame_of(image_size, resized_size),
        gt,
        response,
        max(int(max_boxes), 0),
        _format_weight(format_weight),
        max_answer_chars,
        ended=bool(ended),
    )


# -- compute_score: VeRL's entry point --------------------------------------------------------

# The ground truth of a row, read once per distinct contents: the rollouts of a prompt carry
# equal ground truth (VeRL hands them the same dict, or, when it scores sample by sample,
# equal copies). Keyed by the contents themselves (protocol, sizes, box coordinates), so a
# dict changed in place can never hit a stale entry; bounded, and cleared when full.
_TARGET_CACHE: dict[tuple, tuple] = {}
_PROTOCOLS_BY_NAME = {name: _protocols.get_protocol(name) for name in _protocols.PROTOCOL_NAMES}
_TARGET_CACHE_SIZE = 4096


def _content_key(gt: dict) -> tuple | None:
    """A hashable copy of what decides a row's target, for a row that carries its protocol,
    sizes and boxes itself as lists (the exported form); None for any other form."""
    boxes, protocol, image_size, resized_size = (
        gt.get("boxes"),
        gt.get("protocol"),
        gt.get("image_size"),
        gt.get("resized_size"),
    )
    if not (
        type(boxes) is list
        and type(protocol) is str
        and protocol
        and (type(image_size) is list or type(image_size) is tuple)
        and len(image_size) == 2
        and (type(resized_size) is list or type(resized_size) is tuple)
        and len(resized_size) == 2
    ):
        return None
    if len(boxes) == 1:  # most rows: one object
        box = boxes[0]
        if type(box) is not list or len(box) != 4:
            return None
        return (protocol, *image_size, *resized_size, *box)
    key = [protocol, *image_size, *resized_size]
    for box in boxes:  # every box four values: the length of the key gives the number of boxes
        if type(box) is not list or len(box) != 4:
            return None
        key += box
    return tuple(key)


def _read_exported_target(gt: dict) -> tuple | None:
    """:func:`_read_target` for a row with a content key (the exported form: protocol,
    sizes and four-value boxes as lists), without its conversions; None on any bad
    value, for :func:`_read_target` to name."""
    gt_boxes = []
    isfinite = math.isfinite
    for x1, y1, x2, y2 in gt["boxes"]:
        try:
            x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
        except (TypeError, ValueError):
            return None
        if not (isfinite(x1) and isfinite(y1) and isfinite(x2) and isfinite(y2)):
            return None
        gt_boxes.append((x1 if x1 < x2 else x2, y1 if y1 < y2 else y2, x2 if x2 > x1 else x1, y2 if y2 > y1 else y1))
    proto = _PROTOCOLS_BY_NAME.get(gt["protocol"])
    if proto is None:
        return None
    return proto, proto.frame_of(gt["image_size"], gt["resized_size"]), gt_boxes


def _read_target(
    data_source: Any, ground_truth: Any, extra_info: Any, kwargs: Mapping[str, Any]
) -> tuple[_protocols.Protocol, tuple[float, float, float, float], list[tuple[float, float, float, float]]]:
    """``(protocol, frame, gt boxes)`` from an exported row's ground truth."""
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
    proto = _protocols.get_protocol(str(protocol))
    return proto, proto.frame_of(image_size, _size(fields.get("resized_size"))), normalize_boxes(boxes)


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
    The same result as :func:`score_response`; a row's ground truth is read once per
    distinct contents (all rollouts of a prompt carry the same).
    """
    key = None
    if type(ground_truth) is dict:
        boxes = ground_truth.get("boxes")
        protocol, image_size, resized_size = (
            ground_truth.get("protocol"),
            ground_truth.get("image_size"),
            ground_truth.get("resized_size"),
        )
        if (
            type(boxes) is list
            and len(boxes) == 1
            and type(boxes[0]) is list
            and len(boxes[0]) == 4
            and type(protocol) is str
            and protocol
            and type(image_size) is list
            and len(image_size) == 2
            and type(resized_size) is list
            and len(resized_size) == 2
        ):
            key = (protocol, *image_size, *resized_size, *boxes[0])  # one object (most rows): _content_key, inlined
        else:
            key = _content_key(ground_truth)
    target = None
    if key is not None:
        try:
            target = _TARGET_CACHE.get(key)
        except TypeError:  # an unhashable value: read the row every time
            key = None
    if target is None:
        if key is not None:
            target = _read_exported_target(ground_truth)
        if target is None:
            target = _read_target(data_source, ground_truth, extra_info, kwargs)
        if key is not None:
            if len(_TARGET_CACHE) >= _TARGET_CACHE_SIZE:
                _TARGET_CACHE.clear()
            _TARGET_CACHE[key] = target
    proto, frame, gt = target
    if kwargs:
        return _score(
            proto,
            frame,
            gt,
            solution_str,
            max(int(kwargs.get("max_boxes", _protocols.DEFAULT_MAX_BOXES)), 0),
            _format_weight(kwargs.get("format_weight", 0.0)),
            kwargs.get("max_answer_chars", _protocols.DEFAULT_MAX_ANSWER_CHARS),
        )
    return _score(
        proto, frame, gt, solution_str, _protocols.DEFAULT_MAX_BOXES, 0.0, _protocols.DEFAULT_MAX_ANSWER_CHARS
    )

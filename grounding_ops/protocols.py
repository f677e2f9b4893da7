"""Answer protocols: how a model is asked for a box and how its answer is read.

One protocol = one prompt instruction, one answer syntax and one coordinate
frame. Every protocol converts to pixel ``(x1, y1, x2, y2)`` boxes of the
ORIGINAL image, clipped to it.

========================  ==============================================  ==========================
name                      answer syntax                                   coordinate frame
========================  ==============================================  ==========================
``qwen2.5-vl``            ``[{"bbox_2d": [x1, y1, x2, y2], "label": ..}]`` pixels of the resized image
                          (optionally in a ```json fence)                  (``resized_size``)
``qwen2-vl``              ``(x1,y1),(x2,y2)``, with or without             0-1000 grid
                          ``<|box_start|>``/``<|object_ref_start|>`` tokens
``qwen3-vl``              the JSON form of ``qwen2.5-vl``                  0-1000 grid
``click-xywh``            ``<click>x, y, w, h</click>``                    pixels of the original image
``normalized-xyxy``       ``[x1, y1, x2, y2]``                             0-1 of the image
========================  ==============================================  ==========================

Any protocol may be wrapped as ``<think>…</think><answer>…</answer>``: only
the final answer is parsed (reasoning up to the last ``</think>`` never is), and
every box entry of it counts, valid or not. ``qwen2-vl`` also reads plain
``(x1,y1,x2,y2)`` / ``[x1,y1,x2,y2]`` on its grid, flagged ``bare_box`` (see
docs/reward.md).

This module is imported by the data export, the trainers and evaluation:
keep it free of heavy imports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grounding_ops import answer_parsing as parsing

PROTOCOL_NAMES: tuple[str, ...] = ("qwen2.5-vl", "qwen2-vl", "qwen3-vl", "click-xywh", "normalized-xyxy")
DEFAULT_MAX_BOXES = 50
# An answer (the text after any reasoning) longer than this is not parsed and
# scores 0: 50 boxes with labels fit in a few KB, and it bounds the cost of
# degenerate rollouts. Parsing is linear either way.
DEFAULT_MAX_ANSWER_CHARS = 65_536

Box = tuple[float, float, float, float]
Size = tuple[int, int]


@dataclass(frozen=True)
class ParseResult:
    """What a response says, in pixel xyxy of the original image.

    ``boxes`` are clipped to the image (at most ``max_boxes`` of them);
    ``format_ok`` is true when the answer follows the protocol exactly;
    ``reason`` names the first problem found ("" when none); ``too_many``
    is set when the response holds more than ``max_boxes`` box entries;
    ``n_invalid`` counts the entries that were not a readable box (they count
    against the score all the same).
    """

    boxes: tuple[Box, ...]
    format_ok: bool
    reason: str = ""
    too_many: bool = False
    n_invalid: int = 0


def _size(size: Sequence[float] | None, what: str) -> tuple[float, float]:
    try:
        w, h = float(size[0]), float(size[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"{what} must be (width, height), got {size!r}") from exc
    if not (0.0 < w < math.inf and 0.0 < h < math.inf):  # NaN fails both
        raise ValueError(f"{what} must be positive finite (width, height), got {size!r}")
    return w, h


def _fmt(value: float, decimals: int | None) -> str:
    if decimals is None:  # shortest text that reads back as the same float
        return repr(int(value)) if float(value).is_integer() else repr(float(value))
    if decimals <= 0:
        return str(int(round(value)))
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _clip(box: Box, w: float, h: float) -> Box:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


@dataclass(frozen=True)
class Protocol:
    """One answer protocol (see the module docstring for the table).

    ``syntax`` picks the scanner, ``frame`` the coordinate frame,
    ``decimals`` how :meth:`format_answer` writes numbers by default and
    ``xywh`` marks ``x, y, w, h`` answers (others are ``x1, y1, x2, y2``).
    """

    name: str
    syntax: str  # "json" | "pairs" | "click" | "bracket"
    frame: str  # "resized" | "grid1000" | "pixels" | "unit"
    decimals: int
    _instruction: str
    xywh: bool = False

    # -- prompting -------------------------------------------------------
    def instruction(self, phrase: str, *, reasoning: bool = False) -> str:
        """User text that follows the ``<image>`` token, asking for ``phrase`` in this format."""
        text = self._instruction.format(phrase=str(phrase).strip())
        if reasoning:
            text += " First think inside <think></think>, then give only the answer inside <answer></answer>."
        return text

    # -- coordinate frames ----------------------------------------------
    def _scale(self, image_size: Sequence[float], resized_size: Sequence[float] | None) -> tuple[float, float]:
        """Multipliers from protocol coordinates to original pixels."""
        sx, sy, _, _ = self.frame_of(image_size, resized_size)
        return sx, sy

    def format_answer(
        self,
        boxes: Iterable[Sequence[float]],
        image_size: Sequence[float],
        resized_size: Sequence[float] | None = None,
        *,
        label: str | None = None,
        precise: bool = False,
    ) -> str:
        """A perfect answer for pixel-xyxy ``boxes`` of the original image.

        By default coordinates are written the way the model family writes
        them (integers for pixel and grid frames), so the answer is exact up
        to that resolution; ``precise=True`` writes every number exactly (the
        shortest decimal that reads back as the same float), for an exact
        round trip.
        """
        w, h = _size(image_size, "image_size")
        sx, sy = self._scale(image_size, resized_size)
        decimals = None if precise else self.decimals
        converted: list[list[str]] = []
        for box in boxes:
            x1, y1, x2, y2 = _clip(tuple(float(v) for v in box), w, h)  # type: ignore[arg-type]
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            if self.xywh:
                vals = [x1, y1, x2 - x1, y2 - y1]
            else:
                vals = [x1 / sx, y1 / sy, x2 / sx, y2 / sy]
            converted.append([_fmt(v, decimals) for v in vals])

        if self.syntax == "json":
            items = []
            for texts in converted:
                item = '{"bbox_2d": [' + ", ".join(texts) + "]"
                if label is not None:
                    item += ', "label": ' + json.dumps(label, ensure_ascii=False)
                items.append("\t" + item + "}")
            return "```json\n[\n" + ",\n".join(items) + "\n]\n```"
        if self.syntax == "pairs":
            ref = f"<|object_ref_start|>{label}<|object_ref_end|>" if label is not None else ""
            return ref + "".join(f"<|box_start|>({v[0]},{v[1]}),({v[2]},{v[3]})<|box_end|>" for v in converted)
        if self.syntax == "click":
            return " ".join(f"<click>{', '.join(v)}</click>" for v in converted)
        # bracket
        lists = ["[" + ", ".join(v) + "]" for v in converted]
        return lists[0] if len(lists) == 1 else "[" + ", ".join(lists) + "]"

    # -- parsing ---------------------------------------------------------
    def frame_of(
        self, image_size: Sequence[float], resized_size: Sequence[float] | None = None
    ) -> tuple[float, float, float, float]:
        """``(sx, sy, w, h)``: multipliers from protocol coordinates to original pixels, and
        the original image size (validated; ValueError names the bad size)."""
        w, h = _size(image_size, "image_size")
        if self.frame == "pixels":
            return 1.0, 1.0, w, h
        if self.frame == "unit":
            return w, h, w, h
        if self.frame == "grid1000":
            return w / 1000.0, h / 1000.0, w, h
        # resized: absolute pixels of the image the processor fed the model
        rw, rh = _size(resized_size, "resized_size") if resized_size is not None else (w, h)
        return w / rw, h / rh, w, h

    def read(
        self,
        response: object,
        frame: tuple[float, float, float, float],
        max_boxes: int = DEFAULT_MAX_BOXES,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
        fast: bool = True,
    ) -> tuple[list[Box], int, bool, str, bool]:
        """``(boxes, n_entries, format_ok, reason, too_many)`` for ``response``: clipped
        pixel-xyxy boxes of the valid entries, and how many box entries the answer emitted
        (valid or not). ``frame`` comes from :meth:`frame_of`; ``fast=False`` skips the
        single-box fast path (same result, for tests). The tuple form of :meth:`parse`."""
        if type(response) is not str:
            response = "" if response is None else str(response)
        if "think>" in response or "answer>" in response:
            text, wrapper_ok, wrapper_reason = parsing.extract_answer(response)
        else:
            text, wrapper_ok, wrapper_reason = response, True, ""
        if max_answer_chars is not None and len(text) > max_answer_chars:
            return [], 0, False, "answer_too_long", False
        sx, sy, w, h = frame
        xywh = self.xywh
        if fast and max_boxes >= 1:
            # one well-formed entry (most answers): the same steps as below, unrolled
            box = parsing.FAST_READERS[self.syntax](text)
            if box is not None:
                a, b, c, d = box
                format_ok, reason = wrapper_ok, wrapper_reason
                if xywh:
                    if (c < 0 or d < 0) and format_ok:
                        format_ok, reason = False, "negative_size"
                    x1, y1, x2, y2 = a, b, a + c, b + d
                else:
                    x1, y1, x2, y2 = a * sx, b * sy, c * sx, d * sy
                if x2 < x1 or y2 < y1:
                    if format_ok:
                        format_ok, reason = False, "reversed_coordinates"
                    x1, x2 = min(x1, x2), max(x1, x2)
                    y1, y2 = min(y1, y2), max(y1, y2)
                return (
                    [
                        (
                            x1 if 0.0 <= x1 <= w else (0.0 if x1 < 0.0 else w),
                            y1 if 0.0 <= y1 <= h else (0.0 if y1 < 0.0 else h),
                            x2 if 0.0 <= x2 <= w else (0.0 if x2 < 0.0 else w),
                            y2 if 0.0 <= y2 <= h else (0.0 if y2 < 0.0 else h),
                        )
                    ],
                    1,
                    format_ok,
                    reason,
                    False,
                )
        raw, n_entries, format_ok, reason, too_many = parsing.scan_general(text, self.syntax, max_boxes)
        if not wrapper_ok and not too_many:  # the wrapper is the first problem in the text
            format_ok, reason = False, wrapper_reason
        boxes: list[Box] = []
        for a, b, c, d in raw:
            if xywh:
                if (c < 0 or d < 0) and format_ok:
                    format_ok, reason = False, "negative_size"
                x1, y1, x2, y2 = a, b, a + c, b + d
            else:
                x1, y1, x2, y2 = a * sx, b * sy, c * sx, d * sy
            if x2 < x1 or y2 < y1:
                if format_ok:
                    format_ok, reason = False, "reversed_coordinates"
                x1, x2 = min(x1, x2), max(x1, x2)
                y1, y2 = min(y1, y2), max(y1, y2)
            boxes.append(
                (  # clipped to the image
                    x1 if 0.0 <= x1 <= w else (0.0 if x1 < 0.0 else w),
                    y1 if 0.0 <= y1 <= h else (0.0 if y1 < 0.0 else h),
                    x2 if 0.0 <= x2 <= w else (0.0 if x2 < 0.0 else w),
                    y2 if 0.0 <= y2 <= h else (0.0 if y2 < 0.0 else h),
                )
            )
        return boxes, n_entries, format_ok, reason, too_many

    def parse(
        self,
        response: str,
        image_size: Sequence[float],
        resized_size: Sequence[float] | None = None,
        *,
        max_boxes: int = DEFAULT_MAX_BOXES,
        max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
    ) -> ParseResult:
        """Read ``response`` into clipped pixel-xyxy boxes of the original image.

        Only the answer is read (see :func:`grounding_ops.answer_parsing.extract_answer`).
        Never raises on the response (any text, any size); raises ValueError only for an
        invalid ``image_size``/``resized_size``. An answer longer than ``max_answer_chars``
        (None: no limit) is not parsed (reason ``answer_too_long``); parsing is linear in
        its length.
        """
        boxes, n_entries, format_ok, reason, too_many = self.read(
            response, self.frame_of(image_size, resized_size), max(int(max_boxes), 0), max_answer_chars
        )
        return ParseResult(tuple(boxes), bool(format_ok), reason, bool(too_many), n_entries - len(boxes))


_JSON_INSTRUCTION = (
    'Locate "{phrase}" in the image and output the bounding box of every matching object '
    'in JSON format: [{{"bbox_2d": [x1, y1, x2, y2], "label": "{phrase}"}}]'
)

_PROTOCOLS: dict[str, Protocol] = {
    "qwen2.5-vl": Protocol(
        "qwen2.5-vl",
        "json",
        "resized",
        0,
        _JSON_INSTRUCTION + ", with coordinates in pixels of the image.",
    ),
    "qwen2-vl": Protocol(
        "qwen2-vl",
        "pairs",
        "grid1000",
        0,
        "Find the bounding box of <|object_ref_start|>{phrase}<|object_ref_end|> in the image. "
        "Answer with <|box_start|>(x1,y1),(x2,y2)<|box_end|> on a 0-1000 scale of the image.",
    ),
    "qwen3-vl": Protocol(
        "qwen3-vl",
        "json",
        "grid1000",
        0,
        _JSON_INSTRUCTION + ", with coordinates on a 0-1000 scale of the image width and height.",
    ),
    "click-xywh": Protocol(
        "click-xywh",
        "click",
        "pixels",
        0,
        'Locate "{phrase}" in the image. Answer with <click>x, y, w, h</click>: the top-left corner, '
        "width and height of its bounding box in pixels.",
        xywh=True,
    ),
    "normalized-xyxy": Protocol(
        "normalized-xyxy",
        "bracket",
        "unit",
        3,
        'Locate "{phrase}" in the image. Answer with its bounding box as [x1, y1, x2, y2], '
        "coordinates as fractions between 0 and 1 of the image width and height.",
    ),
}
assert tuple(_PROTOCOLS) == PROTOCOL_NAMES


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name``; ValueError naming the valid ones otherwise."""
    if type(name) is str and name in _PROTOCOLS:
        return _PROTOCOLS[name]
    if isinstance(name, Protocol):
        return name
    try:
        return _PROTOCOLS[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown answer protocol {name!r}; use one of: {', '.join(PROTOCOL_NAMES)}") from None


def build_prompt(phrase: str, protocol: str | Protocol, *, reasoning: bool = False) -> list[dict]:
    """Chat messages for one grounding query: one user turn, ``<image>`` then the instruction."""
    proto = get_protocol(protocol)
    return [{"role": "user", "content": "<image>" + proto.instruction(phrase, reasoning=reasoning)}]

"""Linear-time extraction of raw box tuples from model responses.

Everything here works on untrusted text of any size and never raises. The
scanners are built from ``str.find``/``str.replace`` and regular expressions
that start with a literal and use only possessive or bounded quantifiers, so
the regex engine never backtracks: the cost is linear in the response length.
JSON is decoded with the C ``json`` decoder on a bounded number of candidate
spans.

The functions return numbers in the protocol's own coordinate frame; the
conversion to pixels of the original image lives in ``grounding_ops.protocols``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

# A number: optional sign, at most 24 digits each side of the point, optional
# short exponent. Atomic group + possessive quantifiers: no backtracking.
_NUM = r"(?>[-+]?+(?:\d{1,24}+(?:\.\d{0,24}+)?+|\.\d{1,24}+)(?:[eE][-+]?+\d{1,4}+)?+)"
_WS = r"\s*+"
_SEP = _WS + "," + _WS
_FOUR = "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")"

BRACKET_RE = re.compile(r"\[" + _WS + _FOUR + _WS + r"\]")
CLICK_RE = re.compile(r"<click>" + _WS + _FOUR + _WS + r"</click>", re.IGNORECASE)
PAIRS_RE = re.compile(
    r"\(" + _WS + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _WS + r"\)"
    + _WS + ",?+" + _WS
    + r"\(" + _WS + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _WS + r"\)"
)
BBOX_KEY_RE = re.compile(
    r"""["']bbox_2d["']""" + _WS + ":" + _WS + r"\[" + _WS + _FOUR + _WS + r"\]"
)

# Special tokens VeRL normally strips already; removed here too so raw text works.
_SPECIAL_TOKENS = (
    "<|box_start|>",
    "<|box_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|im_end|>",
    "<|endoftext|>",
)

# Bounds that keep pathological inputs cheap.
MAX_JSON_CHARS = 256 * 1024  # longer spans go straight to the key scanner
MAX_JSON_NODES = 20_000
MAX_JSON_DEPTH = 64

BoxTuple = tuple[float, float, float, float]


@dataclass
class RawParse:
    """Boxes in the protocol's coordinate frame, before conversion."""

    boxes: list[BoxTuple] = field(default_factory=list)
    format_ok: bool = True
    reason: str = ""
    too_many: bool = False
    n_invalid: int = 0

    def fail(self, reason: str) -> None:
        self.format_ok = False
        if not self.reason:
            self.reason = reason


@dataclass(frozen=True)
class Answer:
    text: str
    wrapper_ok: bool
    reason: str = ""


def strip_special_tokens(text: str) -> str:
    if "<|" not in text:
        return text
    for token in _SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def extract_answer(response: str) -> Answer:
    """The part of ``response`` to parse.

    With ``<answer>…</answer>`` only the first answer block counts (an
    unclosed block runs to the end). Without it, anything up to the last
    ``</think>`` is reasoning and ignored; an unclosed ``<think>`` leaves no
    answer at all.
    """
    start = response.find("<answer>")
    if start >= 0:
        start += len("<answer>")
        end = response.find("</answer>", start)
        wrapper_ok = end >= 0
        text = response[start:end] if end >= 0 else response[start:]
        return Answer(text, wrapper_ok, "" if wrapper_ok else "unclosed_answer")
    think_end = response.rfind("</think>")
    if think_end >= 0:
        return Answer(response[think_end + len("</think>") :], True)
    if response.find("<think>") >= 0:
        return Answer("", False, "unclosed_think")
    return Answer(response, True)


def _finite4(values) -> BoxTuple | None:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return (out[0], out[1], out[2], out[3])


def _collect(matches, result: RawParse, max_boxes: int, groups: int = 4) -> RawParse:
    for m in matches:
        if len(result.boxes) + result.n_invalid >= max_boxes:
            result.too_many = True
            result.fail("too_many_boxes")
            break
        box = _finite4(m.groups()[:groups])
        if box is None:
            result.n_invalid += 1
            result.fail("non_finite_coordinates")
        else:
            result.boxes.append(box)
    return result


def scan_bracket_boxes(text: str, max_boxes: int) -> RawParse:
    """Every ``[a, b, c, d]`` in ``text``."""
    return _collect(BRACKET_RE.finditer(text), RawParse(), max_boxes)


def scan_click_boxes(text: str, max_boxes: int) -> RawParse:
    """Every ``<click>a, b, c, d</click>`` in ``text``."""
    return _collect(CLICK_RE.finditer(text), RawParse(), max_boxes)


def scan_pair_boxes(text: str, max_boxes: int) -> RawParse:
    """Every ``(a,b),(c,d)`` in ``text`` (Qwen2-VL box syntax)."""
    return _collect(PAIRS_RE.finditer(strip_special_tokens(text)), RawParse(), max_boxes)


def _json_candidates(text: str) -> list[str]:
    """A bounded list of spans that may hold the JSON answer."""
    candidates: list[str] = []
    fence = text.find("```")
    if fence >= 0:
        body_start = text.find("\n", fence + 3)
        # ```json [ ... ] ``` on one line: the body starts after the language tag.
        tag_end = fence + 3
        while tag_end < len(text) and tag_end - fence < 16 and text[tag_end].isalpha():
            tag_end += 1
        start = tag_end if body_start < 0 else min(body_start, tag_end)
        end = text.find("```", start)
        candidates.append(text[start:end] if end >= 0 else text[start:])
    candidates.append(text)
    return candidates


def _decode_json(span: str):
    """Decode the JSON value that starts at the first ``[`` or ``{`` of ``span``
    (text around it is allowed). One C-decoder pass; ``(ok, value)``."""
    if len(span) > MAX_JSON_CHARS:
        return False, None
    starts = [p for p in (span.find("["), span.find("{")) if p >= 0]
    if not starts:
        return False, None
    try:
        value, _end = json.JSONDecoder().raw_decode(span, min(starts))
        return True, value
    except (ValueError, RecursionError, OverflowError, MemoryError):
        return False, None


def _walk_json(value, result: RawParse, max_boxes: int) -> None:
    """Collect ``bbox_2d`` entries from a decoded JSON value, iteratively and bounded."""
    stack = [(value, 0)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES or depth > MAX_JSON_DEPTH:
            result.fail("json_too_large")
            return
        if isinstance(node, dict):
            if "bbox_2d" in node:
                if len(result.boxes) + result.n_invalid >= max_boxes:
                    result.too_many = True
                    result.fail("too_many_boxes")
                    return
                raw = node["bbox_2d"]
                box = None
                if (
                    isinstance(raw, list)
                    and len(raw) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
                ):
                    box = _finite4(raw)
                if box is None:
                    result.n_invalid += 1
                    result.fail("invalid_bbox_2d")
                else:
                    result.boxes.append(box)
                continue
            children = list(node.values())  # e.g. {"objects": [{"bbox_2d": ...}]}
        elif isinstance(node, list):
            children = node
        else:
            continue
        if nodes + len(stack) + len(children) > MAX_JSON_NODES:
            result.fail("json_too_large")
            return
        # reversed so that boxes come out in document order
        stack.extend((child, depth + 1) for child in reversed(children))


def scan_json_boxes(text: str, max_boxes: int) -> RawParse:
    """``bbox_2d`` boxes from a JSON answer (optionally fenced).

    Strict path: decode the JSON and read every ``{"bbox_2d": [...]}``.
    Fallback when that finds nothing (truncated or malformed JSON): scan for
    ``"bbox_2d": [a, b, c, d]`` and then for bare ``[a, b, c, d]`` lists; boxes
    found that way count, but the format is marked as not followed.
    """
    for span in _json_candidates(text):
        ok, value = _decode_json(span)
        if not ok:
            continue
        strict = RawParse()
        _walk_json(value, strict, max_boxes)
        if strict.boxes or strict.n_invalid or strict.too_many:
            return strict
        if isinstance(value, list) and not value:
            # an explicit empty list: a well-formed "nothing found" answer
            strict.reason = "no_box"
            return strict
    loose = _collect(BBOX_KEY_RE.finditer(text), RawParse(), max_boxes)
    if not loose.boxes and not loose.too_many:
        loose = scan_bracket_boxes(text, max_boxes)
    loose.fail("malformed_json" if loose.boxes or loose.n_invalid else "no_box")
    return loose

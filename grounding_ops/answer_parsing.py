"""Linear-time extraction of box entries from model responses.

Two steps, both on untrusted text of any size, neither ever raises:

1. :func:`extract_answer` cuts the answer out of the response: reasoning (anything up to
   the last ``</think>``) is never parsed, and within what follows the last complete
   ``<answer>…</answer>`` block is the answer.
2. :func:`scan_general` reads every box *entry* the answer emits, in the protocol's syntax.
   An entry is anything the model wrote as one box (a ``{"bbox_2d": ...}`` object, a
   ``<click>`` tag, a coordinate pair or list), valid or not: the score divides by the
   number of entries, so invalid entries can only lower it. Forms that are clearly a box
   but not written as the protocol asks (numbers as strings, a box nested in a list, a
   plain list where an object is expected) are recovered and flagged in ``reason``.

The scanners are built from ``str.find`` and regular expressions that start with a
literal and use only possessive or bounded quantifiers, so the regex engine never
backtracks (the fast path's expressions are anchored: one attempt each). JSON answers
are read value by value with the C decoder: every JSON value (JSON lines, several
arrays or objects, one per fenced block) counts, and the text between values is
scanned loosely for box entries of truncated or malformed JSON. A failed decode
resumes where the decoder stopped, so the whole answer costs about one pass.

A single-box fast path (one regular expression per syntax that matches the whole
answer) answers the common case; ``tests/test_reward_fastpath.py`` checks that it gives
exactly what the general path gives.

The scanners return numbers in the protocol's own coordinate frame; conversion to
pixels of the original image lives in ``grounding_ops.protocols``.
"""

from __future__ import annotations

import itertools
import json
import math
import re

BoxTuple = tuple[float, float, float, float]
# (boxes, n_entries, format_ok, reason, too_many): what a scanner read.
Scan = tuple[list[BoxTuple], int, bool, str, bool]

# A number: optional sign, at most 24 digits each side of the point, optional short
# exponent. Atomic group + possessive quantifiers: no backtracking.
_NUM = r"(?>[-+]?+(?:[0-9]{1,24}+(?:\.[0-9]{0,24}+)?+|\.[0-9]{1,24}+)(?:[eE][-+]?+[0-9]{1,4}+)?+)"
_WS = r"\s*+"
_SEP = _WS + "," + _WS
_FOUR = "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")" + _SEP + "(" + _NUM + ")"
_PAIR = (
    r"\("
    + _WS
    + "("
    + _NUM
    + ")"
    + _SEP
    + "("
    + _NUM
    + ")"
    + _WS
    + r"\)"
    + _WS
    + ",?+"
    + _WS
    + r"\("
    + _WS
    + "("
    + _NUM
    + ")"
    + _SEP
    + "("
    + _NUM
    + ")"
    + _WS
    + r"\)"
)

BRACKET_RE = re.compile(r"\[" + _WS + _FOUR + _WS + r"\]")
# Every <click> tag is an entry; groups 1-4 are set when it holds four numbers.
CLICK_RE = re.compile(r"<click>(?:" + _WS + _FOUR + _WS + r"</click>)?+", re.IGNORECASE)
# Qwen2-VL: (x1,y1),(x2,y2) (groups 1-4); also recovered: (x1,y1,x2,y2) (5-8) and
# [x1,y1,x2,y2] (9-12) on the same 0-1000 grid.
QWEN2_RE = re.compile(_PAIR + "|" + r"\(" + _WS + _FOUR + _WS + r"\)" + "|" + r"\[" + _WS + _FOUR + _WS + r"\]")
# Loose reading of text that is not valid JSON (truncated answers): every "bbox_2d" key is
# an entry (groups 1-4 when four numbers follow, quoted or not, optionally in a nested
# list), and a bare [a, b, c, d] is one too (groups 5-8).
_QNUM = "[\"']?+(" + _NUM + ")[\"']?+"
_QFOUR = _QNUM + _SEP + _QNUM + _SEP + _QNUM + _SEP + _QNUM
LOOSE_JSON_RE = re.compile(
    r"""["']bbox_2d["']"""
    + _WS
    + ":"
    + _WS
    + r"(?:\["
    + _WS
    + r"\[?+"
    + _WS
    + _QFOUR
    + _WS
    + r"\])?+"
    + "|"
    + r"\["
    + _WS
    + _FOUR
    + _WS
    + r"\]"
)
_OPEN_RE = re.compile(r"[\[{]")
_NUMBER_STRING_RE = re.compile(r"\s*+" + _NUM + r"\s*+")

# -- the single-box fast path: one regex for the whole answer -----------------------------
# Numbers every general scanner reads the same way: at most 16 integer digits, 17
# decimals and a two-digit exponent (so always finite). JSON numbers follow JSON's grammar.
_FAST_NUM = r"([-+]?+[0-9]{1,16}+(?:\.[0-9]{1,17}+)?+)"
_FAST_JNUM = r"(-?+(?:0|[1-9][0-9]{0,15}+)(?:\.[0-9]{1,17}+)?+(?:[eE][-+]?+[0-9]{1,2}+)?+)"
_JWS = r"[ \t\n\r]*+"  # JSON's own whitespace
_JSEP = _JWS + "," + _JWS
_FAST_OBJ = (
    r"\{"
    + _JWS
    + r'"bbox_2d"'
    + _JWS
    + ":"
    + _JWS
    + r"\["
    + _JWS
    + _FAST_JNUM
    + _JSEP
    + _FAST_JNUM
    + _JSEP
    + _FAST_JNUM
    + _JSEP
    + _FAST_JNUM
    + _JWS
    + r"\]"
    + "(?:"
    + _JSEP
    + r'"label"'
    + _JWS
    + ":"
    + _JWS
    + r'"[^"\\\x00-\x1f]{0,256}+"'
    + ")?+"
    + _JWS
    + r"\}"
)
_FAST_FOUR = _FAST_NUM + _SEP + _FAST_NUM + _SEP + _FAST_NUM + _SEP + _FAST_NUM
_FAST = {
    # text around the JSON value holds no bracket or quote, so no other value or entry
    "json": re.compile(r"[^\[{\"']*+(\[" + _JWS + r")?+" + _FAST_OBJ + r"(?(1)" + _JWS + r"\])[^\[{\"']*+"),
    "click": re.compile(r"[^<]*+<click>" + _WS + _FAST_FOUR + _WS + r"</click>[^<]*+"),
    "pairs": re.compile(
        r"[^(\[]*+\("
        + _WS
        + _FAST_NUM
        + _SEP
        + _FAST_NUM
        + _WS
        + r"\)"
        + _WS
        + ",?+"
        + _WS
        + r"\("
        + _WS
        + _FAST_NUM
        + _SEP
        + _FAST_NUM
        + _WS
        + r"\)[^(\[]*+"
    ),
    "bracket": re.compile(r"[^\[]*+\[" + _WS + _FAST_FOUR + _WS + r"\][^\[]*+"),
}

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
MAX_JSON_CHARS = 256 * 1024  # longer answers are only scanned loosely
MAX_JSON_VALUES = 1_000  # decode attempts per answer (failed ones too)
MAX_JSON_NODES = 20_000  # nodes walked over all of them
MAX_JSON_DEPTH = 64

_DECODE = json.JSONDecoder().raw_decode


def strip_special_tokens(text: str) -> str:
    if "<|" not in text:
        return text
    for token in _SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def extract_answer(response: str) -> tuple[str, bool, str]:
    """``(answer, wrapper_ok, reason)``: the part of ``response`` to parse.

    Everything up to the last ``</think>`` is reasoning: never parsed, never counted
    against the answer-length limit (a ``<think>`` that is never closed leaves no
    answer). In the rest, the last complete ``<answer>…</answer>`` is the answer
    (several blocks: only the last counts, flagged ``several_answers``); an unclosed
    ``<answer>`` runs to the end (``unclosed_answer``); without answer tags the whole
    rest is the answer.
    """
    tail = response.rfind("</think>")
    if tail >= 0:
        tail += 8
    elif "<think>" in response:
        return "", False, "unclosed_think"
    else:
        tail = 0
    end = response.rfind("</answer>", tail)
    if end >= 0:
        start = response.rfind("<answer>", tail, end)
        if start < 0:
            return response[tail:end], False, "unopened_answer"
        if response.find("<answer>", tail, start) >= 0 or response.find("<answer>", end) >= 0:
            return response[start + 8 : end], False, "several_answers"
        return response[start + 8 : end], True, ""
    start = response.rfind("<answer>", tail)
    if start >= 0:
        return response[start + 8 :], False, "unclosed_answer"
    return (response[tail:] if tail else response), True, ""


class _Entries:
    """Box entries read so far, with the first problem found."""

    __slots__ = ("boxes", "n", "ok", "reason", "too_many", "max_boxes", "nodes", "empty_list")

    def __init__(self, max_boxes: int) -> None:
        self.boxes: list[BoxTuple] = []
        self.n = 0
        self.ok = True
        self.reason = ""
        self.too_many = False
        self.max_boxes = max_boxes
        self.nodes = 0
        self.empty_list = False

    def fail(self, reason: str) -> None:
        self.ok = False
        if not self.reason:
            self.reason = reason

    def add(self, box: BoxTuple | None, flag: str) -> bool:
        """Count one entry (``box`` None: invalid, ``flag`` says why; a box with a ``flag``
        was recovered). False once the entry limit is passed."""
        if self.n >= self.max_boxes:
            self.too_many = True
            self.ok, self.reason = False, "too_many_boxes"  # what decides the score, whatever came first
            return False
        self.n += 1
        if box is not None:
            self.boxes.append(box)
        if flag:
            self.fail(flag)
        return True

    def result(self) -> Scan:
        return self.boxes, self.n, self.ok, self.reason, self.too_many


def _finite4(values) -> BoxTuple | None:
    try:
        a, b, c, d = values
        a, b, c, d = float(a), float(b), float(c), float(d)
    except (TypeError, ValueError, OverflowError):
        return None
    isfinite = math.isfinite
    if not (isfinite(a) and isfinite(b) and isfinite(c) and isfinite(d)):
        return None
    return (a, b, c, d)


def _regex_entries(matches, entries: _Entries, invalid: str, flags: dict[int, str] | None = None) -> bool:
    """Add one entry per match: the first four set groups of a group block are the box
    (``flags`` maps a block's first group to its recovery flag); none set: invalid."""
    for m in matches:
        groups = m.groups()
        box, flag = None, invalid
        if groups[0] is not None:  # the protocol's own form
            box = _finite4(groups[:4])
            flag = "" if box is not None else "non_finite_coordinates"
        else:
            for first in range(4, len(groups), 4):
                if groups[first] is not None:
                    box = _finite4(groups[first : first + 4])
                    flag = (flags or {}).get(first, "") if box is not None else "non_finite_coordinates"
                    break
        if not entries.add(box, flag):
            return False
    return True


def _is_number(v) -> bool:
    t = type(v)
    return t is int or t is float


def _json_box(raw) -> tuple[BoxTuple | None, str]:
    """The box of a ``"bbox_2d"`` value, with the recovery flag (or why it is invalid)."""
    if type(raw) is list:
        if len(raw) == 4:
            if all(_is_number(v) for v in raw):
                box = _finite4(raw)
                return (box, "") if box is not None else (None, "invalid_bbox_2d")
            if all(_is_number(v) or (type(v) is str and _NUMBER_STRING_RE.fullmatch(v)) for v in raw):
                box = _finite4(raw)
                return (box, "string_numbers") if box is not None else (None, "invalid_bbox_2d")
        elif len(raw) == 1 and type(raw[0]) is list and len(raw[0]) == 4 and all(_is_number(v) for v in raw[0]):
            box = _finite4(raw[0])
            return (box, "nested_box") if box is not None else (None, "invalid_bbox_2d")
    return None, "invalid_bbox_2d"


def _walk_json(value, entries: _Entries) -> bool:
    """Add the entries of a decoded JSON value, iteratively and bounded; False to stop."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        entries.nodes += 1
        if entries.nodes > MAX_JSON_NODES or depth > MAX_JSON_DEPTH:
            entries.fail("json_too_large")
            return False
        t = type(node)
        if t is dict:
            if "bbox_2d" in node:
                box, flag = _json_box(node["bbox_2d"])
                if not entries.add(box, flag):
                    return False
                continue
            children = list(node.values())  # e.g. {"objects": [{"bbox_2d": ...}]}
        elif t is list:
            if len(node) == 4 and all(_is_number(v) for v in node):
                # a plain [x1, y1, x2, y2] where {"bbox_2d": [...]} was asked for
                box = _finite4(node)
                if not entries.add(box, "bare_box" if box is not None else "non_finite_coordinates"):
                    return False
                continue
            if not node and depth == 0:
                entries.empty_list = True
            children = node
        else:
            continue
        if entries.nodes + len(stack) + len(children) > MAX_JSON_NODES:
            entries.fail("json_too_large")
            return False
        # reversed so that entries come out in document order
        stack.extend((child, depth + 1) for child in reversed(children))
    return True


def _loose_json(text: str, entries: _Entries) -> bool:
    """Entries in text that did not decode as JSON (flagged ``malformed_json``)."""
    matches = LOOSE_JSON_RE.finditer(text)
    for first in matches:
        entries.fail("malformed_json")  # the first problem: everything after it is a guess
        return _regex_entries(itertools.chain((first,), matches), entries, "invalid_bbox_2d")
    return True


def _scan_json(text: str, entries: _Entries) -> None:
    pos = 0
    gap_start = 0
    n = len(text)
    decoded = 0
    if n > MAX_JSON_CHARS:
        entries.fail("json_too_large")
        pos = n
    while pos < n:
        m = _OPEN_RE.search(text, pos)
        if m is None:
            break
        start = m.start()
        if decoded >= MAX_JSON_VALUES:
            entries.fail("json_too_large")
            break
        decoded += 1
        try:
            value, end = _DECODE(text, start)
        except RecursionError:
            entries.fail("json_too_deep")
            break  # the rest is only read loosely: one deep value must not cost a pass each
        except (ValueError, OverflowError, MemoryError) as exc:
            # resume where the decoder gave up: every character is decoded about once
            pos = max(getattr(exc, "pos", start + 1) or 0, start + 1)
            continue
        if gap_start < start and not _loose_json(text[gap_start:start], entries):
            return
        gap_start = pos = end
        if not _walk_json(value, entries):
            return
    if gap_start < n:
        _loose_json(text[gap_start:], entries)


def scan_general(text: str, syntax: str, max_boxes: int) -> Scan:
    """Every box entry of ``text`` in ``syntax`` ("json", "pairs", "click", "bracket")."""
    entries = _Entries(max(int(max_boxes), 0))
    if syntax == "json":
        _scan_json(text, entries)
        if entries.n == 0 and not entries.reason:
            # an explicit empty list is a well-formed "nothing found" answer
            entries.reason = "no_box"
            entries.ok = entries.empty_list
    elif syntax == "click":
        _regex_entries(CLICK_RE.finditer(text), entries, "invalid_click")
    elif syntax == "pairs":
        _regex_entries(QWEN2_RE.finditer(strip_special_tokens(text)), entries, "", {4: "bare_box", 8: "bare_box"})
    elif syntax == "bracket":
        _regex_entries(BRACKET_RE.finditer(text), entries, "")
    else:
        raise ValueError(f"unknown answer syntax {syntax!r}")
    if entries.n == 0 and not entries.reason:
        entries.fail("no_box")
    return entries.result()


def _fast_reader(syntax: str):
    fullmatch = _FAST[syntax].fullmatch
    if syntax == "json":

        def read(text: str) -> BoxTuple | None:
            m = fullmatch(text)
            if m is None:
                return None
            _, a, b, c, d = m.groups()
            return (float(a), float(b), float(c), float(d))
    elif syntax == "pairs":

        def read(text: str) -> BoxTuple | None:
            m = fullmatch(strip_special_tokens(text) if "<|" in text else text)
            if m is None:
                return None
            a, b, c, d = m.groups()
            return (float(a), float(b), float(c), float(d))
    else:

        def read(text: str) -> BoxTuple | None:
            m = fullmatch(text)
            if m is None:
                return None
            a, b, c, d = m.groups()
            return (float(a), float(b), float(c), float(d))

    return read


# syntax -> the fast path's reader: the box of an answer that is one well-formed entry, else None
FAST_READERS = {syntax: _fast_reader(syntax) for syntax in _FAST}


def scan_fast(text: str, syntax: str) -> BoxTuple | None:
    """The box of an answer that is exactly one well-formed entry, else None."""
    return FAST_READERS[syntax](text)

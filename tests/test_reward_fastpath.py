"""The single-box fast path gives exactly what the general path gives.

``parsing.scan_fast`` answers an answer that is one well-formed entry with one regular
expression; ``Protocol.read(..., fast=False)`` skips it. Fuzzed answers around and far
from the fast path's form (numbers of every shape, JSON and non-JSON whitespace, labels
with escapes, fences, prose, tags, special tokens, random edits) must score the same
both ways, and the fast path must fire on what models write.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grounding_ops.protocols import PROTOCOL_NAMES, get_protocol
from grounding_ops import answer_parsing as parsing
from grounding_ops.reward import scoring

SYNTAX = {name: get_protocol(name).syntax for name in PROTOCOL_NAMES}

numbers = st.one_of(
    st.integers(-2000, 5000).map(str),
    st.integers(0, 1000).map(str),
    st.floats(-1e4, 1e4, allow_nan=False).map(lambda f: f"{f:.{abs(hash(f)) % 6}f}"),
    st.sampled_from(
        [
            "0",
            "-0",
            "00",
            "01",
            "+5",
            ".5",
            "5.",
            "1e2",
            "1E+2",
            "1e-2",
            "1e999",
            "-1e400",
            "12345678901234567",
            "1234567890123456",
            "0.12345678901234567",
            "1.123456789012345678",
            "NaN",
            "Infinity",
            "1_000",
            "٣",
            "1e99",
            "1e100",
            "9" * 30,
            "",
        ]
    ),
)
spaces = st.sampled_from(["", "", "", " ", " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\x0b", " \n\t "])
clean_numbers = st.one_of(st.integers(-50, 2000).map(str), st.floats(-10, 2000).map(lambda f: f"{f:.3f}"))
json_spaces = st.sampled_from(["", "", " ", "\n", "\t", "\r\n", "\n\t"])
clean_noise = st.sampled_from(["", "", "Sure. ", "The box: ", "\n", " done.", "<|im_end|>"])
labels = st.one_of(st.text(max_size=12), st.sampled_from(["car", 'a \\"b\\"', "x\\ny", "[1,2,3,4]", "bbox_2d", ""]))
noise = st.one_of(
    st.just(""),
    st.just(""),
    st.sampled_from(
        [
            "",
            "Sure. ",
            "Here: ",
            " done.",
            "<|im_end|>",
            "```",
            "```json\n",
            "\n```",
            "'",
            '"',
            "[",
            "]",
            "{",
            "}",
            "(",
            ")",
            "<",
            "<click>",
            "</click>",
            "<|box_start|>",
            "<|box_end|>",
            "bbox_2d",
            '"bbox_2d": [1, 2',
            "(1,2)",
            "[1, 2, 3, 4]",
            "<answer>",
            "</think>",
            "<think>",
        ]
    ),
    st.text(alphabet=st.sampled_from(list("ab ,.:;-+eE0123456789[](){}<>\"'\\/\n\t`|_")), max_size=12),
)


@st.composite
def single_box_answers(draw, syntax: str) -> str:
    # half the examples stay close to the fast path's form, so that it answers often
    clean = draw(st.booleans())
    a, b, c, d = (draw(clean_numbers if clean else numbers) for _ in range(4))
    sp = lambda: draw(json_spaces if clean else spaces)  # noqa: E731
    if syntax == "json":
        label = draw(st.sampled_from(["car", "the red car", "", "a/b", "框"]) if clean else labels)
        obj = (
            f'{{{sp()}"bbox_2d"{sp()}:{sp()}[{sp()}{a}{sp()},{sp()}{b}{sp()},{sp()}{c}{sp()},{sp()}{d}{sp()}]'
            + (f',{sp()}"label"{sp()}:{sp()}"{label}"' if draw(st.booleans()) else "")
            + f"{sp()}}}"
        )
        if draw(st.booleans()):
            obj = f"[{sp()}{obj}{sp()}]"
        if draw(st.booleans()):
            obj = f"```json{sp()}{obj}{sp()}```"
    elif syntax == "click":
        obj = f"<click>{sp()}{a}{sp()},{sp()}{b}{sp()},{sp()}{c}{sp()},{sp()}{d}{sp()}</click>"
    elif syntax == "pairs":
        obj = f"({sp()}{a}{sp()},{sp()}{b}{sp()}){sp()}{draw(st.sampled_from(['', ',']))}{sp()}({c},{sp()}{d})"
        if draw(st.booleans()):
            obj = f"<|object_ref_start|>{draw(labels)}<|object_ref_end|><|box_start|>{obj}<|box_end|>"
    else:
        obj = f"[{sp()}{a}{sp()},{sp()}{b}{sp()},{sp()}{c}{sp()},{sp()}{d}{sp()}]"
    if clean:
        return draw(clean_noise) + obj + draw(clean_noise)
    text = draw(noise) + obj + draw(noise)
    for _ in range(draw(st.integers(0, 2))):  # random edits
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(list("[]{}(),\"' 0-.e"))) + text[i + draw(st.integers(0, 1)) :]
    return text


def _both_ways(protocol: str, text: str, max_boxes: int = 50):
    proto = get_protocol(protocol)
    frame = proto.frame_of((640, 480), (644, 476))
    fast = proto.read(text, frame, max_boxes, 65_536, fast=True)
    general = proto.read(text, frame, max_boxes, 65_536, fast=False)
    gt = [(10.0, 20.0, 110.0, 220.0)]
    scores = [scoring._score(proto, frame, gt, text, max_boxes, 0.0, 65_536, fast=f) for f in (True, False)]
    return fast, general, scores


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), protocol=st.sampled_from(PROTOCOL_NAMES))
def test_fast_path_equals_general_path(data, protocol):
    text = data.draw(single_box_answers(SYNTAX[protocol]))
    fast, general, (s_fast, s_general) = _both_ways(protocol, text)
    assert fast == general, text
    assert s_fast == s_general, text
    box = parsing.scan_fast(text, SYNTAX[protocol])
    if box is not None:  # when the fast path answers, it found exactly what the general path found
        assert parsing.scan_general(text, SYNTAX[protocol], 50) == ([box], 1, True, "", False), text


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(PROTOCOL_NAMES), text=st.text(max_size=200), max_boxes=st.integers(0, 2))
def test_fast_path_equals_general_path_on_any_text(protocol, text, max_boxes):
    fast, general, (s_fast, s_general) = _both_ways(protocol, text, max_boxes)
    assert fast == general and s_fast == s_general


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_fast_path_fires_on_what_models_write(protocol):
    """Otherwise the equality above would hold trivially."""
    proto = get_protocol(protocol)
    for precise in (False, True):
        text = proto.format_answer(
            [(10.3, 20.7, 110.2, 219.9)], (640, 480), (644, 476), label="the car", precise=precise
        )
        # VeRL strips special tokens before scoring; raw Qwen2-VL text keeps its box tokens
        for wrapped in (text, f"<think>it is on the left</think><answer>{text}</answer>", f"</think>\n\n{text}"):
            answer = parsing.extract_answer(wrapped)[0]
            assert parsing.scan_fast(answer, proto.syntax) is not None, wrapped

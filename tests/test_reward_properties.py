"""Property tests: the consequences of optimal one-to-one matching, and never raising."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grounding_ops.protocols import PROTOCOL_NAMES, get_protocol
from grounding_ops.reward import score_response
from grounding_ops.reward.matching import box_iou

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

protocols = st.sampled_from(PROTOCOL_NAMES)


@st.composite
def sizes(draw):
    w = draw(st.integers(32, 4000))
    h = draw(st.integers(32, 4000))
    # what a processor might resize to (qwen2.5-vl answers in these pixels)
    rw = draw(st.integers(28, 2000))
    rh = draw(st.integers(28, 2000))
    return (w, h), (rw, rh)


@st.composite
def boxes_in(draw, size, min_side=4.0):
    w, h = size
    x1 = draw(st.floats(0, w - min_side))
    y1 = draw(st.floats(0, h - min_side))
    x2 = draw(st.floats(x1 + min_side, w))
    y2 = draw(st.floats(y1 + min_side, h))
    return (x1, y1, x2, y2)


def score(protocol, pred, gt, image, resized):
    text = get_protocol(protocol).format_answer(pred, image, resized, precise=True) if pred else ""
    return score_response(text, gt, image_size=image, resized_size=resized, protocol=protocol)


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n=st.integers(1, 6))
def test_exact_answer_scores_one(data, protocol, size, n):
    image, resized = size
    gt = [data.draw(boxes_in(image)) for _ in range(n)]
    r = score(protocol, gt, gt, image, resized)
    assert r["score"] == 1.0 and r["acc"] == 1.0 and r["format_ok"]
    assert r["n_pred"] == r["n_gt"] == n


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), k=st.integers(1, 12))
def test_k_boxes_with_one_exact_score_one_over_k(data, protocol, size, k):
    image, resized = size
    gt = data.draw(boxes_in(image))
    others = [data.draw(boxes_in(image)) for _ in range(k - 1)]
    pos = data.draw(st.integers(0, k - 1))
    pred = others[:pos] + [gt] + others[pos:]
    r = score(protocol, pred, [gt], image, resized)
    assert r["score"] == pytest.approx(1.0 / k, abs=1e-9)
    assert r["acc"] == (1.0 if k == 1 else 0.0)


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n_gt=st.integers(1, 4), n_pred=st.integers(1, 6))
def test_order_does_not_matter(data, protocol, size, n_gt, n_pred):
    image, resized = size
    gt = [data.draw(boxes_in(image)) for _ in range(n_gt)]
    pred = [data.draw(boxes_in(image)) for _ in range(n_pred)]
    base = score(protocol, pred, gt, image, resized)
    shuffled_pred = data.draw(st.permutations(pred))
    shuffled_gt = data.draw(st.permutations(gt))
    other = score(protocol, shuffled_pred, shuffled_gt, image, resized)
    assert other["score"] == pytest.approx(base["score"], abs=1e-9)
    assert other["acc"] == base["acc"]
    assert 0.0 <= base["score"] <= 1.0


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n_pred=st.integers(1, 5), n_extra=st.integers(1, 20))
def test_extra_boxes_never_beat_the_best_part_for_one_object(data, protocol, size, n_pred, n_extra):
    """One ground-truth box: an answer padded with any other boxes (a grid, a hedge)
    scores at most what the better of its parts scores on its own."""
    image, resized = size
    gt = [data.draw(boxes_in(image))]
    pred = [data.draw(boxes_in(image)) for _ in range(n_pred)]
    extra = [data.draw(boxes_in(image)) for _ in range(n_extra)]
    mixed = data.draw(st.permutations(pred + extra))
    s_all = score(protocol, mixed, gt, image, resized)["score"]
    s_pred = score(protocol, pred, gt, image, resized)["score"]
    s_extra = score(protocol, extra, gt, image, resized)["score"]
    assert s_all <= max(s_pred, s_extra) + 1e-9


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n_gt=st.integers(1, 4), n_extra=st.integers(1, 10))
def test_boxes_that_miss_never_raise_the_score(data, protocol, size, n_gt, n_extra):
    image, resized = size
    w, h = image
    # ground truth in the left half, misses in the right half: IoU 0 with every object
    gt = [data.draw(boxes_in((w / 2, h))) for _ in range(n_gt)]
    misses = [
        (x1 + w / 2, y1, x2 + w / 2, y2) for x1, y1, x2, y2 in (data.draw(boxes_in((w / 2, h))) for _ in range(n_extra))
    ]
    pred = [data.draw(boxes_in(image)) for _ in range(data.draw(st.integers(1, 5)))]
    assume(all(box_iou(m, g) == 0 for m in misses for g in gt))
    s_pred = score(protocol, pred, gt, image, resized)["score"]
    s_more = score(protocol, pred + misses, gt, image, resized)["score"]
    assert s_more <= s_pred + 1e-9


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n_gt=st.integers(1, 3), copies=st.integers(2, 5))
def test_duplicating_an_answer_never_raises_the_score(data, protocol, size, n_gt, copies):
    image, resized = size
    gt = [data.draw(boxes_in(image)) for _ in range(n_gt)]
    pred = [data.draw(boxes_in(image)) for _ in range(data.draw(st.integers(n_gt, n_gt + 3)))]
    s_once = score(protocol, pred, gt, image, resized)["score"]
    s_many = score(protocol, pred * copies, gt, image, resized)["score"]
    assert s_many <= s_once + 1e-9


@SETTINGS
@given(protocol=protocols, text=st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=400))
def test_text_without_numbers_scores_zero(protocol, text):
    assume(not any(ch.isdigit() for ch in text))
    r = score_response(text, [(1, 2, 30, 40)], image_size=(100, 100), resized_size=(56, 56), protocol=protocol)
    assert r["score"] == 0.0 and r["n_pred"] == 0 and r["format_ok"] in (True, False)


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-400", "-0", "9" * 40, ""]),
    st.integers(-(10**30), 10**30).map(str),
)


@st.composite
def hostile_answers(draw):
    vals = [draw(numbers) for _ in range(draw(st.integers(0, 6)))]
    body = ", ".join(vals)
    shape = draw(
        st.sampled_from(
            [
                "[{body}]",
                '[{{"bbox_2d": [{body}]}}]',
                "<click>{body}</click>",
                "({body}),({body})",
                "<|box_start|>({body})<|box_end|>",
                "<think>{body}</think><answer>[{body}]</answer>",
                '```json\n{{"bbox_2d": [{body}]\n```',
            ]
        )
    )
    noise = draw(st.text(max_size=30))
    return draw(st.sampled_from([shape.format(body=body), noise + shape.format(body=body) + noise]))


@settings(max_examples=400, deadline=None)
@given(protocol=protocols, size=sizes(), response=st.one_of(hostile_answers(), st.text(max_size=300)))
def test_never_raises_and_stays_in_range(protocol, size, response):
    image, resized = size
    r = score_response(
        response, [(1, 2, 30, 40), (5, 5, 9, 9)], image_size=image, resized_size=resized, protocol=protocol
    )
    assert 0.0 <= r["score"] <= 1.0 and math.isfinite(r["score"])
    assert 0.0 <= r["iou"] <= 1.0
    assert r["acc"] in (0.0, 1.0)
    assert isinstance(r["format_ok"], bool)


@settings(max_examples=200, deadline=None)
@given(protocol=protocols, data=st.data())
def test_mutated_valid_answers_never_raise(protocol, data):
    proto = get_protocol(protocol)
    text = proto.format_answer([(10, 20, 110, 220), (300, 100, 400, 300)], (640, 480), (644, 476), label="car")
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = data.draw(st.sampled_from(list('[]{}()<>,.-e"\\:/ 0123456789abnN\x00🙂')))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + ch + text[i + 1 :]
    r = score_response(text, [(10, 20, 110, 220)], image_size=(640, 480), resized_size=(644, 476), protocol=protocol)
    assert 0.0 <= r["score"] <= 1.0


# -- only the final answer counts; every entry pays ---------------------------------------

reasoning_text = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(
            [
                "<answer>",
                "</answer>",
                "<think>",
                "[1, 2, 3, 4]",
                "<click>1, 2, 3, 4</click>",
                "(100,100),(500,500)",
                '{"bbox_2d": [10, 20, 110, 220]}',
                "```json\n",
                "```",
                " ",
                "the box is",
                "<|box_start|>",
                "\n",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@SETTINGS
@given(data=st.data(), protocol=protocols, size=sizes(), n=st.integers(0, 3), text=reasoning_text, tagged=st.booleans())
def test_text_inside_think_never_changes_the_score(data, protocol, size, n, text, tagged):
    image, resized = size
    gt = [data.draw(boxes_in(image))]
    pred = [data.draw(boxes_in(image)) for _ in range(n)]
    answer = get_protocol(protocol).format_answer(pred, image, resized, label="car") if pred else ""
    if tagged:
        answer = f"<answer>{answer}</answer>"
    reasoning = "The object is near the middle."
    at = data.draw(st.integers(0, len(reasoning)))
    base = f"<think>{reasoning}</think>{answer}"
    more = f"<think>{reasoning[:at]}{text}{reasoning[at:]}</think>{answer}"
    assume(more.count("</think>") == 1)  # the added text stays inside the reasoning
    kwargs = dict(image_size=image, resized_size=resized, protocol=protocol)
    assert score_response(more, gt, **kwargs) == score_response(base, gt, **kwargs)


INVALID_ENTRY = {
    "json": '{"bbox_2d": [1, 2, 3]}',
    "click": "<click>1, 2, 3</click>",
    "pairs": "(1e999,1),(2,3)",
    "bracket": "[1e999, 0.1, 0.2, 0.3]",
}


def _append(protocol: str, answer_boxes, extra: str | None, image, resized, extra_box=None) -> str:
    """The answer for ``answer_boxes`` with one more entry: ``extra`` text (an invalid entry)
    or ``extra_box`` (a valid box), written where the protocol puts entries."""
    proto = get_protocol(protocol)
    if extra_box is not None:
        return proto.format_answer(list(answer_boxes) + [extra_box], image, resized, label="car", precise=True)
    text = proto.format_answer(answer_boxes, image, resized, label="car", precise=True)
    if proto.syntax == "json":  # inside the JSON list
        return text.replace("\n]\n```", ",\n\t" + extra + "\n]\n```")
    return text + " " + extra


@SETTINGS
@given(
    data=st.data(),
    protocol=protocols,
    size=sizes(),
    n_gt=st.integers(1, 3),
    n_pred=st.integers(1, 4),
    invalid=st.booleans(),
)
def test_appending_an_invalid_or_extra_box_never_raises_the_score(data, protocol, size, n_gt, n_pred, invalid):
    """An invalid entry dilutes the score by exactly one more entry in the denominator; an
    extra box that finds no object never raises it."""
    image, resized = size
    w, h = image
    # objects in the left half, the extra box in the right half: it overlaps none of them
    gt = [data.draw(boxes_in((w / 2, h))) for _ in range(n_gt)]
    pred = [data.draw(boxes_in(image)) for _ in range(n_pred)]
    x1, y1, x2, y2 = data.draw(boxes_in((w / 2, h)))
    extra = (x1 + w / 2, y1, x2 + w / 2, y2)
    assume(all(box_iou(extra, g) == 0 for g in gt))
    kwargs = dict(image_size=image, resized_size=resized, protocol=protocol)
    before_text = get_protocol(protocol).format_answer(pred, image, resized, label="car", precise=True)
    before = score_response(before_text, gt, **kwargs)
    if invalid:
        after_text = _append(protocol, pred, INVALID_ENTRY[get_protocol(protocol).syntax], image, resized)
    else:
        after_text = _append(protocol, pred, None, image, resized, extra_box=extra)
    after = score_response(after_text, gt, **kwargs)
    assert after["n_pred"] == before["n_pred"] + 1
    assert after["score"] <= before["score"] + 1e-9
    if invalid:
        assert after["score"] == pytest.approx(before["score"] * max(n_gt, n_pred) / max(n_gt, n_pred + 1), abs=2e-9)
        assert after["acc"] == 0.0

"""The IoU reward: table-driven cases per protocol, the VeRL entry point, robustness."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from grounding_ops.protocols import PROTOCOL_NAMES
from grounding_ops.reward import VERL_REWARD_FUNCTION, compute_score, score_response, verl_reward_path
from grounding_ops.reward.adversarial import adversarial_responses

IMAGE = (640, 480)
RESIZED = (320, 240)
G = (64.0, 48.0, 320.0, 240.0)  # ground truth, pixels of the original image
H = (384.0, 288.0, 576.0, 432.0)  # a second object
KEYS = {"score", "iou", "acc", "format_ok", "n_pred", "n_gt", "reason"}

# Protocol-frame coordinates of named boxes (see the frames in grounding_ops.protocols).
FRAME = {
    "qwen2.5-vl": {
        "G": (32, 24, 160, 120),
        "H": (192, 144, 288, 216),
        "shift": (96, 24, 224, 120),
        "rev": (160, 120, 32, 24),
        "neg": (-50, -50, 160, 120),
        "far": (400, 300, 9e9, 9e9),
    },
    "qwen2-vl": {
        "G": (100, 100, 500, 500),
        "H": (600, 600, 900, 900),
        "shift": (300, 100, 700, 500),
        "rev": (500, 500, 100, 100),
        "neg": (-100, -100, 500, 500),
        "far": (800, 800, 9e9, 9e9),
    },
    "qwen3-vl": {
        "G": (100, 100, 500, 500),
        "H": (600, 600, 900, 900),
        "shift": (300, 100, 700, 500),
        "rev": (500, 500, 100, 100),
        "neg": (-100, -100, 500, 500),
        "far": (800, 800, 9e9, 9e9),
    },
    "click-xywh": {
        "G": (64, 48, 256, 192),
        "H": (384, 288, 192, 144),
        "shift": (192, 48, 256, 192),
        "rev": (320, 240, -256, -192),
        "neg": (-64, -48, 384, 288),
        "far": (600, 450, 9e9, 9e9),
    },
    "normalized-xyxy": {
        "G": (0.1, 0.1, 0.5, 0.5),
        "H": (0.6, 0.6, 0.9, 0.9),
        "shift": (0.3, 0.1, 0.7, 0.5),
        "rev": (0.5, 0.5, 0.1, 0.1),
        "neg": (-0.1, -0.1, 0.5, 0.5),
        "far": (0.95, 0.95, 9e9, 9e9),
    },
}


def one(protocol: str, v) -> str:
    """One box written in the protocol's syntax."""
    a, b, c, d = (f"{x:g}" for x in v)
    if protocol in ("qwen2.5-vl", "qwen3-vl"):
        return f'{{"bbox_2d": [{a}, {b}, {c}, {d}], "label": "car"}}'
    if protocol == "qwen2-vl":
        return f"({a},{b}),({c},{d})"
    if protocol == "click-xywh":
        return f"<click>{a}, {b}, {c}, {d}</click>"
    return f"[{a}, {b}, {c}, {d}]"


def answer(protocol: str, *names: str) -> str:
    boxes = [one(protocol, FRAME[protocol][n]) for n in names]
    if protocol in ("qwen2.5-vl", "qwen3-vl"):
        return "[" + ", ".join(boxes) + "]"
    if protocol == "normalized-xyxy" and len(boxes) > 1:
        return "[" + ", ".join(boxes) + "]"
    return " ".join(boxes)


def fenced(protocol: str, text: str) -> str:
    if protocol in ("qwen2.5-vl", "qwen3-vl"):
        return "```json\n" + text + "\n```"
    return "The object is here: " + text + " (done)."


# (case, gt boxes, response builder, score, acc, format_ok, reason)
CASES = [
    ("valid", [G], lambda p: answer(p, "G"), 1.0, 1.0, True, ""),
    ("near_miss_half_width", [G], lambda p: answer(p, "shift"), 1 / 3, 0.0, True, ""),
    ("reversed", [G], lambda p: answer(p, "rev"), 1.0, 1.0, False, None),
    ("negative_clipped", [G], lambda p: answer(p, "neg"), 0.64, 1.0, True, ""),
    ("outside_image", [G], lambda p: answer(p, "far"), 0.0, 0.0, True, ""),
    ("two_boxes_any_order", [G, H], lambda p: answer(p, "H", "G"), 1.0, 1.0, True, ""),
    ("one_of_two_found", [G, H], lambda p: answer(p, "G"), 0.5, 0.0, True, ""),
    ("extra_box", [G], lambda p: answer(p, "G", "H"), 0.5, 0.0, True, ""),
    ("duplicated_box", [G], lambda p: answer(p, "G", "G", "G"), 1 / 3, 0.0, True, ""),
    ("fenced_or_prose", [G], lambda p: fenced(p, answer(p, "G")), 1.0, 1.0, True, ""),
    (
        "think_answer",
        [G],
        lambda p: f"<think>maybe {answer(p, 'H')}</think><answer>{answer(p, 'G')}</answer>",
        1.0,
        1.0,
        True,
        "",
    ),
    (
        "only_answer_counts",
        [G],
        lambda p: f"<think>{answer(p, 'G')}</think>\n<answer>{answer(p, 'shift')}</answer>",
        1 / 3,
        0.0,
        True,
        "",
    ),
    (
        "after_think_without_answer_tag",
        [G],
        lambda p: f"<think>{answer(p, 'H')}</think> {answer(p, 'G')}",
        1.0,
        1.0,
        True,
        "",
    ),
    ("unclosed_think", [G], lambda p: f"<think>{answer(p, 'G')}", 0.0, 0.0, False, "unclosed_think"),
    ("unclosed_answer", [G], lambda p: f"<answer>{answer(p, 'G')}", 1.0, 1.0, False, "unclosed_answer"),
    ("garbage", [G], lambda p: "I cannot find it, sorry. {[(<click>", 0.0, 0.0, False, None),
    ("empty", [G], lambda p: "", 0.0, 0.0, False, None),
]


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_reward_table(protocol, case):
    name, gt, build, score, acc, format_ok, reason = case
    response = build(protocol)
    result = score_response(response, gt, image_size=IMAGE, resized_size=RESIZED, protocol=protocol)
    assert set(result) == KEYS
    assert result["score"] == pytest.approx(score, abs=1e-6), (response, result)
    assert result["acc"] == acc, (response, result)
    assert result["format_ok"] is format_ok, (response, result)
    if reason is not None:
        assert result["reason"] == reason, (response, result)
    elif not format_ok:
        assert result["reason"], "a failed format must say why"
    assert result["n_gt"] == len(gt)
    assert 0.0 <= result["score"] <= 1.0


def test_iou_is_the_mean_over_matched_pairs():
    r = score_response(answer("click-xywh", "G", "H", "shift"), [G, H], image_size=IMAGE, protocol="click-xywh")
    assert r["iou"] == pytest.approx(1.0)
    assert r["score"] == pytest.approx(2 / 3)
    assert (r["n_pred"], r["n_gt"], r["acc"]) == (3, 2, 0.0)


def test_acc_threshold_is_iou_half():
    # x-shift of one third of the width: IoU = (2/3) / (4/3) = 0.5
    at_half = "<click>0, 0, 300, 100</click>"
    r = score_response(at_half, [(100, 0, 400, 100)], image_size=IMAGE, protocol="click-xywh")
    assert r["iou"] == pytest.approx(0.5) and r["acc"] == 1.0
    below = "<click>0, 0, 301, 100</click>"
    r = score_response(below, [(101, 0, 401, 100)], image_size=IMAGE, protocol="click-xywh")
    assert r["acc"] == (1.0 if r["iou"] >= 0.5 else 0.0)


@pytest.mark.parametrize(
    "protocol,response,score,reason",
    [
        ("qwen2.5-vl", '[{"bbox_2d": [32, 24, 160, 120], "label": "ca', 1.0, "malformed_json"),
        # the truncated second entry is an entry all the same: it halves the score
        ("qwen3-vl", '[{"bbox_2d": [100, 100, 500, 500]}, {"bbox_2d": [1, 2', 0.5, "malformed_json"),
        ("qwen2.5-vl", "[32, 24, 160, 120]", 1.0, "bare_box"),
        ("qwen2.5-vl", '[{"bbox_2d": [32, 24, 160, 120]}, [32, 24, 160, 120]]', 0.5, "bare_box"),
    ],
)
def test_json_fallbacks_find_the_box_but_flag_the_format(protocol, response, score, reason):
    r = score_response(response, [G], image_size=IMAGE, resized_size=RESIZED, protocol=protocol)
    assert r["score"] == pytest.approx(score)
    assert r["format_ok"] is False and r["reason"] == reason


@pytest.mark.parametrize(
    "response,n_pred,score,reason",
    [
        ('{"bbox_2d": [100, 100, 500, 500]}', 1, 1.0, ""),
        ('[{"bbox_2d": [NaN, 1, 2, 3]}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": [1, 2, 3]}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": [1e999, 1, 2, 3]}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": [true, 1, 2, 3]}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": "100, 100, 500, 500"}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": ["nan", "100", "500", "500"]}]', 1, 0.0, "invalid_bbox_2d"),
        ('[{"bbox_2d": ["100", 100, " 500", "500"]}]', 1, 1.0, "string_numbers"),
        ('[{"bbox_2d": [[100, 100, 500, 500], [1, 2, 3, 4]]}]', 1, 0.0, "invalid_bbox_2d"),
        ("[]", 0, 0.0, "no_box"),
    ],
)
def test_qwen3_json_details(response, n_pred, score, reason):
    r = score_response(response, [G], image_size=IMAGE, protocol="qwen3-vl")
    assert (r["n_pred"], r["score"], r["reason"]) == (n_pred, score, reason)


def test_explicit_empty_answer_is_right_when_nothing_is_there():
    r = score_response("[]", [], image_size=IMAGE, protocol="qwen3-vl")
    assert r["score"] == 1.0 and r["acc"] == 1.0 and r["format_ok"]
    assert score_response("nothing", [], image_size=IMAGE, protocol="qwen3-vl")["score"] == 0.0
    assert score_response(answer("qwen3-vl", "G"), [], image_size=IMAGE, protocol="qwen3-vl")["score"] == 0.0


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_more_than_max_boxes_scores_zero_with_reason(protocol):
    names = ["G"] + ["H"] * 50
    r = score_response(answer(protocol, *names), [G], image_size=IMAGE, resized_size=RESIZED, protocol=protocol)
    assert r["score"] == 0.0 and r["reason"] == "too_many_boxes" and r["n_pred"] == 51
    r = score_response(
        answer(protocol, "G", "H", "H"), [G], image_size=IMAGE, resized_size=RESIZED, protocol=protocol, max_boxes=2
    )
    assert r["score"] == 0.0 and r["reason"] == "too_many_boxes"


def test_format_weight():
    good = score_response(answer("qwen3-vl", "shift"), [G], image_size=IMAGE, protocol="qwen3-vl", format_weight=0.1)
    assert good["score"] == pytest.approx(0.9 / 3 + 0.1)
    bad = score_response("[100, 100, 500, 500]", [G], image_size=IMAGE, protocol="qwen3-vl", format_weight=0.1)
    assert bad["score"] == pytest.approx(0.9) and bad["format_ok"] is False
    with pytest.raises(ValueError, match="format_weight"):
        score_response("", [G], image_size=IMAGE, protocol="qwen3-vl", format_weight=2)


def test_a_response_cut_at_the_length_limit_earns_no_format_share():
    cut = score_response(
        answer("qwen3-vl", "shift"), [G], image_size=IMAGE, protocol="qwen3-vl", format_weight=0.1, ended=False
    )
    assert cut["score"] == pytest.approx(0.9 / 3) and cut["format_ok"] is True
    # the match part is the same whether it ended or not, and without a format share nothing changes
    plain = score_response(answer("qwen3-vl", "shift"), [G], image_size=IMAGE, protocol="qwen3-vl", ended=False)
    assert plain["score"] == pytest.approx(1 / 3)


def test_answer_longer_than_the_limit_scores_zero():
    long_answer = answer("click-xywh", "G") + " " * 70_000
    r = score_response(long_answer, [G], image_size=IMAGE, protocol="click-xywh")
    assert r["score"] == 0.0 and r["reason"] == "answer_too_long"
    # long reasoning is fine: only the answer counts against the limit
    r = score_response(
        "<think>" + "x" * 200_000 + "</think>" + answer("click-xywh", "G"), [G], image_size=IMAGE, protocol="click-xywh"
    )
    assert r["score"] == 1.0
    r = score_response(long_answer, [G], image_size=IMAGE, protocol="click-xywh", max_answer_chars=None)
    assert r["score"] == 1.0


# -- compute_score: the VeRL signature and the exported ground truth -----------------------


def ground_truth(protocol="qwen2.5-vl", boxes=(G,)):
    return {
        "boxes": [list(b) for b in boxes],
        "protocol": protocol,
        "image_size": list(IMAGE),
        "resized_size": list(RESIZED),
    }


@pytest.mark.parametrize(
    "variant",
    [
        lambda gt: gt,
        lambda gt: json.dumps(gt),
        lambda gt: {
            **gt,
            "boxes": np.array(gt["boxes"]),
            "image_size": np.array(IMAGE),
            "resized_size": np.array(RESIZED),
        },
        # datasets/parquet hand nested lists over as object arrays of arrays
        lambda gt: {**gt, "boxes": np.array([np.array(b) for b in gt["boxes"]] + [None], dtype=object)[:-1]},
        lambda gt: {**gt, "boxes": tuple(tuple(b) for b in gt["boxes"])},
    ],
    ids=["dict", "json", "numpy", "object_array", "tuples"],
)
def test_compute_score_accepts_ground_truth_as_stored(variant):
    gt = variant(ground_truth(boxes=(G, H)))
    response = answer("qwen2.5-vl", "G", "H")
    r = compute_score(data_source="grounding/test", solution_str=response, ground_truth=gt, extra_info={})
    assert r == score_response(response, [G, H], image_size=IMAGE, resized_size=RESIZED, protocol="qwen2.5-vl")
    assert r["score"] == 1.0


def test_compute_score_falls_back_to_extra_info_and_reward_kwargs():
    extra = {"protocol": "qwen2-vl", "image_size": list(IMAGE), "resized_size": list(RESIZED), "split": "train"}
    r = compute_score("grounding/x", answer("qwen2-vl", "G"), {"boxes": [list(G)]}, extra)
    assert r["score"] == 1.0
    r = compute_score("grounding/x", answer("qwen2-vl", "G"), [list(G)], {"image_size": IMAGE}, protocol="qwen2-vl")
    assert r["score"] == 1.0
    r = compute_score("grounding/x", answer("qwen2-vl", "G", "G"), ground_truth("qwen2-vl"), None, max_boxes=1)
    assert r["reason"] == "too_many_boxes"


def test_compute_score_tells_what_is_missing():
    with pytest.raises(ValueError, match="protocol"):
        compute_score("grounding/x", "", {"boxes": [list(G)], "image_size": IMAGE}, {})
    with pytest.raises(ValueError, match="image_size"):
        compute_score("grounding/x", "", {"boxes": [list(G)], "protocol": "qwen2-vl"}, {})
    with pytest.raises(ValueError, match="unknown answer protocol"):
        compute_score("grounding/x", "", {**ground_truth(), "protocol": "yolo"}, {})
    with pytest.raises(ValueError, match="four finite numbers"):
        compute_score("grounding/x", "", {**ground_truth(), "boxes": [[1, 2, 3]]}, {})


def test_verl_reward_file_loads_standalone_by_path():
    path = Path(verl_reward_path())
    assert path.is_file() and path.parent.name == "reward"
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, VERL_REWARD_FUNCTION)
    response = answer("qwen2.5-vl", "G")
    got = fn(
        data_source="grounding/x",
        solution_str=response,
        ground_truth=ground_truth(),
        extra_info={"num_turns": None, "rollout_reward_scores": {}},
    )
    assert got == score_response(response, [G], image_size=IMAGE, resized_size=RESIZED, protocol="qwen2.5-vl")


# -- never raises, stays fast --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_adversarial_megabyte_responses_are_cheap_and_score_zero(protocol):
    gt = [(1.0, 2.0, 3.0, 4.0)]
    for name, text in adversarial_responses(1 << 20).items():
        for limit in (65_536, None):  # the default answer limit, and none at all
            start = time.process_time()
            r = score_response(text, gt, image_size=(100, 100), protocol=protocol, max_answer_chars=limit)
            elapsed = time.process_time() - start
            # precise figures live in benchmarks/reward.py; this only catches super-linear blow-ups
            assert elapsed < 0.5, (protocol, name, limit, elapsed)
            assert 0.0 <= r["score"] <= 1.0
            assert set(r) == KEYS


def _best_of_3(text: str, protocol: str) -> float:
    """CPU seconds of this process (a busy machine does not count against it)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        score_response(text, [(1.0, 2.0, 3.0, 4.0)], image_size=(100, 100), protocol=protocol, max_answer_chars=None)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_adversarial_cost_grows_linearly(protocol):
    """8x the text costs about 8x the time, not 64x (no answer-length limit: the parser alone)."""
    small, big = adversarial_responses(1 << 17), adversarial_responses(1 << 20)
    for name in big:
        t_small, t_big = _best_of_3(small[name], protocol), _best_of_3(big[name], protocol)
        # 16x allows for caches and a noisy machine; quadratic growth would be 64x
        assert t_big < 16 * t_small + 0.05, (protocol, name, t_small, t_big)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
@pytest.mark.parametrize(
    "response",
    [
        "",
        "\x00",
        "🙂" * 10,
        None,
        12345,
        b"<click>1,2,3,4</click>".decode(),
        "[nan, inf, -inf, 1]",
        "<click>1e308, 1e308, 1e308, 1e308</click>",
        "(1e400,1),(2,3)",
        '[{"bbox_2d": [-1e308, -1e308, 1e308, 1e308]}]',
        "[" * 5000 + "]" * 5000,
        '{"bbox_2d": ' * 3000,
        "<answer></answer>",
        "<think></think><answer>",
        "9" * 5000,
        "[" + "9" * 5000 + ", 1, 2, 3]",
    ],
)
def test_never_raises_on_odd_input(protocol, response):
    r = score_response(response, [G], image_size=IMAGE, resized_size=RESIZED, protocol=protocol)
    assert 0.0 <= r["score"] <= 1.0 and set(r) == KEYS


def test_json_boxes_nested_in_objects_are_found():
    response = (
        '{"objects": [{"bbox_2d": [100, 100, 500, 500], "label": "car"}], "note": {"bbox_2d": [600, 600, 900, 900]}}'
    )
    r = score_response(response, [G, H], image_size=IMAGE, protocol="qwen3-vl")
    assert r["score"] == pytest.approx(1.0) and r["format_ok"] and r["n_pred"] == 2

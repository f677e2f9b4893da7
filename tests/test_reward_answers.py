"""What models really write: the final answer only, every JSON value, recovered forms, every entry pays.

One table per case of the reward's answer-reading rules (reasoning that quotes the tags,
drafts inside the reasoning, JSON lines and several fences, recoverable boxes, invalid
padding, Qwen2-VL's plain tuples), and the ground-truth cache of ``compute_score``.
"""

from __future__ import annotations

import numpy as np
import pytest

from grounding_ops.protocols import PROTOCOL_NAMES, get_protocol
from grounding_ops.reward import compute_score, score_response

IMAGE = (640, 480)
RESIZED = (320, 240)
G = (64.0, 48.0, 320.0, 240.0)
H = (384.0, 288.0, 576.0, 432.0)
SHIFT = (192.0, 48.0, 448.0, 240.0)  # G moved by half its width: IoU 1/3


def native(protocol: str, *boxes) -> str:
    """A perfect answer in the protocol's own syntax."""
    return get_protocol(protocol).format_answer(boxes, IMAGE, RESIZED, label="car", precise=True)


def score(response: str, gt=(G,), protocol: str = "qwen2.5-vl", **kwargs) -> dict:
    return score_response(response, list(gt), image_size=IMAGE, resized_size=RESIZED, protocol=protocol, **kwargs)


# -- 1. reasoning that mentions the tags -------------------------------------------------------

MENTIONS = [
    "I must put the box inside <answer></answer> tags as JSON.",
    "The format is <answer>[...]</answer>, so I will write <answer> and then the box.",
    "Remember: open with <answer> and close with </answer>. Also <think> is where I reason.",
    "Let me close </answer> early and reopen <answer> just to check.",
]


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
@pytest.mark.parametrize("mention", MENTIONS)
def test_reasoning_that_quotes_the_tags_does_not_hide_the_answer(protocol, mention):
    r = score(f"<think>{mention}</think><answer>{native(protocol, G)}</answer>", protocol=protocol)
    assert (r["score"], r["acc"], r["format_ok"], r["reason"]) == (1.0, 1.0, True, "")


def test_the_issue_example_scores_one():
    response = (
        "<think>I must put the box inside <answer></answer> tags as JSON.</think><answer>"
        '[{"bbox_2d": [32, 24, 160, 120], "label": "car"}]</answer>'
    )
    assert score(response)["score"] == 1.0


def test_a_qwen3_thinking_response_without_the_opening_tag():
    # the chat template opens <think> in the prompt: the response only closes it
    r = score(
        "the car is on the left, I answer <answer>[...]</answer>\n</think>\n\n" + native("qwen3-vl", G),
        protocol="qwen3-vl",
    )
    assert (r["score"], r["format_ok"]) == (1.0, True)


# -- 2. drafts inside the reasoning; reasoning does not count against the length limit ---------


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
@pytest.mark.parametrize(
    "template,expected",
    [
        ("<think>draft <answer>{shift}</answer>, no, better:</think><answer>{exact}</answer>", 1.0),
        ("<think>draft <answer>{exact}</answer>, no, better:</think><answer>{shift}</answer>", 1 / 3),
        ("<think>draft {exact}</think>{shift}", 1 / 3),
        ("<think>draft <answer>{exact}</think><answer>{shift}</answer>", 1 / 3),
        ("<think>a</think>x<think>draft <answer>{exact}</answer></think><answer>{shift}</answer>", 1 / 3),
    ],
    ids=[
        "draft_shift_final_exact",
        "draft_exact_final_shift",
        "no_answer_tags",
        "unclosed_draft",
        "two_reasoning_blocks",
    ],
)
def test_only_the_final_answer_is_scored(protocol, template, expected):
    response = template.format(exact=native(protocol, G), shift=native(protocol, SHIFT))
    assert score(response, protocol=protocol)["score"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_long_reasoning_full_of_answer_tags_is_not_too_long(protocol):
    reasoning = "maybe <answer>[1, 2, 3, 4]</answer> or <answer> " * 5000  # ~250 KB
    r = score(f"<think>{reasoning}</think><answer>{native(protocol, G)}</answer>", protocol=protocol)
    assert (r["score"], r["reason"]) == (1.0, "")
    # the limit still applies to the answer itself
    r = score(f"<think>x</think><answer>{native(protocol, G)}{' ' * 70_000}</answer>", protocol=protocol)
    assert (r["score"], r["reason"]) == (0.0, "answer_too_long")


def test_several_answer_blocks_after_the_reasoning_keep_the_last_and_flag_it():
    r = score(f"<answer>{native('qwen2.5-vl', SHIFT)}</answer> wait <answer>{native('qwen2.5-vl', G)}</answer>")
    assert (r["score"], r["format_ok"], r["reason"]) == (1.0, False, "several_answers")
    # hedging across blocks does not pay: only one block is read
    r = score(f"<answer>{native('qwen2.5-vl', G)}</answer><answer>{native('qwen2.5-vl', SHIFT)}</answer>")
    assert r["score"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "response,reason",
    [
        ('<think>never closed <answer>[{"bbox_2d": [32, 24, 160, 120]}]</answer>', "unclosed_think"),
        ('[{"bbox_2d": [32, 24, 160, 120]}]</answer>', "unopened_answer"),
        ('<answer>[{"bbox_2d": [32, 24, 160, 120]}]', "unclosed_answer"),
    ],
)
def test_broken_wrappers_are_named(response, reason):
    r = score(response)
    assert r["reason"] == reason and r["format_ok"] is False
    assert r["score"] == (0.0 if reason == "unclosed_think" else 1.0)


# -- 3. every JSON value and every fence of the answer is read ---------------------------------

B_G = '{"bbox_2d": [32, 24, 160, 120], "label": "car"}'
B_H = '{"bbox_2d": [192, 144, 288, 216], "label": "bus"}'


@pytest.mark.parametrize(
    "response,gt,expected,n_pred",
    [
        (f"{B_G}\n{B_H}", (G, H), 1.0, 2),  # JSON lines
        (f"```json\n[{B_G}]\n```\n```json\n[{B_H}]\n```", (G, H), 1.0, 2),  # two fences
        (f"[{B_G}] [{B_H}]", (G, H), 1.0, 2),  # two arrays
        (f"Here is the car: {B_G}, and the bus: {B_H}.", (G, H), 1.0, 2),  # prose around objects
        (f"{B_G}\n{B_H}", (G,), 0.5, 2),  # a wrong second box is not ignored
        (f"```json\n[{B_G}]\n```\n```json\n[{B_H}]\n```", (G,), 0.5, 2),
        (f'{{"objects": [{B_G}]}}\n[{B_H}]', (G, H), 1.0, 2),
    ],
    ids=["json_lines", "two_fences", "two_arrays", "prose", "wrong_second_line", "wrong_second_fence", "nested"],
)
@pytest.mark.parametrize("protocol", ["qwen2.5-vl", "qwen3-vl"])
def test_every_json_value_and_fence_counts(protocol, response, gt, expected, n_pred):
    if protocol == "qwen3-vl":  # the same boxes on the 0-1000 grid
        response = response.replace("[32, 24, 160, 120]", "[100, 100, 500, 500]")
        response = response.replace("[192, 144, 288, 216]", "[600, 600, 900, 900]")
    r = score(response, gt, protocol)
    assert (r["score"], r["n_pred"], r["format_ok"], r["reason"]) == (pytest.approx(expected), n_pred, True, "")


# -- 4. recoverable boxes are recovered and flagged ---------------------------------------------


@pytest.mark.parametrize(
    "response,expected,n_pred,reason",
    [
        ('{"bbox_2d": ["32", "24", "160", "120"]}', 1.0, 1, "string_numbers"),
        ('[{"bbox_2d": ["32", "24.0", " 160", "120"], "label": "car"}]', 1.0, 1, "string_numbers"),
        ('{"bbox_2d": [[32, 24, 160, 120]]}', 1.0, 1, "nested_box"),
        ("[32, 24, 160, 120]", 1.0, 1, "bare_box"),
        ("[[32, 24, 160, 120]]", 1.0, 1, "bare_box"),
        # the reader does not stop at the first invalid entry; the invalid one still counts
        ('[{"bbox_2d": [1, 2, 3]}, {"bbox_2d": [32, 24, 160, 120]}]', 0.5, 2, "invalid_bbox_2d"),
        ('[{"bbox_2d": ["a", "b", "c", "d"]}, {"bbox_2d": ["32", "24", "160", "120"]}]', 0.5, 2, "invalid_bbox_2d"),
        # truncated JSON: read loosely, quoted numbers too
        ('[{"bbox_2d": ["32", "24", "160", "120"], "label": "c', 1.0, 1, "malformed_json"),
    ],
)
def test_recoverable_boxes(response, expected, n_pred, reason):
    r = score(response)
    assert (r["score"], r["n_pred"], r["format_ok"], r["reason"]) == (pytest.approx(expected), n_pred, False, reason)


def test_the_issue_examples_of_recoverable_boxes():
    # the issue's boxes, in pixels of an image the model saw at its original size
    gt = [(64.0, 48.0, 322.0, 238.0)]
    for response in ('{"bbox_2d": ["64","48","322","238"]}', '{"bbox_2d": [[64,48,322,238]]}'):
        r = score_response(response, gt, image_size=IMAGE, protocol="qwen2.5-vl")
        assert r["score"] == 1.0 and r["acc"] == 1.0 and r["reason"] in ("string_numbers", "nested_box")


# -- 5. every emitted entry, valid or not, counts ---------------------------------------------

INVALID = {
    "qwen2.5-vl": '{"bbox_2d": [1, 2, 3]}',
    "qwen3-vl": '{"bbox_2d": [1, 2, 3]}',
    "click-xywh": "<click>1, 2, 3</click>",
    "qwen2-vl": "(1e999,1),(2,3)",
    "normalized-xyxy": "[1e999, 0.1, 0.2, 0.3]",
}


def _with_invalid(protocol: str, k: int) -> str:
    """An exact box followed by ``k`` invalid entries, in the protocol's syntax."""
    if protocol in ("qwen2.5-vl", "qwen3-vl"):
        exact = native(protocol, G).split("\n")[2].strip()  # the object line of the fenced list
        return "[" + ", ".join([exact] + [INVALID[protocol]] * k) + "]"
    return native(protocol, G) + " " + " ".join([INVALID[protocol]] * k)


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
@pytest.mark.parametrize("k,expected", [(1, 0.5), (3, 0.25), (49, 0.02)])
def test_invalid_entries_count_in_the_denominator(protocol, k, expected):
    r = score(_with_invalid(protocol, k), protocol=protocol)
    assert r["score"] == pytest.approx(expected) and r["n_pred"] == k + 1
    assert r["acc"] == 0.0 and r["format_ok"] is False and r["reason"]


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_invalid_entries_past_the_limit_score_zero(protocol):
    r = score(_with_invalid(protocol, 50), protocol=protocol)
    assert (r["score"], r["reason"], r["n_pred"]) == (0.0, "too_many_boxes", 51)


def test_an_invalid_entry_is_not_a_match_for_a_second_object():
    r = score(f"[{B_G}, {INVALID['qwen2.5-vl']}]", gt=(G, H))
    assert (r["score"], r["acc"], r["n_pred"]) == (0.5, 0.0, 2)


# -- 6. Qwen2-VL: plain four-number tuples and lists on the 0-1000 grid ------------------------


@pytest.mark.parametrize(
    "response,expected,n_pred,format_ok,reason",
    [
        ("<|box_start|>(100,100),(500,500)<|box_end|>", 1.0, 1, True, ""),
        ("(100,100),(500,500)", 1.0, 1, True, ""),
        ("(100, 100, 500, 500)", 1.0, 1, False, "bare_box"),
        ("[100, 100, 500, 500]", 1.0, 1, False, "bare_box"),
        ("car: [100, 100, 500, 500] and (100,100),(500,500)", 0.5, 2, False, "bare_box"),
    ],
)
def test_qwen2_vl_reads_plain_grid_tuples_as_recovered(response, expected, n_pred, format_ok, reason):
    r = score(response, protocol="qwen2-vl")
    assert (r["score"], r["n_pred"], r["format_ok"], r["reason"]) == (expected, n_pred, format_ok, reason)


# -- compute_score: the ground truth is read once per dict, safely -----------------------------


def _truth(boxes=(G,)) -> dict:
    return {
        "boxes": [list(b) for b in boxes],
        "protocol": "qwen2.5-vl",
        "image_size": list(IMAGE),
        "resized_size": list(RESIZED),
    }


def test_a_ground_truth_dict_changed_in_place_is_read_again():
    truth = _truth()
    answer = native("qwen2.5-vl", G)
    assert compute_score("grounding/x", answer, truth, None)["score"] == 1.0
    truth["boxes"][0][0] = 192.0  # the same objects, new contents
    r = compute_score("grounding/x", answer, truth, None)
    assert r == score(answer, gt=[(192.0, 48.0, 320.0, 240.0)])
    truth["boxes"] = np.array([list(H)])  # replaced by an array: no ambiguous comparison
    assert compute_score("grounding/x", native("qwen2.5-vl", H), truth, None)["score"] == 1.0
    truth["image_size"] = [1280, 960]
    assert compute_score("grounding/x", answer, truth, None) == score_response(
        answer, [H], image_size=(1280, 960), resized_size=RESIZED, protocol="qwen2.5-vl"
    )
    truth["protocol"] = "qwen3-vl"
    assert compute_score("grounding/x", answer, truth, None) == score_response(
        answer, [H], image_size=(1280, 960), resized_size=RESIZED, protocol="qwen3-vl"
    )
    with pytest.raises(ValueError, match="four finite numbers"):
        compute_score("grounding/x", answer, {**_truth(), "boxes": [[1, 2, "x", 4]]}, None)


def test_compute_score_equals_score_response_on_shared_and_fresh_dicts():
    shared = _truth((G, H))
    for response in (native("qwen2.5-vl", G), native("qwen2.5-vl", G, H), native("qwen2.5-vl", SHIFT), "", "[]"):
        want = score(response, gt=(G, H))
        assert compute_score("grounding/x", response, shared, None) == want
        assert compute_score("grounding/x", response, _truth((G, H)), {"protocol": "click-xywh"}) == want


def test_the_ground_truth_cache_cannot_confuse_rows():
    two = {**_truth(), "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]]}
    assert compute_score("grounding/x", "", two, None)["n_gt"] == 2
    # the same numbers as one eight-value box: a data error, not the two-box row's target
    with pytest.raises(ValueError, match="four finite numbers"):
        compute_score("grounding/x", "", {**_truth(), "boxes": [[1, 2, 3, 4, 5, 6, 7, 8]]}, None)
    with pytest.raises(ValueError, match="four finite numbers"):
        compute_score("grounding/x", "", {**_truth(), "boxes": [[1, 2, [3], 4]]}, None)  # unhashable
    # the same contents in a fresh dict (VeRL scoring sample by sample) give the same result
    answer = native("qwen2.5-vl", G)
    assert compute_score("grounding/x", answer, _truth(), None) == compute_score("grounding/x", answer, _truth(), {})
    sizes_as_tuples = {**_truth(), "image_size": IMAGE, "resized_size": RESIZED}
    assert compute_score("grounding/x", answer, sizes_as_tuples, None)["score"] == 1.0

"""Answer protocols: names, prompts, coordinate frames, format/parse round trips."""

from __future__ import annotations

import pytest

from grounding_ops.protocols import (
    DEFAULT_MAX_BOXES,
    PROTOCOL_NAMES,
    ParseResult,
    build_prompt,
    get_protocol,
)
from grounding_ops.reward.matching import box_iou

IMAGE = (640, 480)
RESIZED = (320, 240)  # qwen2.5-vl answers in pixels of this image
GT = (64.0, 48.0, 320.0, 240.0)


def test_protocol_names_are_the_contract():
    assert PROTOCOL_NAMES == ("qwen2.5-vl", "qwen2-vl", "qwen3-vl", "click-xywh", "normalized-xyxy")
    for name in PROTOCOL_NAMES:
        assert get_protocol(name).name == name
        assert get_protocol(get_protocol(name)) is get_protocol(name)


def test_unknown_protocol_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_protocol("qwen9-vl")
    for name in PROTOCOL_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_build_prompt_is_one_user_turn_with_one_image(name):
    messages = build_prompt("the red car", name)
    assert len(messages) == 1
    assert messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.startswith("<image>")
    assert content.count("<image>") == 1
    assert "the red car" in content
    assert content == "<image>" + get_protocol(name).instruction("the red car")


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_reasoning_prompt_asks_for_think_and_answer(name):
    text = get_protocol(name).instruction("a dog", reasoning=True)
    assert "<think>" in text and "<answer>" in text
    assert "<think>" not in get_protocol(name).instruction("a dog")


# The same ground-truth box written in every protocol's own frame.
NATIVE = {
    "qwen2.5-vl": '[{"bbox_2d": [32, 24, 160, 120], "label": "car"}]',
    "qwen2-vl": "car(100,100),(500,500)",
    "qwen3-vl": '[{"bbox_2d": [100, 100, 500, 500], "label": "car"}]',
    "click-xywh": "<click>64, 48, 256, 192</click>",
    "normalized-xyxy": "[0.1, 0.1, 0.5, 0.5]",
}


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_each_frame_converts_to_original_pixels(name):
    result = get_protocol(name).parse(NATIVE[name], IMAGE, RESIZED)
    assert isinstance(result, ParseResult)
    assert result.format_ok, result.reason
    assert result.reason == ""
    assert result.boxes == (pytest.approx(GT),)


def test_qwen25_without_resized_size_uses_the_original_image():
    result = get_protocol("qwen2.5-vl").parse('[{"bbox_2d": [64, 48, 320, 240]}]', IMAGE)
    assert result.boxes == (pytest.approx(GT),)


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_format_answer_native_round_trip_is_exact_to_the_resolution(name):
    proto = get_protocol(name)
    boxes = [(10.3, 20.7, 110.2, 219.9), (300.0, 100.0, 333.3, 477.0)]
    text = proto.format_answer(boxes, IMAGE, (644, 476), label="cat")
    parsed = proto.parse(text, IMAGE, (644, 476))
    assert parsed.format_ok, (text, parsed.reason)
    assert len(parsed.boxes) == 2
    for got, want in zip(parsed.boxes, boxes):
        assert box_iou(got, want) > 0.95


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_format_answer_precise_round_trip(name):
    proto = get_protocol(name)
    boxes = [(10.3, 20.7, 110.2, 219.9), (300.0, 100.0, 333.3, 477.0)]
    text = proto.format_answer(boxes, IMAGE, (644, 476), precise=True)
    parsed = proto.parse(text, IMAGE, (644, 476))
    assert parsed.format_ok
    for got, want in zip(parsed.boxes, boxes):
        assert got == pytest.approx(want, abs=1e-9)


def test_format_answer_syntax_per_protocol():
    box = [GT]
    assert get_protocol("click-xywh").format_answer(box, IMAGE) == "<click>64, 48, 256, 192</click>"
    assert get_protocol("normalized-xyxy").format_answer(box, IMAGE) == "[0.1, 0.1, 0.5, 0.5]"
    assert (
        get_protocol("qwen2-vl").format_answer(box, IMAGE, label="car")
        == "<|object_ref_start|>car<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"
    )
    text = get_protocol("qwen2.5-vl").format_answer(box, IMAGE, RESIZED, label="car")
    assert text.startswith("```json\n") and text.endswith("\n```")
    assert '{"bbox_2d": [32, 24, 160, 120], "label": "car"}' in text
    assert '"bbox_2d": [100, 100, 500, 500]' in get_protocol("qwen3-vl").format_answer(box, IMAGE)


def test_predicted_boxes_are_clipped_to_the_image():
    result = get_protocol("click-xywh").parse("<click>-10, 400, 1000, 1000</click>", IMAGE)
    assert result.boxes == ((0.0, 400.0, 640.0, 480.0),)
    assert result.format_ok


def test_qwen2_vl_accepts_tokens_and_stripped_tokens():
    proto = get_protocol("qwen2-vl")
    with_tokens = "<|object_ref_start|>car<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"
    for text in (with_tokens, "car(100,100),(500,500)", "( 100 , 100 ) ( 500 , 500 )"):
        assert proto.parse(text, IMAGE).boxes == (pytest.approx(GT),), text


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="image_size"):
        get_protocol("click-xywh").parse("<click>1, 2, 3, 4</click>", (0, 10))
    with pytest.raises(ValueError, match="resized_size"):
        get_protocol("qwen2.5-vl").parse("[]", IMAGE, ("a", 1))


def test_parse_caps_boxes_and_reports_it():
    text = "<click>1, 1, 5, 5</click>" * (DEFAULT_MAX_BOXES + 1)
    result = get_protocol("click-xywh").parse(text, IMAGE)
    assert result.too_many and not result.format_ok
    assert result.reason == "too_many_boxes"
    exactly = get_protocol("click-xywh").parse("<click>1, 1, 5, 5</click>" * DEFAULT_MAX_BOXES, IMAGE)
    assert not exactly.too_many and len(exactly.boxes) == DEFAULT_MAX_BOXES

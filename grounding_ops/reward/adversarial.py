"""Adversarial responses for robustness tests and benchmarks.

Each is built to stress one scanner: long runs of opening brackets, numbers
that never close, unclosed tags and fences, deep JSON, huge lists, many valid
boxes, unicode. None should make parsing slower than linear.
"""

from __future__ import annotations


def adversarial_responses(size: int = 1 << 20) -> dict[str, str]:
    """Name -> response of about ``size`` characters."""

    def rep(unit: str) -> str:
        return unit * max(1, size // len(unit))

    return {
        "digits": rep("1"),
        "open_brackets": rep("["),
        "open_parens": rep("("),
        "unclosed_numbers": rep("[1, 2, 3, "),
        "unclosed_pairs": rep("(1,"),
        "pairs_no_second": rep("(1,1),"),
        "unclosed_click": rep("<click>1, 2, 3, "),
        "click_tags": rep("<click>"),
        "deep_json": rep('[{"bbox_2d": ['),
        "bbox_keys": rep('"bbox_2d": [1, 2, '),
        "answer_tags": rep("<answer>"),
        "think_tags": rep("<think>"),
        "fences": rep("```"),
        "whitespace": "[" + " " * size,
        "many_boxes": rep("[1,2,3,4]"),
        "many_pairs": rep("(1,2),(3,4)"),
        "many_clicks": rep("<click>1,2,3,4</click>"),
        "many_bbox_objects": "[" + rep('{"bbox_2d": [1,2,3,4]},') + "]",
        "big_json_list": "[" + rep("1,") + "1]",
        "huge_numbers": rep("[1e999, -1e999, 99999999999999999999999, 1] "),
        "nan_json": "[" + rep('{"bbox_2d": [NaN, Infinity, -Infinity, 1]},') + "]",
        "unicode": rep("框🙂\u202e\x00"),
        "special_tokens": rep("<|box_start|>(<|box_end|>"),
        # the answer cut and the value-by-value JSON reader
        "answer_blocks": rep("<answer>[1,2,3,4]</answer>"),
        "close_think": rep("</think>"),
        "think_mentions_tags": "<think>" + rep("<answer></answer> <answer>") + "</think><answer>[1,2,3,4]</answer>",
        "json_values": rep("[1] "),
        "failing_values": rep("[1, x"),
        "unterminated_string": '["' + rep("[{"),
        "string_numbers": rep('{"bbox_2d": ["1", "2", "3", '),
        "nested_boxes": rep('{"bbox_2d": [[1, 2, 3, 4]]} '),
        "invalid_entries": rep('{"bbox_2d": [1, 2, 3]} '),
        "deep_then_boxes": "[" * 5000 + rep('{"bbox_2d": [1, 2, 3, 4]} '),
        "bare_tuples": rep("(1, 2, 3, 4) "),
    }

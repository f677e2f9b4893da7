"""``valid.jsonl`` lines are written by the C JSON encoder directly: the same bytes as
``json.dumps(row, sort_keys=True, ensure_ascii=False)`` (the dataset version hashes them)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grounding_ops.data.prepare import valid_line

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
number = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30)
rows = st.fixed_dictionaries(
    {
        "id": text,
        "image": text,
        "phrase": text,
        "boxes": st.lists(st.lists(number, min_size=4, max_size=4), max_size=4),
        "source": text,
        "group": st.none() | text,
        "width": st.integers(1, 10**6),
        "height": st.integers(1, 10**6),
        "image_sha256": text,
    },
    optional={"split": st.sampled_from(["train", "val", "test"])},
)


@settings(max_examples=400, deadline=None)
@given(rows)
def test_the_same_bytes_as_json_dumps(row: dict) -> None:
    assert valid_line(row) == json.dumps(row, sort_keys=True, ensure_ascii=False)


def test_special_values_and_types_behave_as_json_dumps() -> None:
    row = {"b": [math.inf, -0.0, 1e-320, True, None], "a": '"\\\n\u2028\x00é😀'}
    assert valid_line(row) == json.dumps(row, sort_keys=True, ensure_ascii=False)
    with pytest.raises(TypeError, match="not JSON serializable"):
        valid_line({"a": object()})

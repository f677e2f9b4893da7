"""The synthetic shapes set: phrases of several kinds, each naming exactly one shape."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from grounding_ops.data.synthetic import generate_synthetic, phrase_candidates, render_image


def _kind(phrase: str) -> str:
    words = phrase.split()[1:]
    if words[0] in ("leftmost", "rightmost", "top", "bottom"):
        return "position"
    if words[-1] == "shape":
        return "colour"
    return "colour and kind" if len(words) == 2 else "kind"


def test_phrases_of_every_kind_each_naming_one_shape(tmp_path: Path) -> None:
    data = generate_synthetic(tmp_path, n_images=120, seed=4)
    rows = [json.loads(line) for line in data.annotations.read_text().splitlines()]
    assert len(rows) == data.n_records and all(len(r["boxes"]) == 1 for r in rows)
    kinds = Counter(_kind(r["phrase"]) for r in rows)
    assert set(kinds) == {"position", "colour", "kind", "colour and kind"}, kinds
    assert min(kinds.values()) >= 0.1 * len(rows), kinds
    per_image: dict[str, list[dict]] = {}
    for row in rows:
        per_image.setdefault(row["image"], []).append(row)
    # no two records of one image share a phrase, and position words hold for the boxes
    for image_rows in per_image.values():
        assert len({r["phrase"] for r in image_rows}) == len(image_rows)
        for row in image_rows:
            if row["phrase"] == "the leftmost shape":
                centre = sum(row["boxes"][0][::2]) / 2
                assert all(centre < sum(o["boxes"][0][::2]) / 2 for o in image_rows if o is not row)


def test_candidates_are_unique_to_their_shape() -> None:
    rng = random.Random(0)
    for _ in range(200):
        _, shapes = render_image(rng, 112, 112, rng.randint(1, 3))
        names = [set(phrase_candidates(shapes, i, 112, 112)) for i in range(len(shapes))]
        for i, own in enumerate(names):
            assert f"the {shapes[i][0]} {shapes[i][1]}" in own
            assert not any(own & other for j, other in enumerate(names) if j != i)


def test_shapes_show_the_position_ramp() -> None:
    """The background ramp shows through a shape: the same shape reads differently left and right."""
    import numpy as np

    image, shapes = render_image(random.Random(1), 112, 112, 1)
    pixels = np.asarray(image, dtype=int)
    assert pixels[56, 2, 0] < pixels[56, 109, 0] and pixels[2, 56, 1] < pixels[109, 56, 1]
    x1, y1, x2, y2 = shapes[0][2]
    inside = pixels[(y1 + y2) // 2, (x1 + x2) // 2]
    assert tuple(inside) != tuple(pixels[0, 0])


def test_too_many_shapes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_shapes must be between 1 and 15"):
        generate_synthetic(tmp_path, n_images=1, max_shapes=16)

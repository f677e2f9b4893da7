"""The dataset report's SVG charts: well-formed for any data, labels escaped, no negative bars."""

from __future__ import annotations

import math
from xml.etree import ElementTree

import pytest

from grounding_ops.data.charts import Panel, Series, grid_svg

SVG = "{http://www.w3.org/2000/svg}"


def _rects(svg: str) -> list[dict[str, float]]:
    root = ElementTree.fromstring(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    return [{k: float(r.get(k)) for k in ("x", "y", "width", "height")} for r in bars]


@pytest.mark.parametrize(
    "values",
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1e-12, 1.0, 1e12], [math.nan, 0.5, math.inf * 0], [0.3, 0.3, 0.3]],
    ids=["all-zero", "one-bin", "extreme-range", "nan", "flat"],
)
def test_degenerate_values_give_a_well_formed_chart_without_negative_bars(values: list[float]) -> None:
    panel = Panel("t", ["a", "b", "c"], [Series("this version", values, "#000"), Series("previous", values, "#111")])
    bars = _rects(grid_svg([panel]))
    assert all(b["height"] >= 0 and b["width"] > 0 for b in bars)
    assert len(bars) == 2 * sum(1 for v in values if v > 0)


def test_labels_from_the_data_are_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    svg = grid_svg([Panel(hostile, [hostile], [Series(hostile, [1.0], "#000")], stacked=True)])
    root = ElementTree.fromstring(svg)  # parses: nothing was injected as markup
    assert root.find(f".//{SVG}script") is None
    assert hostile in {t.text for t in root.iter(f"{SVG}text")}


def test_stacked_bars_add_up_and_grouped_bars_sit_side_by_side() -> None:
    stacked = _rects(
        grid_svg([Panel("s", ["train"], [Series("a", [30], "#000"), Series("b", [10], "#111")], stacked=True)])
    )
    lower, upper = stacked
    assert lower["height"] == pytest.approx(3 * upper["height"], rel=0.02)
    assert upper["y"] + upper["height"] == pytest.approx(lower["y"], abs=0.11)
    grouped = _rects(grid_svg([Panel("g", ["x"], [Series("a", [1], "#000"), Series("b", [1], "#111")])]))
    assert grouped[0]["x"] + grouped[0]["width"] == pytest.approx(grouped[1]["x"], abs=0.11)


def test_many_panels_wrap_into_rows() -> None:
    root = ElementTree.fromstring(grid_svg([Panel(str(i), ["a"], [Series("s", [1], "#000")]) for i in range(7)]))
    assert (float(root.get("width")), float(root.get("height"))) == (4 * 380, 2 * 230)

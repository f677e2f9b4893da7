"""Per-version statistics, drift against the previous version, the table-level acceptance
suite and the version's report."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from grounding_ops.data.prepare import PrepareSettings, prepare
from grounding_ops.data.stats import DatasetStats, drift
from grounding_ops.data.synthetic import generate_synthetic

SETTINGS = dict(min_pixels=56 * 56, max_pixels=112 * 112, val_fraction=0.25, test_fraction=0.25)


def _manifest(result) -> dict:
    return json.loads((Path(result.dataset_uri) / "manifest.json").read_text())


def test_stats_histograms_and_drift() -> None:
    stats = DatasetStats()
    for i in range(10):
        stats.add(
            {
                "id": f"a{i}",
                "phrase": "the red circle",
                "source": "s1",
                "width": 100,
                "height": 50,
                "boxes": [[0, 0, 10, 10], [10, 10, 60, 30]],
            },
            "train" if i < 8 else "val",
        )
    first = stats.finish().to_json()
    assert first["rows"] == {"train": 8, "val": 2, "all": 10} and first["distinct_ids"]["all"] == 10
    assert first["histograms"]["boxes_per_phrase"]["counts"][1] == 10  # all in the "2 boxes" bin
    assert first["mean_box_area_fraction"]["all"] == pytest.approx((0.02 + 0.2) / 2)
    assert first["histograms"]["box_aspect"]["counts"][4] == 10  # 10x10: aspect 1, in [2/3, 1.5)
    assert drift(first, first)["max_tvd"] == 0.0
    other = DatasetStats()
    other.add(
        {"id": "b", "phrase": "x", "source": "s2", "width": 100, "height": 50, "boxes": [[0, 0, 90, 45]]}, "train"
    )
    changed = drift(other.finish().to_json(), first)
    assert changed["histogram_tvd"]["boxes_per_phrase"] == 1.0
    assert changed["sources_added"] == ["s2"] and changed["sources_removed"] == ["s1"]


def test_stats_of_many_rows_at_once_equal_the_rows_one_by_one() -> None:
    import random

    rng = random.Random(3)
    rows = []
    for i in range(300):
        width, height = rng.choice([(0, 0), (64, 48), (2000, 3000), (5000, 10)]), None
        width, height = width
        boxes = [
            [x, y, x + rng.choice([0.0, 0.5, 7.0, 300.0]), y + rng.choice([0.0, 0.1, 9.0, 2500.0])]
            for x, y in [(rng.uniform(0, 50), rng.uniform(0, 50)) for _ in range(rng.randint(0, 4))]
        ]
        phrase = rng.choice([None, "", "a", "the " * rng.randint(1, 200)])
        rows.append(
            {
                "id": f"r{i % 280}",
                "phrase": phrase,
                "source": f"s{i % 3}",
                "width": width,
                "height": height,
                "boxes": boxes,
            }
        )
    splits = [rng.choice(["train", "val", "test"]) for _ in rows]
    one_by_one, at_once = DatasetStats(), DatasetStats()
    for row, split in zip(rows, splits):
        one_by_one.add(row, split)
    for split in ("val", "train", "test"):
        chosen = [row for row, s in zip(rows, splits) if s == split]
        at_once.add_many(chosen[:100], split)
        at_once.add_many(chosen[100:], split)
    first, second = one_by_one.finish().to_json(), at_once.finish().to_json()
    assert first["histograms"] == second["histograms"] and first["rows"] == second["rows"]
    assert first == {**second, "rows": first["rows"]}
    expected_area = sum(
        (b[2] - b[0]) * (b[3] - b[1]) / (r["width"] * r["height"]) if r["width"] else 0.0
        for r, s in zip(rows, splits)
        if s == "val"
        for b in r["boxes"]
    )
    assert first["mean_box_area_fraction"]["val"] == pytest.approx(expected_area / first["boxes"]["val"])
    counts = first["histograms"]["box_aspect"]["counts"]
    assert sum(counts) == first["boxes"]["all"] and counts[-1] > 0  # zero heights: aspect infinite, last bin


def test_versions_have_a_report_and_compare_with_the_previous(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    first_data = generate_synthetic(tmp_path / "a", n_images=12, seed=1)
    first = prepare(
        [str(first_data.annotations)],
        images_root=str(first_data.images_root),
        output_uri=output,
        settings=PrepareSettings(**SETTINGS),
    )
    manifest = _manifest(first)
    assert first.accepted and manifest["validation"]["success"] is True
    assert manifest["validation"]["acceptance"] == {
        "success": True,
        "failures": [],
        "results": "validation/acceptance.json",
    }
    report = Path(first.dataset_uri) / "report"
    assert {p.name for p in report.iterdir()} == {"index.html", "stats.svg", "stats.json"}
    chart = ElementTree.fromstring((report / "stats.svg").read_text())  # well-formed SVG
    assert chart.tag == "{http://www.w3.org/2000/svg}svg"
    titles = {t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")}
    assert {"boxes per phrase", "rows per split and source"} <= titles
    assert "no previous version" in (report / "index.html").read_text()
    acceptance = json.loads((Path(first.dataset_uri) / "validation" / "acceptance.json").read_text())
    assert acceptance["success"] is True and len(acceptance["results"]) == 7
    assert set(manifest["files"]) >= {"report/index.html", "report/stats.svg", "report/stats.json"}

    second_data = generate_synthetic(tmp_path / "b", n_images=20, seed=2)
    second = prepare(
        [str(second_data.annotations)],
        images_root=str(second_data.images_root),
        output_uri=output,
        settings=PrepareSettings(**SETTINGS),
    )
    manifest = _manifest(second)
    assert manifest["report"]["previous_version"] == first.version
    assert set(manifest["report"]["drift"]["histogram_tvd"]) >= {"boxes_per_phrase", "box_area_fraction"}
    html = (Path(second.dataset_uri) / "report" / "index.html").read_text()
    assert f"compared with the previous version {first.version}" in html
    # rerunning the second version compares with the same previous version: same report bytes
    before = (Path(second.dataset_uri) / "report" / "stats.json").read_bytes()
    again = prepare(
        [str(second_data.annotations)],
        images_root=str(second_data.images_root),
        output_uri=output,
        settings=PrepareSettings(**SETTINGS),
    )
    assert again.version == second.version and again.reused and again.bytes_uploaded == 0
    assert (Path(second.dataset_uri) / "report" / "stats.json").read_bytes() == before


def test_acceptance_suite_refuses_a_version_out_of_bounds(tmp_path: Path) -> None:
    data = generate_synthetic(tmp_path / "a", n_images=12, seed=3)
    output = tmp_path / "out"
    result = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=str(output),
        settings=PrepareSettings(**SETTINGS, max_mean_boxes=0.5),
    )
    manifest = _manifest(result)
    assert not result.accepted and "boxes_per_phrase_bounds" in result.rejection
    assert manifest["validation"]["success"] is False and manifest["validation"]["acceptance"]["failures"] == [
        "boxes_per_phrase_bounds"
    ]
    assert not (output / "latest.json").exists()
    assert "FAILED: boxes_per_phrase_bounds" in (Path(result.dataset_uri) / "report" / "index.html").read_text()


def test_drift_bound_refuses_a_changed_distribution(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    data = generate_synthetic(tmp_path / "a", n_images=12, seed=4)
    prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=output,
        settings=PrepareSettings(**SETTINGS),
    )
    path = tmp_path / "big_boxes.jsonl"
    rows = [json.loads(line) for line in data.annotations.read_text().splitlines()]
    lines = []
    for row in rows:  # every box becomes the whole image: the area histogram moves
        row["boxes"] = [[0, 0, row["width"], row["height"]]] if row.get("width") else row["boxes"]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    result = prepare(
        [str(path)],
        images_root=str(data.images_root),
        output_uri=output,
        settings=PrepareSettings(**SETTINGS, max_drift=0.3),
    )
    assert not result.accepted and "drift_bounds" in result.rejection

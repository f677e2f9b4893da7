"""The validation suite: a failing row of each kind lands in the quarantine with its reason,
nothing is lost, images stay inside the root and decompression bombs are refused."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from PIL import Image

from grounding_ops.data.images import ImageResolver, UnsafeImagePath, decode_image
from grounding_ops.data.prepare import PrepareSettings, prepare
from grounding_ops.data.split import assign_split, plan_small_splits
from grounding_ops.data.synthetic import generate_synthetic
from grounding_ops.data.validation import REASONS, SuiteConfig
from grounding_ops.data.vision import smart_resize

W, H = 64, 48


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _refuse(token: str):
    raise ValueError(f"non-standard JSON token {token}")


def _row(rid: str, **fields) -> dict:
    row = {"id": rid, "image": "ok.png", "phrase": "the red square", "boxes": [[1, 2, 10, 20]], "source": "lab"}
    row.update(fields)
    return row


# One failing row per expectation (the id names the expected reason).
FAILING = {
    "unique_id": _row("good-1", phrase="same id again"),
    "phrase_not_null": _row("r-phrase-null", phrase=None),
    "phrase_length": _row("r-phrase-empty", phrase="   "),
    "has_box": _row("r-no-box", boxes=[]),
    "boxes_four_finite_numbers": _row("r-nan", boxes=[[0, 0, float("nan"), 5]]),
    "box_x1_nonnegative": _row("r-neg-x", boxes=[[-1, 0, 5, 5]]),
    "box_y1_nonnegative": _row("r-neg-y", boxes=[[0, -1, 5, 5]]),
    "box_x1_lt_x2": _row("r-x-order", boxes=[[9, 0, 3, 5]]),
    "box_y1_lt_y2": _row("r-y-order", boxes=[[0, 9, 5, 3]]),
    "box_x2_within_width": _row("r-wide", boxes=[[0, 0, W + 1, 5]]),
    "box_y2_within_height": _row("r-high", boxes=[[0, 0, 5, H + 1]]),
    "box_positive_area": _row("r-tiny", boxes=[[0, 0, 0.5, 0.5]]),
    "image_inside_root": _row("r-escape", image="../outside.png"),
    "image_exists": _row("r-missing", image="missing.png"),
    "image_decodes": _row("r-corrupt", image="corrupt.png"),
    "image_within_pixel_limit": _row("r-bomb", image="bomb.png"),
    "declared_width_matches_image": _row("r-decl-w", width=W + 3, height=H),
    "declared_height_matches_image": _row("r-decl-h", width=W, height=H + 3),
    "image_aspect_ratio": _row("r-sliver", image="sliver.png", boxes=[[0, 0, 5, 1]]),
    "source_allowed": _row("r-source", source="elsewhere"),
}


def _write_inputs(base: Path) -> Path:
    """The images and ``ann.jsonl`` (good rows, one failing row per expectation, parse errors)."""
    root = base / "images"
    root.mkdir()
    Image.new("RGB", (W, H), (200, 10, 10)).save(root / "ok.png")
    Image.new("RGB", (401, 2), (0, 0, 0)).save(root / "sliver.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "bomb.png").write_bytes(bomb_png())
    (base / "outside.png").write_bytes((root / "ok.png").read_bytes())
    lines = [json.dumps(_row(f"good-{i}", group=f"g{i}")) for i in range(40)]
    lines += [json.dumps(row) for row in FAILING.values()]
    lines += ['{"id": "r-parse", "image": ', json.dumps(_row("r-type", boxes="1,2,3,4"))]
    lines += [json.dumps(_row("r-normalized-ok"))]
    (base / "ann.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("validation")
    root = _write_inputs(base)
    settings = PrepareSettings(
        max_quarantine_fraction=1.0,
        suite=SuiteConfig(allowed_sources=("lab",)),
        val_fraction=0.3,
        min_pixels=56 * 56,
        max_pixels=112 * 112,
    )
    result = prepare([str(base / "ann.jsonl")], images_root=str(root), output_uri=str(base / "out"), settings=settings)
    quarantine = [
        json.loads(line, parse_constant=_refuse) for line in Path(result.quarantine_uri).read_text().splitlines()
    ]
    return result, quarantine


def test_every_expectation_quarantines_its_row(prepared) -> None:
    result, quarantine = prepared
    by_id: dict[str, list[dict]] = {}
    for entry in quarantine:
        by_id.setdefault(entry["id"], []).append(entry)
    assert set(FAILING) == set(REASONS)
    for reason, row in FAILING.items():
        if reason == "unique_id":
            (entry,) = [e for e in by_id["good-1"]]
            assert entry["raw"]["phrase"] == "same id again"  # the later row, not the first
        else:
            (entry,) = by_id[row["id"]]
        assert entry["reason"] == reason, (row["id"], entry)
        assert entry["reasons"][0] == reason and entry["detail"] and entry["line"].startswith("ann.jsonl:")
        assert entry["raw"]["id"] == row["id"]
    assert by_id["r-nan"][0]["raw"]["boxes"] == [[0, 0, "NaN", 5]]  # strict JSON, value still visible


def test_parse_errors_are_quarantined_not_dropped(prepared) -> None:
    result, quarantine = prepared
    parse = [e for e in quarantine if e["reason"] == "parse_error"]
    assert {e["line"] for e in parse} == {"ann.jsonl:61", "ann.jsonl:62"}
    typed = next(e for e in parse if e["line"] == "ann.jsonl:62")
    assert typed["id"] == "r-type" and "'boxes'" in typed["detail"] and typed["raw"]["boxes"] == "1,2,3,4"


def test_counts_reconcile(prepared) -> None:
    result, quarantine = prepared
    c = result.counts
    assert c["received"] == 63 == c["valid"] + c["quarantined"]
    assert c["quarantined"] == len(quarantine) == len(FAILING) + 2
    assert c["valid"] == c["train"] + c["val"] + c["test"] == 41
    manifest = json.loads(Path(result.manifest_uri).read_text())
    assert manifest["counts"] == c and manifest["accepted"] is True
    assert any(name.startswith("validation/results/") for name in manifest["files"])
    assert "validation/docs/index.html" in manifest["files"]
    gx = json.loads(
        (Path(result.dataset_uri) / "validation/results/batch-00000.json").read_text(), parse_constant=_refuse
    )
    assert gx["success"] is False and len(gx["results"]) == len(REASONS)


def test_group_split_is_disjoint(prepared) -> None:
    result, _ = prepared
    splits = {
        split: pq.read_table(Path(result.dataset_uri) / f"{split}.parquet").column("extra_info").to_pylist()
        for split in ("train", "val", "test")
    }
    assert splits["train"] and splits["val"] and splits["test"]

    def group(row_id: str) -> str:  # good-i rows carry group g<i>; the others default to their image
        return f"g{row_id.split('-')[1]}" if row_id.startswith("good-") else "ok.png"

    groups = {split: {group(e["id"]) for e in rows} for split, rows in splits.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    for split, rows in splits.items():
        assert [e["index"] for e in rows] == list(range(len(rows))) and {e["split"] for e in rows} == {split}


def test_image_path_traversal_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "sub" / "link.png").symlink_to(tmp_path / "secret.png")
    Image.new("RGB", (4, 4)).save(root / "sub" / "fine.png")
    resolver = ImageResolver(root)
    for ref in (
        "../secret.png",
        "sub/../../secret.png",
        str(tmp_path / "secret.png"),
        "sub/link.png",
        "s3://other-bucket/x.png",
        "http://example.invalid/x.png",
        "sub\\..\\..\\secret.png",
    ):
        with pytest.raises(UnsafeImagePath):
            resolver.locate(ref)
        assert resolver.check(ref, 10_000).inside_root is False
    assert resolver.locate(str(root / "sub" / "fine.png"))[1] == "sub/fine.png"  # absolute, but inside
    assert resolver.check("sub/fine.png", 10_000).ok
    s3 = ImageResolver("s3://images-bucket/xray", s3_client=object())
    assert s3.locate("a/b.png") == ("s3://images-bucket", "xray/a/b.png")
    assert s3.locate("s3://images-bucket/xray/c.png") == ("s3://images-bucket", "xray/c.png")
    for ref in (
        "s3://images-bucket/other/c.png",
        "s3://evil/xray/c.png",
        "s3://images-bucket/xray/../c.png",
        "/abs.png",
    ):
        with pytest.raises(UnsafeImagePath):
            s3.locate(ref)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    header_bomb = decode_image(bomb_png(), max_image_pixels=50_000_000)
    assert header_bomb.within_pixel_limit is False and header_bomb.decodes
    # a real, highly compressible image over a configured limit
    import io

    buffer = io.BytesIO()
    Image.new("L", (3000, 3000), 0).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    big = decode_image(buffer.getvalue(), max_image_pixels=1_000_000)
    assert big.within_pixel_limit is False and "over the limit" in big.detail
    assert decode_image(buffer.getvalue(), max_image_pixels=10_000_000).within_pixel_limit is True
    assert decode_image(b"not an image").decodes is False


def test_split_is_deterministic_and_order_free() -> None:
    groups = [f"patient-{i}" for i in range(2000)]
    first = {g: assign_split(g, 0.2) for g in groups}
    assert first == {g: assign_split(g, 0.2) for g in reversed(groups)}
    share = sum(v == "val" for v in first.values()) / len(groups)
    assert 0.17 < share < 0.23
    # a three-way split keeps val as it was and carves test out of train
    three = {g: assign_split(g, 0.2, test_fraction=0.1) for g in groups}
    assert {g for g, s in three.items() if s == "val"} == {g for g, s in first.items() if s == "val"}
    assert 0.07 < sum(v == "test" for v in three.values()) / len(groups) < 0.13
    assert set(three.values()) == {"train", "val", "test"}


def test_small_datasets_keep_every_held_out_split_non_empty_when_they_can() -> None:
    # tiny fractions: the hash puts every group in train; the plan moves whole groups out
    plan = plan_small_splits(["a", "a", "b", "c", "c"], 1e-9, test_fraction=1e-9)
    assert sorted(plan.moved.values()) == ["test", "val"] and not plan.notes
    splits = {g: plan.split_of(g, 1e-9, test_fraction=1e-9) for g in "abc"}
    assert sorted(splits.values()) == ["test", "train", "val"]
    assert plan_small_splits(["a", "b", "c"], 1e-9, test_fraction=1e-9).moved == plan.moved  # deterministic
    two = plan_small_splits(["a", "b"], 1e-9, test_fraction=1e-9)
    assert list(two.moved.values()) == ["val"] and "test split is empty" in two.notes[0]
    assert plan_small_splits(["only"], 1e-9, test_fraction=1e-9).moved == {}
    # the hash puts the only group in a held-out split: it trains instead
    lone = plan_small_splits(["only"], 0.45, test_fraction=0.54)
    assert lone.split_of("only", 0.45, test_fraction=0.54) == "train"
    assert plan_small_splits(["a", "b"], 0.0, test_fraction=0.0).moved == {}  # nothing asked for
    with pytest.raises(ValueError, match="below 1"):
        plan_small_splits(["a"], 0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        assign_split("a", 0.1, test_fraction=float("nan"))


def test_same_input_gives_same_version_and_bytes(tmp_path: Path) -> None:
    data = generate_synthetic(tmp_path / "syn", n_images=10, seed=5)
    settings = PrepareSettings(max_pixels=112 * 112, min_pixels=56 * 56, val_fraction=0.3)
    a = prepare(
        [str(data.annotations)], images_root=str(data.images_root), output_uri=str(tmp_path / "a"), settings=settings
    )
    b = prepare(
        [str(data.annotations)], images_root=str(data.images_root), output_uri=str(tmp_path / "b"), settings=settings
    )
    assert a.version == b.version
    for name in ("train.parquet", "val.parquet", "quarantine.jsonl"):
        assert (Path(a.dataset_uri) / name).read_bytes() == (Path(b.dataset_uri) / name).read_bytes()
    c = prepare(
        [str(data.annotations)],
        images_root=str(data.images_root),
        output_uri=str(tmp_path / "c"),
        settings=PrepareSettings(max_pixels=112 * 112, min_pixels=56 * 56, val_fraction=0.5),
    )
    assert c.version != a.version


def test_normalized_boxes_are_scaled_to_pixels(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (200, 100)).save(root / "a.png")
    path = tmp_path / "n.jsonl"
    path.write_text(
        json.dumps({"id": "n1", "image": "a.png", "phrase": "p", "boxes": [[0.1, 0.2, 0.5, 1.0]]})
        + "\n"
        + json.dumps({"id": "n2", "image": "a.png", "phrase": "p", "boxes": [[0.1, 0.2, 1.5, 1.0]]})
        + "\n"
    )
    result = prepare(
        [str(path)],
        images_root=str(root),
        output_uri=str(tmp_path / "out"),
        settings=PrepareSettings(input_format="normalized", max_quarantine_fraction=1.0),
    )
    rows = (
        pq.read_table(Path(result.dataset_uri) / "train.parquet").to_pylist()
        + pq.read_table(Path(result.dataset_uri) / "val.parquet").to_pylist()
    )
    (row,) = rows
    assert row["reward_model"]["ground_truth"]["boxes"] == [[20.0, 20.0, 100.0, 100.0]]
    assert result.counts["quarantined"] == 1 and result.top_reasons == [("box_x2_within_width", 1)]


@pytest.mark.parametrize(
    "size,expected", [((64, 48), (56, 56)), ((1000, 500), (140, 56)), ((112, 112), (112, 112)), ((30, 300), (28, 308))]
)
def test_smart_resize_matches_qwen_rule(size, expected) -> None:
    # expected values computed by qwen_vl_utils.smart_resize (factor 28) with min 56*56 and max 112*112 / defaults
    w, h = size
    if size == (30, 300):
        assert smart_resize(w, h) == expected  # default bounds
    else:
        assert smart_resize(w, h, min_pixels=56 * 56, max_pixels=112 * 112) == expected


def test_no_file_descriptor_leak_on_missing_input(tmp_path: Path) -> None:
    from grounding_ops.data.prepare import PrepareError

    with pytest.raises(PrepareError, match="does not exist"):
        prepare([str(tmp_path / "nope.jsonl")], images_root=str(tmp_path), output_uri=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == []


def test_the_batch_frame_is_the_frame_of_the_row_features(tmp_path: Path) -> None:
    import pandas as pd
    from pandas.testing import assert_frame_equal

    from grounding_ops.data.images import ImageCheckCache
    from grounding_ops.data.readers import read_records
    from grounding_ops.data.schema import CanonicalRecord
    from grounding_ops.data.validation import feature_frame, pixel_boxes, row_features

    root = _write_inputs(tmp_path)
    records = [r for r in read_records(tmp_path / "ann.jsonl") if isinstance(r, CanonicalRecord)]
    records.append(CanonicalRecord("norm", "ok.png", "p", [[0.1, 0.2, 0.5, 0.9], "x"], "lab", box_units="normalized"))
    records.append(CanonicalRecord("two", "ok.png", "p", [[1, 2, 5, 9], [0, 3, 7, 4]], "lab", width=W))
    records.append(CanonicalRecord("bool", "ok.png", "p", [[True, 0, 5, 5]], "lab"))
    records.append(CanonicalRecord("inf", "ok.png", "p", [[0, 0, float("inf"), 5]], "lab"))
    checked = ImageCheckCache(ImageResolver(root), 10**8).get_many({r.image for r in records})
    checks = [checked[r.image] for r in records]
    boxes = [pixel_boxes(r, c) for r, c in zip(records, checks)]
    firsts = [i % 3 != 0 for i in range(len(records))]
    expected = pd.DataFrame([row_features(*args, i) for i, args in enumerate(zip(records, boxes, checks, firsts))])
    assert_frame_equal(feature_frame(records, boxes, checks, firsts), expected)


def test_the_suite_in_its_own_process_gives_the_same_rows_and_reasons(tmp_path: Path, monkeypatch) -> None:
    from grounding_ops.data import gx_process, validation
    from grounding_ops.data.prepare import QUARANTINE, VALID, validate_inputs

    root = _write_inputs(tmp_path)
    settings = PrepareSettings(max_quarantine_fraction=1.0, suite=SuiteConfig(allowed_sources=("lab",)), batch_rows=7)
    here = validate_inputs(
        [str(tmp_path / "ann.jsonl")], images_root=str(root), settings=settings, work_dir=tmp_path / "a"
    )
    monkeypatch.setattr(validation, "GX_PROCESS_MIN_BYTES", 0)
    monkeypatch.setattr(gx_process, "imported_here", lambda: False)
    try:
        there = validate_inputs(
            [str(tmp_path / "ann.jsonl")], images_root=str(root), settings=settings, work_dir=tmp_path / "b"
        )
        assert gx_process.running() is not None  # it ran in the other process
        # no read-ahead (each batch's verdicts before the next is read): the same files again
        lockstep = validate_inputs(
            [str(tmp_path / "ann.jsonl")],
            images_root=str(root),
            settings=replace(settings, read_ahead_batches=0),
            work_dir=tmp_path / "c",
        )
        # prepare renders the Data Docs there while it exports, and publishes them
        published = prepare(
            [str(tmp_path / "ann.jsonl")], images_root=str(root), output_uri=str(tmp_path / "out"), settings=settings
        )
    finally:
        gx_process.close()
    assert there.counts == here.counts == lockstep.counts and there.reasons == here.reasons and there.batches == 9
    for name in (VALID, QUARANTINE):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    assert (tmp_path / "b" / "validation" / "docs" / "index.html").is_file()
    assert (Path(published.dataset_uri) / "validation" / "docs" / "index.html").is_file()

"""Export of the valid rows: the columnar table equals the row contract, and each distinct
image is read and resized once however the rows using it are ordered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _rows(n: int) -> list[dict]:
    from grounding_ops.protocols import build_prompt

    phrases = ["the red circle", 'a b\u00e9 "quoted" <b>', "x" * 300]
    return [
        {
            "record_id": f"r{i}",
            "source": f"src{i % 2}",
            "phrase": phrases[i % 3],
            "boxes": [[float(i), 2.0, 30.5, 40.0]] + ([[0, 0, 1, 1]] * (i % 3)),
            "image_bytes": bytes([i % 7]) * (i + 1),
            "image_size": (64 + i, 48),
            "resized_size": (56, 56 + 28 * (i % 2)),
            "prompt": build_prompt(phrases[i % 3], "qwen2.5-vl"),
        }
        for i in range(n)
    ]


def test_the_columnar_table_holds_exactly_the_rows_build_row_makes() -> None:
    import pyarrow as pa

    from grounding_ops.data.export import build_row, build_table, verl_schema

    rows = _rows(7)
    common = {"protocol": "qwen2.5-vl", "min_pixels": 3136, "max_pixels": 12544}
    expected = pa.Table.from_pylist(
        [build_row(**row, split="val", index=10 + i, **common) for i, row in enumerate(rows)], schema=verl_schema()
    )
    table = build_table(
        record_ids=[r["record_id"] for r in rows],
        sources=[r["source"] for r in rows],
        phrases=[r["phrase"] for r in rows],
        boxes=[r["boxes"] for r in rows],
        image_bytes=[r["image_bytes"] for r in rows],
        image_sizes=[r["image_size"] for r in rows],
        resized_sizes=[r["resized_size"] for r in rows],
        prompts=[r["prompt"] for r in rows],
        split="val",
        first_index=10,
        **common,
    )
    assert table.schema == verl_schema()
    assert table.to_pylist() == expected.to_pylist()
    with pytest.raises(ValueError, match="exactly one <image> placeholder"):
        build_table(
            record_ids=["bad"],
            sources=["s"],
            phrases=["p"],
            boxes=[[[0, 0, 1, 1]]],
            image_bytes=[b"x"],
            image_sizes=[(4, 4)],
            resized_sizes=[(4, 4)],
            prompts=[[{"role": "user", "content": "no placeholder"}]],
            split="train",
            first_index=0,
            **common,
        )


def test_row_groups_end_where_adding_rows_one_by_one_ends_them(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from grounding_ops.data.export import RowGroupWriter, build_row, verl_schema

    rows = [
        build_row(**row, split="train", index=i, protocol="p", min_pixels=1, max_pixels=2)
        for i, row in enumerate(_rows(11))
    ]
    with RowGroupWriter(tmp_path / "a.parquet", max_rows=4, max_bytes=15) as writer:
        table = pa.Table.from_pylist(rows, schema=verl_schema())
        writer.add_table(table.slice(0, 5), [len(r["images"][0]["bytes"]) for r in rows[:5]])
        writer.add_table(table.slice(5), [len(r["images"][0]["bytes"]) for r in rows[5:]])
    # image bytes 1..11: a group closes at 4 rows or 15 bytes, whichever comes first
    metadata = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 3, 2, 2]
    assert pq.read_table(tmp_path / "a.parquet").to_pylist() == rows


def test_export_reads_and_resizes_each_distinct_image_once(tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    import grounding_ops.data.export as export
    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.prepare import VALID, PrepareSettings, valid_row, write_parquet
    from grounding_ops.data.schema import CanonicalRecord

    images = tmp_path / "images"
    images.mkdir()
    for i in range(100):  # more distinct images than a small cache of entries would hold
        Image.new("RGB", (40 + i % 5, 40), (i, 0, 0)).save(images / f"{i}.png")
    resolver = ImageResolver(images)
    checks = {f"{i}.png": resolver.check(f"{i}.png", 10**8) for i in range(100)}
    (tmp_path / "work").mkdir()
    (tmp_path / "export").mkdir()
    with open(tmp_path / "work" / VALID, "w") as handle:
        for r in range(1000):  # every image used ten times, cycling
            ref = f"{r % 100}.png"
            record = CanonicalRecord(f"r{r}", ref, "the thing", [[1, 1, 9, 9]], "s", group=f"g{r}")
            handle.write(json.dumps(valid_row(record, record.boxes, checks[ref])) + "\n")
    reads: list[str] = []
    resizes: list[tuple[int, int]] = []
    original_read, original_resize = ImageResolver.read, export.resize_encoded
    monkeypatch.setattr(ImageResolver, "read", lambda self, ref, *a: reads.append(ref) or original_read(self, ref, *a))
    monkeypatch.setattr(
        export, "resize_encoded", lambda data, size: resizes.append(size) or original_resize(data, size)
    )
    settings = PrepareSettings(val_fraction=0.0, test_fraction=0.0, min_pixels=56 * 56, max_pixels=112 * 112)
    assert write_parquet(tmp_path / "work", tmp_path / "export", settings, resolver)["train"] == 1000
    assert sorted(reads) == sorted(checks) and len(resizes) == 100
    table = pq.read_table(tmp_path / "export" / "train.parquet")
    assert table.column("extra_info").to_pylist()[999]["id"] == "r999"
    first, eleventh = (table.column("images")[i].as_py()[0]["bytes"] for i in (0, 100))
    assert first == eleventh and Image.open(__import__("io").BytesIO(first)).size == (56, 56)

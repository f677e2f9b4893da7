"""VeRL 0.9.1 ``RLHFDataset`` parquet rows, written in bounded-memory row groups.

Row layout (the cross-team contract): ``data_source`` ``"grounding/<source>"``,
``prompt`` (chat messages; the user content holds one ``<image>``), ``images``
(``[{"bytes": the image already resized to resized_size, "min_pixels", "max_pixels"}]`` —
VeRL hands the dict to ``qwen_vl_utils.fetch_image``, whose resize rule maps an image of
that size onto itself, and every rollout carries the small image, not the original),
``ability`` ``"grounding"``, ``reward_model`` ``{"style": "rule", "ground_truth": {...}}``
(``image_size`` is the ORIGINAL size, the frame of the boxes; ``resized_size`` the one the
model sees) and ``extra_info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ABILITY = "grounding"
DEFAULT_ROW_GROUP_ROWS = 512
DEFAULT_ROW_GROUP_BYTES = 32 * 1024 * 1024


def verl_schema() -> Any:
    import pyarrow as pa

    size = pa.list_(pa.int64())
    ground_truth = pa.struct(
        [
            ("boxes", pa.list_(pa.list_(pa.float64()))),
            ("protocol", pa.string()),
            ("image_size", size),
            ("resized_size", size),
        ]
    )
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            (
                "images",
                pa.list_(pa.struct([("bytes", pa.binary()), ("min_pixels", pa.int64()), ("max_pixels", pa.int64())])),
            ),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", ground_truth)])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()),
                        ("index", pa.int64()),
                        ("id", pa.string()),
                        ("source", pa.string()),
                        ("phrase", pa.string()),
                        ("protocol", pa.string()),
                        ("image_size", size),
                        ("resized_size", size),
                    ]
                ),
            ),
        ]
    )


def resize_encoded(image_bytes: bytes, size: tuple[int, int]) -> bytes:
    """``image_bytes`` re-encoded at ``size`` (width, height); the same bytes when already that size.

    JPEG stays JPEG (quality 95), anything else becomes PNG; the resampling is PIL's bicubic,
    the one ``qwen_vl_utils.fetch_image`` uses.
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        if image.size == (int(size[0]), int(size[1])):
            return image_bytes
        jpeg = image.format == "JPEG"
        mode = "RGB" if image.mode not in ("RGB", "L") else image.mode
        resized = image.convert(mode).resize((int(size[0]), int(size[1])), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    if jpeg:
        resized.save(out, format="JPEG", quality=95)
    else:
        resized.save(out, format="PNG")
    return out.getvalue()


def build_row(
    *,
    record_id: str,
    source: str,
    phrase: str,
    boxes: list[list[float]],
    image_bytes: bytes,
    image_size: tuple[int, int],
    resized_size: tuple[int, int],
    prompt: list[dict[str, str]],
    protocol: str,
    split: str,
    index: int,
    min_pixels: int,
    max_pixels: int,
) -> dict[str, Any]:
    if sum(str(m.get("content", "")).count("<image>") for m in prompt) != 1:
        raise ValueError(f"the prompt for row {record_id!r} must hold exactly one <image> placeholder")
    image_size_list = [int(image_size[0]), int(image_size[1])]
    resized_list = [int(resized_size[0]), int(resized_size[1])]
    return {
        "data_source": f"grounding/{source}",
        "prompt": [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt],
        "images": [{"bytes": image_bytes, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}],
        "ability": ABILITY,
        "reward_model": {
            "style": "rule",
            "ground_truth": {
                "boxes": [[float(v) for v in box] for box in boxes],
                "protocol": protocol,
                "image_size": image_size_list,
                "resized_size": resized_list,
            },
        },
        "extra_info": {
            "split": split,
            "index": int(index),
            "id": record_id,
            "source": source,
            "phrase": phrase,
            "protocol": protocol,
            "image_size": image_size_list,
            "resized_size": resized_list,
        },
    }


def build_table(
    *,
    record_ids: list[str],
    sources: list[str],
    phrases: list[str],
    boxes: list[list[list[float]]],
    image_bytes: list[bytes],
    image_sizes: list[tuple[int, int]],
    resized_sizes: list[tuple[int, int]],
    prompts: list[list[dict[str, str]]],
    protocol: str,
    split: str,
    first_index: int,
    min_pixels: int,
    max_pixels: int,
) -> Any:
    """The rows :func:`build_row` makes, for many rows at once, as one Arrow table in
    :func:`verl_schema` (built column by column: the same values, several times faster than
    ``Table.from_pylist`` of row dicts). Rows may share their prompt and image objects."""
    import numpy as np
    import pyarrow as pa

    n = len(record_ids)
    checked: set[int] = set()
    for record_id, prompt in zip(record_ids, prompts):
        if id(prompt) not in checked:
            if sum(str(m.get("content", "")).count("<image>") for m in prompt) != 1:
                raise ValueError(f"the prompt for row {record_id!r} must hold exactly one <image> placeholder")
            checked.add(id(prompt))
    schema = verl_schema()
    int64, f64, string = pa.int64(), pa.float64(), pa.string()

    def offsets(lengths: Any) -> Any:
        out = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=out[1:])
        return pa.array(out, pa.int32())

    def size_list(sizes: list[tuple[int, int]]) -> Any:
        flat = pa.array(np.asarray(sizes, dtype=np.int64).reshape(-1), int64)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), flat)

    messages = [m for prompt in prompts for m in prompt]
    prompt = pa.ListArray.from_arrays(
        offsets([len(p) for p in prompts]),
        pa.StructArray.from_arrays(
            [
                pa.array([str(m["role"]) for m in messages], string),
                pa.array([str(m["content"]) for m in messages], string),
            ],
            names=["role", "content"],
        ),
    )
    one_each = pa.array(np.arange(n + 1, dtype=np.int32))
    images = pa.ListArray.from_arrays(
        one_each,
        pa.StructArray.from_arrays(
            [
                pa.array(image_bytes, pa.binary()),
                pa.array(np.full(n, int(min_pixels), dtype=np.int64)),
                pa.array(np.full(n, int(max_pixels), dtype=np.int64)),
            ],
            names=["bytes", "min_pixels", "max_pixels"],
        ),
    )
    flat_boxes = [box for row in boxes for box in row]
    box_lists = pa.ListArray.from_arrays(
        offsets([len(row) for row in boxes]),
        pa.ListArray.from_arrays(
            offsets([len(box) for box in flat_boxes]),
            pa.array([float(v) for box in flat_boxes for v in box], f64),
        ),
    )
    image_size, resized_size = size_list(image_sizes), size_list(resized_sizes)
    protocols = pa.array([protocol] * n, string)
    ground_truth = pa.StructArray.from_arrays(
        [box_lists, protocols, image_size, resized_size], names=["boxes", "protocol", "image_size", "resized_size"]
    )
    reward_model = pa.StructArray.from_arrays(
        [pa.array(["rule"] * n, string), ground_truth], names=["style", "ground_truth"]
    )
    source_array = pa.array(sources, string)
    extra_info = pa.StructArray.from_arrays(
        [
            pa.array([split] * n, string),
            pa.array(np.arange(first_index, first_index + n, dtype=np.int64)),
            pa.array(record_ids, string),
            source_array,
            pa.array(phrases, string),
            protocols,
            image_size,
            resized_size,
        ],
        names=["split", "index", "id", "source", "phrase", "protocol", "image_size", "resized_size"],
    )
    columns = [
        pa.array([f"grounding/{s}" for s in sources], string),
        prompt,
        images,
        pa.array([ABILITY] * n, string),
        reward_model,
        extra_info,
    ]
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema)], schema=schema)


class RowGroupWriter:
    """Appends rows to one parquet file, flushing a row group every ``max_rows`` rows or
    ``max_bytes`` of image bytes, so memory stays flat whatever the number of rows."""

    def __init__(
        self, path: Path, *, max_rows: int = DEFAULT_ROW_GROUP_ROWS, max_bytes: int = DEFAULT_ROW_GROUP_BYTES
    ) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.schema = verl_schema()
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self._pending: list[Any] = []  # slices of added tables, not yet written
        self._rows = 0
        self._bytes = 0
        self.rows_written = 0

    def add(self, row: dict[str, Any]) -> None:
        import pyarrow as pa

        self.add_table(
            pa.Table.from_pylist([row], schema=self.schema), [sum(len(image["bytes"]) for image in row["images"])]
        )

    def add_table(self, table: Any, image_bytes: list[int]) -> None:
        """Append ``table`` (rows in :func:`verl_schema`); ``image_bytes``: each row's image
        bytes. Row groups end where adding the rows one by one would have flushed them."""
        start = 0
        for i, nbytes in enumerate(image_bytes):
            self._rows += 1
            self._bytes += nbytes
            if self._rows >= self.max_rows or self._bytes >= self.max_bytes:
                self._pending.append(table.slice(start, i + 1 - start))
                start = i + 1
                self.flush()
        if start < len(image_bytes):
            self._pending.append(table.slice(start))

    def flush(self) -> None:
        if not self._pending:
            return
        import pyarrow as pa

        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._writer.write_table(table, row_group_size=table.num_rows)
        self.rows_written += table.num_rows
        self._pending = []
        self._rows = 0
        self._bytes = 0

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> "RowGroupWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

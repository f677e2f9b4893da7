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
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self.rows_written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._bytes += sum(len(image["bytes"]) for image in row["images"])
        if len(self._rows) >= self.max_rows or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa

        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self.rows_written += len(self._rows)
        self._rows = []
        self._bytes = 0

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __enter__(self) -> "RowGroupWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""One reader per annotation format, all producing :class:`CanonicalRecord`.

Readers stream their input where the format allows it (JSONL line by line) and never
raise on a bad row: a row that cannot be parsed becomes a :class:`ParseFailure` with
its position, so it lands in the quarantine instead of being dropped or crashing the
run. Values that parse but are wrong (a negative coordinate, ``NaN``, a missing
phrase) are kept as read: the validation suite judges them and names the reason.

Ids derived by a reader (COCO, VinDr, MS-CXR rows without an ``id``) start with the
input file's stem, so several files in one run do not collide.

Formats whose rows must be grouped (several CSV rows per phrase, COCO annotations
per category) hold one entry per (image, phrase) in memory, not the images.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from grounding_ops.data.schema import FORMATS, CanonicalRecord, ParseFailure

# Raw rows longer than this are truncated in the quarantine (a binary file read as text).
MAX_RAW_CHARS = 4000

NO_FINDING = "no finding"


@dataclass
class SkippedRow:
    """An input row that carries no grounding example by design (VinDr's "No finding")."""

    position: str
    reason: str


ReadItem = CanonicalRecord | ParseFailure | SkippedRow


class RowError(ValueError):
    """A row has the wrong shape; the message says which field and what was expected."""


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "...<truncated>"


def _as_id(value: Any, field_name: str = "id") -> str:
    if isinstance(value, bool) or value is None:
        raise RowError(f"'{field_name}' must be a string or an integer, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise RowError(f"'{field_name}' must be a non-empty string or an integer, got {value!r}")


def _optional_int(value: Any, field_name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"'{field_name}' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise RowError(f"'{field_name}' must be an integer, got {value!r}") from None
        if number.is_integer():
            return int(number)
    raise RowError(f"'{field_name}' must be an integer, got {value!r}")


def _optional_text(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    raise RowError(f"'{field_name}' must be a string, got {type(value).__name__}")


def _number_or_raw(value: Any) -> Any:
    """A CSV cell as a float when it is one; otherwise the cell itself (validation rejects it)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _xywh_to_xyxy(x: Any, y: Any, w: Any, h: Any) -> list[Any]:
    values = [_number_or_raw(v) for v in (x, y, w, h)]
    if all(isinstance(v, float) for v in values):
        x0, y0, width, height = values
        return [x0, y0, x0 + width, y0 + height]
    return values  # left as read; validation reports "four finite numbers"


# --------------------------------------------------------------------------- JSONL


def _record_from_object(obj: Any, position: str, default_source: str, box_units: str) -> CanonicalRecord:
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise RowError("missing required field 'id'")
    record_id = _as_id(obj["id"])
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RowError("'image' must be a non-empty path relative to the images root or an s3:// URI")
    boxes = obj.get("boxes", [])
    if boxes is None:
        boxes = []
    if not isinstance(boxes, list):
        raise RowError(f"'boxes' must be a list of [x1, y1, x2, y2], got {type(boxes).__name__}")
    source = _optional_text(obj.get("source"), "source") or default_source
    group = obj.get("group")
    return CanonicalRecord(
        id=record_id,
        image=image.strip(),
        phrase=_optional_text(obj.get("phrase"), "phrase"),
        boxes=boxes,
        source=source,
        width=_optional_int(obj.get("width"), "width"),
        height=_optional_int(obj.get("height"), "height"),
        group=None if group is None else _as_id(group, "group"),
        box_units=box_units,
        position=position,
        raw=obj,
    )


def read_jsonl(path: Path, *, source: str, box_units: str = "pixel") -> Iterator[ReadItem]:
    """The canonical JSONL (``box_units="normalized"``: boxes in 0..1 of the image)."""
    name = path.name
    with open(path, "rb") as handle:
        for lineno, raw_line in enumerate(handle, start=1):
            position = f"{name}:{lineno}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield ParseFailure(position, f"line is not UTF-8 text: {exc.reason}",
                                   _truncate(raw_line.decode("utf-8", "replace")))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield ParseFailure(position, f"invalid JSON: {exc.msg} (column {exc.colno})", _truncate(line.rstrip("\n")))
                continue
            try:
                yield _record_from_object(obj, position, source, box_units)
            except RowError as exc:
                known_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) else None
                yield ParseFailure(position, str(exc), obj, id=None if known_id is None else str(known_id))


def read_normalized(path: Path, *, source: str) -> Iterator[ReadItem]:
    """Canonical JSONL whose boxes are normalized 0..1 ``[x1, y1, x2, y2]``."""
    return read_jsonl(path, source=source, box_units="normalized")


# --------------------------------------------------------------------------- COCO


def read_coco(path: Path, *, source: str) -> Iterator[ReadItem]:
    """COCO detection JSON. The phrase is the annotation's ``caption``/``phrase`` when it
    has one (one record per annotation), otherwise the category name (one record per
    image and category, holding all its boxes)."""
    name = path.name
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        yield ParseFailure(name, f"the COCO file is not valid JSON: {exc}", None)
        return
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        yield ParseFailure(name, "a COCO file needs a top-level object with 'images', 'annotations' and 'categories' lists",
                           None)
        return
    images: dict[Any, dict[str, Any]] = {}
    for index, image in enumerate(document.get("images") or []):
        if isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str):
            images[image["id"]] = image
        else:
            yield ParseFailure(f"{name}:images[{index}]", "an image entry needs 'id' and 'file_name'", image)
    categories = {
        c["id"]: str(c.get("name", c["id"]))
        for c in document.get("categories") or []
        if isinstance(c, dict) and "id" in c
    }
    grouped: dict[tuple[Any, Any], list[tuple[int, dict[str, Any]]]] = {}
    for index, ann in enumerate(document["annotations"]):
        position = f"{name}:annotations[{index}]"
        if not isinstance(ann, dict):
            yield ParseFailure(position, "an annotation must be an object", ann)
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            yield ParseFailure(position, f"annotation refers to unknown image_id {ann.get('image_id')!r}", ann,
                               id=None if ann.get("id") is None else str(ann.get("id")))
            continue
        phrase = ann.get("caption", ann.get("phrase"))
        if phrase is None and ann.get("category_id") not in categories:
            yield ParseFailure(position, f"annotation has no caption and an unknown category_id {ann.get('category_id')!r}",
                               ann, id=None if ann.get("id") is None else str(ann.get("id")))
            continue
        if phrase is not None:
            try:
                yield _coco_record(name, image, [(index, ann)], phrase, source,
                                   f"{path.stem}:{image['id']}-{ann.get('id', index)}")
            except RowError as exc:
                yield ParseFailure(position, str(exc), ann)
            continue
        grouped.setdefault((ann["image_id"], ann["category_id"]), []).append((index, ann))
    for (image_id, category_id), anns in grouped.items():
        try:
            yield _coco_record(name, images[image_id], anns, categories[category_id], source,
                               f"{path.stem}:{image_id}-cat{category_id}")
        except RowError as exc:
            yield ParseFailure(f"{name}:annotations[{anns[0][0]}]", str(exc), [a for _, a in anns])


def _coco_record(name: str, image: dict[str, Any], anns: list[tuple[int, dict[str, Any]]], phrase: Any,
                 source: str, record_id: str) -> CanonicalRecord:
    boxes: list[Any] = []
    for _, ann in anns:
        bbox = ann.get("bbox")
        boxes.append(_xywh_to_xyxy(*bbox) if isinstance(bbox, list) and len(bbox) == 4 else bbox)
    indices = ",".join(str(i) for i, _ in anns[:10]) + (",..." if len(anns) > 10 else "")
    return CanonicalRecord(
        id=record_id,
        image=str(image["file_name"]),
        phrase=_optional_text(phrase, "caption"),
        boxes=boxes,
        source=source,
        width=_optional_int(image.get("width"), "width"),
        height=_optional_int(image.get("height"), "height"),
        group=str(image["id"]),
        position=f"{name}:annotations[{indices}]",
        raw=[ann for _, ann in anns],
    )


# --------------------------------------------------------------------------- CSV formats


def _open_csv(path: Path) -> Iterator[tuple[int, dict[str, str]] | ParseFailure]:
    name = path.name
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            line = reader.line_num
            if None in row:  # more cells than header columns
                yield ParseFailure(f"{name}:{line}", "row has more cells than the header has columns",
                                   {k: v for k, v in row.items() if k is not None})
                continue
            yield line, row


def _image_with_extension(image_id: str, extension: str) -> str:
    return image_id if PurePosixPath(image_id).suffix else f"{image_id}{extension}"


def read_vindr_csv(path: Path, *, source: str, image_extension: str = ".png") -> Iterator[ReadItem]:
    """VinDr-CXR-style CSV: ``image_id, class_name, x_min, y_min, x_max, y_max`` (one row
    per box, several per finding; "No finding" rows without boxes are skipped, counted)."""
    name = path.name
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for item in _open_csv(path):
        if isinstance(item, ParseFailure):
            yield item
            continue
        line, row = item
        position = f"{name}:{line}"
        image_id = (row.get("image_id") or "").strip()
        class_name = (row.get("class_name") or "").strip()
        if not image_id:
            yield ParseFailure(position, "missing 'image_id' (VinDr CSV columns: image_id, class_name, x_min, "
                               "y_min, x_max, y_max)", row)
            continue
        if class_name.lower() == NO_FINDING:
            yield SkippedRow(position, "no finding (no box)")
            continue
        key = (image_id, class_name)
        entry = grouped.setdefault(key, {"lines": [], "boxes": [], "width": row.get("width"),
                                         "height": row.get("height")})
        entry["lines"].append(line)
        entry.setdefault("rows", []).append(row)
        entry["boxes"].append([_number_or_raw(row.get(c)) for c in ("x_min", "y_min", "x_max", "y_max")])
    for (image_id, class_name), entry in grouped.items():
        position = f"{name}:{','.join(str(n) for n in entry['lines'][:10])}"
        try:
            yield CanonicalRecord(
                id=f"{path.stem}:{image_id}:{class_name}",
                image=_image_with_extension(image_id, image_extension),
                phrase=class_name,
                boxes=entry["boxes"],
                source=source,
                width=_optional_int(entry["width"], "width"),
                height=_optional_int(entry["height"], "height"),
                group=image_id,
                position=position,
                raw=entry["rows"],
            )
        except RowError as exc:
            yield ParseFailure(position, str(exc), {"image_id": image_id, "class_name": class_name})


def _first(row: dict[str, Any], *names: str) -> Any:
    for column in names:
        value = row.get(column)
        if value not in (None, ""):
            return value
    return None


def _mscxr_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]] | ParseFailure]:
    name = path.name
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                text = raw.decode("utf-8", "replace")
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield ParseFailure(f"{name}:{lineno}", f"invalid JSON: {exc.msg}", _truncate(text.rstrip()))
                    continue
                if not isinstance(obj, dict):
                    yield ParseFailure(f"{name}:{lineno}", "expected a JSON object", obj)
                    continue
                yield f"{name}:{lineno}", obj
        return
    for item in _open_csv(path):
        if isinstance(item, ParseFailure):
            yield item
        else:
            yield f"{name}:{item[0]}", item[1]


def read_mscxr(path: Path, *, source: str, image_extension: str = ".png") -> Iterator[ReadItem]:
    """MS-CXR-style rows (CSV or JSONL): image (``image``/``path``/``dicom_id``), phrase
    (``phrase``/``label_text``), a box as ``x, y, w, h`` in pixels, optional ``width``/
    ``image_width``, ``height``/``image_height`` and ``group``/``study_id``/``subject_id``.
    Rows with the same image and phrase become one record with several boxes."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for item in _mscxr_rows(path):
        if isinstance(item, ParseFailure):
            yield item
            continue
        position, row = item
        image = _first(row, "image", "path", "dicom_id")
        phrase = _first(row, "phrase", "label_text")
        if image is None:
            yield ParseFailure(position, "missing image column ('image', 'path' or 'dicom_id')", row)
            continue
        image = _image_with_extension(str(image).strip(), image_extension)
        key = (image, "" if phrase is None else str(phrase))
        entry = grouped.setdefault(key, {"positions": [], "boxes": [], "row": row, "phrase": phrase})
        entry["positions"].append(position)
        entry.setdefault("rows", []).append(row)
        entry["boxes"].append(_xywh_to_xyxy(row.get("x"), row.get("y"), row.get("w"), row.get("h")))
    for (image, phrase_key), entry in grouped.items():
        row = entry["row"]
        position = entry["positions"][0] + (f" (+{len(entry['positions']) - 1} rows)" if len(entry["positions"]) > 1 else "")
        try:
            explicit_id = _first(row, "id")
            phrase = entry["phrase"]
            group = _first(row, "group", "study_id", "subject_id")
            yield CanonicalRecord(
                id=_as_id(explicit_id) if explicit_id is not None else f"{path.stem}:{image}:{phrase_key}",
                image=image,
                phrase=phrase.strip() if isinstance(phrase, str) else None if phrase is None else str(phrase),
                boxes=entry["boxes"],
                source=str(_first(row, "source") or source),
                width=_optional_int(_first(row, "width", "image_width"), "width"),
                height=_optional_int(_first(row, "height", "image_height"), "height"),
                group=None if group is None else str(group),
                position=position,
                raw=entry["rows"],
            )
        except RowError as exc:
            yield ParseFailure(position, str(exc), row)


READERS: dict[str, Callable[..., Iterator[ReadItem]]] = {
    "jsonl": read_jsonl,
    "coco": read_coco,
    "vindr-csv": read_vindr_csv,
    "mscxr": read_mscxr,
    "normalized": read_normalized,
}
assert set(READERS) == set(FORMATS)


def detect_format(path: Path) -> str:
    """Guess the format from the file name (``.jsonl`` → jsonl, ``.json`` → coco, ``.csv`` →
    vindr-csv when it has VinDr's columns, else mscxr)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "coco"
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), [])
        return "vindr-csv" if {"image_id", "class_name", "x_min"} <= set(header) else "mscxr"
    raise ValueError(f"cannot tell the format of {path.name}; pass --format ({', '.join(FORMATS)})")


def read_records(path: Path, fmt: str | None = None, *, source: str | None = None) -> Iterator[ReadItem]:
    """Read one input file in ``fmt`` (detected from its name when None)."""
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return READERS[fmt](path, source=source or path.stem)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

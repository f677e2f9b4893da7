"""One reader per annotation format, all producing :class:`CanonicalRecord`.

Readers stream their input where the format allows it (JSONL line by line, parquet by
record batch) and never raise on a bad row: a row that cannot be parsed becomes a
:class:`ParseFailure` with its position, so it lands in the quarantine instead of being
dropped or crashing the run. Values that parse but are wrong (a negative coordinate,
``NaN``, a missing phrase) are kept as read: the validation suite judges them and names
the reason. Hostile rows (JSON nested thousands deep, integers of thousands of digits,
lines or documents over the size caps) become parse failures too.

Ids derived by a reader start with the input file's stem, so several files in one run do
not collide.

Every reader takes :class:`ReadOptions` (multi-reader handling, the group key, whether the
release's own split column is used) and fills a :class:`ReadInfo` that the manifest
records: which group key was used and, for multi-reader sets, how many readers there were
and what was done with their boxes.

:data:`READERS` is the one registry: a new format is a function here plus its tests;
``FORMATS``, ``--format`` and the ``grounding_data`` form are built from it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import re
import sqlite3
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from grounding_ops.data.schema import SPLIT_ALIASES, CanonicalRecord, ParseFailure

# Raw rows longer than this are truncated in the quarantine (a binary file read as text).
MAX_RAW_CHARS = 4000

NO_FINDING = "no finding"

# Size caps: a row or document over them is quarantined, never read whole into memory.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DOCUMENT_BYTES = 2 * 1024 * 1024 * 1024
# Integers longer than this in JSON are read as floats (huge ones become inf: validation
# rejects them as non-finite instead of the run failing on a 4000-digit number).
MAX_INT_DIGITS = 40

MULTI_READER_MODES = ("fuse", "one", "all")
GROUP_KEYS = ("auto", "image", "patient", "study")  # or "column:<name>"


@dataclass(frozen=True)
class ReadOptions:
    """How readers interpret a release.

    * ``multi_reader``: for sets where several annotators box the same finding (VinDr-CXR's
      ``rad_id``, PadChest-GR's two readers): ``fuse`` (default) merges each finding's boxes
      across readers by IoU clustering (see :func:`fuse_reader_boxes`), ``one`` keeps one
      reader (``reader_id``, or per image the first reader id in sorted order), ``all`` keeps
      every reader's box as a separate ground-truth box.
    * ``group_by``: the key that keeps related rows in one split: ``auto`` (the format's
      default: the patient where the release names one, else the image), ``image``,
      ``patient``, ``study`` or ``column:<name>`` (an explicit column of the input).
    * ``source_split``: use the release's own split column (MS-CXR ``split``, RefCOCO
      ``split``, PadChest-GR master table) instead of the group hash.
    """

    multi_reader: str = "fuse"
    reader_id: str | None = None
    fusion_iou: float = 0.3
    group_by: str = "auto"
    source_split: bool = False
    image_extension: str = ".png"
    box_format: str = "auto"  # VeRL parquet lists: auto (xyxy; normalized when all in 0..1), xyxy, xywh
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES

    def check(self) -> None:
        if self.multi_reader not in MULTI_READER_MODES:
            raise ValueError(
                f"--multi-reader must be one of {', '.join(MULTI_READER_MODES)}, got {self.multi_reader!r}"
            )
        if not 0.0 < self.fusion_iou <= 1.0:
            raise ValueError(f"--fusion-iou must be in (0, 1], got {self.fusion_iou}")
        if self.group_by not in GROUP_KEYS and not (self.group_by.startswith("column:") and self.group_by[7:].strip()):
            raise ValueError(f"--group-by must be one of {', '.join(GROUP_KEYS)} or column:NAME, got {self.group_by!r}")
        if self.box_format not in ("auto", "xyxy", "xywh"):
            raise ValueError(f"--box-format must be auto, xyxy or xywh, got {self.box_format!r}")
        if self.max_line_bytes <= 0 or self.max_document_bytes <= 0:
            raise ValueError("the line and document size caps must be positive")
        if not self.image_extension.startswith("."):
            raise ValueError(f"--image-extension must start with a dot, e.g. .png, got {self.image_extension!r}")


@dataclass
class ReadInfo:
    """What a reader did with one input, for the manifest."""

    format: str = ""
    group_by: str = "image"
    split_from: str = "group hash"
    box_convention: str = ""
    multi_reader: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
        if "\x00" in value:
            raise RowError(f"'{field_name}' contains a NUL character")
        return value.strip()
    raise RowError(f"'{field_name}' must be a non-empty string or an integer, got {_truncate(repr(value))}")


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
            raise RowError(f"'{field_name}' must be an integer, got {_truncate(repr(value))}") from None
        if number.is_integer():
            return int(number)
    raise RowError(f"'{field_name}' must be an integer, got {_truncate(repr(value))}")


def _optional_text(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    raise RowError(f"'{field_name}' must be a string, got {type(value).__name__}")


def _image_ref(value: Any, field_name: str = "image") -> str:
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"'{field_name}' must be a non-empty path relative to the images root or an s3:// URI")
    if "\x00" in value:
        raise RowError(f"'{field_name}' contains a NUL character")
    return value.strip()


def _number_or_raw(value: Any) -> Any:
    """A cell as a float when it is one; otherwise the cell itself (validation rejects it)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.copysign(math.inf, value)
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


def _bounded_int(text: str) -> int | float:
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that turns hostile input into :class:`RowError`: nesting too deep for
    the parser, integers of thousands of digits (read as floats)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise RowError(f"not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise RowError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise RowError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. number literals Python refuses
        raise RowError(f"invalid JSON: {exc}") from None


def _lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` of each line; ``None`` for a line over ``max_line_bytes``
    (its bytes are skipped without holding them)."""
    with open(path, "rb") as handle:
        lineno = 0
        while True:
            line = handle.readline(max_line_bytes + 1)
            if not line:
                return
            lineno += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while True:  # skip the rest of the long line in bounded chunks
                    rest = handle.readline(1 << 20)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield lineno, None
                continue
            yield lineno, line


def _json_lines(path: Path, options: ReadOptions) -> Iterator[tuple[str, Any] | ParseFailure]:
    """Each non-empty line of a JSONL file parsed, or a parse failure saying why not."""
    name = path.name
    for lineno, raw_line in _lines(path, options.max_line_bytes):
        position = f"{name}:{lineno}"
        if raw_line is None:
            yield ParseFailure(
                position, f"line is longer than {options.max_line_bytes} bytes (the line size cap)", None
            )
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield ParseFailure(
                position, f"line is not UTF-8 text: {exc.reason}", _truncate(raw_line.decode("utf-8", "replace"))
            )
            continue
        if not line.strip():
            continue
        try:
            yield position, loads_json(line)
        except RowError as exc:
            yield ParseFailure(position, str(exc), _truncate(line.rstrip("\n")))


def _load_document(path: Path, options: ReadOptions, what: str) -> Any:
    """A whole JSON document, refused (RowError) over the document size cap."""
    size = path.stat().st_size
    if size > options.max_document_bytes:
        raise RowError(
            f"the {what} file is {size} bytes, over the document size cap of {options.max_document_bytes} "
            "bytes (raise --max-document-bytes if the machine has the memory)"
        )
    try:
        return loads_json(path.read_bytes())
    except RowError as exc:
        raise RowError(f"the {what} file is not valid JSON: {exc}") from None


def _failure_id(obj: Any, *keys: str) -> str | None:
    if isinstance(obj, dict):
        for key in keys:
            value = obj.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return _truncate(str(value))
    return None


# --------------------------------------------------------------------------- groups and splits


@dataclass(frozen=True)
class GroupKeys:
    """The group keys a format knows for one row (None: unknown for this row)."""

    image: str
    patient: str | None = None
    study: str | None = None


def _resolve_group_key(options: ReadOptions, available: Iterable[str], default: str, fmt: str) -> str:
    """The group key a reader uses: ``options.group_by`` checked against what ``fmt`` offers."""
    wanted = default if options.group_by == "auto" else options.group_by
    if wanted.startswith("column:") or wanted in available:
        return wanted
    raise ValueError(
        f"--group-by {wanted} is not available for {fmt} (it offers: {', '.join(['auto', *available])} or column:NAME)"
    )


def _group_value(key: str, keys: GroupKeys, row: Any) -> str:
    if key.startswith("column:"):
        column = key[7:]
        value = row.get(column) if isinstance(row, dict) else None
        if value in (None, ""):
            raise RowError(f"the group column {column!r} is missing or empty in this row")
        return _as_id(value, column)
    value = getattr(keys, key)
    if not value:
        raise RowError(f"this row has no {key} to group by (use --group-by image or column:NAME)")
    return value


class _AutoGroup:
    """``--group-by auto`` for formats that know patients: the patient when the row has
    one, else its study, else its image; how many rows fell back is noted for the manifest."""

    def __init__(self, key: str, auto: bool) -> None:
        self.key, self.auto = key, auto
        self.fallbacks: Counter[str] = Counter()

    def value(self, keys: GroupKeys, row: Any) -> str:
        if not self.auto:
            return _group_value(self.key, keys, row)
        for key in ("patient", "study", "image"):
            value = getattr(keys, key)
            if value:
                if key != self.key:
                    self.fallbacks[key] += 1
                return value
        raise RowError("this row has no image to group by")

    def note(self, info: ReadInfo) -> None:
        for key, count in sorted(self.fallbacks.items()):
            info.notes.append(f"{count} rows had no {self.key}: grouped by {key}")


def _split_value(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text not in SPLIT_ALIASES:
        raise RowError(
            f"the release's split column says {_truncate(repr(value))}; expected one of "
            f"{', '.join(sorted(SPLIT_ALIASES))}"
        )
    return SPLIT_ALIASES[text]


# --------------------------------------------------------------------------- multi-reader boxes


def box_iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _finite_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, float) and math.isfinite(v) for v in box)
        and box[2] > box[0]
        and box[3] > box[1]
    )


def fuse_reader_boxes(by_reader: dict[str, list[Any]], iou_threshold: float) -> list[Any]:
    """Consensus boxes of one finding drawn by several readers (IoU clustering).

    Boxes are taken reader by reader (readers in sorted order, boxes in input order); each
    box joins the existing cluster whose current consensus box it overlaps most, provided
    the IoU is at least ``iou_threshold`` and the cluster has no box of the same reader
    yet; otherwise it starts a new cluster. Each cluster becomes the coordinate-wise mean of
    its boxes (weighted boxes fusion with equal reader weights). A finding seen by one
    reader only keeps that reader's box. Boxes that are not four finite numbers with
    ``x1 < x2, y1 < y2`` are kept as they are, so validation still rejects the finding.
    """
    clusters: list[dict[str, Any]] = []
    invalid: list[Any] = []
    for reader in sorted(by_reader):
        for box in by_reader[reader]:
            if not _finite_box(box):
                invalid.append(box)
                continue
            best, best_iou = None, iou_threshold
            for cluster in clusters:
                if reader in cluster["readers"]:
                    continue
                iou = box_iou(cluster["box"], box)
                if iou >= best_iou:
                    best, best_iou = cluster, iou
            if best is None:
                clusters.append({"readers": {reader}, "boxes": [box], "box": list(box)})
            else:
                best["readers"].add(reader)
                best["boxes"].append(box)
                n = len(best["boxes"])
                best["box"] = [sum(b[i] for b in best["boxes"]) / n for i in range(4)]
    return [[round(v, 3) for v in c["box"]] for c in clusters] + invalid


def combine_readers(
    by_reader: dict[str, list[Any]], options: ReadOptions, first_reader: str | None = None
) -> list[Any]:
    """The ground-truth boxes of one finding under ``options.multi_reader``."""
    if options.multi_reader == "all" or len(by_reader) <= 1:
        return [box for reader in sorted(by_reader) for box in by_reader[reader]]
    if options.multi_reader == "one":
        chosen = options.reader_id or first_reader or min(by_reader)
        return list(by_reader.get(chosen, []))
    return fuse_reader_boxes(by_reader, options.fusion_iou)


class ReaderStats:
    """Reader counts for the manifest: distinct readers, readers per finding."""

    def __init__(self, mode: str, options: ReadOptions, column: str) -> None:
        self.options = options
        self.column = column
        self.readers: set[str] = set()
        self.per_finding: Counter[int] = Counter()

    def add(self, readers: Iterable[str]) -> None:
        names = set(readers)
        self.readers |= names if len(self.readers) < 10_000 else set()
        self.per_finding[len(names)] += 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.options.multi_reader,
            "reader_column": self.column,
            "readers": len(self.readers),
            "readers_per_finding": {str(k): v for k, v in sorted(self.per_finding.items())},
        }
        if self.options.multi_reader == "fuse":
            data["fusion"] = {
                "method": "iou-clustering mean (weighted boxes fusion, equal weights)",
                "iou_threshold": self.options.fusion_iou,
            }
        if self.options.multi_reader == "one":
            data["reader_id"] = self.options.reader_id or "first reader of each image (sorted ids)"
        return data


# --------------------------------------------------------------------------- JSONL


def _record_from_object(
    obj: Any, position: str, default_source: str, box_units: str, options: ReadOptions, group_key: str
) -> CanonicalRecord:
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise RowError("missing required field 'id'")
    record_id = _as_id(obj["id"])
    image = _image_ref(obj.get("image"))
    boxes = obj.get("boxes", [])
    if boxes is None:
        boxes = []
    if not isinstance(boxes, list):
        raise RowError(f"'boxes' must be a list of [x1, y1, x2, y2], got {type(boxes).__name__}")
    source = _optional_text(obj.get("source"), "source") or default_source
    if group_key == "column:group":
        group = obj.get("group")
        group = None if group is None else _as_id(group, "group")
    else:
        group = _group_value(group_key, GroupKeys(image=image), obj)
    return CanonicalRecord(
        id=record_id,
        image=image,
        phrase=_optional_text(obj.get("phrase"), "phrase"),
        boxes=boxes,
        source=source,
        width=_optional_int(obj.get("width"), "width"),
        height=_optional_int(obj.get("height"), "height"),
        group=group,
        box_units=box_units,
        split=_split_value(obj.get("split")) if options.source_split else None,
        position=position,
        raw=obj,
    )


def read_jsonl(
    path: Path, *, source: str, options: ReadOptions, info: ReadInfo, box_units: str = "pixel"
) -> Iterator[ReadItem]:
    """The canonical JSONL: ``id, image, phrase, boxes`` (pixel ``[x1, y1, x2, y2]``),
    optional ``width, height, source, group, split``. Groups by ``group`` (else the image)."""
    group_key = (
        "column:group" if options.group_by == "auto" else _resolve_group_key(options, ("image",), "image", "jsonl")
    )
    info.group_by = "column:group (else the image)" if group_key == "column:group" else group_key
    info.box_convention = "normalized 0..1 [x1, y1, x2, y2]" if box_units == "normalized" else "pixel [x1, y1, x2, y2]"
    for item in _json_lines(path, options):
        if isinstance(item, ParseFailure):
            yield item
            continue
        position, obj = item
        try:
            yield _record_from_object(obj, position, source, box_units, options, group_key)
        except RowError as exc:
            yield ParseFailure(position, str(exc), obj, id=_failure_id(obj, "id"))


def read_normalized(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """Canonical JSONL whose boxes are normalized 0..1 ``[x1, y1, x2, y2]``."""
    return read_jsonl(path, source=source, options=options, info=info, box_units="normalized")


# --------------------------------------------------------------------------- COCO


def read_coco(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """COCO detection JSON (``bbox`` is pixel ``[x, y, w, h]``). The phrase is the
    annotation's ``caption``/``phrase`` when it has one (one record per annotation),
    otherwise the category name (one record per image and category, holding all its
    boxes). Groups by image (or ``column:NAME`` of the image entry)."""
    name = path.name
    group_key = _resolve_group_key(options, ("image",), "image", "coco")
    info.group_by, info.box_convention = group_key, "pixel [x, y, w, h] (COCO)"
    try:
        document = _load_document(path, options, "COCO")
    except RowError as exc:
        yield ParseFailure(name, str(exc), None)
        return
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        yield ParseFailure(
            name, "a COCO file needs a top-level object with 'images', 'annotations' and 'categories' lists", None
        )
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
    # (image, category) -> annotation indices only: the annotations stay in the document.
    grouped: dict[tuple[Any, Any], list[int]] = {}
    annotations = document["annotations"]
    for index, ann in enumerate(annotations):
        position = f"{name}:annotations[{index}]"
        if not isinstance(ann, dict):
            yield ParseFailure(position, "an annotation must be an object", ann)
            continue
        try:
            image = images.get(ann.get("image_id"))
        except TypeError:  # an unhashable image_id
            image = None
        if image is None:
            yield ParseFailure(
                position,
                f"annotation refers to unknown image_id {_truncate(repr(ann.get('image_id')))}",
                ann,
                id=_failure_id(ann, "id"),
            )
            continue
        phrase = ann.get("caption", ann.get("phrase"))
        try:
            known_category = ann.get("category_id") in categories
        except TypeError:
            known_category = False
        if phrase is None and not known_category:
            yield ParseFailure(
                position,
                f"annotation has no caption and an unknown category_id {_truncate(repr(ann.get('category_id')))}",
                ann,
                id=_failure_id(ann, "id"),
            )
            continue
        if phrase is not None:
            try:
                yield _coco_record(
                    name,
                    image,
                    [(index, ann)],
                    phrase,
                    source,
                    f"{path.stem}:{image['id']}-{ann.get('id', index)}",
                    group_key,
                )
            except RowError as exc:
                yield ParseFailure(position, str(exc), ann)
            continue
        grouped.setdefault((ann["image_id"], ann["category_id"]), []).append(index)
    for (image_id, category_id), indices in grouped.items():
        anns = [(i, annotations[i]) for i in indices]
        try:
            yield _coco_record(
                name,
                images[image_id],
                anns,
                categories[category_id],
                source,
                f"{path.stem}:{image_id}-cat{category_id}",
                group_key,
            )
        except RowError as exc:
            yield ParseFailure(f"{name}:annotations[{indices[0]}]", str(exc), [a for _, a in anns])


def _coco_box(bbox: Any) -> Any:
    return _xywh_to_xyxy(*bbox) if isinstance(bbox, list) and len(bbox) == 4 else bbox


def _coco_record(
    name: str,
    image: dict[str, Any],
    anns: list[tuple[int, dict[str, Any]]],
    phrase: Any,
    source: str,
    record_id: str,
    group_key: str,
) -> CanonicalRecord:
    boxes = [_coco_box(ann.get("bbox")) for _, ann in anns]
    indices = ",".join(str(i) for i, _ in anns[:10]) + (",..." if len(anns) > 10 else "")
    file_name = _image_ref(image["file_name"], "file_name")
    return CanonicalRecord(
        id=record_id,
        image=file_name,
        phrase=_optional_text(phrase, "caption"),
        boxes=boxes,
        source=source,
        width=_optional_int(image.get("width"), "width"),
        height=_optional_int(image.get("height"), "height"),
        group=_group_value(group_key, GroupKeys(image=str(image["id"])), image),
        position=f"{name}:annotations[{indices}]",
        raw=[ann for _, ann in anns],
    )


# --------------------------------------------------------------------------- CSV formats


def _open_csv(path: Path, options: ReadOptions) -> Iterator[tuple[int, dict[str, str]] | ParseFailure]:
    """Rows of a CSV file with their line numbers; a cell over the line size cap or a row
    with too many cells becomes a parse failure and reading goes on."""
    name = path.name
    csv.field_size_limit(max(options.max_line_bytes, 1024))
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield ParseFailure(f"{name}:{reader.line_num}", f"unreadable CSV row: {exc}", None)
                continue
            line = reader.line_num
            if None in row:  # more cells than header columns
                yield ParseFailure(
                    f"{name}:{line}",
                    "row has more cells than the header has columns",
                    {k: v for k, v in row.items() if k is not None},
                )
                continue
            yield line, row


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        first = handle.readline(1 << 16)
    return next(csv.reader([first]), [])


def _image_with_extension(image_id: str, extension: str) -> str:
    """``image_id`` as a file name: DICOM-derived ids (``x``, ``x.dicom``, ``x.dcm``) get
    ``extension``; a name that already has an image extension is kept."""
    suffix = PurePosixPath(image_id).suffix.lower()
    if suffix in (".dicom", ".dcm"):
        return image_id[: -len(suffix)] + extension
    return (
        image_id if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp") else f"{image_id}{extension}"
    )


def _column(row: dict[str, Any], *names: str) -> Any:
    """The first non-empty value among ``names``, matching column names case-insensitively."""
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    for column in names:
        value = lowered.get(column.lower())
        if value not in (None, ""):
            return value
    return None


VINDR_READER_COLUMNS = ("rad_id", "rad_ID")


def read_vindr_csv(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """VinDr-CXR ``annotations_train.csv`` / ``annotations_test.csv``: ``image_id, rad_id
    (or rad_ID), class_name, x_min, y_min, x_max, y_max`` in pixels, one row per reader and
    box. "No finding" rows (empty coordinates) are skipped and counted. Each (image, class)
    becomes one record whose boxes follow ``options.multi_reader`` (default: fused across
    the readers). The test CSV has no reader column (a consensus of five): its boxes are
    kept. Image sizes come from the images (the CSV has none). Groups by image."""
    name = path.name
    group_key = _resolve_group_key(options, ("image",), "image", "vindr-csv")
    header = [h.strip() for h in _csv_header(path)]
    reader_column = next((h for h in header if h.lower() in {c.lower() for c in VINDR_READER_COLUMNS}), None)
    stats = ReaderStats(options.multi_reader, options, reader_column or "")
    info.group_by, info.box_convention = group_key, "pixel [x_min, y_min, x_max, y_max]"
    with tempfile.TemporaryDirectory(prefix="grounding-vindr-") as tmp:
        # The rows wait on disk (SQLite), not in memory, until every reader of a finding is
        # known: memory stays flat whatever the size of the CSV.
        db = sqlite3.connect(Path(tmp) / "rows.db")
        try:
            yield from _vindr_read_rows(path, options, db, group_key, bool(reader_column))
            for (image_id, class_name), entry in _vindr_findings(db):
                position = f"{name}:{','.join(str(n) for n in entry['lines'])}"
                stats.add(entry["readers"])
                boxes = combine_readers(entry["readers"], options, entry["first_reader"])
                if not boxes:
                    yield SkippedRow(position, f"no box by reader {options.reader_id!r}")
                    continue
                try:
                    yield CanonicalRecord(
                        id=f"{path.stem}:{image_id}:{class_name}",
                        image=_image_with_extension(image_id, options.image_extension),
                        phrase=class_name,
                        boxes=boxes,
                        source=source,
                        width=_optional_int(entry["width"], "width"),
                        height=_optional_int(entry["height"], "height"),
                        group=entry["group"],
                        position=position,
                        raw={"image_id": image_id, "class_name": class_name, "boxes_by_reader": entry["readers"]},
                    )
                except RowError as exc:
                    yield ParseFailure(position, str(exc), {"image_id": image_id, "class_name": class_name})
        finally:
            db.close()
    info.multi_reader = stats.to_json()


def _vindr_read_rows(
    path: Path, options: ReadOptions, db: Any, group_key: str, has_reader_column: bool
) -> Iterator[ReadItem]:
    """Pass 1 over a VinDr CSV: bad rows and "No finding" rows are yielded, the boxes go to ``db``
    (in CSV order; ``grouped`` 0 for a row that only counts for the image's first reader)."""
    name = path.name
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    # no column types: values keep the type they were stored with (the CSV's strings, or NULL)
    db.execute("CREATE TABLE rows (image_id, class_name, reader, grouped, line, x1, y1, x2, y2, width, height, grp)")
    insert = "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    pending: list[tuple[Any, ...]] = []
    for item in _open_csv(path, options):
        if isinstance(item, ParseFailure):
            yield item
            continue
        line, row = item
        position = f"{name}:{line}"
        cells = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        image_id = str(_cell(cells, "image_id") or "").strip()
        class_name = str(_cell(cells, "class_name") or "").strip()
        if not image_id or not class_name:
            yield ParseFailure(
                position,
                "missing 'image_id' or 'class_name' (VinDr CSV columns: image_id, rad_id, "
                "class_name, x_min, y_min, x_max, y_max)",
                row,
            )
            continue
        if "\x00" in image_id:
            yield ParseFailure(position, "'image_id' contains a NUL character", row)
            continue
        if class_name.lower() == NO_FINDING:
            yield SkippedRow(position, "no finding (no box)")
            continue
        reader = str(_cell(cells, "rad_id") or "consensus").strip() if has_reader_column else "consensus"
        coordinates = [row.get(c) for c in ("x_min", "y_min", "x_max", "y_max")]
        try:
            group = _group_value(group_key, GroupKeys(image=image_id), row) if group_key != "image" else image_id
        except RowError as exc:
            yield ParseFailure(position, str(exc), row)
            pending.append((image_id, None, reader, 0, line, None, None, None, None, None, None, None))
            continue
        width, height = _cell(cells, "width"), _cell(cells, "height")
        pending.append((image_id, class_name, reader, 1, line, *coordinates, width, height, group))
        if len(pending) >= 10_000:
            db.executemany(insert, pending)
            pending.clear()
    db.executemany(insert, pending)
    db.commit()


def _vindr_findings(db: Any) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """Pass 2: each (image, class) with its boxes per reader, in the order the findings first
    appear in the CSV; per image the first reader id in sorted order (``--multi-reader one``)."""
    from itertools import groupby

    db.execute("CREATE INDEX finding ON rows (image_id, class_name)")
    cursor = db.execute(
        """
        SELECT r.image_id, r.class_name, r.reader, r.line, r.x1, r.y1, r.x2, r.y2, r.width, r.height, r.grp,
               f.first_reader
        FROM rows r
        JOIN (SELECT image_id, class_name, MIN(rowid) AS first FROM rows WHERE grouped = 1
              GROUP BY image_id, class_name) g ON r.image_id = g.image_id AND r.class_name = g.class_name
        JOIN (SELECT image_id, MIN(reader) AS first_reader FROM rows GROUP BY image_id) f ON f.image_id = r.image_id
        WHERE r.grouped = 1
        ORDER BY g.first, r.rowid
        """
    )
    for key, rows in groupby(cursor, key=lambda r: (r[0], r[1])):
        entry: dict[str, Any] = {"lines": [], "readers": {}}
        for _, _, reader, line, x1, y1, x2, y2, width, height, group, first_reader in rows:
            if not entry["lines"]:
                entry.update(group=group, width=width, height=height, first_reader=first_reader)
            if len(entry["lines"]) < 10:
                entry["lines"].append(line)
            entry["readers"].setdefault(reader, []).append([_number_or_raw(v) for v in (x1, y1, x2, y2)])
        yield key, entry


def _cell(cells: dict[str, Any], *names: str) -> Any:
    """:func:`_column` on a row whose column names are already stripped and lowercased."""
    for column in names:
        value = cells.get(column)
        if value not in (None, ""):
            return value
    return None


def _first(row: dict[str, Any], *names: str) -> Any:
    for column in names:
        value = row.get(column)
        if value not in (None, ""):
            return value
    return None


def _mscxr_rows(path: Path, options: ReadOptions) -> Iterator[tuple[str, dict[str, Any]] | ParseFailure]:
    if path.suffix.lower() in (".jsonl", ".json"):
        for item in _json_lines(path, options):
            if isinstance(item, ParseFailure):
                yield item
            elif not isinstance(item[1], dict):
                yield ParseFailure(item[0], "expected a JSON object", item[1])
            else:
                yield item
        return
    for item in _open_csv(path, options):
        if isinstance(item, ParseFailure):
            yield item
        else:
            yield f"{path.name}:{item[0]}", item[1]


MIMIC_PATIENT = re.compile(r"(?:^|/)(p\d{6,})(?:/|$)")
MIMIC_STUDY = re.compile(r"(?:^|/)(s\d{6,})(?:/|$)")


def mimic_keys(image: str, row: dict[str, Any]) -> GroupKeys:
    """Patient and study of a MIMIC-CXR-derived row: the ``pXXXXXXXX`` and ``sXXXXXXXX``
    folders of ``path`` (``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``), else the
    ``subject_id`` / ``study_id`` columns."""
    patient = MIMIC_PATIENT.findall(image.replace("\\", "/"))
    study = MIMIC_STUDY.search(image.replace("\\", "/"))
    subject = _first(row, "subject_id", "patient_id")
    study_id = _first(row, "study_id")
    return GroupKeys(
        image=image,
        patient=patient[-1] if patient else (None if subject is None else str(subject)),
        study=study.group(1) if study else (None if study_id is None else str(study_id)),
    )


def read_mscxr(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """MS-CXR ``MS_CXR_Local_Alignment_v1.1.0.csv`` (or JSONL rows of the same fields):
    ``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height,
    split``. The image is ``path`` (relative to the MIMIC-CXR-JPG root), else ``image`` or
    ``dicom_id``; the phrase is ``label_text`` (else ``phrase``); boxes are pixel ``x, y, w,
    h``. Groups by patient (the ``pXXXXXXXX`` folder of ``path``) by default; the release's
    ``split`` column is used only with ``source_split``. Rows with the same image and phrase
    become one record with several boxes."""
    group_key = _resolve_group_key(options, ("image", "patient", "study"), "patient", "mscxr")
    grouper = _AutoGroup(group_key, options.group_by == "auto")
    info.group_by, info.box_convention = group_key, "pixel [x, y, w, h]"
    info.split_from = "the release's split column" if options.source_split else "group hash"
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for item in _mscxr_rows(path, options):
        if isinstance(item, ParseFailure):
            yield item
            continue
        position, row = item
        image = _first(row, "path", "image", "dicom_id")
        phrase = _first(row, "label_text", "phrase")
        try:
            if image is None:
                raise RowError("missing image column ('path', 'image' or 'dicom_id')")
            image = _image_with_extension(_image_ref(image, "path"), options.image_extension)
            group = grouper.value(mimic_keys(image, row), row)
            split = _split_value(row.get("split")) if options.source_split else None
        except RowError as exc:
            yield ParseFailure(position, str(exc), row, id=_failure_id(row, "id", "dicom_id"))
            continue
        key = (image, "" if phrase is None else str(phrase))
        entry = grouped.setdefault(
            key,
            {"positions": [], "boxes": [], "row": row, "phrase": phrase, "group": group, "split": split, "rows": []},
        )
        entry["positions"].append(position)
        if len(entry["rows"]) < 10:
            entry["rows"].append(row)
        entry["boxes"].append(_xywh_to_xyxy(row.get("x"), row.get("y"), row.get("w"), row.get("h")))
    for (image, phrase_key), entry in grouped.items():
        row = entry["row"]
        position = entry["positions"][0] + (
            f" (+{len(entry['positions']) - 1} rows)" if len(entry["positions"]) > 1 else ""
        )
        try:
            explicit_id = _first(row, "id")
            phrase = entry["phrase"]
            yield CanonicalRecord(
                id=_as_id(explicit_id) if explicit_id is not None else f"{path.stem}:{image}:{phrase_key}",
                image=image,
                phrase=phrase.strip() if isinstance(phrase, str) else None if phrase is None else str(phrase),
                boxes=entry["boxes"],
                source=str(_first(row, "source") or source),
                width=_optional_int(_first(row, "width", "image_width"), "width"),
                height=_optional_int(_first(row, "height", "image_height"), "height"),
                group=entry["group"],
                split=entry["split"],
                position=position,
                raw=entry["rows"],
            )
        except RowError as exc:
            yield ParseFailure(position, str(exc), row)
    grouper.note(info)


# --------------------------------------------------------------------------- PadChest-GR

PADCHEST_MASTER_TABLES = ("master_table.csv", "master_table.csv.zip")


def _padchest_master(folder: Path, options: ReadOptions) -> dict[str, dict[str, str]]:
    """ImageID -> PatientID, StudyID, split from the release's ``master_table.csv`` (or its
    ``.zip``) next to the reports, when it is there."""
    import zipfile

    for name in PADCHEST_MASTER_TABLES:
        table = folder / name
        if not table.is_file():
            continue
        if name.endswith(".zip"):
            with zipfile.ZipFile(table) as archive:
                member = next((n for n in archive.namelist() if n.endswith(".csv")), None)
                if member is None:
                    return {}
                text = io.TextIOWrapper(archive.open(member), encoding="utf-8", errors="replace", newline="")
                rows = list(csv.DictReader(text))
        else:
            with open(table, newline="", encoding="utf-8", errors="replace") as handle:
                rows = list(csv.DictReader(handle))
        return {
            str(r.get("ImageID", "")).strip(): {
                "patient": str(r.get("PatientID") or "").strip(),
                "study": str(r.get("StudyID") or "").strip(),
                "split": str(r.get("split") or "").strip(),
            }
            for r in rows
            if r.get("ImageID")
        }
    return {}


def read_padchest_gr(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """PadChest-GR ``grounded_reports_<date>.json``: a list of studies, each with
    ``ImageID`` and ``findings`` (``sentence_en``, ``abnormal``, ``labels``, ``boxes``).
    One record per English sentence that has boxes; sentences without a box (normal
    findings) are skipped and counted. Boxes are normalized ``[x1, y1, x2, y2]`` in 0..1 of
    the image (the release's convention; scaled by the decoded image size). A second
    reader's boxes (``extra_boxes``), when present, are handled by ``options.multi_reader``.
    Patient, study and the official split come from the report (``PatientID``, ``StudyID``)
    or the release's ``master_table.csv`` next to it; groups by patient when known."""
    name = path.name
    group_key = _resolve_group_key(options, ("image", "patient", "study"), "patient", "padchest-gr")
    grouper = _AutoGroup(group_key, options.group_by == "auto")
    info.group_by, info.box_convention = group_key, "normalized 0..1 [x1, y1, x2, y2]"
    info.split_from = "the master table's split" if options.source_split else "group hash"
    try:
        document = _load_document(path, options, "PadChest-GR")
    except RowError as exc:
        yield ParseFailure(name, str(exc), None)
        return
    if isinstance(document, dict):
        document = next((v for v in document.values() if isinstance(v, list)), None)
    if not isinstance(document, list):
        yield ParseFailure(
            name, "a PadChest-GR grounded_reports file is a JSON list of studies with 'ImageID' and 'findings'", None
        )
        return
    master = _padchest_master(path.parent, options)
    if not master:
        info.notes.append("no master_table.csv next to the reports: patient/study only from the reports' own fields")
    stats = ReaderStats(options.multi_reader, options, "boxes / extra_boxes")
    for index, report in enumerate(document):
        position = f"{name}[{index}]"
        if not isinstance(report, dict) or not isinstance(report.get("findings"), list):
            yield ParseFailure(
                position, "a study needs 'ImageID' and a 'findings' list", report, id=_failure_id(report, "ImageID")
            )
            continue
        try:
            image_id = _image_ref(report.get("ImageID"), "ImageID")
            meta = master.get(image_id, {})
            keys = GroupKeys(
                image=image_id,
                patient=str(report.get("PatientID") or meta.get("patient") or "") or None,
                study=str(report.get("StudyID") or meta.get("study") or "") or None,
            )
            group = grouper.value(keys, report)
            split = _split_value(report.get("split") or meta.get("split")) if options.source_split else None
        except RowError as exc:
            yield ParseFailure(position, str(exc), report, id=_failure_id(report, "ImageID"))
            continue
        for number, finding in enumerate(report["findings"]):
            fposition = f"{position}.findings[{number}]"
            if not isinstance(finding, dict):
                yield ParseFailure(fposition, "a finding must be an object", finding)
                continue
            readers = {"reader1": finding.get("boxes") or []}
            if finding.get("extra_boxes"):
                readers["reader2"] = finding["extra_boxes"]
            if not any(readers.values()):
                yield SkippedRow(fposition, "sentence without a box")
                continue
            if not all(isinstance(b, list) for b in readers.values()):
                yield ParseFailure(fposition, "'boxes' must be a list of [x1, y1, x2, y2]", finding)
                continue
            readers = {
                r: [[_number_or_raw(v) for v in b] if isinstance(b, list) else b for b in boxes]
                for r, boxes in readers.items()
                if boxes
            }
            stats.add(readers)
            try:
                yield CanonicalRecord(
                    id=f"{path.stem}:{PurePosixPath(image_id).stem}:{number}",
                    image=image_id,
                    phrase=_optional_text(finding.get("sentence_en"), "sentence_en"),
                    boxes=combine_readers(readers, options),
                    source=source,
                    group=group,
                    box_units="normalized",
                    split=split,
                    position=fposition,
                    raw=finding,
                )
            except RowError as exc:
                yield ParseFailure(fposition, str(exc), finding)
    info.multi_reader = stats.to_json()
    grouper.note(info)


# --------------------------------------------------------------------------- RefCOCO family


class _ContainersOnly(pickle.Unpickler):
    """Unpickles builtin containers and scalars only: any class or function is refused."""

    ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return {"set": set, "frozenset": frozenset}[name]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a RefCOCO refs file holds only lists, dicts, strings and numbers"
        )


def load_refs_pickle(path: Path, max_bytes: int) -> Any:
    """A RefCOCO ``refs(*).p`` file through the restricted unpickler (no code can run)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise RowError(f"the refs file is {size} bytes, over the document size cap of {max_bytes} bytes")
    with open(path, "rb") as handle:
        try:
            return _ContainersOnly(handle, encoding="utf-8", errors="replace").load()
        except RecursionError:
            raise RowError("the refs file is nested too deeply") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            UnicodeError,
        ) as exc:
            raise RowError(f"the refs file is not a plain pickle of lists and dicts: {exc}") from None


def _expressions(value: Any) -> list[str]:
    """Referring expressions from ``sentences`` (dicts with ``sent``/``raw``), a list of
    strings, or one string."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    out: list[str] = []
    for item in value if isinstance(value, (list, tuple)) else []:
        if isinstance(item, dict):
            text = item.get("sent") or item.get("raw")
            if isinstance(text, str):
                out.append(text)
        elif isinstance(item, str):
            out.append(item)
    return out


REFCOCO_INSTANCES = "instances.json"


def read_refcoco(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """The RefCOCO / RefCOCO+ / RefCOCOg release: ``refs(unc).p`` / ``refs(google).p``
    (a pickle of refs: ``ref_id, ann_id, image_id, split, sentences``, loaded with a
    restricted unpickler) plus ``instances.json`` in the same folder (COCO: the box of
    ``ann_id`` in pixel ``[x, y, w, h]``, the image's ``file_name``). One record per
    referring expression, with the one box of its object. Groups by image (the COCO image
    id: every expression about an image in one split); the release's ``split`` (train,
    val, test, testA, testB) only with ``source_split``."""
    name = path.name
    group_key = _resolve_group_key(options, ("image",), "image", "refcoco")
    info.group_by, info.box_convention = group_key, "pixel [x, y, w, h] (COCO annotation of ann_id)"
    info.split_from = "the refs' split" if options.source_split else "group hash"
    instances = path.parent / REFCOCO_INSTANCES
    if not instances.is_file():
        yield ParseFailure(
            name, f"{REFCOCO_INSTANCES} is missing next to {name}: the refs name annotations of it", None
        )
        return
    try:
        refs = load_refs_pickle(path, options.max_document_bytes)
        document = _load_document(instances, options, "instances")
    except RowError as exc:
        yield ParseFailure(name, str(exc), None)
        return
    if not isinstance(refs, list) or not isinstance(document, dict):
        yield ParseFailure(name, "expected a list of refs and an instances.json object", None)
        return
    images = {i["id"]: i for i in document.get("images") or [] if isinstance(i, dict) and "id" in i}
    anns = {a["id"]: a for a in document.get("annotations") or [] if isinstance(a, dict) and "id" in a}
    del document
    for index, ref in enumerate(refs):
        position = f"{name}[{index}]"
        try:
            if not isinstance(ref, dict):
                raise RowError("a ref must be a dict")
            ann = anns.get(ref.get("ann_id"))
            image = images.get(ref.get("image_id"))
            if ann is None or image is None:
                raise RowError(
                    f"ref names ann_id {ref.get('ann_id')!r} / image_id {ref.get('image_id')!r} that "
                    f"{REFCOCO_INSTANCES} does not have"
                )
            file_name = _image_ref(image.get("file_name"), "file_name")
            group = _group_value(group_key, GroupKeys(image=str(image["id"])), ref)
            split = _split_value(ref.get("split")) if options.source_split else None
            sentences = ref.get("sentences") or []
        except (RowError, TypeError) as exc:
            yield ParseFailure(position, str(exc), ref, id=_failure_id(ref, "ref_id"))
            continue
        for number, sentence in enumerate(sentences if isinstance(sentences, list) else []):
            texts = _expressions([sentence])
            sent_id = sentence.get("sent_id", number) if isinstance(sentence, dict) else number
            try:
                yield CanonicalRecord(
                    id=f"{path.parent.name}/{path.stem}:{ref.get('ref_id', index)}:{sent_id}",
                    image=file_name,
                    phrase=texts[0].strip() if texts else None,
                    boxes=[_coco_box(ann.get("bbox"))],
                    source=source,
                    width=_optional_int(image.get("width"), "width"),
                    height=_optional_int(image.get("height"), "height"),
                    group=group,
                    split=split,
                    position=f"{position}.sentences[{number}]",
                    raw={"ref_id": ref.get("ref_id"), "ann_id": ref.get("ann_id"), "sentence": sentence},
                )
            except RowError as exc:
                yield ParseFailure(f"{position}.sentences[{number}]", str(exc), sentence)


def _parquet_batches(path: Path, wanted: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row index, row)`` of a parquet file, reading only the ``wanted`` columns that exist
    (embedded image bytes are never loaded), one record batch at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = [c for c in wanted if c in parquet.schema_arrow.names]
    index = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=columns):
        for row in batch.to_pylist():
            yield index, row
            index += 1


REFCOCO_PARQUET_COLUMNS = (
    "ref_id",
    "question_id",
    "sent_id",
    "image_id",
    "file_name",
    "image_path",
    "bbox",
    "sentences",
    "captions",
    "answer",
    "sentence",
    "expression",
    "refexp",
    "split",
    "width",
    "height",
)


def read_refcoco_parquet(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """The common parquet export of RefCOCO/+/g: one row per object (or per expression) with
    ``bbox`` in COCO pixel ``[x, y, w, h]``, the expressions (``sentences`` dicts,
    ``captions``/``answer`` lists or a ``sentence``/``expression`` string), the image as
    ``image_path`` or ``file_name`` relative to the images root (embedded image bytes are
    not read), optional ``image_id``, ``ref_id``, ``split``. One record per expression;
    groups by ``image_id`` (else the image path)."""
    name = path.name
    group_key = _resolve_group_key(options, ("image",), "image", "refcoco-parquet")
    info.group_by, info.box_convention = group_key, "pixel [x, y, w, h] (COCO bbox)"
    info.split_from = "the split column" if options.source_split else "group hash"
    extra = [group_key[7:]] if group_key.startswith("column:") else []
    for index, row in _parquet_batches(path, (*REFCOCO_PARQUET_COLUMNS, *extra)):
        position = f"{name}:row {index}"
        try:
            image = _image_ref(_first(row, "image_path", "file_name"), "image_path")
            image_key = _first(row, "image_id")
            group = _group_value(group_key, GroupKeys(image=str(image_key) if image_key is not None else image), row)
            split = _split_value(row.get("split")) if options.source_split else None
            bbox = row.get("bbox")
            bbox = list(bbox) if isinstance(bbox, (list, tuple)) else bbox
            texts = _expressions(_first(row, "sentences", "captions", "answer", "sentence", "expression", "refexp"))
            if not texts:
                raise RowError("no referring expression (columns sentences, captions, answer, sentence, expression)")
        except RowError as exc:
            yield ParseFailure(position, str(exc), row, id=_failure_id(row, "ref_id", "question_id"))
            continue
        row_id = _first(row, "ref_id", "question_id")
        for number, text in enumerate(texts):
            yield CanonicalRecord(
                id=f"{path.stem}:{row_id if row_id is not None else index}:{number}",
                image=image,
                phrase=text.strip(),
                boxes=[_coco_box(bbox)],
                source=source,
                width=_optional_int(row.get("width"), "width") if isinstance(row.get("width"), int) else None,
                height=_optional_int(row.get("height"), "height") if isinstance(row.get("height"), int) else None,
                group=group,
                split=split,
                position=f"{position}.expression[{number}]",
                raw={k: v for k, v in row.items() if k != "sentences"} | {"expression": text},
            )


# --------------------------------------------------------------------------- ODVG


def read_odvg(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """ODVG JSONL (Grounding-DINO / Open-GroundingDino): one image per line with
    ``filename``, ``width``, ``height`` and either ``grounding.regions`` (``bbox`` pixel
    ``[x1, y1, x2, y2]`` and its ``phrase``) or ``detection.instances`` (``bbox`` and
    ``category``). Regions with the same phrase in one image become one record with all
    their boxes. Groups by image."""
    group_key = _resolve_group_key(options, ("image",), "image", "odvg")
    info.group_by, info.box_convention = group_key, "pixel [x1, y1, x2, y2]"
    for item in _json_lines(path, options):
        if isinstance(item, ParseFailure):
            yield item
            continue
        position, obj = item
        try:
            if not isinstance(obj, dict):
                raise RowError(f"expected a JSON object, got {type(obj).__name__}")
            image = _image_ref(obj.get("filename"), "filename")
            group = _group_value(group_key, GroupKeys(image=image), obj)
            width = _optional_int(obj.get("width"), "width")
            height = _optional_int(obj.get("height"), "height")
            grounding, detection = obj.get("grounding"), obj.get("detection")
            if isinstance(grounding, dict):
                regions, phrase_key = grounding.get("regions"), "phrase"
            elif isinstance(detection, dict):
                regions, phrase_key = detection.get("instances"), "category"
            else:
                raise RowError("an ODVG line needs 'grounding.regions' or 'detection.instances'")
            if not isinstance(regions, list):
                raise RowError(
                    f"'{'grounding.regions' if phrase_key == 'phrase' else 'detection.instances'}' must be a list"
                )
            by_phrase: dict[str, list[Any]] = {}
            for region in regions:
                if not isinstance(region, dict):
                    raise RowError("each region must be an object with 'bbox' and a phrase")
                phrase = region.get(phrase_key)
                if isinstance(phrase, list):  # a region may carry several phrases
                    phrase = " ".join(str(p) for p in phrase)
                if not isinstance(phrase, str):
                    raise RowError(f"a region has no '{phrase_key}' string")
                bbox = region.get("bbox")
                by_phrase.setdefault(phrase.strip(), []).append(
                    [_number_or_raw(v) for v in bbox] if isinstance(bbox, list) else bbox
                )
        except RowError as exc:
            yield ParseFailure(position, str(exc), obj, id=_failure_id(obj, "filename"))
            continue
        for number, (phrase, boxes) in enumerate(by_phrase.items()):
            yield CanonicalRecord(
                id=f"{path.stem}:{position.rsplit(':', 1)[1]}:{number}",
                image=image,
                phrase=phrase,
                boxes=boxes,
                source=source,
                width=width,
                height=height,
                group=group,
                position=f"{position} ({phrase_key} {phrase[:40]!r})",
                raw=obj,
            )


# --------------------------------------------------------------------------- VeRL parquet import

VERL_PHRASE_KEYS = ("phrase", "label_text", "label", "caption", "finding", "expression")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _verl_boxes(ground_truth: Any, box_format: str) -> tuple[list[Any], str]:
    """Pixel or normalized ``[x1, y1, x2, y2]`` boxes from a VeRL ``ground_truth``: JSON
    text, ``{"boxes": [...]}``, a list of dicts (``x1..y2`` or ``x, y, width/w,
    height/h``) or of four numbers (``xyxy`` unless ``box_format`` says ``xywh``)."""
    value = _plain(ground_truth)
    if isinstance(value, (str, bytes)):
        value = loads_json(value)
    if isinstance(value, dict) and "boxes" in value:
        value = _plain(value["boxes"])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"reward_model.ground_truth must be a list of boxes, got {type(value).__name__}")
    if value and all(isinstance(v, (int, float)) for v in value) and len(value) == 4:
        value = [value]  # one box given flat
    boxes: list[Any] = []
    for box in value:
        box = _plain(box)
        if isinstance(box, dict):
            if all(k in box for k in ("x1", "y1", "x2", "y2")):
                boxes.append([_number_or_raw(box[k]) for k in ("x1", "y1", "x2", "y2")])
            elif "x" in box and "y" in box:
                w, h = box.get("width", box.get("w")), box.get("height", box.get("h"))
                boxes.append(_xywh_to_xyxy(box["x"], box["y"], w, h))
            else:
                raise RowError("a ground-truth box dict needs x1, y1, x2, y2 or x, y, width, height")
        elif isinstance(box, list) and len(box) == 4:
            boxes.append(_xywh_to_xyxy(*box) if box_format == "xywh" else [_number_or_raw(v) for v in box])
        else:
            boxes.append(box)
    numbers = [v for b in boxes if isinstance(b, list) for v in b]
    normalized = (
        box_format == "auto" and bool(numbers) and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in numbers)
    )
    return boxes, "normalized" if normalized else "pixel"


def _prompt_text(prompt: Any) -> str | None:
    prompt = _plain(prompt)
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role", "user") == "user"]
        text = " ".join(c for c in users if isinstance(c, str))
    else:
        return None
    text = " ".join(text.replace("<image>", " ").split())
    return text or None


def read_verl_parquet(path: Path, *, source: str, options: ReadOptions, info: ReadInfo) -> Iterator[ReadItem]:
    """Import a VeRL parquet a user already has (rows with ``prompt``,
    ``reward_model.ground_truth`` box lists and ``extra_info.image_path``, no images), read
    against the images root like any other input. The phrase is ``extra_info``'s
    ``phrase``/``label_text``/``label``/``caption``/``finding``, else the user turn of
    ``prompt`` without ``<image>``; boxes are ``[x1, y1, x2, y2]`` in pixels, or normalized
    when every coordinate is within 0..1 (``box_format`` ``xywh`` for ``[x, y, w, h]``
    lists; dicts with ``x, y, width, height`` are read as such). Groups by image."""
    name = path.name
    group_key = _resolve_group_key(options, ("image",), "image", "verl-parquet")
    info.group_by = group_key
    info.box_convention = {
        "auto": "pixel [x1, y1, x2, y2] (normalized when all within 0..1)",
        "xyxy": "pixel [x1, y1, x2, y2]",
        "xywh": "pixel [x, y, w, h]",
    }[options.box_format]
    info.split_from = "extra_info.split" if options.source_split else "group hash"
    for index, row in _parquet_batches(path, ("prompt", "reward_model", "extra_info", "data_source")):
        position = f"{name}:row {index}"
        try:
            extra = _plain(row.get("extra_info")) or {}
            if not isinstance(extra, dict):
                raise RowError("extra_info must be a struct/dict")
            reward = _plain(row.get("reward_model")) or {}
            if not isinstance(reward, dict) or "ground_truth" not in reward:
                raise RowError("missing reward_model.ground_truth")
            image = _image_ref(_first(extra, "image_path", "image"), "extra_info.image_path")
            boxes, units = _verl_boxes(reward["ground_truth"], options.box_format)
            phrase = _first(extra, *VERL_PHRASE_KEYS)
            phrase = phrase if isinstance(phrase, str) else _prompt_text(row.get("prompt"))
            group = _group_value(group_key, GroupKeys(image=image), extra)
            split = _split_value(extra.get("split")) if options.source_split else None
            row_id = _first(extra, "id", "index")
            data_source = row.get("data_source")
        except RowError as exc:
            yield ParseFailure(position, str(exc), _truncate(json.dumps(row, default=str)), id=None)
            continue
        yield CanonicalRecord(
            id=f"{path.stem}:{row_id if row_id is not None else index}",
            image=image,
            phrase=phrase,
            boxes=boxes,
            source=(data_source.removeprefix("grounding/") if isinstance(data_source, str) and data_source else source),
            width=_optional_int(extra.get("width"), "width") if isinstance(extra.get("width"), int) else None,
            height=_optional_int(extra.get("height"), "height") if isinstance(extra.get("height"), int) else None,
            group=group,
            box_units=units,
            split=split,
            position=position,
            raw={"extra_info": extra, "ground_truth": reward.get("ground_truth")},
        )


# --------------------------------------------------------------------------- registry

READERS: dict[str, Callable[..., Iterator[ReadItem]]] = {
    "jsonl": read_jsonl,
    "coco": read_coco,
    "vindr-csv": read_vindr_csv,
    "mscxr": read_mscxr,
    "normalized": read_normalized,
    "padchest-gr": read_padchest_gr,
    "refcoco": read_refcoco,
    "refcoco-parquet": read_refcoco_parquet,
    "odvg": read_odvg,
    "verl-parquet": read_verl_parquet,
}
FORMATS: tuple[str, ...] = tuple(READERS)


def _first_json_line(path: Path) -> Any:
    with open(path, "rb") as handle:
        line = handle.readline(1 << 20)
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def detect_format(path: Path) -> str:
    """Guess the format from the file: ``.jsonl`` canonical (ODVG when its first line has
    ``filename`` and ``grounding``/``detection``), ``.json`` COCO (PadChest-GR for
    ``grounded_reports*.json``), ``.csv`` VinDr-CXR when it has VinDr's columns else MS-CXR,
    ``.p``/``.pkl`` RefCOCO refs, ``.parquet`` VeRL when it has ``reward_model`` else the
    RefCOCO parquet export."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        first = _first_json_line(path)
        if isinstance(first, dict) and "filename" in first and ("grounding" in first or "detection" in first):
            return "odvg"
        return "jsonl"
    if suffix == ".json":
        return "padchest-gr" if path.name.lower().startswith("grounded_reports") else "coco"
    if suffix == ".csv":
        header = {h.strip().lower() for h in _csv_header(path)}
        return "vindr-csv" if {"image_id", "class_name", "x_min"} <= header else "mscxr"
    if suffix in (".p", ".pkl", ".pickle"):
        return "refcoco"
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        return "verl-parquet" if "reward_model" in names else "refcoco-parquet"
    raise ValueError(f"cannot tell the format of {path.name}; pass --format ({', '.join(FORMATS)})")


def default_source(path: Path, fmt: str) -> str:
    """The source name of an input: its file stem (for RefCOCO refs, whose files are all
    called ``refs(unc).p``/``refs(google).p``, the folder: refcoco, refcoco+, refcocog)."""
    return path.parent.name if fmt == "refcoco" and path.parent.name else path.stem


def read_records(
    path: Path,
    fmt: str | None = None,
    *,
    source: str | None = None,
    options: ReadOptions | None = None,
    info: ReadInfo | None = None,
) -> Iterator[ReadItem]:
    """Read one input file in ``fmt`` (detected from the file when None); ``info`` (when
    given) is filled with what the reader did, for the manifest."""
    options = options or ReadOptions()
    options.check()
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise ValueError(f"unknown input format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    info = info if info is not None else ReadInfo()
    info.format = fmt
    return READERS[fmt](path, source=source or default_source(path, fmt), options=options, info=info)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

"""The Great Expectations suite over the canonical table, and per-row failures.

Each batch of canonical records becomes a pandas frame with a few derived columns
(box extremes, image checks) and is validated by one expectation suite in an
ephemeral GX context. With ``result_format`` ``COMPLETE`` and
``unexpected_index_column_names=["id", "_row"]`` GX returns every failing row by its
id (and its row in the batch, which disambiguates duplicate ids); the expectation's
``meta.reason`` becomes the quarantine reason.

Great Expectations is imported inside the functions that use it: the CLI and the DAG
files import this module's callers at parse time and must stay light.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounding_ops.data.images import ImageCheck
from grounding_ops.data.schema import CanonicalRecord
from grounding_ops.data.vision import MAX_ASPECT_RATIO

SUITE_NAME = "grounding_canonical"

# Reasons in the order they are reported (the first failing one is the row's reason).
REASONS = (
    "unique_id",
    "phrase_not_null",
    "phrase_length",
    "has_box",
    "boxes_four_finite_numbers",
    "box_x1_nonnegative",
    "box_y1_nonnegative",
    "box_x1_lt_x2",
    "box_y1_lt_y2",
    "box_x2_within_width",
    "box_y2_within_height",
    "box_positive_area",
    "image_inside_root",
    "image_exists",
    "image_decodes",
    "image_within_pixel_limit",
    "declared_width_matches_image",
    "declared_height_matches_image",
    "image_aspect_ratio",
    "source_allowed",
)


@dataclass(frozen=True)
class SuiteConfig:
    max_phrase_chars: int = 512
    min_box_area: float = 1.0  # pixels^2 of the original image
    allowed_sources: tuple[str, ...] = ()
    max_aspect_ratio: float = float(MAX_ASPECT_RATIO)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_phrase_chars": self.max_phrase_chars,
            "min_box_area": self.min_box_area,
            "allowed_sources": list(self.allowed_sources),
            "max_aspect_ratio": self.max_aspect_ratio,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pixel_boxes(record: CanonicalRecord, image: ImageCheck) -> list[Any]:
    """The record's boxes in pixels of the original image (normalized ones scaled by the
    decoded size when it is known); invalid values are left as they are."""
    if record.box_units != "normalized" or not image.ok or not image.width or not image.height:
        return record.boxes
    scaled: list[Any] = []
    for box in record.boxes:
        if isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box):
            w, h = image.width, image.height
            scaled.append([box[0] * w, box[1] * h, box[2] * w, box[3] * h])
        else:
            scaled.append(box)
    return scaled


def row_features(
    record: CanonicalRecord, boxes: list[Any], image: ImageCheck, first_occurrence: bool, row: int
) -> dict[str, Any]:
    """The derived columns the suite checks, for one record."""
    nan = float("nan")
    valid = all(isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b) for b in boxes)
    if valid and boxes:
        x1 = min(float(b[0]) for b in boxes)
        y1 = min(float(b[1]) for b in boxes)
        x2 = max(float(b[2]) for b in boxes)
        y2 = max(float(b[3]) for b in boxes)
        widths = [float(b[2]) - float(b[0]) for b in boxes]
        heights = [float(b[3]) - float(b[1]) for b in boxes]
        min_w, min_h = min(widths), min(heights)
        areas = [max(w, 0.0) * max(h, 0.0) for w, h in zip(widths, heights)]
        min_area = min(areas)
    else:
        x1 = y1 = x2 = y2 = min_w = min_h = min_area = nan
    width = float(image.width) if image.width else nan
    height = float(image.height) if image.height else nan
    aspect = max(width, height) / min(width, height) if image.width and image.height else nan
    return {
        "_row": row,
        # Text from the input is HTML-escaped here: GX renders these values into the published
        # validation pages (Data Docs) without escaping them. Only lengths and set membership
        # are checked on text, so the checks see the same values as before.
        "id": html.escape(record.id),
        "id_first_occurrence": first_occurrence,
        "phrase": None if record.phrase is None else html.escape(record.phrase),
        "phrase_chars": float(len(record.phrase)) if isinstance(record.phrase, str) else nan,
        "source": html.escape(str(record.source)),
        "box_count": len(boxes),
        "boxes_valid": valid,
        "box_min_x1": x1,
        "box_min_y1": y1,
        "box_max_x2": x2,
        "box_max_y2": y2,
        "box_min_width": min_w,
        "box_min_height": min_h,
        "box_min_area": min_area,
        "image_inside_root": image.inside_root,
        "image_exists": image.exists,
        "image_decodes": image.decodes,
        "image_within_pixel_limit": image.within_pixel_limit,
        "image_width": width,
        "image_height": height,
        "declared_width": float(record.width) if record.width is not None else nan,
        "declared_height": float(record.height) if record.height is not None else nan,
        "image_aspect_ratio": aspect,
    }


# The suite's columns, in the frame's order: what a record says, what its image check found, what the
# record declared about its image, and the aspect ratio derived from the image.
RECORD_FEATURES = (
    "id",
    "id_first_occurrence",
    "phrase",
    "phrase_chars",
    "source",
    "box_count",
    "boxes_valid",
    "box_min_x1",
    "box_min_y1",
    "box_max_x2",
    "box_max_y2",
    "box_min_width",
    "box_min_height",
    "box_min_area",
)
IMAGE_FEATURES = (
    "image_inside_root",
    "image_exists",
    "image_decodes",
    "image_within_pixel_limit",
    "image_width",
    "image_height",
)
DECLARED_FEATURES = ("declared_width", "declared_height")
FEATURE_COLUMNS = ("_row", *RECORD_FEATURES, *IMAGE_FEATURES, *DECLARED_FEATURES, "image_aspect_ratio")


def feature_frame(
    records: list[CanonicalRecord], boxes: list[list[Any]], images: list[ImageCheck], firsts: list[bool]
) -> Any:
    """The batch the suite validates: :func:`row_features` of every record, built column by
    column (the same frame as ``pandas.DataFrame`` of the row dicts, without the dicts). The
    image columns are computed once per distinct image check."""
    import pandas as pd

    columns: dict[str, list[Any]] = {name: [] for name in FEATURE_COLUMNS}
    by_image: dict[int, tuple[Any, ...]] = {}
    escape = html.escape
    nan = float("nan")
    (
        c_id,
        c_first,
        c_phrase,
        c_chars,
        c_source,
        c_count,
        c_valid,
        c_x1,
        c_y1,
        c_x2,
        c_y2,
        c_w,
        c_h,
        c_area,
        c_dw,
        c_dh,
    ) = (columns[name] for name in (*RECORD_FEATURES, *DECLARED_FEATURES))
    image_columns = [columns[name] for name in (*IMAGE_FEATURES, "image_aspect_ratio")]
    for record, row_boxes, image, first in zip(records, boxes, images, firsts):
        c_id.append(escape(record.id))
        c_first.append(first)
        phrase = record.phrase
        c_phrase.append(None if phrase is None else escape(phrase))
        c_chars.append(float(len(phrase)) if isinstance(phrase, str) else nan)
        c_source.append(escape(str(record.source)))
        c_count.append(len(row_boxes))
        box = row_boxes[0] if len(row_boxes) == 1 else None
        if (
            type(box) is list
            and len(box) == 4
            and all(type(v) is float or type(v) is int for v in box)
            and all(math.isfinite(v) for v in box)
        ):  # the common case, one box (bool is neither float nor int here, as in _is_number)
            c_valid.append(True)
            x1, y1, x2, y2 = float(box[0]), float(box[1]), float(box[2]), float(box[3])
            min_w, min_h = x2 - x1, y2 - y1
            min_area = max(min_w, 0.0) * max(min_h, 0.0)
        else:
            valid = all(isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b) for b in row_boxes)
            c_valid.append(valid)
            if valid and row_boxes:
                x1 = min(float(b[0]) for b in row_boxes)
                y1 = min(float(b[1]) for b in row_boxes)
                x2 = max(float(b[2]) for b in row_boxes)
                y2 = max(float(b[3]) for b in row_boxes)
                widths = [float(b[2]) - float(b[0]) for b in row_boxes]
                heights = [float(b[3]) - float(b[1]) for b in row_boxes]
                min_w, min_h = min(widths), min(heights)
                min_area = min(max(w, 0.0) * max(h, 0.0) for w, h in zip(widths, heights))
            else:
                x1 = y1 = x2 = y2 = min_w = min_h = min_area = nan
        c_x1.append(x1)
        c_y1.append(y1)
        c_x2.append(x2)
        c_y2.append(y2)
        c_w.append(min_w)
        c_h.append(min_h)
        c_area.append(min_area)
        c_dw.append(float(record.width) if record.width is not None else nan)
        c_dh.append(float(record.height) if record.height is not None else nan)
        values = by_image.get(id(image))
        if values is None:
            width = float(image.width) if image.width else nan
            height = float(image.height) if image.height else nan
            aspect = max(width, height) / min(width, height) if image.width and image.height else nan
            values = by_image[id(image)] = (
                image.inside_root,
                image.exists,
                image.decodes,
                image.within_pixel_limit,
                width,
                height,
                aspect,
            )
        for column, value in zip(image_columns, values):
            column.append(value)
    columns["_row"] = list(range(len(records)))
    return pd.DataFrame(columns)


def _expectations(config: SuiteConfig) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations

    def meta(reason: str, note: str) -> dict[str, Any]:
        return {"meta": {"reason": reason}, "notes": note}

    def in_true(column: str, reason: str, note: str) -> Any:
        return e.ExpectColumnValuesToBeInSet(column=column, value_set=[True], **meta(reason, note))

    items = [
        in_true("id_first_occurrence", "unique_id", "Ids are unique; later rows repeating an id are rejected."),
        e.ExpectColumnValuesToNotBeNull(column="phrase", **meta("phrase_not_null", "Every row has a phrase.")),
        e.ExpectColumnValuesToBeBetween(
            column="phrase_chars",
            min_value=1,
            max_value=config.max_phrase_chars,
            **meta("phrase_length", f"Phrases are non-empty and at most {config.max_phrase_chars} characters."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="box_count", min_value=1, **meta("has_box", "Every row has at least one box.")
        ),
        in_true("boxes_valid", "boxes_four_finite_numbers", "Each box is four finite numbers [x1, y1, x2, y2]."),
        e.ExpectColumnValuesToBeBetween(column="box_min_x1", min_value=0, **meta("box_x1_nonnegative", "0 <= x1.")),
        e.ExpectColumnValuesToBeBetween(column="box_min_y1", min_value=0, **meta("box_y1_nonnegative", "0 <= y1.")),
        e.ExpectColumnValuesToBeBetween(
            column="box_min_width", min_value=0, strict_min=True, **meta("box_x1_lt_x2", "x1 < x2.")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="box_min_height", min_value=0, strict_min=True, **meta("box_y1_lt_y2", "y1 < y2.")
        ),
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="image_width",
            column_B="box_max_x2",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            **meta("box_x2_within_width", "x2 <= image width."),
        ),
        e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="image_height",
            column_B="box_max_y2",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            **meta("box_y2_within_height", "y2 <= image height."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="box_min_area",
            min_value=config.min_box_area,
            strict_min=config.min_box_area <= 0,
            **meta("box_positive_area", f"Every box covers at least {config.min_box_area} square pixels."),
        ),
        in_true(
            "image_inside_root",
            "image_inside_root",
            "The image is inside the images root (no '..', no absolute path or bucket outside it).",
        ),
        in_true("image_exists", "image_exists", "The image exists."),
        in_true("image_decodes", "image_decodes", "The image decodes."),
        in_true(
            "image_within_pixel_limit",
            "image_within_pixel_limit",
            "The image is under the pixel limit (decompression bombs).",
        ),
        e.ExpectColumnPairValuesToBeEqual(
            column_A="declared_width",
            column_B="image_width",
            ignore_row_if="either_value_is_missing",
            **meta("declared_width_matches_image", "A declared width equals the decoded image width."),
        ),
        e.ExpectColumnPairValuesToBeEqual(
            column_A="declared_height",
            column_B="image_height",
            ignore_row_if="either_value_is_missing",
            **meta("declared_height_matches_image", "A declared height equals the decoded image height."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="image_aspect_ratio",
            max_value=config.max_aspect_ratio,
            **meta(
                "image_aspect_ratio",
                f"The long side is at most {config.max_aspect_ratio:g}x the short side "
                "(the Qwen-VL resize refuses more).",
            ),
        ),
    ]
    if config.allowed_sources:
        items.append(
            e.ExpectColumnValuesToBeInSet(
                column="source",
                value_set=[html.escape(s) for s in config.allowed_sources],
                **meta("source_allowed", f"The source is one of: {', '.join(config.allowed_sources)}."),
            )
        )
    return items


@dataclass
class BatchValidation:
    failures: dict[int, list[str]]  # batch row -> reasons, in REASONS order
    result: dict[str, Any]
    success: bool
    statistics: dict[str, Any] = field(default_factory=dict)


class SuiteRunner:
    """One ephemeral GX context, one suite, validating pandas batches."""

    def __init__(self, config: SuiteConfig) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.config = config
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        datasource = self.context.data_sources.add_pandas("grounding")
        asset = datasource.add_dataframe_asset("canonical")
        batch_definition = asset.add_batch_definition_whole_dataframe("batch")
        suite = gx.ExpectationSuite(name=SUITE_NAME, meta={"reasons": list(REASONS)})
        for expectation in _expectations(config):
            suite.add_expectation(expectation)
        self.suite = self.context.suites.add(suite)
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="canonical_rows", data=batch_definition, suite=self.suite)
        )
        self._docs_dir: Path | None = None

    def expectation_reasons(self) -> list[str]:
        return [exp.meta["reason"] for exp in self.suite.expectations]

    def validate(self, frame: Any) -> BatchValidation:
        result = self.definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["id", "_row"],
                "return_unexpected_index_query": False,
            },
        )
        order = {reason: i for i, reason in enumerate(REASONS)}
        failures: dict[int, list[str]] = {}
        for item in result.results:
            reason = (item.expectation_config.meta or {}).get("reason", item.expectation_config.type)
            if item.exception_info and item.exception_info.get("raised_exception"):
                raise RuntimeError(
                    f"expectation {reason} could not be evaluated: {item.exception_info.get('exception_message')}"
                )
            for index in item.result.get("unexpected_index_list") or []:
                failures.setdefault(int(index["_row"]), []).append(reason)
        for reasons in failures.values():
            reasons.sort(key=lambda r: order.get(r, len(order)))
        payload = result.to_json_dict()
        return BatchValidation(failures, payload, bool(result.success), dict(result.statistics))

    def build_docs(self, out_dir: Path) -> list[Path]:
        """Render GX Data Docs (HTML) for the validations run so far into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        self.context.add_data_docs_site(site_name="dataset", site_config=site)
        # GX catches a failed write (disk full, unwritable folder) and logs its own traceback:
        # keep that out of the user's terminal and report the failure once, below.
        gx_logger = logging.getLogger("great_expectations")
        previous = gx_logger.level
        gx_logger.setLevel(logging.CRITICAL + 1)
        try:
            self.context.build_data_docs(site_names=["dataset"])
        finally:
            gx_logger.setLevel(previous)
        if not (out_dir / "index.html").is_file():
            raise OSError(f"could not write the validation Data Docs to {out_dir}")
        # Keep the pages and the stylesheet; Data Docs' bundled fonts and images are megabytes.
        kept = []
        for path in sorted(out_dir.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(out_dir).as_posix()
            if rel.endswith(".html") or rel.startswith("static/styles/"):
                kept.append(path)
            else:
                path.unlink()
        return kept


# --------------------------------------------------------------------------- a process of its own

# Inputs at least this large validate in the Great Expectations process
# (grounding_ops.data.gx_process) when Great Expectations is not imported here yet.
GX_PROCESS_MIN_BYTES = 1 << 20

_RUNNERS: dict[str, SuiteRunner] = {}  # in the Great Expectations process


def _remote_validate(token: str, config: SuiteConfig, frame: Any) -> BatchValidation:
    runner = _RUNNERS.get(token)
    if runner is None:
        runner = _RUNNERS[token] = SuiteRunner(config)
    return runner.validate(frame)


def _remote_docs(token: str, out_dir: Path) -> list[Path]:
    try:
        return _RUNNERS[token].build_docs(out_dir)
    finally:
        _RUNNERS.pop(token, None)


def _remote_close(token: str) -> None:
    _RUNNERS.pop(token, None)


class RowSuite:
    """The row-level suite, run in this process or in the Great Expectations process.
    ``submit(frame)`` returns a future of :class:`BatchValidation`."""

    def __init__(self, config: SuiteConfig, input_bytes: int = 0) -> None:
        import uuid

        from grounding_ops.data import gx_process

        self.process = gx_process.start_if(input_bytes >= GX_PROCESS_MIN_BYTES)
        self.config = config
        self.token = uuid.uuid4().hex
        self.local = SuiteRunner(config) if self.process is None else None

    def submit(self, frame: Any) -> Any:
        from grounding_ops.data import gx_process

        if self.local is not None:
            return gx_process.done(self.local.validate, frame)
        return self.process.submit(_remote_validate, self.token, self.config, frame)

    def build_docs(self, out_dir: Path) -> Any:
        """Render the Data Docs into ``out_dir`` (and let the suite go); a future of their files."""
        from grounding_ops.data import gx_process

        if self.local is not None:
            return gx_process.done(self.local.build_docs, out_dir)
        return self.process.submit(_remote_docs, self.token, out_dir)

    def close(self) -> None:
        if self.process is not None:
            self.process.submit(_remote_close, self.token)

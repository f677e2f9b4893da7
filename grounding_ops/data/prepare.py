"""``prepare``: annotations in, a validated, versioned VeRL dataset out.

Two stages, so the Airflow DAG can run them as separate tasks:

* :func:`validate_inputs` streams the inputs through the readers in batches, checks the
  images, runs the Great Expectations suite on each batch and writes ``valid.jsonl``,
  ``quarantine.jsonl`` and the validation results into a work folder;
* :func:`export_and_publish` splits the valid rows, writes the VeRL parquet files in
  row groups, computes the content version and publishes it atomically.

:func:`prepare` runs both. Memory stays bounded: one batch of records, one parquet row
group and an 8-byte hash per id (duplicate detection) are held at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections import Counter, OrderedDict, deque
from functools import lru_cache
from itertools import islice
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from grounding_ops import __version__
from grounding_ops.data.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageCheck,
    ImageCheckCache,
    ImageResolver,
)
from grounding_ops.data.manifest import LATEST, PublishReport, publish_version
from grounding_ops.data.progress import Progress, count_lines
from grounding_ops.data.stats import STATS_FILE, DatasetStats, drift, render_report, run_acceptance
from grounding_ops.data.readers import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    FORMATS,
    ReadInfo,
    ReadOptions,
    SkippedRow,
    read_records,
)
from grounding_ops.data.schema import CanonicalRecord, ParseFailure, QuarantineEntry, strict_json
from grounding_ops.data.split import SPLITS, SplitPlan, check_fractions, plan_small_splits
from grounding_ops.data import gx_process
from grounding_ops.data.validation import GX_PROCESS_MIN_BYTES, SuiteConfig
from grounding_ops.data.vision import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    RESIZE_FACTORS,
    family_for_protocol,
    family_protocol_problem,
    resize_factor,
    smart_resize,
)
from grounding_ops.storage import StorageError, join_uri, open_store, sha256_file

log = logging.getLogger(__name__)

VALID = "valid.jsonl"
QUARANTINE = "quarantine.jsonl"
VALIDATION_DIR = "validation"
SUMMARY = "summary.json"
TRAIN = "train.parquet"
VAL = "val.parquet"
TEST = "test.parquet"
SPLIT_FILES: dict[str, str] = {"train": TRAIN, "val": VAL, "test": TEST}
EXPORT_CHUNK_ROWS = 256  # rows whose new images are read and resized together


class PrepareError(ValueError):
    """A problem with the inputs or settings the user can fix; the message says how."""


@dataclass(frozen=True)
class PrepareSettings:
    protocol: str = "qwen2.5-vl"
    # Sets the resize factor (28 for Qwen2/2.5-VL, 32 for Qwen3-VL); "" follows the protocol's family.
    model_family: str = ""
    input_format: str | None = None  # None: detected per input from its name
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_quarantine_fraction: float = 0.05
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    split_salt: str = ""
    batch_rows: int = 20_000  # rows validated together
    # batches read ahead of the suite's verdicts (bounds memory: up to 1 + this many batches in flight)
    read_ahead_batches: int = 4
    row_group_rows: int = 512
    image_workers: int = 0  # threads checking (and fetching) the distinct images of a batch; 0: by CPU count
    # table-level acceptance suite (grounding_ops.data.stats)
    max_mean_boxes: float = 50.0
    max_drift: float = 1.0  # histogram total variation vs the previous version; 1.0: reported, never refused
    allowed_buckets: tuple[str, ...] = ()
    # how readers interpret releases (see grounding_ops.data.readers.ReadOptions)
    multi_reader: str = "fuse"
    reader_id: str | None = None
    fusion_iou: float = 0.3
    group_by: str = "auto"
    source_split: bool = False
    image_extension: str = ".png"
    box_format: str = "auto"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def read_options(self) -> ReadOptions:
        return ReadOptions(
            multi_reader=self.multi_reader,
            reader_id=self.reader_id,
            fusion_iou=self.fusion_iou,
            group_by=self.group_by,
            source_split=self.source_split,
            image_extension=self.image_extension,
            box_format=self.box_format,
            max_line_bytes=self.max_line_bytes,
            max_document_bytes=self.max_document_bytes,
        )

    def __post_init__(self) -> None:
        if not self.model_family:
            object.__setattr__(self, "model_family", family_for_protocol(self.protocol))

    def check(self) -> None:
        from grounding_ops.protocols import get_protocol

        try:
            get_protocol(self.protocol)
        except ValueError as exc:
            raise PrepareError(str(exc)) from None
        if self.model_family not in RESIZE_FACTORS:
            raise PrepareError(
                f"unknown --model-family {self.model_family!r}; choose one of: {', '.join(RESIZE_FACTORS)}"
            )
        problem = family_protocol_problem(self.model_family, self.protocol)
        if problem:
            raise PrepareError(f"--model-family {self.model_family} with --protocol {self.protocol}: {problem}")
        if self.input_format is not None and self.input_format not in FORMATS:
            raise PrepareError(f"unknown --format {self.input_format!r}; choose one of: {', '.join(FORMATS)}")
        try:
            check_fractions(self.val_fraction, self.test_fraction)
        except ValueError as exc:
            raise PrepareError(
                str(exc).replace("val_fraction", "--val-fraction").replace("test_fraction", "--test-fraction")
            ) from None
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise PrepareError(f"--max-quarantine-fraction must be in [0, 1], got {self.max_quarantine_fraction}")
        if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise PrepareError(f"need 0 < --min-pixels <= --max-pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_image_pixels <= 0 or self.batch_rows <= 0 or self.row_group_rows <= 0:
            raise PrepareError("--max-image-pixels, the batch size and the row group size must be positive")
        if self.read_ahead_batches < 0:
            raise PrepareError(f"the batches read ahead must be 0 or more, got {self.read_ahead_batches}")
        if self.max_image_bytes <= 0:
            raise PrepareError(f"--max-image-bytes must be positive, got {self.max_image_bytes}")
        try:
            self.read_options().check()
        except ValueError as exc:
            raise PrepareError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["suite"] = self.suite.to_json()
        data["allowed_buckets"] = list(self.allowed_buckets)
        return data

    def content_json(self) -> dict[str, Any]:
        """The settings that change the dataset's content (part of the version)."""
        data = self.to_json()
        for key in ("batch_rows", "read_ahead_batches", "row_group_rows", "max_quarantine_fraction", "image_workers"):
            data.pop(key)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PrepareSettings":
        data = dict(data)
        suite = data.pop("suite", {}) or {}
        return cls(
            suite=SuiteConfig(
                max_phrase_chars=int(suite.get("max_phrase_chars", 512)),
                min_box_area=float(suite.get("min_box_area", 1.0)),
                allowed_sources=tuple(suite.get("allowed_sources", ())),
                max_aspect_ratio=float(suite.get("max_aspect_ratio", 200.0)),
            ),
            allowed_buckets=tuple(data.pop("allowed_buckets", ()) or ()),
            **data,
        )


@dataclass
class ValidationSummary:
    """What :func:`validate_inputs` wrote into ``work_dir`` (also saved as summary.json)."""

    work_dir: Path
    counts: dict[str, int]
    reasons: dict[str, int]
    inputs: list[dict[str, Any]]
    settings: dict[str, Any]
    images_root: str
    gx_success: bool
    batches: int

    @property
    def quarantine_fraction(self) -> float:
        received = self.counts["received"]
        return self.counts["quarantined"] / received if received else 0.0

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        return Counter(self.reasons).most_common(n)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["work_dir"] = None
        return data

    @classmethod
    def load(cls, work_dir: Path) -> "ValidationSummary":
        data = json.loads((Path(work_dir) / SUMMARY).read_text())
        data["work_dir"] = Path(work_dir)
        return cls(**data)


@dataclass
class PrepareResult:
    version: str
    dataset_uri: str  # the version folder
    manifest_uri: str
    output_uri: str
    quarantine_uri: str
    counts: dict[str, int]
    top_reasons: list[tuple[str, int]]
    quarantine_fraction: float
    max_quarantine_fraction: float
    accepted: bool
    reused: bool
    bytes_uploaded: int
    files_uploaded: list[str]
    split_notes: list[str] = field(default_factory=list)
    rejection: str = ""  # why the version was not accepted ("" when it was)
    report_uri: str = ""

    def summary_lines(self) -> list[str]:
        c = self.counts
        lines = [
            f"dataset {self.version}: received {c['received']}, valid {c['valid']}, quarantined {c['quarantined']} "
            f"({self.quarantine_fraction:.1%}; limit {self.max_quarantine_fraction:.1%}), "
            f"train {c['train']}, val {c['val']}, test {c.get('test', 0)}"
            + (f", skipped {c['skipped']}" if c.get("skipped") else ""),
        ]
        lines.extend(self.split_notes)
        if self.top_reasons:
            lines.append("top quarantine reasons: " + ", ".join(f"{r} ({n})" for r, n in self.top_reasons))
        if self.rejection:
            lines.append(f"not accepted: {self.rejection}")
        lines.append(f"quarantine: {self.quarantine_uri}")
        if self.report_uri:
            lines.append(f"report: {self.report_uri}")
        lines.append(
            "uploaded nothing (unchanged version)"
            if self.reused and not self.bytes_uploaded
            else f"uploaded {len(self.files_uploaded)} files, {self.bytes_uploaded} bytes"
        )
        return lines


# --------------------------------------------------------------------------- duplicate ids


class SeenIds:
    """Which ids were seen before, as sorted 64-bit hashes (8 bytes per id)."""

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._seen = np.empty(0, dtype=np.uint64)

    def first_occurrences(self, ids: Sequence[str]) -> list[bool]:
        np = self._np
        hashes = np.fromiter(
            (int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "big") for i in ids),
            dtype=np.uint64,
            count=len(ids),
        )
        first = np.zeros(len(ids), dtype=bool)
        _, first_index = np.unique(hashes, return_index=True)
        first[first_index] = True
        if self._seen.size:
            pos = np.searchsorted(self._seen, hashes)
            pos = np.minimum(pos, self._seen.size - 1)
            first &= self._seen[pos] != hashes
        self._seen = np.union1d(self._seen, hashes)
        return first.tolist()


# --------------------------------------------------------------------------- stage 1: validate


def _local_inputs(inputs: Sequence[str], work_dir: Path, s3_client: Any | None) -> list[tuple[str, Path]]:
    located: list[tuple[str, Path]] = []
    for index, uri in enumerate(inputs):
        text = str(uri)
        if text.startswith("s3://"):
            store = open_store(text.rsplit("/", 1)[0], s3_client=s3_client)
            name = text.rsplit("/", 1)[1]
            local = work_dir / "inputs" / f"{index:03d}" / name
            try:
                store.download_file(name, local)
            except StorageError as exc:
                raise PrepareError(f"cannot read input {text}: {exc}") from exc
            located.append((text, local))
        else:
            path = Path(text.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise PrepareError(f"input {text} does not exist or is not a file")
            located.append((text, path))
    if not located:
        raise PrepareError("no input files given")
    return located


def _detail(reason: str, feats: dict[str, Any], image: ImageCheck) -> str:
    if reason.startswith("image_") and image.detail:
        return image.detail
    details = {
        "unique_id": f"id {feats['id']!r} appeared earlier in the input",
        "phrase_not_null": "the phrase is missing",
        "phrase_length": f"phrase has {feats['phrase_chars']:g} characters",
        "has_box": "no boxes",
        "boxes_four_finite_numbers": "every box must be four finite numbers [x1, y1, x2, y2]",
        "box_x1_nonnegative": f"smallest x1 is {feats['box_min_x1']}",
        "box_y1_nonnegative": f"smallest y1 is {feats['box_min_y1']}",
        "box_x1_lt_x2": f"a box has x2 - x1 = {feats['box_min_width']}",
        "box_y1_lt_y2": f"a box has y2 - y1 = {feats['box_min_height']}",
        "box_x2_within_width": f"largest x2 is {feats['box_max_x2']} but the image is {feats['image_width']:g} wide",
        "box_y2_within_height": f"largest y2 is {feats['box_max_y2']} but the image is {feats['image_height']:g} high",
        "box_positive_area": f"smallest box area is {feats['box_min_area']}",
        "declared_width_matches_image": f"declared width {feats['declared_width']:g}, image is {feats['image_width']:g}",
        "declared_height_matches_image": f"declared height {feats['declared_height']:g}, image is "
        f"{feats['image_height']:g}",
        "image_aspect_ratio": f"aspect ratio {feats['image_aspect_ratio']:.1f}",
        "source_allowed": f"source {feats['source']!r} is not allowed",
    }
    return details.get(reason, reason)


def valid_row(record: CanonicalRecord, boxes: list[Any], image: ImageCheck) -> dict[str, Any]:
    """The line of ``valid.jsonl`` for a record that passed validation (boxes in pixels)."""
    return {
        "id": record.id,
        "image": record.image,
        "phrase": record.phrase,
        "boxes": [[float(v) for v in box] for box in boxes],
        "source": record.source,
        "group": record.group_key,
        "width": image.width,
        "height": image.height,
        "image_sha256": image.sha256,
        **({"split": record.split} if record.split else {}),
    }


def _json_line_encoder() -> Any:
    """``json.dumps(row, sort_keys=True, ensure_ascii=False)``, the same bytes, about twice as fast
    for the small rows of ``valid.jsonl``: CPython's C encoder called directly, without the
    Python-level wrappers around it (``json.dumps`` itself where there is no C encoder)."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    if make is None:
        return lambda row: json.dumps(row, sort_keys=True, ensure_ascii=False)

    def unsupported(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    # markers, default, encoder, indent, key separator, item separator, sort_keys, skipkeys, allow_nan
    chunks = make(None, unsupported, encoder.encode_basestring, None, ": ", ", ", True, False, True)
    return lambda row: "".join(chunks(row, 0))


valid_line = _json_line_encoder()


class _Writers:
    def __init__(self, work_dir: Path) -> None:
        self.valid = open(work_dir / VALID, "w", encoding="utf-8")
        self.quarantine = open(work_dir / QUARANTINE, "w", encoding="utf-8")
        self.reasons: Counter[str] = Counter()
        self.counts = Counter({"received": 0, "valid": 0, "quarantined": 0, "skipped": 0})

    def reject(self, entry: QuarantineEntry) -> None:
        self.quarantine.write(entry.to_line() + "\n")
        self.reasons[entry.reason] += 1
        self.counts["received"] += 1
        self.counts["quarantined"] += 1

    def accept(self, row: dict[str, Any]) -> None:
        self.valid.write(valid_line(row) + "\n")
        self.counts["received"] += 1
        self.counts["valid"] += 1

    def close(self) -> None:
        self.valid.close()
        self.quarantine.close()


@dataclass
class _PendingBatch:
    """One batch read and checked, its row suite submitted, its verdicts not yet written."""

    items: int
    failures: list[ParseFailure] = field(default_factory=list)
    skipped: int = 0
    records: list[CanonicalRecord] = field(default_factory=list)
    checks: list[ImageCheck] = field(default_factory=list)
    boxes: list[list[Any]] = field(default_factory=list)
    firsts: list[bool] = field(default_factory=list)
    outcome: Any = None  # future of the batch's BatchValidation


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def validate_inputs(
    inputs: Sequence[str],
    *,
    images_root: str,
    settings: PrepareSettings,
    work_dir: str | Path,
    s3_client: Any | None = None,
    wait_for_docs: bool = True,
) -> ValidationSummary:
    """Read, check and validate ``inputs``; write valid rows, quarantine and GX results to ``work_dir``.

    ``wait_for_docs=False`` returns while the Great Expectations process still renders the Data
    Docs into ``work_dir``; :func:`export_and_publish` of that folder in this process waits for them
    before it publishes (``prepare`` overlaps them with the export)."""
    from grounding_ops.data.validation import RowSuite, feature_frame, pixel_boxes, row_features

    settings.check()
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_dir = work / VALIDATION_DIR / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    located = _local_inputs(inputs, work, s3_client)
    fingerprints = [
        {"uri": uri, "name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}
        for uri, path in located
    ]
    resolver = ImageResolver(images_root, s3_client=s3_client, allowed_buckets=settings.allowed_buckets)
    images = ImageCheckCache(resolver, settings.max_image_pixels, max_image_bytes=settings.max_image_bytes)
    runner = RowSuite(settings.suite, input_bytes=sum(path.stat().st_size for _, path in located))
    seen = SeenIds()
    writers = _Writers(work)
    gx_success = True
    batches = 0

    options = settings.read_options()
    infos: list[ReadInfo] = [ReadInfo() for _ in located]
    progress = Progress("validate", count_lines(path for _, path in located))

    def stream() -> Iterator[Any]:
        for (_, path), info in zip(located, infos):
            try:
                yield from read_records(path, settings.input_format, options=options, info=info)
            except ValueError as exc:
                raise PrepareError(f"{path.name}: {exc}") from None

    def finish(pending: _PendingBatch) -> None:
        """Write one batch's verdicts, in input order: its parse failures, then its records."""
        nonlocal gx_success, batches
        for item in pending.failures:
            writers.reject(QuarantineEntry(item.id, item.position, item.reason, item.detail, item.raw))
        writers.counts["skipped"] += pending.skipped
        if pending.records:
            outcome = pending.outcome.result()
            gx_success &= outcome.success
            (results_dir / f"batch-{batches:05d}.json").write_text(strict_json(outcome.result))
            batches += 1
            for i, record in enumerate(pending.records):
                reasons = outcome.failures.get(i)
                if reasons:
                    writers.reject(
                        QuarantineEntry(
                            record.id,
                            record.position,
                            reasons[0],
                            _detail(
                                reasons[0],
                                row_features(record, pending.boxes[i], pending.checks[i], pending.firsts[i], i),
                                pending.checks[i],
                            ),
                            record.raw_row(),
                            reasons,
                        )
                    )
                    continue
                writers.accept(valid_row(record, pending.boxes[i], pending.checks[i]))
            log.info(
                "validated batch %d: %d records, %d quarantined so far",
                batches,
                len(pending.records),
                writers.counts["quarantined"],
            )
        progress.update(pending.items)

    # Batches read and submitted, verdicts not yet written (in input order). Reading runs ahead
    # while the suite is busy (above all while the Great Expectations process still imports, ~3 s),
    # at most settings.read_ahead_batches batches; a batch whose suite is done is written at once.
    pending: deque[_PendingBatch] = deque()
    try:
        for batch in _batches(stream(), settings.batch_rows):
            current = _PendingBatch(items=len(batch))
            for item in batch:
                if isinstance(item, ParseFailure):
                    current.failures.append(item)
                elif isinstance(item, SkippedRow):
                    current.skipped += 1
                else:
                    current.records.append(item)
            records = current.records
            if records:
                firsts = current.firsts = seen.first_occurrences([r.id for r in records])
                checked = images.get_many({r.image for r in records}, workers=settings.image_workers)
                current.checks = [checked[r.image] for r in records]
                current.boxes = [pixel_boxes(r, c) for r, c in zip(records, current.checks)]
                current.outcome = runner.submit(feature_frame(records, current.boxes, current.checks, firsts))
            pending.append(current)
            while pending and (
                len(pending) > settings.read_ahead_batches or pending[0].outcome is None or pending[0].outcome.done()
            ):
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    except BaseException:
        runner.close()
        raise
    finally:
        writers.close()
    progress.close()
    if writers.counts["received"] == 0:
        raise PrepareError("the inputs hold no annotation rows; check the files and --format")
    for fingerprint, info in zip(fingerprints, infos):
        fingerprint["reader"] = info.to_json()
    if batches:
        docs = runner.build_docs(work / VALIDATION_DIR / "docs")  # and lets the suite go
        if wait_for_docs:
            docs.result()
        else:
            _PENDING_DOCS[work] = docs
    else:
        runner.close()
    summary = ValidationSummary(
        work_dir=work,
        counts=dict(writers.counts),
        reasons=dict(writers.reasons),
        inputs=fingerprints,
        settings=settings.to_json(),
        images_root=str(images_root),
        gx_success=gx_success,
        batches=batches,
    )
    (work / VALIDATION_DIR / "summary.json").write_text(
        json.dumps(
            {
                "counts": summary.counts,
                "reasons": summary.reasons,
                "gx_success": gx_success,
                "batches": batches,
                "suite": settings.suite.to_json(),
            },
            indent=2,
            sort_keys=True,
        )
    )
    (work / SUMMARY).write_text(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    log.info(
        "validation: received %d, valid %d, quarantined %d; top reasons: %s",
        summary.counts["received"],
        summary.counts["valid"],
        summary.counts["quarantined"],
        summary.top_reasons(),
    )
    return summary


# --------------------------------------------------------------------------- stage 2: export + publish


class _EmbeddedImages:
    """The image bytes export embeds, per (image checksum, resized size): each distinct image
    is read once, checked against the checksum validation recorded, and resized once while it
    stays in a byte-bounded LRU. The resizes of a chunk's new images run in a thread pool
    (Pillow's decode, resize and encode release the GIL)."""

    def __init__(
        self, resolver: ImageResolver, workers: int = 0, budget: int = 256 * 1024 * 1024, chunk_bytes: int = 1 << 26
    ) -> None:
        import os

        self.resolver = resolver
        self.workers = workers or (os.cpu_count() or 1)
        self.budget = budget
        self.chunk_bytes = chunk_bytes  # original bytes read before their resizes run
        self._cache: OrderedDict[tuple[str, tuple[int, int]], bytes] = OrderedDict()
        self._size = 0
        self._pool: Any = None

    def _read(self, ref: str, sha256: str) -> bytes:
        data = self.resolver.read(ref)
        if data is None or hashlib.sha256(data).hexdigest() != sha256:
            raise PrepareError(f"image {ref!r} changed or disappeared while preparing; run prepare again")
        return data

    def _resize(self, jobs: list[tuple[tuple[str, tuple[int, int]], bytes, tuple[int, int]]]) -> dict[Any, bytes]:
        from grounding_ops.data.export import resize_encoded

        if len(jobs) > 1 and self.workers > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="resize")
            resized = self._pool.map(lambda job: resize_encoded(job[1], job[2]), jobs)
        else:
            resized = (resize_encoded(data, size) for _, data, size in jobs)
        return {key: out for (key, _, _), out in zip(jobs, resized)}

    def get_many(self, wanted: dict[tuple[str, tuple[int, int]], tuple[str, tuple[int, int]]]) -> dict[Any, bytes]:
        """``{(sha256, resized): bytes}`` for ``{(sha256, resized): (ref, original size)}``."""
        found: dict[Any, bytes] = {}
        jobs: list[Any] = []
        pending = 0
        for key, (ref, original) in wanted.items():
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                found[key] = data
                continue
            data = self._read(ref, key[0])
            if tuple(original) == key[1]:  # already the size the model sees: embedded as it is
                found[key] = data
                continue
            jobs.append((key, data, key[1]))
            pending += len(data)
            if pending >= self.chunk_bytes:
                found.update(self._resize(jobs))
                jobs, pending = [], 0
        found.update(self._resize(jobs))
        for key, data in found.items():
            if key not in self._cache:
                self._cache[key] = data
                self._size += len(data)
        while self._size > self.budget and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._size -= len(old)
        return found

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# Data Docs still being rendered into a work folder (validate_inputs(wait_for_docs=False)).
_PENDING_DOCS: dict[Path, Any] = {}


def _content_version(work: Path, settings: PrepareSettings, summary: ValidationSummary, accepted: bool) -> str:
    """Hash of the valid rows (with their image checksums), the quarantine, the content settings
    and the verdict: a rejected run never overwrites the manifest of an accepted version."""
    digest = hashlib.sha256()
    digest.update(b"accepted" if accepted else b"rejected")
    digest.update(json.dumps(settings.content_json(), sort_keys=True).encode())
    digest.update(
        json.dumps(
            {"received": summary.counts["received"], "skipped": summary.counts.get("skipped", 0)}, sort_keys=True
        ).encode()
    )
    for name in (VALID, QUARANTINE):
        digest.update(name.encode())
        digest.update(sha256_file(work / name).encode())
    return digest.hexdigest()[:16]


def plan_splits(work: Path, settings: PrepareSettings) -> SplitPlan:
    # A json.loads per line: Arrow's JSON reader parses the groups 4x faster but keeps tens of MB
    # per 100 MB of input (its blocks stay in the memory pool), which the flat-memory rule forbids.
    with open(work / VALID, encoding="utf-8") as handle:
        return plan_small_splits(
            (json.loads(line)["group"] for line in handle),
            settings.val_fraction,
            settings.split_salt,
            settings.test_fraction,
        )


def write_parquet(
    work: Path,
    out_dir: Path,
    settings: PrepareSettings,
    resolver: ImageResolver,
    notes: list[str] | None = None,
    plan: SplitPlan | None = None,
    stats: Any | None = None,
) -> dict[str, int]:
    """Split ``valid.jsonl`` and write train/val/test parquet into ``out_dir``; return the row
    counts. Notes on held-out splits a small dataset cannot fill are appended to ``notes``;
    ``stats`` (a :class:`grounding_ops.data.stats.DatasetStats`), when given, gathers the
    statistics of the rows with their splits in the same pass."""
    from contextlib import ExitStack

    from grounding_ops.data.export import RowGroupWriter, build_table
    from grounding_ops.protocols import build_prompt

    factor = resize_factor(settings.model_family)
    plan = plan if plan is not None else plan_splits(work, settings)

    @lru_cache(maxsize=1 << 16)  # rows of a group (often one image) come together
    def split_of(group: str) -> str:
        return plan.split_of(group, settings.val_fraction, settings.split_salt, settings.test_fraction)

    @lru_cache(maxsize=1 << 12)
    def resized_size(width: int, height: int) -> tuple[int, int]:
        return smart_resize(
            width, height, factor=factor, min_pixels=settings.min_pixels, max_pixels=settings.max_pixels
        )

    images = _EmbeddedImages(resolver, workers=settings.image_workers, budget=64 * 1024 * 1024)
    prompts: dict[str, list[dict[str, str]]] = {}  # phrase -> prompt, for the rows of a chunk
    counts = {name: 0 for name in SPLITS}
    progress = Progress("export", count_lines([work / VALID]))
    if notes is not None:
        notes.extend(plan.notes)
    with ExitStack() as stack:
        stack.callback(images.close)
        writers = {
            name: stack.enter_context(RowGroupWriter(out_dir / SPLIT_FILES[name], max_rows=settings.row_group_rows))
            for name in SPLITS
        }
        with open(work / VALID, encoding="utf-8") as handle:
            while True:
                rows = [json.loads(line) for line in islice(handle, EXPORT_CHUNK_ROWS)]
                if not rows:
                    break
                sizes = [(int(row["width"]), int(row["height"])) for row in rows]
                resized = [resized_size(w, h) for w, h in sizes]
                keys = [(row["image_sha256"], size) for row, size in zip(rows, resized)]
                embedded = images.get_many({key: (row["image"], size) for key, row, size in zip(keys, rows, sizes)})
                by_split: dict[str, list[int]] = {}
                for i, row in enumerate(rows):
                    by_split.setdefault(row.get("split") or split_of(row["group"]), []).append(i)
                prompts.clear()
                for split, picked in by_split.items():
                    chosen = [rows[i] for i in picked]
                    if stats is not None:
                        stats.add_many(chosen, split)
                    data = [embedded[keys[i]] for i in picked]
                    for row in chosen:
                        if row["phrase"] not in prompts:
                            prompts[row["phrase"]] = build_prompt(row["phrase"], settings.protocol)
                    table = build_table(
                        record_ids=[row["id"] for row in chosen],
                        sources=[row["source"] for row in chosen],
                        phrases=[row["phrase"] for row in chosen],
                        boxes=[row["boxes"] for row in chosen],
                        image_bytes=data,
                        image_sizes=[sizes[i] for i in picked],
                        resized_sizes=[resized[i] for i in picked],
                        prompts=[prompts[row["phrase"]] for row in chosen],
                        protocol=settings.protocol,
                        split=split,
                        first_index=counts[split],
                        min_pixels=settings.min_pixels,
                        max_pixels=settings.max_pixels,
                    )
                    writers[split].add_table(table, [len(d) for d in data])
                    counts[split] += len(picked)
                progress.update(len(rows))
    progress.close()
    return counts


def _grouping(inputs: list[dict[str, Any]], settings: PrepareSettings) -> dict[str, Any]:
    """How rows were kept together in splits, and multi-reader handling, per input."""
    return {
        "group_by": settings.group_by,
        "split_from": "group hash" if not settings.source_split else "the release's split column",
        "per_input": [
            {
                "name": item["name"],
                **{
                    k: (item.get("reader") or {}).get(k)
                    for k in ("format", "group_by", "split_from", "box_convention", "multi_reader")
                },
            }
            for item in inputs
        ],
    }


REPORT_DIR = "report"
ACCEPTANCE_RESULT = "acceptance.json"


def _previous_stats(store: Any, candidate: str) -> tuple[str | None, dict[str, Any] | None]:
    """The statistics of the version ``latest.json`` points at, to compare with. When that is
    this very content (a rerun), the version it was compared with then, so reruns match."""
    from grounding_ops.data.manifest import read_json

    latest = read_json(store, LATEST)
    previous = str(latest["version"]) if latest and latest.get("version") else None
    for _ in range(2):
        if previous is None:
            return None, None
        report = read_json(store, f"{previous}/{REPORT_DIR}/{STATS_FILE}")
        if previous != candidate:
            return (previous, report["stats"]) if report and isinstance(report.get("stats"), dict) else (previous, None)
        previous = report.get("previous_version") if report else None
    return None, None


def export_and_publish(
    work_dir: str | Path,
    *,
    output_uri: str,
    s3_client: Any | None = None,
    store: Any | None = None,
    created_at: str | None = None,
    images_root: str | None = None,
) -> PrepareResult:
    """Write the parquet files for the validated rows in ``work_dir`` and publish the version.

    ``images_root``, when given, is the root the caller validated against; the summary read
    from ``work_dir`` must name the same one (export embeds files from that root)."""
    work = Path(work_dir)
    summary = ValidationSummary.load(work)
    if images_root is not None and str(summary.images_root) != str(images_root):
        raise PrepareError(
            f"the validation summary names images root {summary.images_root!r}, but the run validated "
            f"{images_root!r}: refusing to embed images from a root nobody checked"
        )
    settings = PrepareSettings.from_json(summary.settings)
    resolver = ImageResolver(summary.images_root, s3_client=s3_client, allowed_buckets=settings.allowed_buckets)
    store = store if store is not None else open_store(output_uri, s3_client=s3_client)
    # the acceptance suite needs Great Expectations: imported elsewhere while the rows are written
    gx_process.start_if((work / VALID).stat().st_size >= GX_PROCESS_MIN_BYTES)
    plan = plan_splits(work, settings)
    out = work / "export"
    out.mkdir(exist_ok=True)
    split_notes: list[str] = []
    gathered = DatasetStats()
    split_counts = write_parquet(work, out, settings, resolver, split_notes, plan, gathered)
    stats = gathered.finish().to_json()
    quarantine_ok = summary.quarantine_fraction <= settings.max_quarantine_fraction
    previous_version, previous = _previous_stats(store, _content_version(work, settings, summary, True))
    drift_info = drift(stats, previous)
    acceptance = gx_process.run_elsewhere(
        run_acceptance,
        stats,
        drift_info,
        max_phrase_chars=settings.suite.max_phrase_chars,
        max_mean_boxes=settings.max_mean_boxes,
        max_drift=settings.max_drift,
    ).result()
    accepted = quarantine_ok and acceptance.success
    rejection = (
        ""
        if accepted
        else f"the acceptance suite failed: {', '.join(acceptance.failures)}"
        if quarantine_ok
        else f"{summary.counts['quarantined']} of {summary.counts['received']} rows quarantined "
        f"({summary.quarantine_fraction:.1%} > {settings.max_quarantine_fraction:.1%})"
    )
    version = _content_version(work, settings, summary, accepted)
    for note in split_notes:
        log.warning("%s", note)
    counts = {**summary.counts, **split_counts}
    (work / VALIDATION_DIR / ACCEPTANCE_RESULT).write_text(strict_json(acceptance.result))
    report_files = render_report(work / REPORT_DIR, stats, drift_info, acceptance, previous_version, version, previous)
    docs = _PENDING_DOCS.pop(work.resolve(), None)
    if docs is not None:  # validated in this process without waiting for its Data Docs
        docs.result()
    local_files = {**{name: out / name for name in SPLIT_FILES.values()}, QUARANTINE: work / QUARANTINE}
    local_files.update({f"{REPORT_DIR}/{path.name}": path for path in report_files})
    validation_root = work / VALIDATION_DIR
    for path in sorted(validation_root.rglob("*")):
        if path.is_file():
            local_files[f"{VALIDATION_DIR}/{path.relative_to(validation_root).as_posix()}"] = path
    manifest = {
        "version": version,
        "counts": counts,
        "accepted": accepted,
        "rejection": rejection,
        "quarantine_fraction": summary.quarantine_fraction,
        "top_reasons": summary.top_reasons(10),
        "split_notes": split_notes,
        "protocol": settings.protocol,
        "settings": settings.to_json(),
        "inputs": summary.inputs,
        "grouping": _grouping(summary.inputs, settings),
        "images_root": summary.images_root,
        # success: the version's acceptance suite passed and the quarantine is within its limit;
        # rows: the row-level suite, which fails for every quarantined row by design
        "validation": {
            "success": accepted,
            "acceptance": {
                "success": acceptance.success,
                "failures": acceptance.failures,
                "results": f"{VALIDATION_DIR}/{ACCEPTANCE_RESULT}",
            },
            "rows": {
                "success": summary.gx_success,
                "quarantined": summary.counts["quarantined"],
                "results": f"{VALIDATION_DIR}/results/",
                "docs": f"{VALIDATION_DIR}/docs/index.html",
                "summary": f"{VALIDATION_DIR}/summary.json",
            },
        },
        "report": {
            "index": f"{REPORT_DIR}/index.html",
            "stats": f"{REPORT_DIR}/{STATS_FILE}",
            "previous_version": previous_version,
            "drift": drift_info,
        },
        "tool_version": __version__,
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    report: PublishReport = publish_version(store, version, local_files, manifest, update_latest=accepted)
    version_uri = report.version_uri
    log.info(
        "published %s: %s (%d bytes uploaded, %d files skipped)",
        version,
        version_uri,
        report.bytes_uploaded,
        len(report.skipped),
    )
    return PrepareResult(
        version=version,
        dataset_uri=version_uri,
        manifest_uri=report.manifest_uri,
        output_uri=store.uri,
        quarantine_uri=join_uri(version_uri, QUARANTINE),
        counts=counts,
        top_reasons=summary.top_reasons(),
        quarantine_fraction=summary.quarantine_fraction,
        max_quarantine_fraction=settings.max_quarantine_fraction,
        accepted=accepted,
        reused=report.reused,
        bytes_uploaded=report.bytes_uploaded,
        files_uploaded=report.uploaded,
        split_notes=split_notes,
        rejection=rejection,
        report_uri=join_uri(version_uri, REPORT_DIR, "index.html"),
    )


def prepare(
    inputs: Sequence[str],
    *,
    images_root: str,
    output_uri: str,
    settings: PrepareSettings | None = None,
    s3_client: Any | None = None,
    work_dir: str | Path | None = None,
) -> PrepareResult:
    """Validate ``inputs`` and publish a dataset version under ``output_uri``."""
    settings = settings or PrepareSettings()
    with tempfile.TemporaryDirectory(prefix="grounding-prepare-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        validate_inputs(
            inputs, images_root=images_root, settings=settings, work_dir=work, s3_client=s3_client, wait_for_docs=False
        )
        try:
            return export_and_publish(work, output_uri=output_uri, s3_client=s3_client)
        finally:
            docs = _PENDING_DOCS.pop(work.resolve(), None)
            if docs is not None:  # the export failed before it waited: do not leave them writing
                docs.exception()


__all__ = [
    "LATEST",
    "PrepareError",
    "PrepareResult",
    "PrepareSettings",
    "ValidationSummary",
    "export_and_publish",
    "prepare",
    "validate_inputs",
]

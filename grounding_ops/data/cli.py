"""``grounding-ops prepare``: validate annotations and publish a VeRL dataset version.

Also ``grounding-ops synthetic-data``: write the small synthetic demo set.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from grounding_ops.cli import FRACTION, POSITIVE_INT
from grounding_ops.data.readers import FORMATS


def _protocol_names() -> tuple[str, ...]:
    from grounding_ops.protocols import PROTOCOL_NAMES

    return PROTOCOL_NAMES


def _model_families() -> tuple[str, ...]:
    from grounding_ops.data.vision import RESIZE_FACTORS

    return tuple(RESIZE_FACTORS)


def add_parser(subparsers: Any) -> None:
    from grounding_ops.data.images import DEFAULT_MAX_IMAGE_PIXELS
    from grounding_ops.data.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    parser = subparsers.add_parser(
        "prepare",
        help="validate box annotations and publish a versioned VeRL dataset",
        description="Read annotations, validate them with Great Expectations (rejected rows go to "
        "quarantine.jsonl with a reason), split by group and publish train/val/test parquet for VeRL "
        "under OUTPUT/<version>/. Prints the dataset version URI.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="annotation files (local paths or s3:// URIs)")
    parser.add_argument(
        "--images-root", required=True, help="folder or s3://bucket/prefix the image paths are relative to"
    )
    parser.add_argument(
        "--output", required=True, help="dataset folder or s3://bucket/prefix to publish versions under"
    )
    parser.add_argument(
        "--format",
        dest="input_format",
        choices=FORMATS,
        default=None,
        help="input format (default: from the file: .jsonl canonical/ODVG, .json COCO/PadChest-GR, .csv VinDr/MS-CXR, "
        ".p RefCOCO, .parquet VeRL/RefCOCO)",
    )
    parser.add_argument(
        "--protocol",
        default="qwen2.5-vl",
        choices=_protocol_names(),
        help="answer format the prompts ask for (default: qwen2.5-vl)",
    )
    parser.add_argument(
        "--model-family",
        default="",
        choices=("", *_model_families()),
        help="the model family the dataset is for: its resize factor (28 for Qwen2/2.5-VL, 32 for "
        "Qwen3-VL) sets the image size the model sees (default: the protocol's family, "
        "qwen2.5-vl for the generic protocols)",
    )
    parser.add_argument(
        "--val-fraction",
        type=FRACTION,
        default=0.1,
        help="share of groups in val, where checkpoints are chosen (default 0.1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=FRACTION,
        default=0.1,
        help="share of groups in test, where the promotion decision is taken (default 0.1)",
    )
    parser.add_argument(
        "--max-quarantine-fraction",
        type=FRACTION,
        default=0.05,
        help="fail when more than this share of rows is quarantined (default 0.05)",
    )
    parser.add_argument(
        "--min-pixels",
        type=POSITIVE_INT,
        default=DEFAULT_MIN_PIXELS,
        help=f"smallest resized image the model sees, in pixels (default {DEFAULT_MIN_PIXELS})",
    )
    parser.add_argument(
        "--max-pixels",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest resized image the model sees, in pixels (default {DEFAULT_MAX_PIXELS}); "
        "keep it at most the processor's max_pixels",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    parser.add_argument(
        "--allowed-source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="accept only rows from these sources (repeatable; default: any)",
    )
    parser.add_argument(
        "--allowed-bucket",
        action="append",
        default=[],
        metavar="BUCKET",
        help="another bucket s3:// image URIs may point at (the images root's bucket is allowed)",
    )
    from grounding_ops.data.images import DEFAULT_MAX_IMAGE_BYTES
    from grounding_ops.data.readers import (
        DEFAULT_MAX_DOCUMENT_BYTES,
        DEFAULT_MAX_LINE_BYTES,
        GROUP_KEYS,
        MULTI_READER_MODES,
    )

    releases = parser.add_argument_group("releases (see docs/datasets.md)")
    releases.add_argument(
        "--multi-reader",
        choices=MULTI_READER_MODES,
        default="fuse",
        help="several annotators per finding (VinDr-CXR rad_id, PadChest-GR): fuse their boxes "
        "(default: IoU-clustering consensus), keep one reader, or keep all",
    )
    releases.add_argument("--reader-id", default=None, help="with --multi-reader one: the reader to keep (e.g. R9)")
    releases.add_argument(
        "--fusion-iou",
        type=FRACTION,
        default=0.3,
        help="IoU at which two readers' boxes are the same finding (default 0.3)",
    )
    releases.add_argument(
        "--group-by",
        default="auto",
        metavar="|".join(GROUP_KEYS) + "|column:NAME",
        help="what keeps rows together in one split (default auto: the patient where the release "
        "names one, else the image)",
    )
    releases.add_argument(
        "--source-split",
        action="store_true",
        help="use the release's own split column (MS-CXR, RefCOCO, PadChest-GR) instead of the group hash",
    )
    releases.add_argument(
        "--image-extension",
        default=".png",
        help="extension of images converted from DICOM ids (VinDr-CXR, MS-CXR dicom_id; default .png)",
    )
    releases.add_argument(
        "--box-format",
        choices=("auto", "xyxy", "xywh"),
        default="auto",
        help="box lists of an imported VeRL parquet (default auto: xyxy, normalized when in 0..1)",
    )
    releases.add_argument(
        "--max-line-bytes",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longest JSONL line or CSV cell read (longer ones are quarantined)",
    )
    releases.add_argument(
        "--max-document-bytes",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_DOCUMENT_BYTES,
        help="largest whole-document input (COCO, PadChest-GR, RefCOCO) read",
    )
    releases.add_argument(
        "--max-image-bytes",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="largest image file read (larger ones are quarantined)",
    )
    parser.set_defaults(func=run_prepare)

    synthetic = subparsers.add_parser(
        "synthetic-data",
        help="write a small synthetic grounding dataset with real images",
        description="Draw coloured shapes on backgrounds and write OUTPUT/images/ and OUTPUT/annotations.jsonl.",
    )
    synthetic.add_argument("--output", required=True, help="folder to write")
    synthetic.add_argument("--images", type=POSITIVE_INT, default=24, help="number of images (default 24)")
    synthetic.add_argument("--invalid", type=int, default=0, help="deliberately broken rows to add (default 0)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=run_synthetic)


def run_prepare(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.data.prepare import PrepareError, PrepareSettings, prepare
    from grounding_ops.data.validation import SuiteConfig
    from grounding_ops.storage import StorageError

    settings = PrepareSettings(
        protocol=args.protocol,
        model_family=args.model_family,
        input_format=args.input_format,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_quarantine_fraction=args.max_quarantine_fraction,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_image_pixels=args.max_image_pixels,
        suite=SuiteConfig(allowed_sources=tuple(args.allowed_source)),
        allowed_buckets=tuple(args.allowed_bucket),
        multi_reader=args.multi_reader,
        reader_id=args.reader_id,
        fusion_iou=args.fusion_iou,
        group_by=args.group_by,
        source_split=args.source_split,
        image_extension=args.image_extension,
        box_format=args.box_format,
        max_line_bytes=args.max_line_bytes,
        max_document_bytes=args.max_document_bytes,
        max_image_bytes=args.max_image_bytes,
    )
    try:
        result = prepare(args.inputs, images_root=args.images_root, output_uri=args.output, settings=settings)
    except (PrepareError, StorageError) as exc:
        raise UserError(str(exc)) from None
    for line in result.summary_lines():
        print(line, file=sys.stderr)
    print(result.dataset_uri)
    if not result.accepted and result.rejection.startswith("the acceptance suite"):
        print(
            f"error: {result.rejection}; see {result.report_uri} (the version was written but latest.json not moved)",
            file=sys.stderr,
        )
        return 1
    if not result.accepted:
        print(
            f"error: {result.counts['quarantined']} of {result.counts['received']} rows quarantined "
            f"({result.quarantine_fraction:.1%}), over --max-quarantine-fraction {result.max_quarantine_fraction:g}; "
            f"fix the rows listed in {result.quarantine_uri} (the version was written but latest.json not moved)",
            file=sys.stderr,
        )
        return 1
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(args.output, n_images=args.images, seed=args.seed, n_invalid=args.invalid)
    print(f"{data.n_records} records over {data.n_images} images", file=sys.stderr)
    print(f"grounding-ops prepare {data.annotations} --images-root {data.images_root} --output OUTPUT")
    return 0

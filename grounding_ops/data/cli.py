"""``grounding-ops prepare``: validate annotations and publish a VeRL dataset version.

Also ``grounding-ops synthetic-data``: write the small synthetic demo set.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from grounding_ops.cli import FRACTION, POSITIVE_INT
from grounding_ops.data.schema import FORMATS


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
                    "quarantine.jsonl with a reason), split by group and publish train/val parquet for VeRL "
                    "under OUTPUT/<version>/. Prints the dataset version URI.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="annotation files (local paths or s3:// URIs)")
    parser.add_argument("--images-root", required=True, help="folder or s3://bucket/prefix the image paths are relative to")
    parser.add_argument("--output", required=True, help="dataset folder or s3://bucket/prefix to publish versions under")
    parser.add_argument("--format", dest="input_format", choices=FORMATS, default=None,
                        help="input format (default: from the file name: .jsonl canonical, .json COCO, .csv VinDr/MS-CXR)")
    parser.add_argument("--protocol", default="qwen2.5-vl", choices=_protocol_names(),
                        help="answer format the prompts ask for (default: qwen2.5-vl)")
    parser.add_argument("--model-family", default="qwen2.5-vl", choices=_model_families(),
                        help="the model family the dataset is for: its resize factor (28 for Qwen2/2.5-VL, 32 for "
                             "Qwen3-VL) sets the image size the model sees (default: qwen2.5-vl)")
    parser.add_argument("--val-fraction", type=FRACTION, default=0.1, help="share of groups in val (default 0.1)")
    parser.add_argument("--max-quarantine-fraction", type=FRACTION, default=0.05,
                        help="fail when more than this share of rows is quarantined (default 0.05)")
    parser.add_argument("--min-pixels", type=POSITIVE_INT, default=DEFAULT_MIN_PIXELS,
                        help=f"smallest resized image the model sees, in pixels (default {DEFAULT_MIN_PIXELS})")
    parser.add_argument("--max-pixels", type=POSITIVE_INT, default=DEFAULT_MAX_PIXELS,
                        help=f"largest resized image the model sees, in pixels (default {DEFAULT_MAX_PIXELS}); "
                             "keep it at most the processor's max_pixels")
    parser.add_argument("--max-image-pixels", type=POSITIVE_INT, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_IMAGE_PIXELS})")
    parser.add_argument("--allowed-source", action="append", default=[], metavar="SOURCE",
                        help="accept only rows from these sources (repeatable; default: any)")
    parser.add_argument("--allowed-bucket", action="append", default=[], metavar="BUCKET",
                        help="another bucket s3:// image URIs may point at (the images root's bucket is allowed)")
    parser.set_defaults(func=run_prepare)

    synthetic = subparsers.add_parser(
        "synthetic-data", help="write a small synthetic grounding dataset with real images",
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
        max_quarantine_fraction=args.max_quarantine_fraction,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_image_pixels=args.max_image_pixels,
        suite=SuiteConfig(allowed_sources=tuple(args.allowed_source)),
        allowed_buckets=tuple(args.allowed_bucket),
    )
    try:
        result = prepare(args.inputs, images_root=args.images_root, output_uri=args.output, settings=settings)
    except (PrepareError, StorageError) as exc:
        raise UserError(str(exc)) from None
    for line in result.summary_lines():
        print(line, file=sys.stderr)
    print(result.dataset_uri)
    if not result.accepted:
        print(f"error: {result.counts['quarantined']} of {result.counts['received']} rows quarantined "
              f"({result.quarantine_fraction:.1%}), over --max-quarantine-fraction {result.max_quarantine_fraction:g}; "
              f"fix the rows listed in {result.quarantine_uri} (the version was written but latest.json not moved)",
              file=sys.stderr)
        return 1
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(args.output, n_images=args.images, seed=args.seed, n_invalid=args.invalid)
    print(f"{data.n_records} records over {data.n_images} images", file=sys.stderr)
    print(f"grounding-ops prepare {data.annotations} --images-root {data.images_root} --output OUTPUT")
    return 0

"""``grounding-ops train``: run a training preset on an exported dataset, or print its VeRL overrides.

    grounding-ops train --preset qwen2.5-vl-7b --set rollout_n=8 \\
        --dataset s3://bucket/datasets/refcoco --output s3://bucket/runs/r1 [--engine verl|cpu]
    grounding-ops train --preset qwen2.5-vl-7b --print-overrides   # prints, trains nothing
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from grounding_ops.vocabulary import WORK_DIR_ENV


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from grounding_ops.training.presets import PRESET_NAMES
    from grounding_ops.training.spec import ENGINES, knobs_help

    parser = subparsers.add_parser(
        "train",
        help="train a grounding model with GRPO (VeRL on GPUs, or the CPU engine)",
        description="Train a grounding model with GRPO on an exported dataset.",
        epilog="knobs (--set NAME=VALUE; every other spec field can be set too):\n" + knobs_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", required=True, choices=PRESET_NAMES, help="training preset")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one spec field, e.g. --set rollout_n=8 --set logger=console,wandb (repeatable)",
    )
    parser.add_argument("--dataset", help="dataset URI (a version folder, or the folder holding latest.json)")
    parser.add_argument("--output", help="run output URI: checkpoints/, final/ and run.json go here")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="training engine (default: the preset's: verl for GPU presets, cpu for tiny-cpu)",
    )
    parser.add_argument(
        "--print-overrides",
        action="store_true",
        help="print the VeRL Hydra overrides, one per line, and exit without training",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help=f"local working folder shown in --print-overrides paths (default: ${WORK_DIR_ENV} or ./work)",
    )
    parser.set_defaults(func=run)
    return parser


def build_spec(preset: str, sets: list[str], engine: str | None = None):
    """The preset with ``--set`` overrides applied and validated; UserError on any problem."""
    from grounding_ops.cli import UserError
    from grounding_ops.training.presets import get_preset

    try:
        spec = get_preset(preset).with_overrides(sets)
        if engine is not None and engine != spec.engine:
            spec = spec.with_overrides([f"engine={engine}"])
        return spec.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError

    spec = build_spec(args.preset, args.sets, args.engine)
    if args.print_overrides:
        from grounding_ops.training.verl_overrides import RunPaths, render_overrides

        work_dir = args.work_dir or os.environ.get(WORK_DIR_ENV) or "work"
        try:
            overrides = render_overrides(spec, RunPaths.for_work_dir(Path(work_dir).resolve(), spec))
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
        for line in overrides:
            print(line)
        return 0
    missing = [flag for flag, value in (("--dataset", args.dataset), ("--output", args.output)) if not value]
    if missing:
        raise UserError(f"{' and '.join(missing)} required to train (or pass --print-overrides)")
    from grounding_ops.training.runner import run_training

    return int(run_training(spec, dataset_uri=args.dataset, output_uri=args.output, engine=spec.engine) or 0)

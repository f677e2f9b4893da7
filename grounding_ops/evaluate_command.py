"""``grounding-ops evaluate``: evaluate a checkpoint on a dataset version, then log it as an MLflow run.

It composes two steps (the evaluation writes files only; the registry turns them into an MLflow
run), so it lives above both rather than in either.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any

from grounding_ops.cli import POSITIVE_INT
from grounding_ops.evaluation.evaluate import ROLES
from grounding_ops.vocabulary import GENERATION_ENGINES


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--tag expects KEY=VALUE, got {text!r}")
    return key.strip(), value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset version (metrics, predictions, report)",
        description="Generate answers for a dataset split with a Hugging Face checkpoint, score them with "
        "the reward's parser and IoU, and write predictions.parquet, metrics.json and report.html to "
        "--output. The run is logged to MLflow when MLflow is installed and --no-mlflow is not given.",
    )
    parser.add_argument("--model", required=True, help="Hugging Face model folder or s3:// prefix")
    parser.add_argument("--dataset", required=True, help="dataset version URI (a version folder or its parent)")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument(
        "--engine",
        choices=GENERATION_ENGINES,
        default="transformers",
        help="vllm on GPU nodes, transformers on CPU (default: transformers)",
    )
    parser.add_argument("--max-samples", type=POSITIVE_INT, default=None, help="evaluate only the first N samples")
    parser.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=None,
        help="generation batch size (default: 8 for transformers, 256 for vllm)",
    )
    parser.add_argument("--max-new-tokens", type=POSITIVE_INT, default=None, help="answer length limit (default: 128)")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for the evaluation files")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="candidate",
        help="'base' marks the untrained base model the first champion must beat; 'champion' "
        "the current champion re-evaluated on a new dataset version",
    )
    parser.add_argument(
        "--tag",
        type=_tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra tag for the MLflow run (repeatable)",
    )
    parser.add_argument(
        "--mlflow",
        dest="mlflow",
        action="store_true",
        default=None,
        help="log the evaluation as an MLflow run (MLFLOW_TRACKING_URI, default sqlite:///mlruns.db)",
    )
    parser.add_argument(
        "--no-mlflow",
        dest="mlflow",
        action="store_false",
        help="write files only (log later with `grounding-ops log-evaluation`)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.evaluation.evaluate import EvaluationError, evaluate
    from grounding_ops.evaluation.generate import EngineUnavailableError
    from grounding_ops.storage import StorageError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mlflow_available = importlib.util.find_spec("mlflow") is not None
    if args.mlflow and not mlflow_available:
        raise UserError(
            "--mlflow needs the mlflow package, which this environment lacks: run with --no-mlflow and log "
            "from the platform environment with `grounding-ops log-evaluation --output URI`"
        )

    def progress(done: int, total: int) -> None:
        print(f"generated {done}/{total}", file=sys.stderr, flush=True)

    try:
        result = evaluate(
            args.model,
            args.dataset,
            split=args.split,
            engine=args.engine,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            output_uri=args.output,
            role=args.role,
            tags=dict(args.tag),
            max_new_tokens=args.max_new_tokens,
            progress=progress,
        )
    except (EvaluationError, EngineUnavailableError, StorageError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(result.summary())
    for name, uri in sorted(result.files.items()):
        print(f"  {name}: {uri}")

    log_to_mlflow = args.mlflow if args.mlflow is not None else mlflow_available
    if log_to_mlflow:
        from grounding_ops.registry.tracking import TrackingError, log_evaluation

        try:
            run_id = log_evaluation(result.output_uri)
        except TrackingError as exc:
            raise UserError(str(exc)) from exc
        print(f"mlflow run: {run_id}")
    elif args.mlflow is None:
        print(
            "mlflow is not installed here: log with `grounding-ops log-evaluation --output "
            f"{result.output_uri}` from the platform environment"
        )
    return 0

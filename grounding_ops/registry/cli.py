"""``grounding-ops promote`` and ``grounding-ops log-evaluation``."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from grounding_ops.cli import number_type


def add_parser(subparsers: Any) -> None:
    from grounding_ops.registry.gate import DEFAULT_CONFIDENCE, DEFAULT_MIN_SAMPLES
    from grounding_ops.registry.promotion import DEFAULT_METRIC, DEFAULT_MIN_DELTA, DEFAULT_MODEL_NAME

    promote = subparsers.add_parser(
        "promote",
        help="register an evaluated candidate and move the champion alias if it is better",
        description="Register the model of an evaluation run in the MLflow Model Registry (source: its "
        "model URI, no re-upload), tag its lineage, set alias 'challenger', and move alias 'champion' "
        "only when it beats the champion (or, with no champion, the base model) evaluated on the same "
        "dataset version and split: a seeded paired bootstrap of the per-sample difference on the shared "
        "samples must have the lower bound of its --confidence interval above --min-delta, on at least "
        "--min-samples samples. Exit 0 whether promoted or not.",
    )
    promote.add_argument("--candidate", required=True, metavar="EVAL_RUN_ID", help="MLflow run id of the evaluation")
    promote.add_argument("--metric", default=DEFAULT_METRIC, help=f"metric to compare (default: {DEFAULT_METRIC})")
    promote.add_argument("--min-delta", type=number_type(float, minimum=0.0), default=DEFAULT_MIN_DELTA,
                         help="the lower bound of the improvement's interval must exceed this "
                         f"(default: {DEFAULT_MIN_DELTA})")
    promote.add_argument("--confidence", type=number_type(float, minimum=0.5, maximum=0.999),
                         default=DEFAULT_CONFIDENCE,
                         help=f"confidence level of the paired bootstrap interval (default: {DEFAULT_CONFIDENCE})")
    promote.add_argument("--min-samples", type=number_type(int, minimum=1), default=DEFAULT_MIN_SAMPLES,
                         help="fewer paired samples than this never promote "
                         f"(default: {DEFAULT_MIN_SAMPLES})")
    promote.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                         help=f"registered model name (default: {DEFAULT_MODEL_NAME})")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON")
    promote.set_defaults(func=run_promote)

    log_eval = subparsers.add_parser(
        "log-evaluation",
        help="log an evaluation output folder as an MLflow run (and to W&B)",
        description="Read metrics.json, predictions.parquet and report.html under --output and log them as "
        "an MLflow run (MLFLOW_TRACKING_URI, default sqlite:///mlruns.db). Prints the run id; logging the "
        "same output again prints the existing run.",
    )
    log_eval.add_argument("--output", required=True, help="the evaluation's output folder or s3:// prefix")
    log_eval.add_argument("--experiment", default=None, help="MLflow experiment (default: grounding-evaluation)")
    log_eval.set_defaults(func=run_log_evaluation)


def run_promote(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.registry.promotion import PromotionError, promote

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        decision = promote(args.candidate, metric=args.metric, min_delta=args.min_delta, model_name=args.model_name,
                           confidence=args.confidence, min_samples=args.min_samples)
    except PromotionError as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(decision.to_dict(), indent=2) if args.json else decision.summary())
    return 0


def run_log_evaluation(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.registry.tracking import EVALUATION_EXPERIMENT, TrackingError, log_evaluation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_id = log_evaluation(args.output, experiment=args.experiment or EVALUATION_EXPERIMENT)
    except TrackingError as exc:
        raise UserError(str(exc)) from exc
    print(run_id)
    return 0

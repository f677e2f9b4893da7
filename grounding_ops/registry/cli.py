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
        description="Register the model of an evaluation run in the MLflow Model Registry (logged as an MLflow "
        "pyfunc model: loadable and servable), tag its lineage, set alias 'challenger', and move alias 'champion' "
        "only when it beats the champion (or, with no champion, the base model) evaluated on the same "
        "dataset version and split: a seeded paired bootstrap of the per-sample difference on the shared "
        "samples must have the lower bound of its --confidence interval above --min-delta, on at least "
        "--min-samples samples. Exit 0 whether promoted or not.",
    )
    promote.add_argument("--candidate", required=True, metavar="EVAL_RUN_ID", help="MLflow run id of the evaluation")
    promote.add_argument("--metric", default=DEFAULT_METRIC, help=f"metric to compare (default: {DEFAULT_METRIC})")
    promote.add_argument(
        "--min-delta",
        type=number_type(float, minimum=0.0),
        default=DEFAULT_MIN_DELTA,
        help=f"the lower bound of the improvement's interval must exceed this (default: {DEFAULT_MIN_DELTA})",
    )
    promote.add_argument(
        "--confidence",
        type=number_type(float, minimum=0.5, maximum=0.999),
        default=DEFAULT_CONFIDENCE,
        help=f"confidence level of the paired bootstrap interval (default: {DEFAULT_CONFIDENCE})",
    )
    promote.add_argument(
        "--min-samples",
        type=number_type(int, minimum=1),
        default=DEFAULT_MIN_SAMPLES,
        help=f"fewer paired samples than this never promote (default: {DEFAULT_MIN_SAMPLES})",
    )
    promote.add_argument(
        "--model-name", default=DEFAULT_MODEL_NAME, help=f"registered model name (default: {DEFAULT_MODEL_NAME})"
    )
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

    log_train = subparsers.add_parser(
        "log-training",
        help="log a finished training (its run.json) as an MLflow run",
        description="Read run.json under --output (written last by `grounding-ops train`) and log it as an MLflow "
        "run: the spec as params, the per-step history as metrics, the dataset as an input, the training curves. "
        "Prints the run id; logging the same run.json again prints the existing run.",
    )
    log_train.add_argument("--output", required=True, help="the training's output folder or s3:// prefix")
    log_train.set_defaults(func=run_log_training)

    predict = subparsers.add_parser(
        "predict",
        help="ask a registered model where a phrase is in an image (trainer environment)",
        description="Load an MLflow model (default: the champion) with mlflow.pyfunc and print the boxes "
        "([x1, y1, x2, y2] in pixels of the image) it finds for --phrase as JSON. Needs the trainer "
        "environment's packages (torch, transformers, mlflow-skinny) and MLFLOW_TRACKING_URI.",
    )
    predict.add_argument(
        "--model",
        default=f"models:/{DEFAULT_MODEL_NAME}@champion",
        help=f"MLflow model URI (default: models:/{DEFAULT_MODEL_NAME}@champion)",
    )
    predict.add_argument("--image", required=True, help="a PNG or JPEG file")
    predict.add_argument("--phrase", required=True, help='what to find, e.g. "the red circle"')
    predict.add_argument("--save", default=None, metavar="OUT.png", help="write the image with the boxes drawn")
    predict.set_defaults(func=run_predict)


def run_promote(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.registry.promotion import PromotionError, promote

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        decision = promote(
            args.candidate,
            metric=args.metric,
            min_delta=args.min_delta,
            model_name=args.model_name,
            confidence=args.confidence,
            min_samples=args.min_samples,
        )
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


def run_log_training(args: argparse.Namespace) -> int:
    from grounding_ops.cli import UserError
    from grounding_ops.registry.tracking import TrackingError
    from grounding_ops.registry.training_run import log_training_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_id = log_training_run(args.output)
    except TrackingError as exc:
        raise UserError(str(exc)) from exc
    print(run_id)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grounding_ops.cli import UserError

    image = Path(args.image)
    if not image.is_file():
        raise UserError(f"no image file {image}")
    if not args.phrase.strip():
        raise UserError("--phrase must not be empty")
    try:
        from grounding_ops.registry.pyfunc_model import GroundingModelError, draw_boxes, predict_image
    except ImportError as exc:
        raise UserError(f"predict needs MLflow ({exc.name} is missing): run it in the trainer environment") from exc
    data = image.read_bytes()
    try:
        answer = predict_image(args.model, data, args.phrase)
    except GroundingModelError as exc:
        raise UserError(str(exc)) from exc
    if args.save:
        draw_boxes(data, answer["boxes"]).save(args.save)
        answer["saved"] = str(args.save)
    print(json.dumps(answer, indent=2))
    return 0

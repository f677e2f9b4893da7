"""The ``grounding_train`` trigger form: every Param with a title, a description, a type and bounds.

The JSON schemas live here as plain dicts (``PARAM_SCHEMAS``) so they are testable without a DAG;
``build_params()`` turns them into Airflow ``Param`` objects. Airflow validates a run's conf against
them when the run is created (UI form, REST API, ``dags trigger``), so bad input never reaches a
task. Strings carry a ``pattern`` so nothing shell- or path-like can be smuggled into a container
command, and the commands are argument lists anyway.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from grounding_ops.pipeline.form import airflow_params, with_sections
from grounding_ops.registry.gate import DEFAULT_CONFIDENCE, DEFAULT_MIN_SAMPLES
from grounding_ops.training.presets import PRESET_NAMES
from grounding_ops.vocabulary import (
    DEFAULT_TRAIN_PRESET,
    GENERATION_ENGINE_FOR,
    HARDWARE_CHOICES,
    TRAIN_PRESET_ENV,
    TRAINING_ENGINE_FOR,
)

ENGINES: tuple[str, ...] = HARDWARE_CHOICES
# Engine names of the form -> `grounding-ops train --engine` values.
TRAIN_ENGINE: Mapping[str, str] = TRAINING_ENGINE_FOR
EVAL_ENGINE: Mapping[str, str] = GENERATION_ENGINE_FOR
# Higher is better for all of these (see grounding_ops.evaluation.metrics).
PROMOTION_METRICS: tuple[str, ...] = ("acc_at_0_5", "acc_at_0_75", "mean_iou", "mean_score")
VERSION_PATTERN = r"^(?!.*\s)(latest|[A-Za-z0-9][A-Za-z0-9._-]{0,99})$"

# Params whose value changes what is trained (their fingerprint decides "nothing changed").
TRAINING_PARAM_KEYS: tuple[str, ...] = (
    "preset",
    "engine",
    "learning_rate",
    "rollout_n",
    "kl_coef",
    "total_steps",
    "epochs",
    "gpus_per_node",
    "nodes",
    "lora_rank",
)
# Form param -> TrainingSpec field for `grounding-ops train --set key=value`.
SPEC_KEYS: dict[str, str] = {
    "learning_rate": "learning_rate",
    "rollout_n": "rollout_n",
    "kl_coef": "kl_coef",
    "total_steps": "total_steps",
    "epochs": "total_epochs",
    "gpus_per_node": "gpus_per_node",
    "nodes": "nnodes",
    "lora_rank": "lora_rank",
}


def _default(env: str, fallback: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(env) or fallback
    if value not in allowed:
        raise ValueError(f"{env}={value!r} is not one of {', '.join(allowed)}")
    return value


# NaN compares false with every bound, so JSON Schema's minimum/maximum let it through. No real
# number is both >= 0 and < 0; only NaN satisfies this subschema, so `not` refuses exactly NaN.
NOT_NAN: dict[str, Any] = {"not": {"type": "number", "minimum": 0, "exclusiveMaximum": 0}}


def _number(kind: str, minimum: float, maximum: float) -> dict[str, Any]:
    """Bounds of a number field; real numbers only (NaN refused, infinities are out of bounds)."""
    return {"minimum": minimum, "maximum": maximum, **(NOT_NAN if kind == "number" else {})}


def _knob_schema(spec_field: str) -> dict[str, Any]:
    """The form field of a spec knob: its title, help and bounds come from the spec (one definition)."""
    from grounding_ops.training.spec import knobs

    k = knobs()[spec_field]
    return {
        "default": None,
        "type": ["null", k.kind],
        "title": k.title,
        "description": k.help + " Leave empty to keep the preset's value.",
        **_number(k.kind, k.minimum, k.maximum),
    }


def param_schemas() -> dict[str, dict[str, Any]]:
    """The form's fields as ``{name: {"default": ..., <JSON schema keywords>}}``."""
    return {
        "preset": {
            "default": _default(TRAIN_PRESET_ENV, DEFAULT_TRAIN_PRESET, PRESET_NAMES),
            "type": "string",
            "enum": list(PRESET_NAMES),
            "title": "Model preset",
            "description": "Base model and GPU layout (tiny-cpu: a tiny model on the CPU engine for demos and CI).",
        },
        "engine": {
            "default": _default("GROUNDING_OPS_TRAIN_ENGINE", "cpu", ENGINES),
            "type": "string",
            "enum": list(ENGINES),
            "title": "Engine",
            "description": "gpu: VeRL GRPO in the trainer-verl image on all GPUs of the node; "
            "cpu: the TRL twin in the trainer-cpu image.",
        },
        "dataset_version": {
            "default": "latest",
            "type": "string",
            "pattern": VERSION_PATTERN,
            "minLength": 1,
            "maxLength": 100,
            "title": "Dataset version",
            "description": "'latest' = the version the grounding_data DAG published last; or an exact version id.",
        },
        **{name: _knob_schema(SPEC_KEYS[name]) for name in SPEC_KEYS},
        "promotion_metric": {
            "default": "mean_iou",  # the product promotes the best-IoU model
            "type": "string",
            "enum": list(PROMOTION_METRICS),
            "title": "Promotion metric",
            "description": "Metric that picks the best checkpoint (on the val split) and gates promotion to "
            "champion (on the test split).",
        },
        "min_delta": {
            "default": 0.01,
            "type": "number",
            **_number("number", 0, 1),
            "title": "Minimum improvement",
            "description": "Promote only when the lower bound of the interval of the paired difference "
            "(candidate minus champion, or minus the base model for the first promotion) on the test split "
            "exceeds this.",
        },
        "confidence": {
            "default": DEFAULT_CONFIDENCE,
            "type": "number",
            **_number("number", 0.5, 0.999),
            "title": "Confidence level",
            "description": "Confidence level of the paired bootstrap interval of the difference that gates "
            "promotion (0.95: a 95% interval).",
        },
        "min_test_samples": {
            "default": DEFAULT_MIN_SAMPLES,
            "type": "integer",
            "minimum": 1,
            "maximum": 1_000_000,
            "title": "Minimum test samples",
            "description": "With fewer paired test samples than this the candidate is not promoted (the "
            "difference could not be told from noise).",
        },
        "max_eval_samples": {
            "default": None,
            "type": ["null", "integer"],
            "minimum": 1,
            "maximum": 1_000_000,
            "title": "Max evaluation samples",
            "description": "Evaluate on at most this many samples of each split per model (empty: all). Below "
            "the minimum test samples nothing is promoted.",
        },
        "force": {
            "default": False,
            "type": "boolean",
            "title": "Train even if nothing changed",
            "description": "Off: the run is skipped when neither the dataset version nor the training "
            "settings changed since the current champion.",
        },
    }


# The form's sections (Airflow shows each as a collapsible group); fields not named here go to "Advanced".
SECTIONS: dict[str, tuple[str, ...]] = {
    "What to train": ("preset", "engine", "dataset_version", "force"),
    "Training settings": ("learning_rate", "rollout_n", "kl_coef", "total_steps", "epochs", "lora_rank"),
    "Hardware": ("gpus_per_node", "nodes"),
    "Evaluation and promotion": ("promotion_metric", "min_delta", "max_eval_samples"),
}
ENGINE_LABELS: dict[str, str] = {
    "gpu": "GPU: VeRL GRPO (trainer-verl image)",
    "cpu": "CPU: the TRL twin (trainer-cpu image, demos and CI)",
}
METRIC_LABELS: dict[str, str] = {
    "acc_at_0_5": "Acc@0.5 (IoU >= 0.5)",
    "acc_at_0_75": "Acc@0.75 (IoU >= 0.75)",
    "mean_iou": "mean IoU",
    "mean_score": "mean reward",
}


def form_sections(schemas: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``schemas`` with each field's ``section`` and the choices' ``values_display`` added."""
    return with_sections(schemas, SECTIONS, {"engine": ENGINE_LABELS, "promotion_metric": METRIC_LABELS})


def build_params() -> dict[str, Any]:
    """``Param`` objects for ``@dag(params=...)``."""
    return airflow_params(form_sections(param_schemas()))


def training_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The form values that change what is trained, as the trainer must see them.

    JSON has one number type: 2.0 is the integer 2 and passes an ``integer`` field of the form, so
    integer fields are turned into ``int`` here (the container's ``--set rollout_n=2.0`` would be
    refused, and the fingerprint of 2.0 must equal that of 2). NaN never gets here (the form refuses it);
    a direct caller passing one gets an error, not a container that fails later.
    """
    schemas = param_schemas()
    out: dict[str, Any] = {}
    for key in TRAINING_PARAM_KEYS:
        value = params.get(key)
        kinds = schemas[key]["type"] if isinstance(schemas[key]["type"], list) else [schemas[key]["type"]]
        if value is not None and ("number" in kinds or "integer" in kinds):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"param {key}={value!r} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"param {key}={value!r} must be a finite number")
            if "integer" in kinds:
                if value != int(value):
                    raise ValueError(f"param {key}={value!r} must be a whole number")
                value = int(value)
        out[key] = value
    return out


def spec_overrides(params: Mapping[str, Any]) -> list[str]:
    """``key=value`` spec overrides for the values the form set (empty fields keep the preset's)."""
    values = training_values(params)
    out: list[str] = []
    for param, key in SPEC_KEYS.items():
        value = values.get(param)
        if value is None:
            continue
        out.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    return out

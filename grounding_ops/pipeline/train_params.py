"""The ``grounding_train`` trigger form: every Param with a title, a description, a type and bounds.

The JSON schemas live here as plain dicts (``PARAM_SCHEMAS``) so they are testable without a DAG;
``build_params()`` turns them into Airflow ``Param`` objects. Airflow validates a run's conf against
them when the run is created (UI form, REST API, ``dags trigger``), so bad input never reaches a
task. Strings carry a ``pattern`` so nothing shell- or path-like can be smuggled into a container
command, and the commands are argument lists anyway.
"""

from __future__ import annotations

import os
from typing import Any

from grounding_ops.training.presets import PRESET_NAMES

ENGINES: tuple[str, ...] = ("gpu", "cpu")
# Engine names of the form -> `grounding-ops train --engine` values.
TRAIN_ENGINE: dict[str, str] = {"gpu": "verl", "cpu": "cpu"}
EVAL_ENGINE: dict[str, str] = {"gpu": "vllm", "cpu": "transformers"}
# Higher is better for all of these (see grounding_ops.evaluation.metrics).
PROMOTION_METRICS: tuple[str, ...] = ("acc_at_0_5", "acc_at_0_75", "mean_iou", "mean_score")
VERSION_PATTERN = r"^(?!.*\s)(latest|[A-Za-z0-9][A-Za-z0-9._-]{0,99})$"

# Params whose value changes what is trained (their fingerprint decides "nothing changed").
TRAINING_PARAM_KEYS: tuple[str, ...] = (
    "preset", "engine", "learning_rate", "rollout_n", "kl_coef", "total_steps", "epochs",
    "gpus_per_node", "nodes", "lora_rank",
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


def _nullable_number(title: str, description: str, kind: str, minimum: float, maximum: float) -> dict[str, Any]:
    return {
        "default": None,
        "type": ["null", kind],
        "title": title,
        "description": description + " Leave empty to keep the preset's value.",
        "minimum": minimum,
        "maximum": maximum,
    }


def param_schemas() -> dict[str, dict[str, Any]]:
    """The form's fields as ``{name: {"default": ..., <JSON schema keywords>}}``."""
    return {
        "preset": {
            "default": _default("GROUNDING_OPS_TRAIN_PRESET", "tiny-cpu", PRESET_NAMES),
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
        "learning_rate": _nullable_number(
            "Learning rate", "Actor learning rate (typical 1e-6 for 3B-7B models).", "number", 1e-9, 1e-2
        ),
        "rollout_n": _nullable_number(
            "Rollouts per prompt", "GRPO group size n (>= 2; advantages are relative to the group).",
            "integer", 2, 64,
        ),
        "kl_coef": _nullable_number(
            "KL coefficient", "Weight of the KL loss to the reference model (0 disables it).", "number", 0, 10
        ),
        "total_steps": _nullable_number(
            "Total steps", "Cap on training steps (otherwise the epochs decide).", "integer", 1, 1_000_000
        ),
        "epochs": _nullable_number("Epochs", "Passes over the training split.", "integer", 1, 1000),
        "gpus_per_node": _nullable_number("GPUs per node", "GPUs used on each node (gpu engine).", "integer", 1, 16),
        "nodes": _nullable_number(
            "Nodes", "Number of nodes (more than 1 is submitted to the Ray cluster).", "integer", 1, 128
        ),
        "lora_rank": _nullable_number("LoRA rank", "0 = full fine-tuning; e.g. 64 for LoRA.", "integer", 0, 1024),
        "promotion_metric": {
            "default": "mean_iou",  # the product promotes the best-IoU model
            "type": "string",
            "enum": list(PROMOTION_METRICS),
            "title": "Promotion metric",
            "description": "Validation metric that picks the best checkpoint and gates promotion to champion.",
        },
        "min_delta": {
            "default": 0.01,
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "title": "Minimum improvement",
            "description": "The candidate must beat the champion's metric by at least this much to be promoted.",
        },
        "max_eval_samples": {
            "default": None,
            "type": ["null", "integer"],
            "minimum": 1,
            "maximum": 1_000_000,
            "title": "Max evaluation samples",
            "description": "Evaluate on at most this many validation samples per checkpoint (empty: all).",
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
ENGINE_LABELS: dict[str, str] = {"gpu": "GPU: VeRL GRPO (trainer-verl image)",
                                 "cpu": "CPU: the TRL twin (trainer-cpu image, demos and CI)"}
METRIC_LABELS: dict[str, str] = {"acc_at_0_5": "Acc@0.5 (IoU >= 0.5)", "acc_at_0_75": "Acc@0.75 (IoU >= 0.75)",
                                 "mean_iou": "mean IoU", "mean_score": "mean reward"}


def form_sections(schemas: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``schemas`` with each field's ``section`` and the choices' ``values_display`` added."""
    section_of = {name: section for section, names in SECTIONS.items() for name in names}
    displays = {"engine": ENGINE_LABELS, "promotion_metric": METRIC_LABELS}
    out = {}
    for name, schema in schemas.items():
        schema = {"section": section_of.get(name, "Advanced"), **schema}
        if name in displays and "values_display" not in schema:
            schema["values_display"] = {v: displays[name].get(v, v) for v in schema.get("enum", [])}
        out[name] = schema
    return out


def build_params() -> dict[str, Any]:
    """``Param`` objects for ``@dag(params=...)``."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for name, schema in form_sections(param_schemas()).items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params


def spec_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` spec overrides for the values the form set (empty fields keep the preset's)."""
    out: list[str] = []
    for param, key in SPEC_KEYS.items():
        value = params.get(param)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"param {param}={value!r} must be a number")
        out.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    return out

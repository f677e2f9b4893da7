"""The ``grounding_data`` trigger form: every Param with a title, a description, a type and bounds.

The schemas are plain dicts (``PARAM_SCHEMAS``) built from the library's own constants (input
formats, answer protocols, pixel bounds), so the form offers exactly what the readers and the
export accept. ``build_params()`` turns them into Airflow ``Param`` objects; Airflow validates a
run's conf against them when the run is created. Keys the form does not declare are refused by
:func:`check_declared` (a run's conf may carry any key, and an undeclared one must not steer a
task). Input locations are further confined to the configured input roots
(:mod:`grounding_ops.pipeline.input_roots`).
"""

from __future__ import annotations

from typing import Any, Iterable

from grounding_ops.data.schema import FORMATS
from grounding_ops.data.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grounding_ops.protocols import PROTOCOL_NAMES

DEMO_INPUT = "demo"
AUTO_FORMAT = "auto"
MAX_LOCATION_CHARS = 1024

PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "input_uri": {
        "default": DEMO_INPUT, "type": "string", "minLength": 1, "maxLength": MAX_LOCATION_CHARS,
        "title": "Annotations",
        "description": "An annotation file or folder under a configured input root (s3://bucket/prefix/... or a "
                       "worker folder listed in GROUNDING_OPS_INPUT_ROOTS; default root s3://<bucket>/incoming); "
                       "'demo' uploads and uses the synthetic demo set.",
    },
    "images_root": {
        "default": "", "type": "string", "maxLength": MAX_LOCATION_CHARS, "title": "Images root",
        "description": "Folder or s3:// prefix the image paths are relative to, under a configured input root "
                       "(empty for the demo).",
    },
    "format": {"default": AUTO_FORMAT, "enum": [AUTO_FORMAT, *FORMATS], "title": "Input format",
               "description": "The annotation format; 'auto' tells it from the file name."},
    "protocol": {"default": "qwen2.5-vl", "enum": list(PROTOCOL_NAMES), "title": "Answer protocol",
                 "description": "The box convention of the model to train (prompt and reward follow it)."},
    "val_fraction": {"default": 0.1, "type": "number", "minimum": 0, "maximum": 0.45, "title": "Validation share",
                     "description": "Share of groups in val, where checkpoints are chosen."},
    "test_fraction": {"default": 0.1, "type": "number", "minimum": 0, "maximum": 0.45, "title": "Test share",
                      "description": "Share of groups in test, where the promotion decision is taken "
                                     "(never used for training or checkpoint selection)."},
    "max_quarantine_fraction": {"default": 0.05, "type": "number", "minimum": 0, "maximum": 1,
                                "title": "Maximum quarantined share",
                                "description": "The run fails, naming the quarantine, above this share."},
    "min_pixels": {"default": DEFAULT_MIN_PIXELS, "type": "integer", "minimum": 1,
                   "title": "Smallest resized image (pixels)"},
    "max_pixels": {"default": DEFAULT_MAX_PIXELS, "type": "integer", "minimum": 1,
                   "title": "Largest resized image (pixels)"},
}
DECLARED_KEYS: frozenset[str] = frozenset(PARAM_SCHEMAS)


class UndeclaredParams(ValueError):
    """A run's conf carries keys the form does not declare."""


def check_declared(keys: Iterable[str]) -> None:
    """Refuse keys outside the form (a conf key like ``dataset_name`` must not steer the run)."""
    extra = sorted(set(keys) - DECLARED_KEYS)
    if extra:
        raise UndeclaredParams(
            f"the run's conf has keys the grounding_data form does not declare: {', '.join(map(repr, extra))}; "
            f"allowed: {', '.join(sorted(DECLARED_KEYS))}")


def build_params() -> dict[str, Any]:
    """``Param`` objects for ``@dag(params=...)``."""
    from airflow.sdk import Param

    params: dict[str, Any] = {}
    for name, schema in PARAM_SCHEMAS.items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params

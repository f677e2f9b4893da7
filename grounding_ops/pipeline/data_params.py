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

from grounding_ops.data.readers import MULTI_READER_MODES
from grounding_ops.data.readers import FORMATS
from grounding_ops.data.vision import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, RESIZE_FACTORS
from grounding_ops.pipeline.form import airflow_params, with_sections
from grounding_ops.protocols import PROTOCOL_NAMES

DEMO_INPUT = "demo"
AUTO_FORMAT = "auto"
AUTO_FAMILY = "auto"
MAX_LOCATION_CHARS = 1024

PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "input_uri": {
        "default": DEMO_INPUT,
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LOCATION_CHARS,
        "title": "Annotations",
        "description": "An annotation file or folder under a configured input root (s3://bucket/prefix/... or a "
        "worker folder listed in GROUNDING_OPS_INPUT_ROOTS; default root s3://<bucket>/incoming); "
        "'demo' uploads and uses the synthetic demo set.",
    },
    "images_root": {
        "default": "",
        "type": "string",
        "maxLength": MAX_LOCATION_CHARS,
        "title": "Images root",
        "description": "Folder or s3:// prefix the image paths are relative to, under a configured input root "
        "(empty for the demo).",
    },
    "format": {
        "default": AUTO_FORMAT,
        "enum": [AUTO_FORMAT, *FORMATS],
        "title": "Input format",
        "description": "The annotation format; 'auto' tells it from the file name.",
    },
    "protocol": {
        "default": "qwen2.5-vl",
        "enum": list(PROTOCOL_NAMES),
        "title": "Answer protocol",
        "description": "The box convention of the model to train (prompt and reward follow it).",
    },
    "val_fraction": {
        "default": 0.1,
        "type": "number",
        "minimum": 0,
        "maximum": 0.45,
        "title": "Validation share",
        "description": "Share of groups in val, where checkpoints are chosen.",
    },
    "test_fraction": {
        "default": 0.1,
        "type": "number",
        "minimum": 0,
        "maximum": 0.45,
        "title": "Test share",
        "description": "Share of groups in test, where the promotion decision is taken "
        "(never used for training or checkpoint selection).",
    },
    "model_family": {
        "default": AUTO_FAMILY,
        "enum": [AUTO_FAMILY, *RESIZE_FACTORS],
        "title": "Model family",
        "description": "The family the dataset is for: its resize factor (28 for Qwen2/2.5-VL, 32 for "
        "Qwen3-VL) sets the image size the model sees; 'auto' follows the protocol.",
    },
    "multi_reader": {
        "default": "fuse",
        "enum": list(MULTI_READER_MODES),
        "title": "Several readers per finding",
        "description": "Datasets where several annotators box each finding (VinDr-CXR's rad_id): fuse "
        "their boxes into one consensus box per finding, keep one reader, or keep all.",
    },
    "group_by": {
        "default": "auto",
        "type": "string",
        "pattern": r"^(auto|image|patient|study|column:[A-Za-z0-9_.-]{1,64})$",
        "title": "Split groups",
        "description": "What keeps records together across train/val/test: auto (the format's patient or "
        "study key, else the image), image, patient, study, or column:<name>.",
    },
    "source_split": {
        "default": False,
        "type": "boolean",
        "title": "Use the release's own split column",
        "description": "MS-CXR's split column instead of the group-hash split (off: patient-level hash split).",
    },
    "max_quarantine_fraction": {
        "default": 0.05,
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "title": "Maximum quarantined share",
        "description": "The run fails, naming the quarantine, above this share.",
    },
    "min_pixels": {
        "default": DEFAULT_MIN_PIXELS,
        "type": "integer",
        "minimum": 1,
        "title": "Smallest resized image (pixels)",
    },
    "max_pixels": {
        "default": DEFAULT_MAX_PIXELS,
        "type": "integer",
        "minimum": 1,
        "title": "Largest resized image (pixels)",
    },
}
DECLARED_KEYS: frozenset[str] = frozenset(PARAM_SCHEMAS)

# The form's sections (Airflow shows each as a collapsible group), in order.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Input": ("input_uri", "images_root", "format", "multi_reader", "group_by", "source_split"),
    "Dataset": ("protocol", "model_family", "val_fraction", "test_fraction", "min_pixels", "max_pixels"),
    "Quality gate": ("max_quarantine_fraction",),
}
FORMAT_LABELS: dict[str, str] = {
    "jsonl": "JSON Lines (one annotation per line)",
    "coco": "COCO (instances JSON)",
    "vindr-csv": "VinDr-CXR CSV",
    "mscxr": "MS-CXR CSV",
    "normalized": "Normalized (0-1 boxes) JSON Lines",
    "padchest-gr": "PadChest-GR grounded reports JSON",
    "refcoco": "RefCOCO / RefCOCO+ / RefCOCOg (refs pickle + instances.json)",
    "refcoco-parquet": "RefCOCO family parquet export (COCO xywh boxes)",
    "odvg": "ODVG JSON Lines (Grounding-DINO regions)",
    "verl-parquet": "Existing VeRL parquet (boxes in reward_model, images by path)",
}
MULTI_READER_LABELS: dict[str, str] = {
    "fuse": "Fuse the readers' boxes into one consensus box per finding",
    "one": "Keep one reader's boxes",
    "all": "Keep every reader's box as ground truth",
}
_FRAME_LABELS = {
    "resized": "pixels of the resized image",
    "grid1000": "0-1000 grid",
    "pixels": "image pixels",
    "unit": "0-1 fractions",
}


def format_display() -> dict[str, str]:
    """Labels of the ``format`` choices (every reader's format, plus auto)."""
    return {AUTO_FORMAT: "Detect from the file name", **{f: FORMAT_LABELS.get(f, f) for f in FORMATS}}


def protocol_display() -> dict[str, str]:
    """Labels of the ``protocol`` choices, from each protocol's syntax and coordinate frame."""
    from grounding_ops.protocols import get_protocol

    out = {}
    for name in PROTOCOL_NAMES:
        protocol = get_protocol(name)
        shape = "x, y, w, h" if protocol.xywh else "x1, y1, x2, y2"
        out[name] = f"{name}: {protocol.syntax} answer, {shape} in {_FRAME_LABELS.get(protocol.frame, protocol.frame)}"
    return out


def form_schemas() -> dict[str, dict[str, Any]]:
    """:data:`PARAM_SCHEMAS` with each field's ``section`` and the choices' ``values_display``."""
    labels = {
        "format": format_display(),
        "protocol": protocol_display(),
        "multi_reader": MULTI_READER_LABELS,
        "model_family": {
            AUTO_FAMILY: "The protocol's family (qwen2.5-vl for generic protocols)",
            **{f: f"{f} (resize factor {n})" for f, n in RESIZE_FACTORS.items()},
        },
    }
    return with_sections(PARAM_SCHEMAS, SECTIONS, labels)


class UndeclaredParams(ValueError):
    """A run's conf carries keys the form does not declare."""


def check_declared(keys: Iterable[str]) -> None:
    """Refuse keys outside the form (a conf key like ``dataset_name`` must not steer the run)."""
    extra = sorted(set(keys) - DECLARED_KEYS)
    if extra:
        raise UndeclaredParams(
            f"the run's conf has keys the grounding_data form does not declare: {', '.join(map(repr, extra))}; "
            f"allowed: {', '.join(sorted(DECLARED_KEYS))}"
        )


def build_params() -> dict[str, Any]:
    """``Param`` objects for ``@dag(params=...)``."""
    return airflow_params(form_schemas())

"""The canonical grounding record every reader produces, and quarantine entries."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# How releases name their splits -> this platform's splits (``source_split``).
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",
    "dev": "val",
    "test": "test",
    "testa": "test",
    "testb": "test",
    "testing": "test",
}


# Reason given to rows that could not be turned into a canonical record at all.
PARSE_ERROR = "parse_error"


@dataclass
class CanonicalRecord:
    """One grounding example: a phrase and its boxes in one image.

    ``boxes`` are ``[x1, y1, x2, y2]`` in pixels of the original image, except for
    records read from the ``normalized`` format whose boxes are in 0..1 until the
    image size is known (``box_units == "normalized"``). Values are kept exactly as
    read, so that invalid ones reach validation and the quarantine with a reason.
    """

    id: str
    image: str
    phrase: str | None
    boxes: list[Any]
    source: str
    width: int | None = None
    height: int | None = None
    group: str | None = None
    box_units: str = "pixel"
    split: str | None = None  # the release's own split, only when asked for (source_split)
    position: str = ""  # where in the input: "file.jsonl:12", "file.json:annotations[3]"
    raw: Any = field(default=None, repr=False, compare=False)  # the input row(s), for the quarantine

    @property
    def group_key(self) -> str:
        return self.group if self.group else self.image

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("raw")
        return data

    def raw_row(self) -> Any:
        return self.raw if self.raw is not None else self.to_json()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CanonicalRecord":
        return cls(**data)


@dataclass
class ParseFailure:
    """An input row that could not be parsed into a canonical record."""

    position: str
    detail: str
    raw: Any
    id: str | None = None
    reason: str = PARSE_ERROR


@dataclass
class QuarantineEntry:
    """One line of ``quarantine.jsonl``."""

    id: str | None
    position: str
    reason: str
    detail: str
    raw: Any
    reasons: list[str] = field(default_factory=list)

    def to_line(self) -> str:
        payload = {
            "id": bounded_text(self.id) if isinstance(self.id, str) else self.id,
            "line": self.position,
            "reason": self.reason,
            "reasons": self.reasons or [self.reason],
            "detail": bounded_text(self.detail),
            "raw": bounded_raw(self.raw),
        }
        return strict_json(payload)


# The quarantine is published with the dataset: it may show what a row looked like, never an
# unbounded copy of whatever file was read.
MAX_QUARANTINE_RAW_CHARS = 2000
MAX_QUARANTINE_TEXT_CHARS = 500


def bounded_text(text: str, limit: int = MAX_QUARANTINE_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"...<{len(text) - limit} more characters>"


def bounded_raw(raw: Any, limit: int = MAX_QUARANTINE_RAW_CHARS) -> Any:
    """``raw`` itself when its JSON form is at most ``limit`` characters, else a short
    preview with the full length and the sha256 of the JSON form (to find the row again)."""
    if raw is None:
        return None
    text = raw if isinstance(raw, str) else strict_json(raw)
    if len(text) <= limit:
        return raw
    import hashlib

    return {
        "truncated": True,
        "chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
        "preview": text[:200],
    }


def strict_json(value: Any) -> str:
    """Standard JSON (no NaN/Infinity tokens: non-finite numbers become the strings "NaN",
    "Infinity", "-Infinity"), keys sorted, non-JSON values as strings."""
    return json.dumps(_finite(value), sort_keys=True, default=_json_default, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return _finite(value.item())
    except ImportError:  # pragma: no cover
        pass
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)

"""The canonical grounding record every reader produces, and quarantine entries."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

FORMATS = ("jsonl", "coco", "vindr-csv", "mscxr", "normalized")

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
            "id": self.id,
            "line": self.position,
            "reason": self.reason,
            "reasons": self.reasons or [self.reason],
            "detail": self.detail,
            "raw": self.raw,
        }
        return strict_json(payload)


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

"""The places the data pipeline may read annotations and images from.

The ``grounding_data`` form takes an input location and an images root from whoever may
trigger the DAG, and the task reads them with the workers' file system and the platform's S3
credentials. So both must lie under a configured input root: an ``s3://bucket/prefix`` or a
local folder, listed in ``GROUNDING_OPS_INPUT_ROOTS`` (comma-separated) in the workers'
environment. The default is ``s3://<bucket>/incoming``, the platform bucket's drop zone
(the demo set lives under it). Anything else, ``/proc/self/environ``, ``/etc/passwd``, another
bucket, is refused before a byte is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INPUT_ROOTS_ENV = "GROUNDING_OPS_INPUT_ROOTS"
DEFAULT_INPUT_PREFIX = "incoming"


class InputLocationRefused(ValueError):
    """An input location lies outside every configured input root."""


@dataclass(frozen=True)
class InputRoot:
    """One allowed root: an S3 bucket and prefix, or a resolved local folder."""

    bucket: str | None = None
    prefix: str = ""
    folder: Path | None = None

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _s3_parts(uri: str, what: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    key = key.rstrip("/")
    segments = key.split("/") if key else []
    if not bucket or "\x00" in uri or any(part in ("", ".", "..") for part in segments):
        raise InputLocationRefused(
            f"{what} {uri!r} is not a plain s3://bucket/prefix (empty, '.' or '..' segments are refused)"
        )
    return bucket, key


def _local_path(text: str, what: str) -> Path:
    raw = text.removeprefix("file://")
    if "\x00" in raw or not raw:
        raise InputLocationRefused(f"{what} {text!r} is not a usable path")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise InputLocationRefused(f"{what} {text!r} must be an absolute path or an s3:// URI")
    return Path(os.path.realpath(path))  # follows symlinks: a link out of a root is outside it


def parse_root(text: str) -> InputRoot:
    text = text.strip()
    if text.startswith("s3://"):
        bucket, prefix = _s3_parts(text, f"{INPUT_ROOTS_ENV} entry")
        return InputRoot(bucket=bucket, prefix=prefix)
    if "://" in text and not text.startswith("file://"):
        raise InputLocationRefused(f"{INPUT_ROOTS_ENV} entry {text!r}: use s3://bucket/prefix or a local folder")
    return InputRoot(folder=_local_path(text, f"{INPUT_ROOTS_ENV} entry"))


def configured_roots(bucket: str, environ: dict[str, str] | None = None) -> tuple[InputRoot, ...]:
    """The roots from ``GROUNDING_OPS_INPUT_ROOTS``, or ``s3://<bucket>/incoming``."""
    raw = (environ if environ is not None else os.environ).get(INPUT_ROOTS_ENV, "")
    entries = [part for part in raw.replace("\n", ",").split(",") if part.strip()]
    if not entries:
        return (InputRoot(bucket=bucket, prefix=DEFAULT_INPUT_PREFIX),)
    return tuple(parse_root(entry) for entry in entries)


def check_location(uri: str, roots: tuple[InputRoot, ...], what: str) -> str:
    """``uri`` normalised, if it lies under one of ``roots``; else :class:`InputLocationRefused`
    naming the roots and the setting that lists them."""
    text = str(uri).strip()
    if text.startswith("s3://"):
        bucket, key = _s3_parts(text, what)
        for root in roots:
            if root.bucket == bucket and (not root.prefix or key == root.prefix or key.startswith(root.prefix + "/")):
                return f"s3://{bucket}/{key}".rstrip("/")
    elif "://" in text and not text.startswith("file://"):
        raise InputLocationRefused(f"{what} {text!r}: use an s3:// URI or a local path")
    else:
        path = _local_path(text, what)
        for root in roots:
            if root.folder is not None and (path == root.folder or root.folder in path.parents):
                return str(path)
    allowed = ", ".join(str(root) for root in roots)
    raise InputLocationRefused(
        f"{what} {text!r} is outside the configured input roots ({allowed}): put the data under one of them, "
        f"or ask an administrator to add its location to {INPUT_ROOTS_ENV} on the workers"
    )

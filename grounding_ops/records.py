"""Typed records that cross a step boundary: one dataclass per record, owned by its writer.

A record is a frozen dataclass with a schema version. Its dict form is what travels (a JSON
file such as ``run.json``, or an XCom value); :meth:`Record.from_dict` is the only reader, so
no step guesses a key another step wrote:

- a key the class does not declare is refused (a typo or a newer writer: the message says which);
- a key without a default that is missing is refused;
- a schema version other than the class's is refused.

File records (``FILE`` set) also :meth:`Record.save` to and :meth:`Record.load` from an
:class:`~grounding_ops.storage.ObjectStore` folder.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Mapping, TypeVar

R = TypeVar("R", bound="Record")

SCHEMA_KEY = "schema"


class RecordError(ValueError):
    """A record's dict form does not match its class; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of every typed record (subclasses are ``@dataclass(frozen=True)``)."""

    SCHEMA: ClassVar[int] = 1
    FILE: ClassVar[str] = ""  # the file name in its output folder, for file records
    # a missing schema key reads as this version (records written before the key existed)
    LEGACY_SCHEMA: ClassVar[int | None] = None

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready values, with its schema version."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {SCHEMA_KEY: self.SCHEMA, **data}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], *, where: str = "") -> R:
        """The record from its dict form; :class:`RecordError` naming what does not match."""
        what = f"{cls.__name__}" + (f" at {where}" if where else "")
        if not isinstance(data, Mapping):
            raise RecordError(f"{what}: expected an object, got {type(data).__name__}")
        schema = data.get(SCHEMA_KEY, cls.LEGACY_SCHEMA)
        if schema != cls.SCHEMA:
            raise RecordError(
                f"{what} has schema {schema!r}, this version reads schema {cls.SCHEMA}: "
                "it was written by another version of grounding-ops; rerun the step that writes it"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields) - {SCHEMA_KEY})
        if unknown:
            raise RecordError(f"{what} has keys this version does not know: {', '.join(unknown)}")
        required = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in data
        ]
        if required:
            raise RecordError(f"{what} lacks the keys {', '.join(required)}")
        values = {name: cls._field_from_plain(name, value) for name, value in data.items() if name in fields}
        return cls(**values)

    @classmethod
    def _field_from_plain(cls, name: str, value: Any) -> Any:
        """Hook for nested records: turn a field's plain value back into its type."""
        return value

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str).encode("utf-8")

    def save(self, store: Any) -> str:
        """Write the record as ``FILE`` in ``store``; return its URL."""
        if not self.FILE:
            raise TypeError(f"{type(self).__name__} is not a file record")
        store.put_bytes(self.FILE, self.to_json())
        return str(store.url(self.FILE))

    @classmethod
    def load(cls: type[R], store: Any) -> R:
        """Read the record from ``FILE`` in ``store``.

        :raises RecordError: the file is missing, is not JSON or does not match the class.
        """
        from grounding_ops.storage import StorageError

        if not cls.FILE:
            raise TypeError(f"{cls.__name__} is not a file record")
        where = str(store.url(cls.FILE))
        try:
            raw = store.get_bytes(cls.FILE)
        except StorageError as exc:
            raise RecordError(f"{where} is missing or unreadable: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RecordError(f"{where} is not JSON: {exc}") from exc
        return cls.from_dict(data, where=where)

    @classmethod
    def exists(cls, store: Any) -> bool:
        return bool(store.exists(cls.FILE))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

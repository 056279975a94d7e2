"""Task results as data: the serializer of odbench's cached task results (and so its cache records).

Prefect's default serializer is cloudpickle, and a result record names its own serializer, so whoever
can write to a shared storage root could make every later run unpickle (execute) what they wrote.
Prefect's JSON serializer is no better: its decoder imports any class a record names (`__class__`,
`__exc_type__`) and takes the JSON library itself (`jsonlib`) from the record.

This serializer writes JSON and reads back only an allow-list of our frozen dataclasses (looked up by
a fixed tag in a table written here, never imported by a name found in data), tuples, lists, string
keyed dicts and JSON scalars. A task's exception becomes a `StoredTaskError` carrying the original
type's name and message. Strings are written with credentials in URLs redacted (a record lives on a
possibly shared root). Anything else is refused with `RecordRefusedError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from prefect.serializers import Serializer
from pydantic import Field

from odbench.redact import redact_text

SERIALIZER_TYPE = "odbench-data"
FORMAT_VERSION = 1


class RecordRefusedError(ValueError):
    """A result record that is not odbench data: never loaded, the task recomputes instead."""


class StoredTaskError(RuntimeError):
    """A task's failure read back from a record: the original exception's type name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message = type_name, message


@functools.cache
def allowed_types() -> dict[str, type]:
    """The dataclasses a record may hold, by tag (imported here, lazily: blocks stay light to import)."""
    from odbench.benchmark import BenchmarkResult
    from odbench.dataset import DatasetImage, DatasetManifest
    from odbench.model_store import StoredModel
    from odbench.preprocess import PreprocessedSet

    return {cls.__name__: cls for cls in (DatasetManifest, DatasetImage, PreprocessedSet, StoredModel,
                                          BenchmarkResult)}


def encode(obj: Any) -> bytes:
    """A result as JSON bytes: `{"odbench": version, "value": ...}`; an unlisted type is an error."""
    return json.dumps({"odbench": FORMAT_VERSION, "value": _encode(obj)}, sort_keys=True).encode()


def decode(blob: bytes | str) -> Any:
    """A result from `encode`'s bytes; anything that is not exactly that form is refused."""
    try:
        document = json.loads(blob)
    except (ValueError, TypeError) as err:
        raise RecordRefusedError(f"not a JSON document: {err}") from err
    if not isinstance(document, dict) or set(document) != {"odbench", "value"} \
            or document["odbench"] != FORMAT_VERSION:
        raise RecordRefusedError(f"not an odbench v{FORMAT_VERSION} record")
    return _decode(document["value"])


def _encode(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v) for v in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"$dict": {k: _encode(v) for k, v in obj.items()}}
    if isinstance(obj, BaseException):
        return {"$exception": {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
                               "message": redact_text(str(obj))}}
    if dataclasses.is_dataclass(obj) and allowed_types().get(type(obj).__name__) is type(obj):
        fields = {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"$type": type(obj).__name__, "fields": fields}
    raise TypeError(f"{type(obj).__qualname__} is not a type odbench stores as a task result "
                    f"(allowed: {', '.join(allowed_types())}, tuples, lists, dicts and JSON scalars)")


def _decode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise RecordRefusedError(f"unexpected JSON object with keys {sorted(value)[:5]}")
    if set(value) == {"$tuple"} and isinstance(value["$tuple"], list):
        return tuple(_decode(v) for v in value["$tuple"])
    if set(value) == {"$dict"} and isinstance(value["$dict"], dict):
        return {k: _decode(v) for k, v in value["$dict"].items()}
    if set(value) == {"$exception"}:
        return _decode_exception(value["$exception"])
    if set(value) == {"$type", "fields"}:
        return _decode_dataclass(value["$type"], value["fields"])
    raise RecordRefusedError(f"unexpected JSON object with keys {sorted(value)[:5]}")


def _decode_dataclass(tag: Any, fields: Any) -> Any:
    cls = allowed_types().get(tag) if isinstance(tag, str) else None
    if cls is None or not isinstance(fields, dict):
        raise RecordRefusedError(f"type {str(tag)[:80]!r} is not one odbench stores")
    try:
        return cls(**{name: _decode(v) for name, v in fields.items()})
    except TypeError as err:  # a field added, removed or renamed since the record was written
        raise RecordRefusedError(f"a {tag} of another layout: {err}") from err


def _decode_exception(value: Any) -> StoredTaskError:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in ("type", "message")):
        raise RecordRefusedError("malformed stored exception")
    return StoredTaskError(value["type"], value["message"])


class DataSerializer(Serializer):
    """Prefect's face of `encode`/`decode`: it has no options, so a record cannot configure it."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return encode(obj)

    def loads(self, blob: bytes) -> Any:
        return decode(blob)

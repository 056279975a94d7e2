"""Prefect's result storage for odbench: it hands Prefect only records of odbench data.

Prefect reads a cache record (`<root>/prefect-results/<key>`, JSON: `metadata` and `result`) and
deserializes `result` with the serializer the record's own metadata names: pickle, or JSON with a
decoder and JSON library taken from the record. Configuring a serializer on the task does not change
that, so these blocks check every record as they read it, before Prefect sees it: its serializer must
be exactly odbench's (`tasks.serializer`, no options) and its result must decode as odbench data.
Anything else (a pickle, garbage, another serializer, a record of another layout) is refused with a
warning naming the key. Prefect treats a record that fails to read while it looks the key up as absent,
so the task runs again and writes a fresh record over it.

The remote block keeps the storage's credentials in a secret field (`secret_settings`): Prefect masks
it in the UI and API and stores it encrypted; it is merged into the fsspec settings only in-process.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.exceptions import MissingContextError
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.logging import get_run_logger
from prefect.types import SecretDict
from pydantic import Field

from tasks.serializer import SERIALIZER_TYPE, RecordRefusedError, decode

MAX_RECORD_BYTES = 64 << 20  # a manifest of all 5000 COCO val images is about 1 MB


def check_record(content: bytes, key: str) -> bytes:
    """`content` when it is a record of odbench data; else a warning and `RecordRefusedError`."""
    try:
        _check(content)
    except RecordRefusedError as err:
        _logger().warning("ignoring cache record %s: %s; the task runs again and replaces it", key, err)
        raise RecordRefusedError(f"cache record {key} refused: {err}") from None
    return content


def _check(content: bytes) -> None:
    if len(content) > MAX_RECORD_BYTES:
        raise RecordRefusedError(f"{len(content)} bytes, more than any odbench record ({MAX_RECORD_BYTES})")
    try:
        record = json.loads(content)
    except (ValueError, TypeError):
        raise RecordRefusedError("not a JSON result record") from None
    if not isinstance(record, dict) or set(record) != {"metadata", "result"} \
            or not isinstance(record["metadata"], dict):
        raise RecordRefusedError("not a result record of this Prefect (metadata and result)")
    serializer = record["metadata"].get("serializer")
    if serializer != {"type": SERIALIZER_TYPE}:
        raise RecordRefusedError(f"it names the serializer {_describe(serializer)}, not {SERIALIZER_TYPE!r}")
    if not isinstance(record["result"], str):
        raise RecordRefusedError("its result is not text")
    decode(record["result"])


def _describe(serializer: Any) -> str:
    kind = serializer.get("type") if isinstance(serializer, dict) else serializer
    return repr(str(kind)[:40])


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


class DataRecordsLocalFileSystem(LocalFileSystem):
    """A local folder of result records that reads only odbench data records."""

    _block_type_name = "Odbench Local Result Storage"
    _block_type_slug = "odbench-local-result-storage"
    _description = "Prefect result storage in a local folder that loads only odbench's data records (no pickle)."

    async def aread_path(self, path: str) -> bytes:
        return check_record(await super().aread_path(path), path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return check_record(super().read_path(path, _sync=True), path)


class DataRecordsRemoteFileSystem(RemoteFileSystem):
    """An fsspec folder of result records that reads only odbench data records."""

    _block_type_name = "Odbench Remote Result Storage"
    _block_type_slug = "odbench-remote-result-storage"
    _description = "Prefect result storage at an fsspec URL that loads only odbench's data records (no pickle)."

    secret_settings: SecretDict = Field(default_factory=lambda: SecretDict({}),
                                        description="fsspec settings that are credentials (masked, encrypted).")

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of `settings` plus the credentials of `secret_settings`."""
        if not self._filesystem:
            self._filesystem = fsspec.core.url_to_fs(self.basepath, **self.settings,
                                                     **self.secret_settings.get_secret_value())[0]
        return self._filesystem

    async def aread_path(self, path: str) -> bytes:
        return check_record(await super().aread_path(path), path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return check_record(super().read_path(path, _sync=True), path)

"""The storage block: one fsspec URL (plus options and secret credentials) under which sources, models,
preprocessed samples, LoadGen logs, history and Prefect's cached task results all live.

Register it with `prefect block register -m blocks.storage`, save one with

    BenchmarkStorage(url="s3://bucket/odbench", options={"endpoint_url": "https://s3.example.com"},
                     secret_options={"key": "AKIA...", "secret": "..."}).save("nightly")

and pass `storage_block=nightly` to the `detect` flow: every machine that loads the block uses the same
root, so a second machine reuses what the first computed (docs/object_stores.md).

Credentials go in `secret_options` (a Prefect SecretDict: masked in the UI and API, stored encrypted);
`options` refuses them. Saving the block also saves its result-storage block (credentials again in a
secret field), so a run loads that block and saves nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.core import Block
from prefect.filesystems import WritableFileSystem
from prefect.locking.filesystem import FileSystemLockManager
from prefect.settings import PREFECT_HOME
from prefect.types import SecretDict
from pydantic import Field, field_validator

from blocks.results import DataRecordsLocalFileSystem, DataRecordsRemoteFileSystem
from odbench.storage import Storage, default_storage_url

LOCK_HOLD_S = 2 * 3600  # longer than any download or preprocessing step
# fsspec options that are credentials (s3fs, gcsfs, adlfs, botocore's names): secret_options only
SECRET_OPTION_NAMES = frozenset({
    "key", "secret", "token", "password", "session_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "account_key", "sas_token", "client_secret", "connection_string", "credentials",
})


class BenchmarkStorage(Block):
    """Where the benchmark keeps everything: a local folder or any fsspec URL, with secret credentials."""

    _block_type_name = "Benchmark Storage"
    _block_type_slug = "benchmark-storage"
    _description = "Root URL (local folder, s3://, gs://, memory://) of the ONNX detection benchmark's storage."

    url: str = Field(default_factory=default_storage_url, description="fsspec URL or local path of the root.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="fsspec storage options that are not secret (endpoint_url, ...).")
    secret_options: SecretDict = Field(default_factory=lambda: SecretDict({}),
                                       description="fsspec storage options that are credentials (key, secret, "
                                                   "token, ...): masked in the UI and API, never logged.")

    @field_validator("options")
    @classmethod
    def _no_credentials_in_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        found = sorted(_credential_names(options))
        if found:
            raise ValueError(f"options {found} are credentials, and options are shown in clear: move them into "
                             "secret_options, e.g. BenchmarkStorage(url=..., options={'endpoint_url': ...}, "
                             "secret_options={'key': ..., 'secret': ...})")
        return options

    def storage(self) -> Storage:
        """The storage root, checked: an object store whose bucket is missing or whose credentials are
        refused fails here, naming the endpoint and bucket (once per process)."""
        storage = self._root()
        storage.check_access()
        return storage

    def _root(self) -> Storage:
        """The storage root, unchecked (no request)."""
        return Storage(self.url, dict(self.options), dict(self.secret_options.get_secret_value()))

    def result_storage(self) -> WritableFileSystem:
        """Prefect's result (and cache record) storage, inside the same root: the block saved with this
        one (Prefect wants result storage saved server-side), loaded by name. It is saved here only when
        missing or different (a block saved by an earlier version, a root given as a URL). It loads only
        records of odbench data (blocks/results.py): nothing from the root is ever unpickled."""
        wanted, name = self._result_block(), self.result_storage_name()
        try:
            saved = type(wanted).load(name, validate=False)
        except ValueError:  # no such block document yet
            saved = None
        if saved is None or _settings(saved) != _settings(wanted):
            wanted.save(name, overwrite=True)
            return wanted
        return saved

    def result_storage_name(self) -> str:
        """`odbench-results-<md5 of root URL and endpoint>`: one result-storage block per root."""
        storage = self._root()
        where = storage.uri() + (f" at {storage.endpoint}" if storage.is_object_store else "")
        return "odbench-results-" + hashlib.md5(where.encode()).hexdigest()[:12]

    def _result_block(self) -> WritableFileSystem:
        storage = self._root()
        if storage.is_local:
            return DataRecordsLocalFileSystem(basepath=storage.path("prefect-results"))
        return DataRecordsRemoteFileSystem(basepath=_with_location(storage.uri("prefect-results")),
                                           settings=dict(self.options), secret_settings=storage.secret_options)

    async def asave(self, name: str | None = None, overwrite: bool = False, client: Any = None) -> Any:
        """Save the block and, with it, its result-storage block."""
        document_id = await super().asave(name, overwrite=overwrite, client=client)
        await self._result_block().asave(self.result_storage_name(), overwrite=True, client=client)
        return document_id

    @async_dispatch(asave)
    def save(self, name: str | None = None, overwrite: bool = False, client: Any = None) -> Any:
        """Save the block and, with it, its result-storage block."""
        document_id = super().save(name, overwrite=overwrite, _sync=True)
        self._result_block().save(self.result_storage_name(), overwrite=True, _sync=True)
        return document_id

    def lock_manager(self) -> ExpiringFileLocks:
        """Locks that let one run compute a cached step while others wait for its result: in the root
        when it is a local folder (shared by every worker of this machine), else per machine (workers
        on several machines then may repeat a step; its writes are atomic, so that costs time only)."""
        storage = self._root()
        where = storage.path("locks") if storage.is_local else str(PREFECT_HOME.value() / "odbench-locks")
        return ExpiringFileLocks(lock_files_directory=Path(where))


def _credential_names(options: dict[str, Any]) -> set[str]:
    """The credential option names in `options` and in its `client_kwargs` (botocore's spelling)."""
    nested = options.get("client_kwargs")
    names = set(options) | (set(nested) if isinstance(nested, dict) else set())
    return names & SECRET_OPTION_NAMES


def _settings(block: WritableFileSystem) -> tuple:
    """What a result-storage block points at and with which credentials (to tell a stale one)."""
    secrets = getattr(block, "secret_settings", None)
    return (block.basepath, getattr(block, "settings", None), secrets.get_secret_value() if secrets else None)


def _with_location(uri: str) -> str:
    """`memory:///root/x` as `memory://root/x`: Prefect wants a location after the scheme; fsspec reads both."""
    scheme, sep, path = uri.partition(":///")
    return f"{scheme}://{path}" if sep else uri


class ExpiringFileLocks(FileSystemLockManager):
    """File locks that expire: the lock of a killed run frees itself after LOCK_HOLD_S, not never."""

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        return super().acquire_lock(key, holder, acquire_timeout, hold_timeout or LOCK_HOLD_S)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await super().aacquire_lock(key, holder, acquire_timeout, hold_timeout or LOCK_HOLD_S)


def resolve_storage(storage_block: str | None = None, storage_url: str | None = None) -> BenchmarkStorage:
    """A saved block by name, else a block for `storage_url`, else the default local folder."""
    if storage_block:
        return BenchmarkStorage.load(storage_block)
    return BenchmarkStorage(url=storage_url) if storage_url else BenchmarkStorage()

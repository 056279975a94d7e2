"""The storage block: one fsspec URL (plus options) under which sources, models, preprocessed
samples, LoadGen logs and Prefect's cached task results all live.

Register it with `prefect block register -m blocks.storage`, save one with
`BenchmarkStorage(url="s3://bucket/odbench", options={...}).save("nightly")`, and pass
`storage_block=nightly` to the `detect` flow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from prefect.filesystems import WritableFileSystem
from prefect.locking.filesystem import FileSystemLockManager
from prefect.settings import PREFECT_HOME
from pydantic import Field

from blocks.results import DataRecordsLocalFileSystem, DataRecordsRemoteFileSystem
from odbench.storage import Storage, default_storage_url

LOCK_HOLD_S = 2 * 3600  # longer than any download or preprocessing step


class BenchmarkStorage(Block):
    """Where the benchmark keeps everything: a local folder or any fsspec URL."""

    _block_type_name = "Benchmark Storage"
    _block_type_slug = "benchmark-storage"
    _description = "Root URL (local folder, s3://, gs://, memory://) of the ONNX detection benchmark's storage."

    url: str = Field(default_factory=default_storage_url, description="fsspec URL or local path of the root.")
    options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options (endpoint, ...).")

    def storage(self) -> Storage:
        return Storage(self.url, dict(self.options))

    def result_storage(self) -> WritableFileSystem:
        """Prefect's result (and cache record) storage, inside the same root, saved server-side
        (Prefect requires that) under a name derived from the root URL. It loads only records of
        odbench data (blocks/results.py): a record anyone else wrote there is refused and recomputed,
        never unpickled."""
        storage = self.storage()
        if storage.is_local:
            block: WritableFileSystem = DataRecordsLocalFileSystem(basepath=storage.path("prefect-results"))
        else:
            block = DataRecordsRemoteFileSystem(basepath=_with_location(storage.uri("prefect-results")),
                                                settings=dict(self.options))
        name = "odbench-results-" + hashlib.md5(storage.uri().encode()).hexdigest()[:12]
        block.save(name, overwrite=True)
        return block

    def lock_manager(self) -> ExpiringFileLocks:
        """Locks that let one run compute a cached step while others wait for its result: in the root
        when it is a local folder (shared by every worker of this machine), else per machine (workers
        on several machines then may repeat a step; its writes are atomic, so that costs time only)."""
        storage = self.storage()
        where = storage.path("locks") if storage.is_local else str(PREFECT_HOME.value() / "odbench-locks")
        return ExpiringFileLocks(lock_files_directory=Path(where))


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

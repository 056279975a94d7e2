"""The storage block: one fsspec URL (plus options) under which sources, models, preprocessed
samples, LoadGen logs and Prefect's cached task results all live.

Register it with `prefect block register -m blocks.storage`, save one with
`BenchmarkStorage(url="s3://bucket/odbench", options={...}).save("nightly")`, and pass
`storage_block=nightly` to the `detect` flow.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect.blocks.core import Block
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from pydantic import Field

from odbench.storage import Storage, default_storage_url


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
        (Prefect requires that) under a name derived from the root URL."""
        storage = self.storage()
        if storage.is_local:
            block: WritableFileSystem = LocalFileSystem(basepath=storage.path("prefect-results"))
        else:
            block = RemoteFileSystem(basepath=storage.uri("prefect-results"), settings=dict(self.options))
        name = "odbench-results-" + hashlib.md5(storage.uri().encode()).hexdigest()[:12]
        block.save(name, overwrite=True)
        return block


def resolve_storage(storage_block: str | None = None, storage_url: str | None = None) -> BenchmarkStorage:
    """A saved block by name, else a block for `storage_url`, else the default local folder."""
    if storage_block:
        return BenchmarkStorage.load(storage_block)
    return BenchmarkStorage(url=storage_url) if storage_url else BenchmarkStorage()

"""One fsspec-backed storage root and its layout: every file the benchmark keeps lives under it.

Layout (the same on every backend):

    sources/<md5>/<name>                  fetched files (archives, annotations, images), by content
    models/<model_name>/<md5>/<file>.onnx model files, real or stand-in, by content
    preprocessed/v<n>/<res>/<image md5>.npy    uint8 HWC RGB at res x res, shared by every N and source
    datasets/<digest>.json                dataset manifests (the first N images of a source)
    synthetic/seed-<s>-n-<n>/             generated COCO-layout datasets
    runs/<run id>/                        LoadGen logs, user.conf, result.json
    history/<entry>/<time>-<run id>.jsonl one record per regression run (odbench/history.py)
    prefect-results/, locks/              Prefect's cache records, locks of cached steps in progress

Writes are atomic: data goes to a hidden temporary name and is moved into place only when complete,
so a file that exists under its final name is always whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

DEFAULT_STORAGE_ENV = "ODBENCH_STORAGE_URL"


def default_storage_url() -> str:
    """$ODBENCH_STORAGE_URL, else a folder under the user's cache directory."""
    if url := os.environ.get(DEFAULT_STORAGE_ENV):
        return url
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "odbench")


@dataclass
class Storage:
    """An fsspec filesystem plus a root path; paths given to its methods are relative to the root."""

    url: str = field(default_factory=default_storage_url)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """The filesystem path of a relative path."""
        return f"{self.root}/{rel}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        """A URL of a relative path, for people and for fsspec.open."""
        return self.fs.unstrip_protocol(self.path(rel))

    def local_path(self, rel: str) -> Path | None:
        """The local file path when storage is local; None on remote backends."""
        return Path(self.path(rel)) if self.is_local else None

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def missing(self, rels: Iterable[str]) -> list[str]:
        """Those of `rels` that storage does not hold (to check what a cached manifest promises)."""
        return [rel for rel in rels if not self.exists(rel)]

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(rel), mode)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """Open a temporary file that replaces `rel` only if the block exits without error."""
        final = self.path(rel)
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.{name}.partial-{uuid.uuid4().hex}"
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as handle:
                yield handle
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_writer(rel) as handle:
            handle.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def upload_dir(self, local_dir: Path, rel: str) -> None:
        """Copy the files of a local folder into `rel` (used for LoadGen's logs)."""
        for file in sorted(Path(local_dir).iterdir()):
            if file.is_file():
                self.write_bytes(f"{rel}/{file.name}", file.read_bytes())

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel), recursive=True)

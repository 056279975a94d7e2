"""Fetch any fsspec URL (file://, http(s)://, s3://, plain paths) into storage, verified by md5.

Files land under `<kind>/<md5>/<name>` so that existence under the final name means "whole and
verified": the bytes stream through an md5 into a temporary file that is committed only when the
sum matches.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
import zipfile
from dataclasses import dataclass
from typing import IO

import fsspec

from odbench.progress import LogProgress
from odbench.storage import Storage

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# fsspec info() fields that change when a file is replaced: local, S3, HTTP headers, GCS
CHANGE_STAMPS = ("mtime", "LastModified", "last_modified", "Last-Modified", "ETag", "etag", "Content-MD5",
                 "Digest", "md5Hash", "updated", "created")
LOG_PROGRESS_ABOVE = 16 << 20  # bytes: smaller files are fetched silently


class ChecksumMismatchError(ValueError):
    pass


class SourceUnavailableError(OSError):
    pass


@dataclass(frozen=True)
class StoredFile:
    """A verified file in storage."""

    rel: str  # path relative to the storage root
    md5: str
    size: int


def aiohttp_errors() -> type[Exception] | tuple[type[Exception], ...]:
    """HTTP client errors, when fsspec's HTTP backend (aiohttp) is installed."""
    try:
        import aiohttp
    except ImportError:
        return ()
    return aiohttp.ClientError


def info_signature(info: dict) -> str:
    """Size and change stamps from an fsspec `info()` entry: what a cache key can know without reading."""
    return ":".join(f"{key}={info[key]}" for key in ("size", *CHANGE_STAMPS) if info.get(key) is not None)


def has_change_stamp(info: dict) -> bool:
    """Whether an `info()` entry can tell a replaced file of the same size from the original."""
    return any(info.get(key) is not None for key in CHANGE_STAMPS)


def url_info(url: str) -> dict:
    """fsspec's `info()` of one URL's file (no download), or an error that names the URL."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.info(path)
    except (OSError, ValueError, NotImplementedError, aiohttp_errors()) as err:
        raise SourceUnavailableError(f"cannot read {url}: {err}") from err


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def content_path(kind: str, md5: str, name: str) -> str:
    return f"{kind}/{md5}/{name}"


def _find_existing(storage: Storage, kind: str, md5: str, name: str) -> StoredFile | None:
    rel = content_path(kind, md5, name)
    if storage.exists(rel):
        return StoredFile(rel, md5, storage.fs.size(storage.path(rel)))
    return None


def fetch(url: str, storage: Storage, kind: str, name: str, expected_md5: str | None = None) -> StoredFile:
    """Stream `url` into `<kind>/<md5>/<name>`; reuse a stored copy when `expected_md5` is known."""
    if expected_md5 and (found := _find_existing(storage, kind, expected_md5, name)):
        log.info("reusing %s (md5 %s)", found.rel, expected_md5)
        return found
    staging = f"{kind}/.staging/{uuid.uuid4().hex}-{name}"
    with storage.atomic_writer(staging) as out:
        md5, size = _copy_hashing(url, out)
        if expected_md5 and md5 != expected_md5:
            raise ChecksumMismatchError(
                f"md5 mismatch for {url}: expected {expected_md5}, got {md5}; nothing was stored. "
                "Check the URL, or pass the md5 of the file you mean to use."
            )
    return _commit(storage, staging, kind, md5, name, size)


def _copy_hashing(url: str, out: IO[bytes]) -> tuple[str, int]:
    """Copy a URL's bytes into `out`; return their md5 and size. Any read failure names the URL."""
    digest, size = hashlib.md5(), 0
    try:
        with fsspec.open(url, "rb") as source:
            total = getattr(source, "size", None) or 0
            progress = LogProgress(f"fetch {url} (MiB)", log) if total > LOG_PROGRESS_ABOVE else None
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if progress:
                    progress(size >> 20, total >> 20)
    except (OSError, ValueError, aiohttp_errors()) as err:
        raise SourceUnavailableError(f"cannot read {url}: {err}") from err
    return digest.hexdigest(), size


def _commit(storage: Storage, staging: str, kind: str, md5: str, name: str, size: int) -> StoredFile:
    """Move a verified staging file to its content path."""
    rel = content_path(kind, md5, name)
    storage.fs.makedirs(storage.path(f"{kind}/{md5}"), exist_ok=True)
    storage.fs.mv(storage.path(staging), storage.path(rel))
    return StoredFile(rel, md5, size)


def store_bytes(data: bytes, storage: Storage, kind: str, name: str) -> StoredFile:
    """Store bytes under their content path (a no-op when already there)."""
    md5 = md5_bytes(data)
    rel = content_path(kind, md5, name)
    if not storage.exists(rel):
        storage.write_bytes(rel, data)
    return StoredFile(rel, md5, len(data))


def read_zip_members(storage: Storage, zip_rel: str, members: list[str]) -> dict[str, bytes]:
    """Read the named members of a stored zip archive; a missing member is a clear error."""
    with storage.open(zip_rel) as handle, zipfile.ZipFile(handle) as archive:
        names = set(archive.namelist())
        missing = [m for m in members if m not in names]
        if missing:
            raise FileNotFoundError(f"{storage.uri(zip_rel)} lacks {len(missing)} member(s), e.g. {missing[0]}")
        return {m: archive.read(m) for m in members}

"""Fetch any fsspec URL (file://, http(s)://, s3://, plain paths) into storage, verified by md5.

Files land under `<kind>/<md5>/<name>` so that existence under the final name means "whole and
verified": the bytes stream through an md5 into a temporary file that is committed only when the
sum matches. Names are confined (`storage.safe_rel`), sizes bounded (`odbench.limits`: a model file by
`max_model_bytes`, other files by `max_fetch_bytes` unless the caller names a tighter limit; a source
that declares its size is refused before reading, one that does not is cut off at the limit), and URLs
are redacted (`odbench.redact`) in every message and log line. The first fetch into a kind in a process
removes that kind's stale `.staging/` leftovers of interrupted fetches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import uuid
import zipfile
from dataclasses import dataclass, fields
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from odbench.limits import LimitExceededError, Limits
from odbench.progress import LogProgress
from odbench.redact import redact_text, redact_url
from odbench.storage import Storage, safe_rel

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


class UnboundedSourceError(ValueError):
    """A local source that is not a regular file (a device such as /dev/zero, a pipe, a socket): it
    declares no size and may never end, so it is refused before reading."""


_MD5 = re.compile(r"[0-9a-f]{32}")
_cleaned: set[tuple[str, str]] = set()  # (storage URL, kind) whose staging folder this process swept
_cleaned_lock = threading.Lock()


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
        raise SourceUnavailableError(f"cannot read {redact_url(url)}: {redact_text(str(err))}") from None


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def content_path(kind: str, md5: str, name: str) -> str:
    """`<kind>/<md5>/<name>`; a name that would leave its folder is refused (UnsafePathError)."""
    return safe_rel(f"{kind}/{md5}/{safe_rel(name, 'file name')}", "storage path")


def default_limit(kind: str) -> str:
    """The `Limits` field bounding a fetch into `kind`: model files have their own."""
    return "max_model_bytes" if kind == "models" or kind.startswith("models/") else "max_fetch_bytes"


def _find_existing(storage: Storage, kind: str, md5: str, name: str) -> StoredFile | None:
    rel = content_path(kind, md5, name)
    if storage.exists(rel):
        return StoredFile(rel, md5, storage.fs.size(storage.path(rel)))
    return None


def fetch(url: str, storage: Storage, kind: str, name: str, expected_md5: str | None = None,
          limit: str | None = None) -> StoredFile:
    """Stream `url` into `<kind>/<md5>/<name>`; reuse a stored copy when `expected_md5` is known.

    `limit` names the `Limits` field that bounds the file's size (default: `default_limit(kind)`);
    past it nothing is stored and LimitExceededError names the limit."""
    expected_md5 = expected_md5.strip().lower() if expected_md5 else None
    if expected_md5 is not None and not _MD5.fullmatch(expected_md5):
        raise ValueError(f"md5 {expected_md5!r} for {redact_url(url)} is not 32 hex digits: pass the file's md5sum")
    content_path(kind, expected_md5 or "0" * 32, name)  # refuse an unsafe name before any I/O
    if expected_md5 and (found := _find_existing(storage, kind, expected_md5, name)):
        log.info("reusing %s (md5 %s)", found.rel, expected_md5)
        return found
    _sweep_staging_once(storage, kind)
    limit = limit or default_limit(kind)
    _refuse_special_file(url, limit)
    staging = f"{kind}/.staging/{uuid.uuid4().hex}-{name.replace('/', '_')}"
    with storage.atomic_writer(staging) as out:
        md5, size = _copy_hashing(url, out, limit)
        if expected_md5 and md5 != expected_md5:
            raise ChecksumMismatchError(
                f"md5 mismatch for {redact_url(url)}: expected {expected_md5}, got {md5}; nothing was stored. "
                "Check the URL, or pass the md5 of the file you mean to use."
            )
    return _commit(storage, staging, kind, md5, name, size)


def _sweep_staging_once(storage: Storage, kind: str) -> None:
    """Remove stale leftovers of interrupted fetches in `<kind>/.staging/`, once per process and kind."""
    with _cleaned_lock:
        if (storage.url, kind) in _cleaned:
            return
        _cleaned.add((storage.url, kind))
    storage.remove_stale_temporaries(f"{kind}/.staging")


def _copy_hashing(url: str, out: IO[bytes], limit: str) -> tuple[str, int]:
    """Copy a URL's bytes into `out`; return their md5 and size. Any read failure names the URL (redacted);
    a source larger than `limit` (a `Limits` field) is refused, before reading when it declares its
    size, else as soon as the bytes read pass the limit."""
    limits, digest, size, shown = Limits.from_env(), hashlib.md5(), 0, redact_url(url)
    maximum = getattr(limits, limit)
    try:
        with fsspec.open(url, "rb") as source:
            total = getattr(source, "size", None) or 0
            limits.check(limit, total, shown)
            progress = LogProgress(f"fetch {shown} (MiB)", log) if total > LOG_PROGRESS_ABOVE else None
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if size > maximum:
                    raise LimitExceededError(limit, size, maximum, f"{shown} (stopped reading there)")
                out.write(chunk)
                if progress:
                    progress(size >> 20, total >> 20)
    except LimitExceededError:
        raise
    except (OSError, ValueError, aiohttp_errors()) as err:
        raise SourceUnavailableError(f"cannot read {shown}: {redact_text(str(err))}") from None
    return digest.hexdigest(), size


def _refuse_special_file(url: str, limit: str) -> None:
    """A local path that exists but is no regular file (after following links) is refused, naming the
    limit it could not be held to: reading /dev/zero up to a 2 GiB limit alone takes seconds."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        mode = os.stat(path).st_mode if isinstance(fs, LocalFileSystem) else None
    except (OSError, ValueError):
        return  # missing or unreadable: opening it gives the error that names the URL
    if mode is not None and not stat.S_ISREG(mode):
        env = next(f.metadata["env"] for f in fields(Limits) if f.name == limit)
        raise UnboundedSourceError(
            f"{redact_url(url)} is not a regular file (a device, pipe or socket): it has no size to check against the "
            f"limit {limit} ({env}) and may never end; refused. Copy the data into a regular file.")


def _commit(storage: Storage, staging: str, kind: str, md5: str, name: str, size: int) -> StoredFile:
    """Move a verified staging file to its content path."""
    rel = content_path(kind, md5, name)
    storage.fs.makedirs(storage.path(rel.rsplit("/", 1)[0]), exist_ok=True)
    storage.fs.mv(storage.path(staging), storage.path(rel))
    return StoredFile(rel, md5, size)


def store_bytes(data: bytes, storage: Storage, kind: str, name: str) -> StoredFile:
    """Store bytes under their content path (a no-op when already there)."""
    md5 = md5_bytes(data)
    rel = content_path(kind, md5, name)
    if not storage.exists(rel):
        storage.write_bytes(rel, data)
    return StoredFile(rel, md5, len(data))


def read_zip_members(storage: Storage, zip_rel: str, members: list[str],
                     limit: str = "max_fetch_bytes") -> dict[str, bytes]:
    """Read the named members of a stored zip archive. A member name that would leave its folder
    (`..`, absolute) is refused, a missing member is a clear error, and a member whose size is above
    `limit` (a `Limits` field) is refused before it is inflated."""
    for member in members:
        safe_rel(member, f"archive member of {storage.uri(zip_rel)}:")
    limits = Limits.from_env()
    with storage.open(zip_rel) as handle, zipfile.ZipFile(handle) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        missing = [m for m in members if m not in infos]
        if missing:
            raise FileNotFoundError(f"{storage.uri(zip_rel)} lacks {len(missing)} member(s), e.g. {missing[0]}")
        for member in members:
            limits.check(limit, infos[member].file_size, f"member {member} of {storage.uri(zip_rel)}")
        return {m: archive.read(infos[m]) for m in members}

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

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from odbench.limits import LimitExceededError, Limits
from odbench.progress import ProgressFactory, log_progress_factory
from odbench.redact import redact_text, redact_url
from odbench.retry import TransientError, is_transient, retrying
from odbench.storage import RESUME_DIR, STAGING_DIR, Storage, safe_rel

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# fsspec info() fields that change when a file is replaced: local, S3, HTTP headers, GCS
CHANGE_STAMPS = ("mtime", "LastModified", "last_modified", "Last-Modified", "ETag", "etag", "Content-MD5",
                 "Digest", "md5Hash", "updated", "created")
LOG_PROGRESS_ABOVE = 16 << 20  # bytes: smaller files are fetched silently
RESUME_KEEP_S = 7 * 86400  # a partial download nobody resumed for a week is removed
HTTP_CONNECT_TIMEOUT_S = 30
HTTP_READ_TIMEOUT_S = 120  # no byte for this long: the connection counts as dropped (and is retried)
Urls = str | Sequence[str]  # one URL, or mirrors of one file in the order they are tried
T = TypeVar("T")


class VerificationError(ValueError):
    """Bytes that are not what the source promised (a checksum, a CRC, a malformed archive): never retried
    from the same URL, though another mirror may serve the right ones."""


class ChecksumMismatchError(VerificationError):
    pass


class SourceUnavailableError(OSError):
    """A source that could not be read; `transient` says whether another attempt may succeed."""

    transient: bool = False


class MirrorsFailedError(SourceUnavailableError):
    """Every URL of a source failed: the message names each with its error, and what to do."""

    def __init__(self, what: str, failures: list[tuple[str, BaseException]]):
        tried = "; ".join(f"{redact_url(url)}: {redact_text(str(err))}" for url, err in failures)
        super().__init__(
            f"{what}: all {len(failures)} URLs failed ({tried}). Add a mirror that serves the same file "
            "(dataset_mirrors / model_mirrors, or a SourceMirrors block), or point dataset_url / model_url at "
            "a local copy.")
        self.failures = failures
        self.transient = any(is_transient(err) for _, err in failures)

    def __reduce__(self):
        return _plain_error, (type(self).__mro__[1], str(self))


def _plain_error(kind: type, message: str) -> BaseException:
    return kind(message)


def source_error(url: str, err: BaseException) -> SourceUnavailableError:
    """`err` while reading `url`, as a SourceUnavailableError naming the (redacted) URL, transient or not."""
    reason = "not found" if isinstance(err, FileNotFoundError) else redact_text(str(err)) or type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause) and isinstance(err, FileNotFoundError):
        reason = redact_text(str(cause))  # fsspec says "not found" for any refused HEAD: the cause says which
    found = SourceUnavailableError(f"cannot read {redact_url(url)}: {reason}")
    found.transient = is_transient(err)
    return found


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


def fetch(urls: Urls, storage: Storage, kind: str, name: str, expected_md5: str | None = None,
          limit: str | None = None, progress: ProgressFactory | None = None) -> StoredFile:
    """Bring the file at `urls` (one URL, or mirrors of one file tried in order) into `<kind>/<md5>/<name>`;
    reuse a stored copy when `expected_md5` is known.

    Each URL is retried on transient errors (`odbench.retry`); an HTTP(S) transfer cut short resumes
    with a Range request where the server allows it (else it starts over), and its partial file is
    kept, keyed by URL and expected md5, for a later run to resume; whatever the route, the whole
    file's md5 is checked before it is stored. The first URL that answers and verifies wins; when all
    fail, the error names each. `limit` names the `Limits` field that bounds the file's size (default:
    `default_limit(kind)`); past it nothing is stored and LimitExceededError names the limit."""
    urls = as_urls(urls)
    expected_md5 = expected_md5.strip().lower() if expected_md5 else None
    if expected_md5 is not None and not _MD5.fullmatch(expected_md5):
        raise ValueError(f"md5 {expected_md5!r} for {redact_url(urls[0])} is not 32 hex digits: pass the file's md5sum")
    content_path(kind, expected_md5 or "0" * 32, name)  # refuse an unsafe name before any I/O
    if expected_md5 and (found := _find_existing(storage, kind, expected_md5, name)):
        log.info("reusing %s (md5 %s)", found.rel, expected_md5)
        return found
    _sweep_staging_once(storage, kind)
    limit = limit or default_limit(kind)
    job = _Job(storage, kind, name, expected_md5, limit, progress or log_progress_factory(log))
    return first_that_works(urls, job.fetch_one, name)


@dataclass(frozen=True)
class _Job:
    """One file to fetch: where it goes, what it must hash to, its size limit and its progress."""

    storage: Storage
    kind: str
    name: str
    expected_md5: str | None
    limit: str
    progress: ProgressFactory

    def fetch_one(self, url: str) -> StoredFile:
        """This file from one URL, retried on transient errors, verified, committed."""
        _refuse_special_file(url, self.limit)
        if is_http(url):
            return self._from_http(url)
        return retrying(lambda: self._staged_copy(url), f"fetch {redact_url(url)}", logger=log)

    def _staged_copy(self, url: str) -> StoredFile:
        """Stream a non-HTTP URL into a staging file through md5; commit it when the sum matches."""
        staging = f"{self.kind}/{STAGING_DIR}/{uuid.uuid4().hex}-{self.name.replace('/', '_')}"
        with self.storage.atomic_writer(staging) as out:
            md5, size = _copy_hashing(url, out, self.limit, self.progress)
            self._check_md5(url, md5)
        return _commit(self.storage, staging, self.kind, md5, self.name, size)

    def _from_http(self, url: str) -> StoredFile:
        """Download into a resumable partial file (locked against a concurrent run), verify, commit."""
        part = resume_path(self.storage, self.kind, url, self.expected_md5)
        with _locked(part):
            try:
                retrying(lambda: _transfer(url, part, self.limit, self.progress), f"download {redact_url(url)}",
                         logger=log)
            except (OSError, aiohttp_errors()) as err:
                raise source_error(url, err) from None
            md5, size = _file_md5(part)
            try:
                self._check_md5(url, md5)
            except ChecksumMismatchError:
                part.unlink(missing_ok=True)
                raise
            return _commit_local(self.storage, part, self.kind, md5, self.name, size)

    def _check_md5(self, url: str, md5: str) -> None:
        if self.expected_md5 and md5 != self.expected_md5:
            raise ChecksumMismatchError(
                f"md5 mismatch for {redact_url(url)}: expected {self.expected_md5}, got {md5}; nothing was stored. "
                "Check the URL, or pass the md5 of the file you mean to use.")


def as_urls(urls: Urls) -> tuple[str, ...]:
    """One URL or an ordered list of mirrors, as a tuple; an empty list is an error."""
    found = (urls,) if isinstance(urls, str) else tuple(urls)
    if not found or not all(isinstance(u, str) and u.strip() for u in found):
        raise ValueError(f"a source needs at least one URL, got {found!r}")
    return found


def first_that_works(urls: Sequence[str], attempt: Callable[[str], T], what: str) -> T:
    """`attempt(url)` for each mirror in order until one answers and verifies. A single URL's error is
    raised as it is; of several, each failure is logged and, when all fail, one MirrorsFailedError names
    every URL with its error. Errors that are no fault of the source (limits, unsafe names) stop at once."""
    failures: list[tuple[str, BaseException]] = []
    for url in urls:
        try:
            return attempt(url)
        except (SourceUnavailableError, VerificationError, FileNotFoundError) as err:
            if len(urls) == 1:
                raise
            log.warning("%s from %s failed: %s; trying the next mirror", what, redact_url(url),
                        redact_text(str(err)))
            failures.append((url, err))
    raise MirrorsFailedError(what, failures)


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def http_filesystem() -> fsspec.AbstractFileSystem:
    """fsspec's HTTP filesystem with timeouts per connect and per read instead of aiohttp's 5-minute total,
    which would cut off any download longer than five minutes."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT_S, sock_read=HTTP_READ_TIMEOUT_S)
    return fsspec.filesystem("http", client_kwargs={"timeout": timeout})


def resume_path(storage: Storage, kind: str, url: str, expected_md5: str | None) -> Path:
    """The local partial file of a download: keyed by URL and expected md5, so only a transfer of the same
    file from the same place resumes it (and the md5 is checked at the end whatever it held). Without an
    expected md5 the key is fresh, so nothing resumes across calls. In the storage root when it is local,
    else in the system's temporary folder."""
    key = hashlib.md5(f"{url}\n{expected_md5}".encode()).hexdigest() if expected_md5 else uuid.uuid4().hex
    local = storage.local_path(f"{kind}/{RESUME_DIR}")
    folder = local if local is not None else Path(tempfile.gettempdir()) / "odbench-resume"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.part"


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[None]:
    """An exclusive lock on a partial file: a second run fetching the same file waits, then finds it done."""
    lock = part.with_suffix(".lock")
    while True:
        handle = open(lock, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                break  # still the live lock file (its last holder removes it while holding it)
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _open_stream(url: str, have: int):
    """A streaming GET of `url` from byte `have` (a Range request when `have` > 0); None when the server
    answers 416: the range starts at the file's end, so the partial file is already whole."""
    import aiohttp

    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        return http_filesystem().open(url, "rb", block_size=0, size=1, headers=headers)  # size: no HEAD first
    except aiohttp.ClientResponseError as err:
        if have and err.status == 416:
            return None
        raise


def _resumed_from(stream, have: int, url: str) -> int:
    """Where the answer starts: `have` when the server honoured the Range request, else 0 (start over)."""
    if not have:
        return 0
    content_range = stream.r.headers.get("Content-Range", "")
    if stream.r.status == 206 and content_range.startswith(f"bytes {have}-"):
        log.info("resuming %s at byte %d", redact_url(url), have)
        return have
    log.info("%s does not resume transfers (HTTP %d to a Range request): starting over", redact_url(url),
             stream.r.status)
    return 0


def _transfer(url: str, part: Path, limit: str, progress: ProgressFactory) -> None:
    """Append the rest of `url` to `part` (all of it when the server cannot resume). A transfer that ends
    before the size the server declared is a TransientError, so the retry resumes it."""
    limits, shown = Limits.from_env(), redact_url(url)
    have = part.stat().st_size if part.exists() else 0
    stream = _open_stream(url, have)
    if stream is None:
        return
    with stream:
        have = _resumed_from(stream, have, url)
        length = stream.r.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else 0
        limits.check(limit, total, shown)
        report = progress(f"download {shown}", "B") if total > LOG_PROGRESS_ABOVE else None
        with open(part, "ab" if have else "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                have += len(chunk)
                if have > getattr(limits, limit):
                    part.unlink(missing_ok=True)
                    raise LimitExceededError(limit, have, getattr(limits, limit), f"{shown} (stopped reading there)")
                if report:
                    report(have, total)
    if total and have < total:
        raise TransientError(f"{shown}: the transfer ended at byte {have} of {total}")


def _file_md5(path: Path) -> tuple[str, int]:
    """md5 and size of a local file, read in chunks."""
    digest, size = hashlib.md5(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _commit_local(storage: Storage, part: Path, kind: str, md5: str, name: str, size: int) -> StoredFile:
    """Move (local storage) or upload (any other) a verified partial file to its content path."""
    rel = content_path(kind, md5, name)
    if storage.is_local:
        storage.fs.makedirs(storage.path(rel.rsplit("/", 1)[0]), exist_ok=True)
        os.replace(part, storage.path(rel))
    else:
        with storage.atomic_writer(rel) as out, open(part, "rb") as handle:
            shutil.copyfileobj(handle, out, CHUNK)
        part.unlink(missing_ok=True)
    return StoredFile(rel, md5, size)


def _sweep_staging_once(storage: Storage, kind: str) -> None:
    """Remove stale leftovers of interrupted fetches in `<kind>/.staging/`, and partial downloads nobody
    resumed for RESUME_KEEP_S, once per process and kind."""
    with _cleaned_lock:
        if (storage.url, kind) in _cleaned:
            return
        _cleaned.add((storage.url, kind))
    storage.remove_stale_temporaries(f"{kind}/{STAGING_DIR}")
    local = storage.local_path(f"{kind}/{RESUME_DIR}")
    for part in local.glob("*.part") if local is not None and local.is_dir() else ():
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > RESUME_KEEP_S:
                part.unlink()


def _copy_hashing(url: str, out: IO[bytes], limit: str, progress: ProgressFactory) -> tuple[str, int]:
    """Copy a URL's bytes into `out`; return their md5 and size. Any read failure names the URL (redacted);
    a source larger than `limit` (a `Limits` field) is refused, before reading when it declares its
    size, else as soon as the bytes read pass the limit."""
    limits, digest, size, shown = Limits.from_env(), hashlib.md5(), 0, redact_url(url)
    maximum = getattr(limits, limit)
    try:
        with fsspec.open(url, "rb") as source:
            total = getattr(source, "size", None) or 0
            limits.check(limit, total, shown)
            report = progress(f"fetch {shown}", "B") if total > LOG_PROGRESS_ABOVE else None
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if size > maximum:
                    raise LimitExceededError(limit, size, maximum, f"{shown} (stopped reading there)")
                out.write(chunk)
                if report:
                    report(size, total)
    except LimitExceededError:
        raise
    except (OSError, ValueError, aiohttp_errors()) as err:
        raise source_error(url, err) from None
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

"""One fsspec-backed storage root and its layout: every file the benchmark keeps lives under it.

Layout (the same on every backend):

    sources/<md5>/<name>                  fetched files (archives, annotations, images), by content
    models/<model_name>/<md5>/<file>.onnx model files, real or stand-in, by content
    preprocessed/v<n>/<res>/float32/<image md5>.sample float32 HWC RGB at res x res, the reference's resize (default)
    preprocessed/v<n>/<res>/<image md5>.sample uint8 (preprocess_resize_dtype=uint8); both self-verifying, shared
    datasets/<digest>.json                dataset manifests (the first N images of a source)
    synthetic/seed-<s>-n-<n>/             generated COCO-layout datasets
    runs/<run id>/                        LoadGen logs, user.conf, result.json
    history/<entry>/<time>-<run id>.jsonl one record per regression run (odbench/history.py)
    prefect-results/, locks/              Prefect's cache records, locks of cached steps in progress

Writes are atomic, so a file that exists under its final name is always whole: on a local folder (or any
filesystem with partial files) data goes to a hidden temporary name and is moved into place only when
complete; on an object store (s3://, gs://, az://) a single PUT (or a multipart upload, invisible until
completed) is already atomic, so data is uploaded once, directly under its final name, from memory or
from a local temporary file (docs/object_stores.md).

An object-store root is checked once per process before its first use (`check_access`): a missing
bucket or refused credentials fail at once with an error naming the endpoint and the bucket.

Every relative path goes through `safe_rel` (no `..`, `.` or empty segment, no absolute path, drive
letter, backslash or control character), so nothing built from data can reach outside the root.

Temporaries of an interrupted write (`.<name>.partial-<host>~<pid>~<nonce>`, `<kind>/.staging/*`) are
removed by the next step that writes the same folder (`remove_stale_temporaries`: ingest for `sources/`
and `datasets/`, preprocessing for its resolution's folder, the first fetch of a process for
`<kind>/.staging/`) when either
- nothing has modified them for `STALE_TEMPORARY_S` (1 hour): a live writer keeps its file's
  modification time fresh (a chunk per MiB), so a concurrent run's file in progress is not taken; or
- their writer is gone: written on this host by a process that no longer exists, and unmodified for
  `ORPHAN_TEMPORARY_S` (5 minutes; the margin covers a writer in another PID namespace, such as a
  container sharing this host name).
A file under its final name is never touched by this rule.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

DEFAULT_STORAGE_ENV = "ODBENCH_STORAGE_URL"
STALE_TEMPORARY_S = 3600  # an unmodified temporary older than this belongs to a writer that is gone
ORPHAN_TEMPORARY_S = 300  # ... and one this old whose writer (on this host) has exited
STAGING_DIR = ".staging"  # <kind>/.staging/<uuid>-<name>: fetched files before they move to their content path
RESUME_DIR = ".resume"  # <kind>/.resume/<md5 of URL and expected md5>.part: partial downloads (odbench/fetch.py)
HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
_WRITER = re.compile(r"\.partial-(?P<host>[A-Za-z0-9.-]+)~(?P<pid>\d+)~")
log = logging.getLogger(__name__)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})  # a PUT is atomic there
_checked: set[tuple[str, str, str]] = set()  # (root URI, endpoint, credentials' md5) that passed check_access
_checked_lock = threading.Lock()


class StorageAccessError(RuntimeError):
    """An object-store root that cannot be used: its bucket is missing or its credentials are refused."""


class UnsafePathError(ValueError):
    """A path from data that would leave its folder (`..`, absolute, a drive letter, ...)."""


def safe_rel(rel: str, what: str = "path") -> str:
    """`rel` itself when it is a plain relative path (segments joined by `/`, none empty, `.` or `..`;
    no leading `/`, drive letter, backslash or control character); else UnsafePathError naming it."""
    problem = _unsafe_reason(rel)
    if problem:
        raise UnsafePathError(f"{what} {rel!r} refused: {problem}; it must be a relative path inside its folder")
    return rel


def _unsafe_reason(rel: str) -> str | None:
    """Why `rel` could leave its folder, or None when it cannot."""
    if not isinstance(rel, str) or not rel:
        return "it is empty" if rel == "" else f"it is a {type(rel).__name__}, not a string"
    if rel.startswith("/"):
        return "it is absolute"
    if "\\" in rel:
        return "it holds a backslash"
    if _DRIVE.match(rel):
        return "it starts with a drive letter"
    if _CONTROL.search(rel):
        return "it holds a control character"
    segments = rel.split("/")
    if ".." in segments:
        return "it holds a '..' segment"
    if "" in segments or "." in segments:
        return "it holds an empty or '.' segment"
    return None


def writer_gone(rel: str) -> bool:
    """Whether a temporary's name says it was written on this host by a process that has exited."""
    match = _WRITER.search(rel.rsplit("/", 1)[-1])
    if not match or match["host"] != HOST:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # alive under another user, or not a pid at all
    return False


def is_temporary(rel: str) -> bool:
    """An incomplete write: an atomic writer's `.<name>.partial-*` or a download still in `.staging/`."""
    name = rel.rsplit("/", 1)[-1]
    return (name.startswith(".") and ".partial-" in name) or f"/{STAGING_DIR}/" in f"/{rel}"


def default_storage_url() -> str:
    """$ODBENCH_STORAGE_URL, else a folder under the user's cache directory."""
    if url := os.environ.get(DEFAULT_STORAGE_ENV):
        return url
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "odbench")


@dataclass
class Storage:
    """An fsspec filesystem plus a root path; paths given to its methods are relative to the root.

    `options` are fsspec storage options (endpoint, region, ...); `secret_options` are the ones that are
    credentials (key, secret, token, ...): merged over `options` for fsspec, kept out of reprs, and
    scrubbed from the errors this class raises."""

    url: str = field(default_factory=default_storage_url)
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    secret_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or self.url.strip() in ("", "file://", "local://"):
            raise ValueError(
                f"storage_url {self.url!r} is empty: pass a folder or fsspec URL (for example ~/.cache/odbench "
                f"or s3://bucket/odbench), or leave it unset for ${DEFAULT_STORAGE_ENV} or the default folder"
            )
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options, **self.secret_options)
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def protocols(self) -> tuple[str, ...]:
        """The filesystem's protocol names (fsspec gives one or several)."""
        protocol = self.fs.protocol
        return tuple(protocol) if isinstance(protocol, (tuple, list)) else (protocol,)

    @property
    def is_object_store(self) -> bool:
        """An object store (S3, GCS, Azure Blob): one PUT is atomic, a request costs a round trip."""
        return bool(OBJECT_STORE_PROTOCOLS.intersection(self.protocols))

    @property
    def endpoint(self) -> str:
        """The object store's endpoint, for messages: the configured one, else the protocol's default."""
        client_kwargs = self.options.get("client_kwargs") or {}
        configured = (self.options.get("endpoint_url") or client_kwargs.get("endpoint_url")
                      or getattr(self.fs, "endpoint_url", None))
        return str(configured) if configured else f"the default {self.uri().split(':', 1)[0]} endpoint"

    @property
    def bucket(self) -> str:
        """The bucket (container) of an object-store root."""
        return self.root.split("/", 1)[0]

    def path(self, rel: str) -> str:
        """The filesystem path of a relative path ("" is the root); a path that would leave the root is refused."""
        return f"{self.root}/{safe_rel(rel, 'storage path')}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        """A URL of a relative path, for people and for fsspec.open."""
        return self.fs.unstrip_protocol(self.path(rel))

    def local_path(self, rel: str) -> Path | None:
        """The local file path when storage is local; None on remote backends."""
        return Path(self.path(rel)) if self.is_local else None

    def check_access(self) -> None:
        """Fail fast when an object-store root cannot be used: one request for its bucket, once per
        process. A missing bucket or refused credentials raise StorageAccessError naming the endpoint and
        the bucket (never a credential); a local or in-memory root is not checked."""
        checked = (self.uri(), self.endpoint, _fingerprint(self.secret_options))
        if not self.is_object_store or checked in _checked:
            return
        try:
            self.fs.invalidate_cache(self.bucket)
            self.fs.info(self.bucket)
        except FileNotFoundError:
            raise self._access_error("the bucket does not exist (or is not visible to these credentials)",
                                     "create the bucket, or fix the storage block's url") from None
        except PermissionError as err:
            raise self._access_error(f"the credentials were refused ({err})",
                                     "fix the storage block's secret_options (key and secret, or token)") from None
        except OSError as err:
            raise self._access_error(f"the endpoint cannot be reached ({err})",
                                     "check the endpoint_url in the storage block's options") from None
        with _checked_lock:
            _checked.add(checked)

    def _access_error(self, problem: str, fix: str) -> StorageAccessError:
        return StorageAccessError(self.scrub(
            f"storage root {self.uri()} at {self.endpoint}, bucket {self.bucket!r}: {problem}; {fix}"))

    def scrub(self, text: str) -> str:
        """`text` with every secret option's value replaced by `***` (errors may echo a request)."""
        for value in _secret_values(self.secret_options):
            text = text.replace(value, "***")
        return text

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def missing(self, rels: Iterable[str]) -> list[str]:
        """Those of `rels` that storage does not hold (to check what a cached manifest promises): one fresh
        listing per folder, not a request per file (an object store answers a listing of 1000 names at once)."""
        by_folder: dict[str, list[str]] = {}
        for rel in rels:
            by_folder.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", []).append(rel)
        lost: list[str] = []
        for folder, wanted in by_folder.items():
            held = self._names_in(folder)
            lost += [rel for rel in wanted if self.path(rel) not in held]
        return lost

    def _names_in(self, folder: str) -> set[str]:
        """The paths of the files directly in `folder`, listed afresh (another machine may have changed it)."""
        path = self.path(folder)
        self.fs.invalidate_cache(path)
        try:
            listing = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        finally:
            self.fs.invalidate_cache(path)
        return {self.fs._strip_protocol(entry["name"]).rstrip("/") for entry in listing
                if entry.get("type") != "directory"}

    def open(self, rel: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(rel), mode)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """A file handle whose bytes replace `rel` only if the block exits without error: a hidden
        temporary moved into place, or on an object store a local temporary file uploaded once."""
        writer = self._upload_writer if self.is_object_store else self._move_writer
        with writer(self.path(rel)) as handle:
            yield handle

    @contextlib.contextmanager
    def _move_writer(self, final: str) -> Iterator[IO[bytes]]:
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.{name}.partial-{HOST}~{os.getpid()}~{uuid.uuid4().hex[:12]}"
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as handle:
                yield handle
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(tmp)
            raise

    @contextlib.contextmanager
    def _upload_writer(self, final: str) -> Iterator[IO[bytes]]:
        """Bytes spooled to a local temporary file, then one upload (nothing appears on failure)."""
        with tempfile.NamedTemporaryFile(prefix="odbench-upload-") as handle:
            yield handle
            handle.flush()
            self.fs.put_file(handle.name, final)

    def write_bytes(self, rel: str, data: bytes | memoryview, *more: bytes | memoryview) -> None:
        """`data` (then `more`, without joining them on a local root) under `rel`, atomically: on an object store a
        single PUT from memory."""
        if self.is_object_store:
            self.fs.pipe_file(self.path(rel), b"".join((data, *more)) if more else bytes(data))
            return
        with self.atomic_writer(rel) as handle:
            for part in (data, *more):
                handle.write(part)

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

    def remove_stale_temporaries(self, under: str, older_than_s: float = STALE_TEMPORARY_S) -> list[str]:
        """Remove the temporaries of interrupted writes below `under` (the rule: module docstring); a
        backend that gives no modification time keeps them. Returns what it removed."""
        try:
            found = self.fs.find(self.path(under), detail=True, withdirs=False)
        except (FileNotFoundError, NotImplementedError):
            return []
        prefix = f"{self.root}/"
        stale = [name[len(prefix):] for name, info in found.items()
                 if name.startswith(prefix) and _is_stale(name[len(prefix):], info, older_than_s)]
        for rel in stale:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(rel))
        if stale:
            log.info("removed %d temporary file(s) of interrupted writes under %s, e.g. %s", len(stale),
                     self.uri(under), stale[0])
        return stale


def _fingerprint(secret_options: dict[str, Any]) -> str:
    """An md5 of the credentials: tells two sets apart without keeping them in a process-wide set."""
    return hashlib.md5(json.dumps(secret_options, sort_keys=True, default=str).encode()).hexdigest()


def _secret_values(value: Any) -> Iterator[str]:
    """Every string of at least 4 characters inside a (nested) secret option value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _secret_values(item)
    elif isinstance(value, str) and len(value) >= 4:
        yield value


def _is_stale(rel: str, info: dict, older_than_s: float) -> bool:
    """A temporary unmodified for `older_than_s`, or for ORPHAN_TEMPORARY_S when its writer is gone."""
    modified = _modified(info)
    if not is_temporary(rel) or modified is None:
        return False
    idle = time.time() - modified
    return idle > older_than_s or (idle > min(ORPHAN_TEMPORARY_S, older_than_s) and writer_gone(rel))


def _modified(info: dict) -> float | None:
    """A listing entry's modification time in epoch seconds (local, S3, GCS, ...), or None."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None

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

Writes are atomic: data goes to a hidden temporary name and is moved into place only when complete,
so a file that exists under its final name is always whole.

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
import json
import logging
import os
import re
import socket
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
HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
_WRITER = re.compile(r"\.partial-(?P<host>[A-Za-z0-9.-]+)~(?P<pid>\d+)~")
log = logging.getLogger(__name__)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    return (name.startswith(".") and ".partial-" in name) or "/.staging/" in f"/{rel}"


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
        if not isinstance(self.url, str) or self.url.strip() in ("", "file://", "local://"):
            raise ValueError(
                f"storage_url {self.url!r} is empty: pass a folder or fsspec URL (for example ~/.cache/odbench "
                f"or s3://bucket/odbench), or leave it unset for ${DEFAULT_STORAGE_ENV} or the default folder"
            )
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """The filesystem path of a relative path ("" is the root); a path that would leave the root is refused."""
        return f"{self.root}/{safe_rel(rel, 'storage path')}" if rel else self.root

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

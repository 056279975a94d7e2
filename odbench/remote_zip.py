"""Chosen members of a zip archive at a URL, read without the rest of it: its central directory and each
member over Range requests (HTTP(S), S3, a local path: any fsspec URL that can seek).

A run over the first N images of COCO's 778 MB `val2017.zip` reads its central directory (a few hundred
kB) and N members of about 160 kB. The archive's md5 cannot be checked without all of its bytes, so each
member is checked instead against the CRC-32 its central directory lists, and the log says so; its md5
is then recorded in the manifest, as for any stored file. A server that ignores Range requests raises
RangeNotSupportedError, and the caller downloads the whole archive once (verified by md5).

Untrusted archives stay bounded: the central directory's size and member count (`Limits`
`max_zip_directory_bytes`, `max_archive_members`), each member's stored and inflated size (the caller's
limit, checked before reading), and names (`storage.safe_rel`). Members read are remembered in an index
next to where the whole archive would be stored (`<kind>/<archive md5>/<archive name>.members.json`), so
a later run over more images reads only the new members, and a run over the same ones reads nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.http import HTTPStreamFile

from odbench.fetch import (
    ChecksumMismatchError,
    StoredFile,
    VerificationError,
    content_path,
    first_that_works,
    http_filesystem,
    is_http,
    source_error,
    store_bytes,
)
from odbench.limits import LimitExceededError, Limits
from odbench.progress import LogProgress
from odbench.redact import redact_url
from odbench.retry import TransientError, retrying
from odbench.storage import Storage, UnsafePathError, safe_rel

log = logging.getLogger(__name__)
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, versions, flags, method, time, date, CRC, sizes, name/extra len
LOCAL_SIGNATURE = b"PK\x03\x04"
TAIL_BYTES = 64 << 10  # read first: the end record, the zip64 locator and a small central directory
SLACK = 1024  # a member's local header may carry more "extra" bytes than its central directory entry
_MD5 = re.compile(r"[0-9a-f]{32}")


class RangeNotSupportedError(OSError):
    """The server ignores Range requests: members cannot be read alone, the whole archive must come."""


class MemberCorruptError(VerificationError):
    """A member whose bytes do not match its central directory entry (CRC-32, size, header)."""


class BadArchiveError(VerificationError):
    """Bytes at the URL that are not a zip archive (or one this reader cannot take apart)."""


class RangeFile(io.RawIOBase):
    """A read-only, seekable remote file: each read is one Range request for exactly the bytes asked
    (`prefetch` aside), so what crosses the network is what the zip reader needs. Counts what it received."""

    def __init__(self, url: str, max_read: int):
        fs, path = (http_filesystem(), url) if is_http(url) else fsspec.core.url_to_fs(url)
        self._file = fs.open(path, "rb", block_size=1 << 20, cache_type="none")
        if isinstance(self._file, HTTPStreamFile) or not self._file.seekable():
            self._file.close()
            raise RangeNotSupportedError(f"{redact_url(url)} does not offer Range requests")
        self.url, self.size, self.max_read = url, int(self._file.size), max_read
        self.pos, self.window, self.received, self.requests = 0, (0, b""), 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end - self.pos > self.max_read and not self._buffered(self.pos, end):
            raise LimitExceededError("max_zip_directory_bytes", end - self.pos, self.max_read,
                                     f"a read from {redact_url(self.url)}")
        data = self.fetch(self.pos, end)
        self.pos += len(data)
        return data

    def prefetch(self, start: int, end: int) -> bytes:
        """Fetch [start, end) in one request and keep it for the reads that follow."""
        self.window = (0, b"")
        self.window = (start, self.fetch(start, min(end, self.size)))
        return self.window[1]

    def _buffered(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) from the prefetched window, if it holds them."""
        begin, buffered = self.window
        return buffered[start - begin:end - begin] if begin <= start and end <= begin + len(buffered) else None

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end): from the prefetched window, else in one Range request; a server that answers
        with the whole file instead raises RangeNotSupportedError, a short answer TransientError."""
        if end <= start:
            return b""
        if (held := self._buffered(start, end)) is not None:
            return held
        self._file.seek(start)
        try:
            data = self._file.read(end - start)
        except ValueError as err:
            if "range requests" in str(err):
                raise RangeNotSupportedError(f"{redact_url(self.url)} ignores Range requests") from None
            raise
        self.requests, self.received = self.requests + 1, self.received + len(data)
        if len(data) != end - start:
            raise TransientError(f"{redact_url(self.url)}: asked for bytes {start}-{end - 1}, got {len(data)}")
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


class RemoteZip:
    """A zip archive's central directory, read over Range requests, and its members read one at a time."""

    def __init__(self, url: str, expected_md5: str | None = None):
        limits = Limits.from_env()
        self.url, self.file = url, RangeFile(url, limits.max_zip_directory_bytes)
        try:
            tail = self.file.prefetch(max(0, self.file.size - TAIL_BYTES), self.file.size)
            self.whole = len(tail) == self.file.size  # a small archive: every byte is here, so its md5 is checked
            if self.whole and expected_md5 and (found := hashlib.md5(tail).hexdigest()) != expected_md5:
                raise ChecksumMismatchError(f"md5 mismatch for {redact_url(url)}: expected {expected_md5}, got "
                                            f"{found}; nothing was stored. Check the URL, or the md5 you passed.")
            with zipfile.ZipFile(self.file) as archive:
                self.infos = {info.filename: info for info in archive.infolist()}
        except zipfile.BadZipFile as err:
            self.file.close()
            raise BadArchiveError(f"{redact_url(url)} is not a zip archive: {err}") from None
        except BaseException:
            self.file.close()
            raise
        limits.check("max_archive_members", len(self.infos), redact_url(url))

    def __enter__(self) -> RemoteZip:
        return self

    def __exit__(self, *_) -> None:
        self.file.close()

    def read(self, member: str, limit: str) -> tuple[bytes, int]:
        """A member's bytes and CRC-32, checked against its central directory entry; `limit` (a `Limits`
        field) bounds its stored and inflated sizes before any of it is read."""
        info = self.infos.get(member)
        subject = f"member {member} of {redact_url(self.url)}"
        if info is None:
            raise FileNotFoundError(f"{redact_url(self.url)} lacks the member {member}")
        limits = Limits.from_env()
        limits.check(limit, max(info.file_size, info.compress_size), subject)
        if info.flag_bits & 0x1:
            raise BadArchiveError(f"{subject} is encrypted: refused")
        name_len = len(info.orig_filename.encode("utf-8"))
        start = info.header_offset
        blob = self.file.fetch(start, min(self.file.size, start + LOCAL_HEADER.size + name_len + len(info.extra)
                                          + info.compress_size + SLACK))
        data = _member_data(blob, info, subject, lambda more: self.file.fetch(start + len(blob), start + more))
        crc = zlib.crc32(data)
        if crc != info.CRC:
            raise MemberCorruptError(
                f"{subject}: CRC-32 {info.CRC:08x} in the central directory, {crc:08x} of the bytes received; "
                "nothing was stored. The server sent other bytes than its archive lists: try another mirror.")
        return data, crc


def _member_data(blob: bytes, info: zipfile.ZipInfo, subject: str, more) -> bytes:
    """The inflated data of a member from the bytes at its local header (fetching `more(end)` when the
    local header's extra field made them fall short)."""
    if len(blob) < LOCAL_HEADER.size:
        raise MemberCorruptError(f"{subject}: the archive ends inside its local header")
    signature, *_, name_len, extra_len = LOCAL_HEADER.unpack_from(blob)
    if signature != LOCAL_SIGNATURE:
        raise MemberCorruptError(f"{subject}: no local file header at offset {info.header_offset}")
    begin = LOCAL_HEADER.size + name_len + extra_len
    end = begin + info.compress_size
    if end > len(blob):
        blob += more(end)
    raw = blob[begin:end]
    if info.compress_type == zipfile.ZIP_STORED:
        data = raw
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompressobj(-15).decompress(raw, info.file_size + 1)
        except zlib.error as err:
            raise MemberCorruptError(f"{subject}: does not inflate ({err})") from None
    else:
        raise BadArchiveError(f"{subject}: compression method {info.compress_type} is not supported "
                              "(stored and deflate are)")
    if len(data) != info.file_size:
        raise MemberCorruptError(f"{subject}: {len(data)} bytes, its central directory says {info.file_size}")
    return data


@dataclass
class MemberIndex:
    """Members of one archive already in storage: member name -> (stored path, md5, size, CRC-32).
    Read from shared storage, so every entry is checked (md5 form, confined names) and bad ones dropped."""

    rel: str
    entries: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, storage: Storage, kind: str, archive_md5: str, archive_name: str) -> MemberIndex:
        rel = content_path(kind, archive_md5, f"{archive_name}.members.json")
        try:
            raw = json.loads(storage.read_bytes(rel)) if storage.exists(rel) else {}
        except (OSError, ValueError):
            log.warning("ignoring the unreadable member index %s", rel)
            raw = {}
        index = cls(rel)
        for member, entry in (raw.get("members", {}) if isinstance(raw, dict) else {}).items():
            if index._valid(member, entry):
                index.entries[member] = entry
        return index

    @staticmethod
    def _valid(member: str, entry: object) -> bool:
        try:
            safe_rel(member, "indexed member")
            safe_rel(entry["rel"], "indexed path")
            return bool(_MD5.fullmatch(entry["md5"])) and isinstance(entry["size"], int)
        except (UnsafePathError, KeyError, TypeError):
            return False

    def stored(self, member: str, storage: Storage) -> StoredFile | None:
        """The stored file of a member read earlier, if storage still holds it."""
        entry = self.entries.get(member)
        if entry and storage.exists(entry["rel"]):
            return StoredFile(entry["rel"], entry["md5"], entry["size"])
        return None

    def add(self, member: str, stored: StoredFile, crc: int) -> None:
        self.entries[member] = {"rel": stored.rel, "md5": stored.md5, "size": stored.size, "crc": crc}

    def save(self, storage: Storage) -> None:
        storage.write_json(self.rel, {"members": self.entries})


def fetch_members(urls: tuple[str, ...], archive_md5: str, archive_name: str, members: dict[str, str],
                  storage: Storage, limit: str, kind: str = "sources",
                  progress: LogProgress | None = None) -> dict[str, StoredFile]:
    """The archive's `members` (member name -> name to store it under) in storage, content-addressed.
    Members stored by an earlier run are reused; the rest are read over Range from the first URL that
    answers (RangeNotSupportedError when a server ignores Range: the caller takes the whole archive)."""
    for member, name in members.items():
        safe_rel(member, f"archive member of {archive_name}:")
        safe_rel(name, "file name")
    index = MemberIndex.load(storage, kind, archive_md5, archive_name)
    found = {m: stored for m in members if (stored := index.stored(m, storage))}
    wanted = {m: name for m, name in members.items() if m not in found}
    if wanted:
        log.info("%s: %d of %d members already stored; reading %d", archive_name, len(found), len(members),
                 len(wanted))
        reader = _MemberReader(storage, kind, limit, index, wanted, archive_md5, progress)
        found.update(first_that_works(urls, reader.read_from, archive_name))
    return {m: found[m] for m in members}


@dataclass
class _MemberReader:
    """Reads the wanted members from one URL into storage, recording each in the index as it lands."""

    storage: Storage
    kind: str
    limit: str
    index: MemberIndex
    wanted: dict[str, str]
    archive_md5: str
    progress: LogProgress | None

    def read_from(self, url: str) -> dict[str, StoredFile]:
        shown = redact_url(url)
        try:
            archive = retrying(lambda: RemoteZip(url, self.archive_md5), f"central directory of {shown}", logger=log)
        except (OSError, ValueError) as err:
            if isinstance(err, (RangeNotSupportedError, VerificationError, LimitExceededError)):
                raise
            raise source_error(url, err) from None
        with archive:
            if archive.whole:
                log.info("%s: small enough to read whole (%d bytes), md5 checked", shown, archive.file.size)
            else:
                log.info("%s: reading %d of its %d members over Range requests. The archive's md5 is not "
                         "checked: that would take all %.1f MiB of it; each member is checked against the CRC-32 "
                         "of its central directory instead", shown, len(self.wanted), len(archive.infos),
                         archive.file.size / (1 << 20))
            try:
                return self._read_all(archive, shown)
            finally:
                if self.index.entries:
                    self.index.save(self.storage)
                log.info("%s: received %.2f MiB in %d requests, %.2f%% of the archive", shown,
                         archive.file.received / (1 << 20), archive.file.requests,
                         100.0 * archive.file.received / max(archive.file.size, 1))

    def _read_all(self, archive: RemoteZip, shown: str) -> dict[str, StoredFile]:
        stored = {}
        for done, (member, name) in enumerate(self.wanted.items(), 1):
            try:
                data, crc = retrying(lambda: archive.read(member, self.limit), f"member {member} of {shown}",
                                     logger=log)
            except (OSError, ValueError) as err:
                if isinstance(err, (VerificationError, LimitExceededError, RangeNotSupportedError, FileNotFoundError)):
                    raise
                raise source_error(archive.url, err) from None
            stored[member] = store_bytes(data, self.storage, self.kind, name)
            self.index.add(member, stored[member], crc)
            if self.progress:
                self.progress(done, len(self.wanted))
        return stored

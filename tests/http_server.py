"""A loopback HTTP server for source tests: serves a folder's files, counts the body bytes it sends, and
can refuse Range requests, honour them, drop the connection part-way, fail transiently (503), or serve
wrong bytes. Real sockets in a thread: the client under test is the real fsspec/aiohttp stack."""

from __future__ import annotations

import email.utils
import http.server
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
CORRUPT_EVERY = 4096  # wrong bytes: one byte in this many is flipped ...
CORRUPT_SPARE_TAIL = 256 << 10  # ... except in the last bytes of a file (so a zip's directory stays readable)


@dataclass
class Behaviour:
    """What the server does; tests change it between requests."""

    ranges: bool = True  # honour Range (206); False: ignore it and send the whole file (200)
    drops: int = 0  # how many of the next bodies are cut off after `drop_after` bytes
    drop_after: int = 0
    failures: int = 0  # how many of the next requests are answered 503
    corrupt: str = ""  # flip bytes in the bodies of files whose path ends with this ("": none)


@dataclass
class Counters:
    sent: int = 0  # body bytes written to clients
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.sent, self.requests = 0, []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        srv, rng = self.server, self.headers.get("Range", "")
        with srv.counters.lock:
            srv.counters.requests.append((self.command, self.path, rng))
            failing = srv.behaviour.failures > 0
            srv.behaviour.failures -= failing
        path = srv.root / self.path.split("?", 1)[0].lstrip("/")
        if failing:
            return self._status(503)
        if not path.is_file() or srv.root not in path.resolve().parents:
            return self._status(404)
        size = path.stat().st_size
        start, end, status = 0, size, 200
        match = RANGE.match(rng)
        if match and srv.behaviour.ranges:
            start, status = int(match[1]), 206
            end = min(size, int(match[2]) + 1) if match[2] else size
            if start >= size:
                return self._status(416)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        if srv.behaviour.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if body:
            self._send_body(path, start, end, size)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, path: Path, start: int, end: int, size: int) -> None:
        srv = self.server
        with srv.counters.lock:
            dropping = srv.behaviour.drops > 0
            srv.behaviour.drops -= dropping
        stop = min(end, start + srv.behaviour.drop_after) if dropping else end
        with open(path, "rb") as handle:
            handle.seek(start)
            position = start
            while position < stop:
                chunk = handle.read(min(1 << 16, stop - position))
                if srv.behaviour.corrupt and path.name.endswith(srv.behaviour.corrupt):
                    chunk = _corrupted(chunk, position, size)
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                position += len(chunk)
                with srv.counters.lock:
                    srv.counters.sent += len(chunk)
        if dropping:
            self.close_connection = True
            self.connection.shutdown(2)


def _corrupted(chunk: bytes, offset: int, size: int) -> bytes:
    """`chunk` (at `offset` of a file of `size` bytes) with one byte in CORRUPT_EVERY flipped."""
    data = bytearray(chunk)
    for i in range(len(data)):
        if (offset + i) % CORRUPT_EVERY == 0 and offset + i < size - CORRUPT_SPARE_TAIL:
            data[i] ^= 0xFF
    return bytes(data)


class LoopbackServer(http.server.ThreadingHTTPServer):
    """`LoopbackServer(folder)`: serves it on 127.0.0.1 until `close()`; `url`, `behaviour`, `counters`."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.behaviour, self.counters = Path(os.path.realpath(root)), Behaviour(), Counters()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

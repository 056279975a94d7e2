"""Sample loading (LoadGen's untimed load step) from local storage and from an object store on loopback.

    .venv/bin/python benchmarks/sample_loading.py [--images 80] [--repeats 3] [--resolutions 1200 800] [--uint8]
                                                  [--no-cold] [--data DIR] [--tmp DIR]

The first `--images` images of the real mini set (../shared/data/coco2017-val-mini) are ingested into a
temporary local storage root and preprocessed there (float32, the default resize dtype; uint8 too with
--uint8); the sample files are then copied byte for byte into a bucket of an S3 server on loopback (moto's
`moto_server`, started as tests/s3_server.py starts it: authentication on, real s3fs and aiobotocore). The
source images are not copied, so a sample that failed verification could not be recomputed there unnoticed;
any warning from the loader stops the benchmark.

Timed per sample, one after the other as `SampleLibrary.load_samples` did before it loaded on several threads:
`load_sample` (read + header and sha256 check + decode into an array) then `to_model_input` (/255, mean/std, NCHW),
exactly the benchmark's `load` (odbench/benchmark.py `_bench`). Storage: the local root with the files in the page
cache (just written), the same root with each file's pages dropped first (posix_fadvise DONTNEED after an fsync:
what a read from the local disk costs; --no-cold leaves it out), and the S3 bucket. The storages take turns within
each repeat; the best repeat (highest samples/s) of each is kept.

Prints two tables: samples/s, MB/s (sample-file bytes), ms per sample p50 and p90, the read alone (the storage's
`read_bytes` inside `load_sample`) p50, the ratio to the local (page cache) samples/s, and, from /proc, the cores
the S3 server used and those the machine's other processes used during the pass (the server shares this
machine's cores; a pass that saw other processes well above 0 measured them too). The second table times the
QSL's load step itself, `SampleLibrary.load_samples` over every sample, on 1 thread and on LOAD_WORKERS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mini_set  # noqa: E402  (benchmarks/, this script's folder)

sys.path.append(str(ROOT / "tests"))  # the loopback S3 server the tests use

from s3_server import S3Server  # noqa: E402

from odbench.dataset import DatasetManifest, FolderSource, ingest  # noqa: E402
from odbench.models import get_spec  # noqa: E402
from odbench.preprocess import load_sample, preprocess, preprocessed_files, to_model_input  # noqa: E402
from odbench.storage import Storage  # noqa: E402
from odbench.sut import LOAD_WORKERS, SampleLibrary  # noqa: E402

MODEL_AT = {1200: "ssd_resnet34", 800: "retinanet_coco"}  # the model whose normalization each resolution gets
BUCKET = "odbench-loading"


class _FailOnWarning(logging.Handler):
    """A loader warning means a sample was missing or corrupt and recomputed: not a load to time."""

    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError(f"the loader warned: {record.getMessage()}")


@dataclass(frozen=True)
class Pass:
    """One pass over every sample of one storage: per-sample seconds, total and read alone."""

    totals: tuple[float, ...]
    reads: tuple[float, ...]
    wall_s: float
    server_cores: float = 0.0  # the S3 server's CPU during the pass, in cores
    others_cores: float = 0.0  # the rest of the machine's (neither this process nor the server), in cores

    @property
    def rate(self) -> float:
        return len(self.totals) / self.wall_s


class TimedReads:
    """Wraps a storage's `read_bytes` to time each read (load_sample calls it once per sample)."""

    def __init__(self, storage: Storage):
        self.storage, self.inner, self.last = storage, storage.read_bytes, 0.0
        storage.read_bytes = self  # type: ignore[method-assign]

    def __call__(self, rel: str) -> bytes:
        start = time.perf_counter()
        data = self.inner(rel)
        self.last = time.perf_counter() - start
        return data


def drop_page_cache(storage: Storage, rels: list[str]) -> None:
    """Evict the files' pages from the page cache (only this benchmark's files; nothing else is touched)."""
    for rel in rels:
        fd = os.open(storage.path(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _busy_s() -> float:
    """CPU seconds all processors spent busy since boot (user, nice, system, irq, softirq), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _process_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process `pid` from /proc; 0 where unknown."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def one_pass(storage: Storage, reads: TimedReads, manifest: DatasetManifest, resolution: int, dtype: str,
             cold: bool, server_pid: int) -> Pass:
    spec = get_spec(MODEL_AT[resolution])
    if cold:
        drop_page_cache(storage, list(preprocessed_files(manifest, resolution, resize_dtype=dtype)))
    totals, read_s = [], []
    cpu0, server0, busy0 = _process_s(), _process_s(server_pid), _busy_s()
    start = time.perf_counter()
    for image in manifest.images:
        t0 = time.perf_counter()
        to_model_input(load_sample(storage, image, resolution, resize_dtype=dtype), spec)
        totals.append(time.perf_counter() - t0)
        read_s.append(reads.last)
    wall = time.perf_counter() - start
    cpu, server = _process_s() - cpu0, _process_s(server_pid) - server0
    return Pass(tuple(totals), tuple(read_s), wall, server / wall, max(0.0, _busy_s() - busy0 - cpu - server) / wall)


def qsl_rate(storage: Storage, manifest: DatasetManifest, resolution: int, dtype: str, workers: int) -> float:
    """Samples/s of the QSL's load step (`SampleLibrary.load_samples` over every sample) on `workers` threads."""
    spec = get_spec(MODEL_AT[resolution])
    library = SampleLibrary(manifest.size, lambda i: to_model_input(
        load_sample(storage, manifest.images[i], resolution, resize_dtype=dtype), spec), workers)
    start = time.perf_counter()
    library.load_samples(range(manifest.size))
    wall = time.perf_counter() - start
    if library.errors:
        raise library.errors[0]
    return manifest.size / wall


def qsl_table(storages: list[tuple[str, Storage, bool]], manifest: DatasetManifest, resolutions: list[int],
              dtypes: list[str], repeats: int) -> list[str]:
    """The QSL's load step on 1 and LOAD_WORKERS threads, each storage warm (no dropped pages), best of repeats."""
    lines = [f"\n### The QSL's load step: all {manifest.size} samples on 1 thread and on {LOAD_WORKERS} "
             "(SampleLibrary.load_samples), best of the repeats\n",
             "| res | dtype | storage | 1 thread samples/s | " + f"{LOAD_WORKERS} threads samples/s | speed-up |",
             "|---|---|---|---|---|---|"]
    for res in resolutions:
        for dtype in dtypes:
            for name, storage, cold in storages:
                if cold:
                    continue
                one, many = (max(qsl_rate(storage, manifest, res, dtype, w) for _ in range(repeats))
                             for w in (1, LOAD_WORKERS))
                lines.append(f"| {res} | {dtype} | {name} | {one:.1f} | {many:.1f} | {many / one:.2f}× |")
    return lines


def environment(images: int) -> str:
    import s3fs

    return (f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.node()}, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
            f"opencv {cv2.__version__}, numpy {np.__version__}, s3fs {s3fs.__version__}, {images} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mini_set.add_arguments(parser)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1200, 800], choices=sorted(MODEL_AT))
    parser.add_argument("--uint8", action="store_true", help="measure uint8 samples too")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="leave out the dropped-page-cache row")
    parser.add_argument("--repeats", type=int, default=3, help="passes over each storage; the best is kept")
    args = mini_set.parse(parser)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("odbench.preprocess").addHandler(_FailOnWarning())
    dtypes = ["float32", *(["uint8"] if args.uint8 else [])]
    load_before = os.getloadavg()
    print(environment(args.images))
    rows = []
    with tempfile.TemporaryDirectory(prefix="odbench-loading-", dir=args.tmp) as tmp:
        server = S3Server(Path(tmp) / "moto.log").start()
        try:
            server.client().create_bucket(Bucket=BUCKET)
            local = Storage(str(Path(tmp) / "storage"))
            remote = Storage(f"s3://{BUCKET}/bench", options={"endpoint_url": server.endpoint},
                             secret_options={"key": server.key, "secret": server.secret})
            remote.check_access()
            manifest = ingest(FolderSource(str(args.data)), args.images, local)
            for res in args.resolutions:
                for dtype in dtypes:
                    preprocess(manifest, res, local, workers=os.cpu_count() or 1, resize_dtype=dtype)
                    for rel in preprocessed_files(manifest, res, resize_dtype=dtype):  # byte for byte
                        remote.write_bytes(rel, local.read_bytes(rel))
            storages = [("local (page cache)", local, False), ("S3 on loopback", remote, False)]
            if args.cold:
                storages.insert(1, ("local (pages dropped)", local, True))
            timed = {id(s): TimedReads(s) for s in (local, remote)}
            for res in args.resolutions:
                for dtype in dtypes:
                    size = sum(local.fs.size(local.path(rel))
                               for rel in preprocessed_files(manifest, res, resize_dtype=dtype))
                    for _, storage, cold in storages:  # untimed warm-up: connections, first allocations
                        load_sample(storage, manifest.images[0], res, resize_dtype=dtype)
                    best: dict[str, Pass] = {}
                    for _ in range(args.repeats):
                        for name, storage, cold in storages:
                            p = one_pass(storage, timed[id(storage)], manifest, res, dtype, cold, server.process.pid)
                            if name not in best or p.rate > best[name].rate:
                                best[name] = p
                    rows.append((res, dtype, size / manifest.size, best))
            qsl = qsl_table(storages, manifest, args.resolutions, dtypes, args.repeats)
        finally:
            server.stop()
    print_table(rows, manifest.size, load_before)
    print("\n".join(qsl))


def print_table(rows: list, images: int, load_before: tuple[float, ...]) -> None:
    load_after = os.getloadavg()
    print(f"\n### Sample loading: local vs object store ({images} samples per pass, one at a time, best of the "
          f"repeats; load average 1/5/15 min before {'/'.join(f'{v:.2f}' for v in load_before)}, "
          f"after {'/'.join(f'{v:.2f}' for v in load_after)})\n")
    print("| res | dtype | MB per sample | storage | samples/s | MB/s | ms per sample p50 | p90 | read alone p50 ms | "
          "samples/s vs local (page cache) | cores busy: S3 server | other processes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for res, dtype, size, best in rows:
        base = best["local (page cache)"].rate
        for name, p in best.items():
            p50, p90 = np.percentile(p.totals, [50, 90]) * 1e3
            print(f"| {res} | {dtype} | {size / 1e6:.2f} | {name} | {p.rate:.1f} | {p.rate * size / 1e6:.0f} | "
                  f"{p50:.1f} | {p90:.1f} | {np.percentile(p.reads, 50) * 1e3:.1f} | {p.rate / base:.2f}× | "
                  f"{p.server_cores:.2f} | {p.others_cores:.2f} |")


if __name__ == "__main__":
    main()

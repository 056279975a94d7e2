"""Preprocessing throughput per core on real images, and how it scales with workers.

    .venv/bin/python benchmarks/preprocess_scaling.py [--workers 1 2] [--repeats 3] [--images 80] [--uint8]
                                                      [--data DIR] [--tmp DIR]

The real mini set (80 COCO val2017 images, ../shared/data/coco2017-val-mini) is ingested once into a temporary
local storage root; then, for each resolution (1200 px: ssd_resnet34, 800 px: retinanet_coco), each OpenCV
thread setting (its default, and 1) and each worker count (default 1, 2, ... up to os.cpu_count()), all images
are preprocessed end to end by `odbench.preprocess.preprocess` (read + md5 check, decode, resize, header and
sha256, atomic write) into an empty folder, so nothing is skipped; the folder is removed after each run. The
configurations take turns within each repeat and the best of `--repeats` is kept for each, so that load from
other processes spreads over all of them. float32 (the default resize dtype) always; uint8 too with --uint8.

Prints one table. Per row: images/s; images/s per worker; the speed-up against 1 worker at the same resolution,
dtype and OpenCV setting (issue 9's target: at least 1.8x with 2 workers); the CPU time the process spent per
image and what that gives per fully busy core (images per CPU-second: the honest per-core number, whatever the
threads); how many cores the benchmark kept busy; and, from /proc/stat, how many cores the machine's other
processes used during the run and the steal time of a virtual machine, since both take the same cores: a row
whose run saw them well above 0 measured the neighbours too. The header line has os.getloadavg().
Rows "N processes" split the images over N processes (one worker each) instead of N threads: not what odbench
does, a check on whether the GIL or one process's memory management holds the threads back (--no-processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mini_set  # noqa: E402  (benchmarks/, this script's folder)

from odbench.dataset import DatasetManifest, FolderSource, ingest  # noqa: E402
from odbench.preprocess import RESIZE_DTYPES, preprocess, preprocessed_dir  # noqa: E402
from odbench.storage import Storage  # noqa: E402

RESOLUTIONS = (1200, 800)  # ssd_resnet34, retinanet_coco
TARGET_SPEEDUP_2 = 1.8  # issue 9: preprocessing at least 1.8x faster on 2 workers than on 1
CV2_DEFAULT_THREADS = cv2.getNumThreads()


@dataclass(frozen=True)
class Config:
    resolution: int
    resize_dtype: str
    cv2_threads: int  # 0: OpenCV's default
    workers: int
    processes: bool = False  # the images split over `workers` processes of one worker each (not what odbench does)


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # user + system time of this process (all its threads)
    others_cores: float  # cores the rest of the machine kept busy meanwhile
    steal_cores: float  # cores' worth of time the hypervisor gave to other guests (a VM's steal time)


def _busy_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot, from /proc/stat; (0, 0) where there is none. Busy is
    user + nice + system + irq + softirq (not idle, iowait or steal)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    fields += [0] * (8 - len(fields))
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6], fields[7]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _share(manifest: DatasetManifest, root: str, config: Config) -> tuple[int, float]:
    """In a pool process: one worker preprocesses `manifest`; (images written, CPU seconds this took)."""
    cv2.setNumThreads(config.cv2_threads or CV2_DEFAULT_THREADS)
    cpu0 = _cpu_s()
    done = preprocess(manifest, config.resolution, Storage(root), workers=1, resize_dtype=config.resize_dtype,
                      opencv=config.cv2_threads or CV2_DEFAULT_THREADS)
    return done.created, _cpu_s() - cpu0


def run_once(manifest: DatasetManifest, storage: Storage, config: Config, pool: ProcessPoolExecutor | None) -> Timing:
    """Preprocess every image into an empty folder with `config`; the folder is removed afterwards."""
    cv2.setNumThreads(config.cv2_threads or CV2_DEFAULT_THREADS)
    folder = preprocessed_dir(config.resolution, resize_dtype="uint8")  # holds both dtypes
    shutil.rmtree(storage.path(folder), ignore_errors=True)
    (busy0, steal0), cpu0, start = _busy_jiffies(), _cpu_s(), time.perf_counter()
    if config.processes:
        shares = [dataclasses.replace(manifest, images=manifest.images[k::config.workers])
                  for k in range(config.workers)]
        results = list(pool.map(_share, shares, [storage.url] * config.workers, [config] * config.workers))
        created, child_cpu = sum(n for n, _ in results), sum(c for _, c in results)
    else:
        done = preprocess(manifest, config.resolution, storage, workers=config.workers,
                          resize_dtype=config.resize_dtype, opencv=config.cv2_threads or CV2_DEFAULT_THREADS)
        created, child_cpu = done.created, 0.0
    wall, cpu, (busy1, steal1) = time.perf_counter() - start, _cpu_s() - cpu0 + child_cpu, _busy_jiffies()
    if created != manifest.size:
        raise RuntimeError(f"{config}: {created} of {manifest.size} images preprocessed (some were skipped)")
    shutil.rmtree(storage.path(folder), ignore_errors=True)  # before writeback: the next run's disk stays idle
    cv2.setNumThreads(CV2_DEFAULT_THREADS)
    hz = os.sysconf("SC_CLK_TCK")
    return Timing(wall, cpu, max(0.0, (busy1 - busy0) / hz - cpu) / wall, (steal1 - steal0) / hz / wall)


def measure(manifest: DatasetManifest, storage: Storage, configs: list[Config], repeats: int) -> dict[Config, Timing]:
    """The best (shortest wall time) of `repeats` runs of each config, configs taking turns within a repeat,
    after one untimed run."""
    processes = max([c.workers for c in configs if c.processes], default=0)
    pool = ProcessPoolExecutor(processes, multiprocessing.get_context("spawn")) if processes else None
    try:
        for config in (configs[0], *([c for c in configs if c.processes][:1])):  # untimed warm-up: sources
            run_once(manifest, storage, config, pool)  # in the page cache, OpenCV's and the pool's workers started
        best: dict[Config, Timing] = {}
        for _ in range(repeats):
            for config in configs:
                timing = run_once(manifest, storage, config, pool)
                if config not in best or timing.wall_s < best[config].wall_s:
                    best[config] = timing
        return best
    finally:
        if pool:
            pool.shutdown()


def environment(images: int) -> str:
    return (f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.node()}, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
            f"opencv {cv2.__version__} (default threads {CV2_DEFAULT_THREADS}), numpy {np.__version__}, "
            f"{images} images")


def print_table(best: dict[Config, Timing], images: int, load_before: tuple[float, ...]) -> None:
    load_after = os.getloadavg()
    print(f"\n### Preprocessing throughput per core ({images} real images, best of the repeats; "
          f"load average 1/5/15 min before {'/'.join(f'{v:.2f}' for v in load_before)}, "
          f"after {'/'.join(f'{v:.2f}' for v in load_after)})\n")
    print("| res | dtype | OpenCV threads | workers | images/s | images/s per worker | speed-up vs 1 worker | "
          "CPU ms per image | images per CPU-second | cores busy: this benchmark | other processes | steal | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for config, t in best.items():
        base = best.get(Config(config.resolution, config.resize_dtype, config.cv2_threads, 1))  # threads, 1 worker
        rate = images / t.wall_s
        speedup = base.wall_s / t.wall_s if base else float("nan")
        target = ""
        if config.workers == 2 and base:
            target = f"≥ {TARGET_SPEEDUP_2}×: {'yes' if speedup >= TARGET_SPEEDUP_2 else 'NO'}"
        threads = f"default ({CV2_DEFAULT_THREADS})" if config.cv2_threads == 0 else str(config.cv2_threads)
        workers = f"{config.workers} processes" if config.processes else f"{config.workers}"
        print(f"| {config.resolution} | {config.resize_dtype} | {threads} | {workers} | {rate:.1f} | "
              f"{rate / config.workers:.1f} | {speedup:.2f}× | {t.cpu_s / images * 1e3:.1f} | "
              f"{images / t.cpu_s:.1f} | {t.cpu_s / t.wall_s:.2f} | {t.others_cores:.2f} | {t.steal_cores:.2f} | "
              f"{target} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mini_set.add_arguments(parser)
    parser.add_argument("--workers", type=int, nargs="+",
                        help="worker counts (default: 1, 2, 4, ... and os.cpu_count())")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--cv2-threads", type=int, nargs="+", default=[0, 1],
                        help="OpenCV thread settings to compare; 0 is OpenCV's default (default: 0 1)")
    parser.add_argument("--uint8", action="store_true", help="measure the uint8 resize dtype too")
    parser.add_argument("--no-processes", dest="processes", action="store_false",
                        help="leave out the rows that split the images over processes instead of threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the best is kept")
    args = mini_set.parse(parser)
    cores = os.cpu_count() or 1
    workers = args.workers or sorted({1, cores, *(2 ** k for k in range(1, cores.bit_length()) if 2 ** k <= cores)})
    dtypes = [d for d in ("float32", "uint8") if d in RESIZE_DTYPES and (d == "float32" or args.uint8)]
    configs = [Config(res, dtype, threads, n, processes) for res in args.resolutions for dtype in dtypes
               for threads in args.cv2_threads for processes in (False, True) for n in workers
               if not processes or (args.processes and n > 1)]
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()
    print(environment(args.images))
    with tempfile.TemporaryDirectory(prefix="odbench-scaling-", dir=args.tmp) as tmp:
        storage = Storage(tmp)
        manifest = ingest(FolderSource(str(args.data)), args.images, storage)
        best = measure(manifest, storage, configs, args.repeats)
    print_table(best, manifest.size, load_before)


if __name__ == "__main__":
    main()

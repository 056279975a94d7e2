"""Preprocessing throughput on Dask (the `preprocess-dask` flow) against the threaded `preprocess`, per worker count.

    .venv/bin/python benchmarks/preprocess_dask.py [--workers 1 2 4] [--repeats 3] [--images 80]
                                                   [--model ssd_resnet34] [--uint8] [--chunk N] [--data DIR]

The real mini set (80 COCO val2017 images, ../shared/data/coco2017-val-mini) is ingested once into a temporary
storage root (outside the project; removed at the end). For each worker count N (default 1 and 2):
- dask: a Dask LocalCluster of N worker processes with one thread each is started once; the `preprocess-dask`
  flow (flows/preprocess_dask.py) runs against its address on a temporary Prefect server, one Prefect task per
  chunk of images. Its rate is images over the seconds from the first task's start to the last task's end (the
  flow's own figure): the cluster's start is left out, Prefect's per-task overhead is in. The flow run's whole
  wall time (ingest check, subflow, task runs, results) is shown too.
  Its workers start with the flow's LOCAL_WORKER_ENVIRON (what its own temporary LocalCluster gets: no
  MALLOC_TRIM_THRESHOLD_, glibc's defaults).
- dask-malloc-default: the same, on workers with Dask's default MALLOC_TRIM_THRESHOLD_=65536 (--no-malloc-default:
  left out), to show what that setting costs (flows/preprocess_dask.py says why).
- threads: `odbench.preprocess.preprocess(..., workers=N)` in this process, timed whole.
Every run writes all images into an empty folder (removed after each run); one untimed run of each
configuration first (the workers' imports, the page cache), then the configurations take turns within each
of `--repeats` repeats and the best is kept. Both engines run OpenCV with 1 thread of its own (odbench's
`opencv_threads(1)`): the workers are the parallelism.
"workers busy in task bodies" (dask): the time inside the tasks' bodies over workers x the timed seconds; the
rest is Prefect's and Dask's work between tasks (task-run records and states over the API, scheduling).
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported; the workers inherit it
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import mini_set  # noqa: E402  (benchmarks/, this script's folder)
from distributed import Client, LocalCluster  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from flows.preprocess_dask import local_worker_environ, preprocess_dask  # noqa: E402
from flows.temporary_server import start_temporary_server  # noqa: E402
from odbench.dataset import DatasetManifest, FolderSource, ingest  # noqa: E402
from odbench.models import get_spec  # noqa: E402
from odbench.preprocess import preprocess, preprocessed_dir  # noqa: E402
from odbench.storage import Storage  # noqa: E402


@dataclass(frozen=True)
class Config:
    engine: str  # "dask", "dask-malloc-default" or "threads"
    workers: int


@dataclass(frozen=True)
class Timing:
    seconds: float  # what the rate is computed from
    flow_seconds: float | None = None  # dask: the whole flow run
    task_seconds: float | None = None  # dask: the time inside the tasks' bodies, all workers together


class Bench:
    def __init__(self, args: argparse.Namespace, storage: Storage, manifest: DatasetManifest,
                 clusters: dict[tuple[str, int], LocalCluster]):
        self.args, self.storage, self.manifest, self.clusters = args, storage, manifest, clusters
        self.resolution = get_spec(args.model).resolution

    def run(self, config: Config) -> Timing:
        """All images into an empty folder with `config`; the folder is removed afterwards."""
        folder = self.storage.path(preprocessed_dir(self.resolution, resize_dtype="uint8"))  # holds both dtypes
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        if config.engine != "threads":
            out = preprocess_dask(dataset_url=str(self.args.data), loadgen_dataset_size=self.args.images,
                                  model_name=self.args.model, preprocess_resize_dtype=self.args.dtype,
                                  address=self.clusters[config.engine, config.workers].scheduler_address,
                                  chunk=self.args.chunk,
                                  storage_url=self.storage.url)
            created = out["created"]
            timing = Timing(out["seconds"], time.perf_counter() - start, out["task_seconds"])
        else:
            done = preprocess(self.manifest, self.resolution, self.storage, workers=config.workers,
                              resize_dtype=self.args.dtype)
            created, timing = done.created, Timing(time.perf_counter() - start)
        if created != self.manifest.size:
            raise RuntimeError(f"{config}: {created} of {self.manifest.size} images preprocessed (some skipped)")
        shutil.rmtree(folder, ignore_errors=True)
        return timing

    def measure(self, configs: list[Config]) -> dict[Config, Timing]:
        for config in configs:  # untimed
            self.run(config)
        best: dict[Config, Timing] = {}
        for _ in range(self.args.repeats):
            for config in configs:
                timing = self.run(config)
                if config not in best or timing.seconds < best[config].seconds:
                    best[config] = timing
        return best


def _worker_malloc() -> str:
    """On a worker: its MALLOC_TRIM_THRESHOLD_ (a function, so that the worker's own os.environ is read)."""
    return os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")


def environment(args: argparse.Namespace, workers: dict[str, set]) -> str:
    return (f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.node()}, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), load average {os.getloadavg()[0]:.2f}, Python "
            f"{platform.python_version()}, opencv {cv2.__version__} (threads: this process "
            f"{cv2.getNumThreads()}, Dask workers {sorted(workers['cv2 threads'])}; both set 1 while preprocessing), "
            f"Dask workers' "
            f"MALLOC_TRIM_THRESHOLD_ {sorted(workers['malloc'])}, {args.images} images, "
            f"{args.model} ({get_spec(args.model).resolution} px) {args.dtype}")


def print_table(best: dict[Config, Timing], images: int) -> None:
    print("\n| workers | engine | images/s | per worker | speed-up vs 1 | workers busy in task bodies | "
          "flow run s (whole) |")
    print("|---|---|---|---|---|---|---|")
    for config, t in sorted(best.items(), key=lambda item: (item[0].workers, item[0].engine)):
        base = best.get(Config(config.engine, 1))
        rate = images / t.seconds
        speedup = f"{base.seconds / t.seconds:.2f}×" if base else "n/a"
        flow = f"{t.flow_seconds:.2f}" if t.flow_seconds is not None else ""
        busy = f"{t.task_seconds / (t.seconds * config.workers):.0%}" if t.task_seconds is not None else ""
        print(f"| {config.workers} | {config.engine} | {rate:.1f} | {rate / config.workers:.1f} | {speedup} | "
              f"{busy} | {flow} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mini_set.add_arguments(parser)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--model", default="ssd_resnet34", help="whose resolution (default: ssd_resnet34, 1200 px)")
    parser.add_argument("--uint8", dest="dtype", action="store_const", const="uint8", default="float32",
                        help="the uint8 resize dtype instead of float32 (the default)")
    parser.add_argument("--chunk", type=int, help="images per Dask task (default: the flow's, ~4 tasks per worker)")
    parser.add_argument("--no-malloc-default", dest="malloc_default", action="store_false",
                        help="leave out the Dask rows with Dask's default MALLOC_TRIM_THRESHOLD_")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration; the best is kept")
    args = mini_set.parse(parser)
    logging.basicConfig(level=logging.WARNING)
    workers = sorted(set(args.workers) | {1})
    server = start_temporary_server()  # None where PREFECT_API_URL names a server
    url = server.api_url if server else PREFECT_API_URL.value()
    with tempfile.TemporaryDirectory(prefix="odbench-dask-", dir=args.tmp) as tmp, \
            temporary_settings({PREFECT_API_URL: url}):  # the Dask workers report to the same server
        storage = Storage(tmp)
        manifest = ingest(FolderSource(str(args.data)), args.images, storage)
        engines = ["dask", *(["dask-malloc-default"] if args.malloc_default else []), "threads"]
        clusters: dict[tuple[str, int], LocalCluster] = {}
        try:
            malloc = os.environ.get("MALLOC_TRIM_THRESHOLD_")
            for engine in engines[:-1]:  # "dask" first: a nanny with Dask's defaults sets them in os.environ
                for n in workers:
                    with local_worker_environ() if engine == "dask" else contextlib.nullcontext():
                        clusters[engine, n] = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                           dashboard_address=":0")
            if malloc is None:
                os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            facts: dict[str, set] = {"cv2 threads": set(), "malloc": set()}
            for cluster in clusters.values():
                with Client(cluster) as client:
                    facts["cv2 threads"] |= set(client.run(cv2.getNumThreads).values())
                    facts["malloc"] |= set(client.run(_worker_malloc).values())
            configs = [Config(engine, n) for n in workers for engine in engines]
            best = Bench(args, storage, manifest, clusters).measure(configs)
        finally:
            for cluster in clusters.values():
                cluster.close()
    print(environment(args, facts))
    print_table(best, manifest.size)


if __name__ == "__main__":
    main()

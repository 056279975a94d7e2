"""The `preprocess-dask` flow: a dataset's images preprocessed as Prefect tasks on a Dask cluster.

    python -m flows.preprocess_dask --dataset_url synthetic --loadgen_dataset_size 40 --n_workers 2
    python -m flows.preprocess_dask --dataset_url /data/coco --address tcp://scheduler:8786 --storage_url s3://b/odbench

The samples are those of `detect`'s preprocess task, bit for bit: each task calls the core's
`odbench.preprocess.compute_sample` (md5 check of the source, decode, resize, atomic self-verifying
write) for the images of its chunk. Prefect drives `prefect_dask.DaskTaskRunner`: on a temporary
`LocalCluster` of `n_workers` processes of one thread each, or on the Dask scheduler at `address`, whose
workers must reach the storage root (a shared folder or an object store; `memory://` is refused) and import
this project. Tasks take and return small things (image records, the Storage, a summary), never pixels.

Two flow runs: `preprocess-dask` ingests the dataset and reports; its subflow `preprocess-dask-chunks` holds
the Dask task runner (configured from the parameters; the cluster starts at the first submission). The rate
reported is images over the seconds from the first task's start to the last task's end, on the workers'
clocks: the cluster's start and the workers' first imports are left out, Prefect's per-task overhead between
tasks is in; `wall_seconds` is the subflow's whole time, cluster start and shutdown included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from typing import Any

import dask
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run, task_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from blocks.storage import resolve_storage
from flows.command import run_command, state_exit_code
from odbench.dataset import DatasetImage, ingest, load_manifest, parse_dataset_url
from odbench.models import ModelName, get_spec
from odbench.params import BenchmarkParams
from odbench.preprocess import ResizeDtype, compute_sample, missing_samples, opencv_threads, preprocessed_dir
from odbench.redact import redact_url
from odbench.storage import Storage
from tasks.report import slug

D = BenchmarkParams()  # the defaults, declared once
TASKS_PER_WORKER = 4  # the default chunk gives each worker about this many tasks: a slow chunk delays little
# Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off glibc's adaptive mmap
# threshold: every multi-MB sample array is then a fresh mmap, paid in page faults (measured on 2 cores: 16x the
# faults and ~22% fewer images/s in one thread of `preprocess` run with it; on the Dask workers the effect was
# within a loaded machine's noise, benchmarks/preprocess_dask.py). None: the temporary LocalCluster's workers
# inherit this process's environment instead (glibc's defaults, as the threaded path has). A cluster at `address`
# keeps its own.
LOCAL_WORKER_ENVIRON: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}


def local_worker_environ() -> dask.config.set:
    """Dask configuration, as a context, under which new local workers start with LOCAL_WORKER_ENVIRON."""
    return dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": value
                            for key, value in LOCAL_WORKER_ENVIRON.items()})


def run_name() -> str:
    """`preprocess-dask-<model>-<res>-<dtype>-<n>`: the model's resolution, the dtype, the images."""
    p = flow_run.parameters
    model = p.get("model_name", D.model_name)
    return slug(model, get_spec(model).resolution, p.get("preprocess_resize_dtype", D.preprocess_resize_dtype),
                p.get("loadgen_dataset_size", D.loadgen_dataset_size))


def chunks_run_name() -> str:
    p = flow_run.parameters
    return slug("chunks", p["resolution"], p["resize_dtype"], p["dataset_digest"][:8])


def chunk_run_name() -> str:
    """`preprocess-images-<first qsl index>-<last>`."""
    images = task_run.parameters["images"]
    return slug("preprocess-images", images[0].index, images[-1].index) if images else "preprocess-images-none"


@task(name="preprocess-images", task_run_name=chunk_run_name, cache_policy=NO_CACHE)  # the work is its writes
def preprocess_chunk(images: list[DatasetImage], resolution: int, storage: Storage,
                     resize_dtype: ResizeDtype) -> dict[str, Any]:
    """Store the samples of `images` that storage does not hold yet (`compute_sample`); a summary of the chunk:
    counts, where it ran, and when it started and ended (epoch seconds, so that tasks on other hosts compare)."""
    started = time.time()
    todo = missing_samples(images, resolution, storage, resize_dtype)
    with opencv_threads(1):  # as `preprocess` does: the workers are the parallelism, not OpenCV's own threads
        for image in todo:
            compute_sample(storage, image, resolution, resize_dtype=resize_dtype)  # the array stays here
    return {"images": len(images), "created": len(todo), "started": started, "ended": time.time(),
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


@flow(name="preprocess-dask-chunks", flow_run_name=chunks_run_name)
def preprocess_chunks(dataset_digest: str, resolution: int, resize_dtype: ResizeDtype, chunk: int,
                      storage_block: str | None = None, storage_url: str | None = None) -> dict[str, Any]:
    """One task per `chunk` images of the stored manifest, on this flow's task runner (the caller's Dask).

    Args:
        dataset_digest: The manifest's digest (`datasets/<digest>.json` in storage).
        resolution: Samples are resolution x resolution pixels.
        resize_dtype: float32 (the MLPerf reference's resize) or uint8.
        chunk: Images per task.
        storage_block: Name of a saved BenchmarkStorage block.
        storage_url: Storage root URL when no block is given.
    """
    storage = resolve_storage(storage_block, storage_url).storage()
    images = load_manifest(storage, dataset_digest).images
    futures = [preprocess_chunk.submit(list(images[k:k + chunk]), resolution, storage, resize_dtype)
               for k in range(0, len(images), chunk)]
    summaries = [future.result() for future in futures]
    return {"images": sum(s["images"] for s in summaries), "created": sum(s["created"] for s in summaries),
            "tasks": len(summaries), "workers_used": len({s["worker"] for s in summaries}),
            # the cluster starts at the first submission: timed from the first task's start to the last one's end
            "seconds": max(s["ended"] for s in summaries) - min(s["started"] for s in summaries) if summaries else 0,
            "task_seconds": sum(s["ended"] - s["started"] for s in summaries)}


@flow(name="preprocess-dask", log_prints=True, flow_run_name=run_name)
def preprocess_dask(
    dataset_url: str | None = D.dataset_url,
    loadgen_dataset_size: int = D.loadgen_dataset_size,
    model_name: ModelName = D.model_name,
    preprocess_resize_dtype: ResizeDtype = D.preprocess_resize_dtype,
    address: str | None = None,
    n_workers: int = 2,
    chunk: int | None = None,
    storage_block: str | None = None,
    storage_url: str | None = None,
) -> dict[str, Any]:
    """Ingest a dataset, then preprocess its images at the model's resolution as Prefect tasks on Dask.

    Args:
        dataset_url: Unset for the official COCO 2017 val archives, `synthetic` for a generated set, or the URL
            of a COCO-layout folder (annotations/instances_val2017.json, val2017/*.jpg).
        loadgen_dataset_size: N, the first N images of the annotation file.
        model_name: The detector whose input resolution the samples get: ssd_resnet34 (1200x1200), retinanet /
            retinanet_coco / retinanet_openimages (800x800).
        preprocess_resize_dtype: float32 resizes as the MLPerf reference does (exact; 4x the stored bytes) or
            uint8 (up to 0.8 grey level off, a quarter of the bytes); docs/preprocessing.md has the measurement.
        address: The address of a running Dask scheduler (e.g. tcp://host:8786) whose workers reach the
            storage root. Unset: a temporary LocalCluster of n_workers processes, one thread each.
        n_workers: Workers of the temporary LocalCluster; with an address, the rate per worker divides by the
            workers that ran tasks instead.
        chunk: Images per task. Unset: about 4 tasks per worker.
        storage_block: Name of a saved BenchmarkStorage block: where sources and samples live.
        storage_url: Storage root URL when no block is given (default: $ODBENCH_STORAGE_URL or
            ~/.cache/odbench).

    Returns:
        images, created (samples written; the rest were stored already), tasks, workers, seconds (first task's
        start to last task's end), wall_seconds (the subflow, cluster start included), images_per_s,
        images_per_s_per_worker.
    """
    logger = get_run_logger()
    if n_workers < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"n_workers={n_workers} and chunk={chunk} must be at least 1")
    storage = resolve_storage(storage_block, storage_url).storage()
    if "memory" in storage.protocols:
        raise ValueError(f"storage {storage.uri()} is in this process's memory: Dask workers cannot reach it; "
                         "use a folder they share or an object store")
    resolution = get_spec(model_name).resolution
    manifest = ingest(parse_dataset_url(dataset_url, loadgen_dataset_size), loadgen_dataset_size, storage)
    storage.remove_stale_temporaries(preprocessed_dir(resolution, resize_dtype="uint8"))  # both dtypes' folder
    chunk = chunk or max(1, math.ceil(manifest.size / (n_workers * TASKS_PER_WORKER)))
    runner = DaskTaskRunner(address=address) if address else \
        DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True})
    logger.info("preprocessing %d images at %dpx %s into %s on %s, %d per task", manifest.size, resolution,
                preprocess_resize_dtype, redact_url(storage.uri()), address or f"a LocalCluster of {n_workers}",
                chunk)
    start = time.perf_counter()
    with local_worker_environ():  # the cluster starts inside, at the first submission
        done = preprocess_chunks.with_options(task_runner=runner)(
            manifest.digest, resolution, preprocess_resize_dtype, chunk, storage_block, storage_url)
    wall = time.perf_counter() - start
    workers = done["workers_used"] if address else n_workers
    rate = done["images"] / done["seconds"] if done["seconds"] else float("nan")
    summary = {**done, "dataset_digest": manifest.digest, "resolution": resolution,
               "resize_dtype": preprocess_resize_dtype, "chunk": chunk, "workers": workers, "wall_seconds": wall,
               "images_per_s": rate, "images_per_s_per_worker": rate / workers}
    logger.info("%d images (%d new) in %.2f s on %d workers (%.1f images/s, %.1f per worker; %.2f s with the "
                "cluster's start)", done["images"], done["created"], done["seconds"], workers, rate, rate / workers,
                wall)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.preprocess_dask",
                                     description=preprocess_dask.__doc__.splitlines()[0])
    parser.add_argument("--dataset_url")
    parser.add_argument("--loadgen_dataset_size", type=int, default=D.loadgen_dataset_size)
    parser.add_argument("--model_name", default=D.model_name)
    parser.add_argument("--preprocess_resize_dtype", default=D.preprocess_resize_dtype)
    parser.add_argument("--address", help="a running Dask scheduler (default: a temporary LocalCluster)")
    parser.add_argument("--n_workers", type=int, default=2)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--storage_block")
    parser.add_argument("--storage_url")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.preprocess_dask ...`: the summary as JSON on stdout (flows/command.py)."""
    args = _parser().parse_args(argv)

    def body() -> int:
        from prefect.server.api.server import SubprocessASGIServer

        from flows.temporary_server import needs_temporary_server

        # the Dask workers get the flow's settings: name the command's temporary server, or each starts its own
        url = SubprocessASGIServer().api_url if needs_temporary_server() else PREFECT_API_URL.value()
        with temporary_settings({PREFECT_API_URL: url}):
            state = preprocess_dask(**vars(args), return_state=True)
        if state.is_completed():
            print(json.dumps(state.result(), indent=1))
            return 0
        return state_exit_code(state)  # the failure's message, exit code 1

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

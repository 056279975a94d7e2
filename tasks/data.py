"""Tasks that bring COCO into storage and preprocess it at a model's resolution and resize dtype.

The preprocess key hashes the resize dtype with the rest, so the two paths' records never mix; its
readable selector stays the resolution alone (`odbench-preprocess-800-<md5>`), so clean-up of the 800 px
folder, which holds both dtypes' samples, takes both dtypes' records as one group."""

from __future__ import annotations

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import State

from odbench import dataset
from odbench.cache_keys import cache_key
from odbench.dataset import DatasetManifest, DatasetSource
from odbench.preprocess import (
    DEFAULT_RESIZE_DTYPE,
    PREPROCESS_VERSION,
    PreprocessedSet,
    ResizeDtype,
    check_resize_dtype,
    preprocess,
)
from odbench.progress import LogProgress
from odbench.redact import redact_text, redact_url
from odbench.retry import is_transient
from odbench.storage import Storage
from tasks.serializer import DataSerializer


def _download_key(_: TaskRunContext, p: dict) -> str:
    return cache_key("download", (), p["storage"].url, p["fingerprint"])


def _preprocess_key(_: TaskRunContext, p: dict) -> str:
    resize_dtype = check_resize_dtype(p.get("resize_dtype", DEFAULT_RESIZE_DTYPE))
    return cache_key("preprocess", (p["resolution"],), p["storage"].url, p["manifest"].digest, p["resolution"],
                     PREPROCESS_VERSION, resize_dtype)


class TaskProgress(LogProgress):
    """Core progress (count or bytes, rate, ETA) in the task's log, also shown as a Prefect progress artifact."""

    def __init__(self, what: str, unit: str = ""):
        super().__init__(what, get_run_logger(), unit=unit)
        self.artifact = create_progress_artifact(0.0, description=what)

    def report(self, percent: float) -> None:
        update_progress_artifact(self.artifact, percent)


def retry_on_transient(_task: Task, _run: TaskRun, state: State) -> bool:
    """Prefect's retry condition of the fetching tasks: only a transient failure (odbench.retry) is retried,
    never a checksum, CRC, limit or contract error."""
    err = state.result(raise_on_failure=False)
    return isinstance(err, BaseException) and is_transient(err)


@task(name="download", cache_policy=CachePolicy.from_cache_key_fn(_download_key), persist_result=True,
      result_serializer=DataSerializer(), retry_condition_fn=retry_on_transient)
def download_dataset(source: DatasetSource, dataset_size: int, fingerprint: str, storage: Storage) -> DatasetManifest:
    """The annotation file and the first N images of the source, verified, in storage.

    `fingerprint` is `odbench.dataset.fingerprint(source, dataset_size)`, computed by the caller so
    that a failure to reach the source is an error of the flow, not a silently skipped cache key."""
    get_run_logger().info("fetching the first %d images of %s into %s", dataset_size, redact_text(source.describe()),
                          redact_url(storage.uri()))
    return dataset.ingest(source, dataset_size, storage, TaskProgress(f"download {dataset_size} images"),
                          byte_progress=TaskProgress)


@task(name="preprocess", cache_policy=CachePolicy.from_cache_key_fn(_preprocess_key), persist_result=True,
      result_serializer=DataSerializer())
def preprocess_images(manifest: DatasetManifest, resolution: int, storage: Storage,
                      resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> PreprocessedSet:
    """Every image of the manifest as RGB at resolution x resolution, resized in `resize_dtype`
    (odbench.preprocess: uint8, or float32 as the MLPerf reference does), in storage."""
    progress = TaskProgress(f"preprocess at {resolution}px {resize_dtype}")
    done = preprocess(manifest, resolution, storage, progress=progress, resize_dtype=resize_dtype)
    get_run_logger().info("%d images at %dpx, %s (%d new)", done.count, resolution, resize_dtype, done.created)
    return done

"""The LoadGen run as a task: cached in AccuracyOnly (same model, data and settings give the same
detections), never in PerformanceOnly (a timing is a measurement, not a function of its inputs).
It runs while holding the machine's accelerator slot (tasks/accelerator.py). A cached result is
re-described for the run that reuses it (`for_this_run`), never passed off as that run's own.

On a shared root (a bucket several machines use) the key holds what changes detections from machine to
machine: the onnxruntime version and the providers this machine will run for the requested device
(resolved before the task, as the session will resolve them), and the GPU with its driver; so a GPU
host is never served a CPU host's detections, nor the other way round.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from odbench import benchmark
from odbench.accuracy import ENCODING_VERSION
from odbench.backend import requested_providers
from odbench.benchmark import BenchmarkResult
from odbench.cache_keys import cache_key
from odbench.dataset import DatasetManifest
from odbench.machine import accelerator
from odbench.model_store import StoredModel
from odbench.model_variants import agreement_digest, converter_digest, rewriter_digest
from odbench.params import BenchmarkParams
from odbench.preprocess import PREPROCESS_VERSION
from odbench.redact import redact_text, redact_url
from odbench.storage import Storage
from tasks.accelerator import exclusive_accelerator
from tasks.serializer import DataSerializer


def _inference_key(_: TaskRunContext, p: dict) -> str | None:
    params: BenchmarkParams = p["params"]
    if params.loadgen_mode != "AccuracyOnly":
        return None
    return cache_key("inference", (params.spec.name,), p["storage"].url, params.spec.name, p["model"].md5,
                     p["manifest"].digest, PREPROCESS_VERSION, params.preprocess_resize_dtype, ENCODING_VERSION,
                     repr(params.loadgen_config), params.cpu_threads, params.loadgen_concurrency,
                     params.tolerate_bad_outputs, params.model_precision, params.normalize_on_device,
                     params.samples_on_device, params.pinned_host_samples, params.prefer_nhwc, params.onnx_sessions,
                     params.batch_size, params.postprocess_on_cpu,
                     (converter_digest(), agreement_digest()) if params.model_precision != "fp32" else None,
                     rewriter_digest() if _rewritten(params) else None, _engine(params.execution_device))


def _rewritten(params: BenchmarkParams) -> bool:
    """Whether the session runs a graph rewritten in memory (odbench/model_variants.py `prepare`)."""
    return params.batch_size > 1 or params.postprocess_on_cpu or params.normalize_on_device


def _engine(execution_device: str) -> tuple:
    """What else decides the detections: the onnxruntime build, the providers that will run for
    `execution_device` on this machine (`auto` is CUDA only where a GPU is present), the GPU and its
    driver. A package upgrade, another device or a driver change is a new key, never served from the cache."""
    import onnxruntime  # not at module level: odbench.backend sets ORT_DISABLE_TELEMETRY first

    gpu = accelerator()
    return onnxruntime.__version__, tuple(requested_providers(execution_device)), gpu and (gpu.name, gpu.driver)


@task(name="inference", cache_policy=CachePolicy.from_cache_key_fn(_inference_key), persist_result=True,
      result_serializer=DataSerializer())
def run_inference(params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel,
                  storage: Storage) -> BenchmarkResult:
    """LoadGen over the preprocessed samples; logs and result.json land in the run's folder."""
    logger = get_run_logger()
    with exclusive_accelerator() as slot:
        logger.info("LoadGen %s / %s over %d samples (holding %s)", params.loadgen_scenario, params.loadgen_mode,
                    manifest.size, slot)
        result = benchmark.run_inference(params, manifest, model, storage)
    logger.info("mAP %s, samples/s %s, providers %s", result.mAP, result.samples_per_second, result.providers)
    return result


def for_this_run(result: BenchmarkResult, dataset: str, model_source: str, reused: bool) -> BenchmarkResult:
    """The result as the run that asked for it: its dataset and model source (credentials redacted). A
    reused result (inference Cached) also gets this run's start time, names the run folder whose
    detections it reuses (`reused_from`; `run_dir` stays that folder, the evidence) and says so in a note."""
    changes: dict = {"dataset": redact_text(dataset), "model_source": redact_url(model_source)}
    if reused:
        note = (f"detections reused from the earlier run {result.run_dir} (a cached {result.mode} result: "
                "the same model, images, settings and engine); not measured again by this run")
        changes |= {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                    "reused_from": result.run_dir, "notes": [*result.notes, note]}
    return dataclasses.replace(result, **changes)

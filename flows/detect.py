"""The `detect` flow: one MLPerf object-detection benchmark run, with the axs workflow's parameter names.

    python -m flows.detect --model_name retinanet --loadgen_dataset_size 20 --json
    prefect deployment run detect/onnx -p model_name=retinanet
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields, replace
from typing import Any, Callable, Iterable, Literal

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from blocks.sources import SourceMirrors
from blocks.storage import resolve_storage
from odbench.backend import ExecutionDevice
from odbench.cli import log_level
from odbench.compliance import ComplianceTest
from odbench.dataset import DatasetSource, fingerprint, parse_dataset_url
from odbench.loadgen_settings import Mode, Profile, Scenario
from odbench.model_store import STANDINS, check_stored
from odbench.model_store import fingerprint as model_fingerprint
from odbench.models import ModelName
from odbench.params import BenchmarkParams, Precision
from odbench.preprocess import ResizeDtype, preprocessed_files
from odbench.redact import redact_text, redact_url
from odbench.retry import RetryPolicy
from odbench.storage import Storage
from tasks.data import download_dataset, preprocess_images
from tasks.inference import for_this_run, run_inference
from tasks.model import fetch_model
from tasks.report import publish_artifacts, slug

D = BenchmarkParams()  # the defaults, declared once
TASK_RETRIES = 2  # Prefect retries of a fetching task that failed transiently (after the core's own retries)


def run_name() -> str:
    """Flow runs are named after what they run: `retinanet-offline-performanceonly[-standin]`."""
    p = flow_run.parameters
    kind = ("standin",) if p.get("model_url") in STANDINS else ()
    return slug(p.get("model_name", D.model_name), p.get("loadgen_scenario", D.loadgen_scenario),
                p.get("loadgen_mode", D.loadgen_mode), *kind)


def _fine(_: Any) -> str | None:
    """No check beyond existence: the files a result names are trusted as they are."""
    return None


def _stale(result: Any, storage: Storage, outputs: Callable[[Any], Iterable[str]],
           verify: Callable[[Any], str | None]) -> str | None:
    """Why a cached result cannot be trusted (files gone, or a file failing its check), or None."""
    if lost := storage.missing(outputs(result)):
        return f"the cached result refers to {len(lost)} file(s) storage no longer holds ({lost[0]})"
    return verify(result)


@flow(name="detect", log_prints=True, flow_run_name=run_name)
def detect(
    model_name: ModelName = D.model_name,
    framework: Literal["onnx"] = D.framework,
    batch_size: int = D.batch_size,
    verbosity: int = D.verbosity,
    loadgen_dataset_size: int = D.loadgen_dataset_size,
    loadgen_buffer_size: int | None = D.loadgen_buffer_size,
    loadgen_scenario: Scenario = D.loadgen_scenario,
    loadgen_mode: Mode = D.loadgen_mode,
    loadgen_profile: Profile = D.loadgen_profile,
    loadgen_target_qps: float | None = D.loadgen_target_qps,
    loadgen_target_latency: float | None = D.loadgen_target_latency,
    loadgen_count_override: int | None = D.loadgen_count_override,
    loadgen_min_duration_s: float | None = D.loadgen_min_duration_s,
    loadgen_max_duration_s: float | None = D.loadgen_max_duration_s,
    loadgen_query_count: int | None = D.loadgen_query_count,
    loadgen_min_query_count: int | None = D.loadgen_min_query_count,
    loadgen_max_query_count: int | None = D.loadgen_max_query_count,
    loadgen_duration_s: float | None = D.loadgen_duration_s,
    loadgen_multistreamness: int | None = D.loadgen_multistreamness,
    loadgen_compliance_test: ComplianceTest | None = D.loadgen_compliance_test,
    loadgen_concurrency: int = D.loadgen_concurrency,
    preprocess_resize_dtype: ResizeDtype = D.preprocess_resize_dtype,
    loadgen_warmup_samples: int = D.loadgen_warmup_samples,
    model_precision: Precision = D.model_precision,
    normalize_on_device: bool = D.normalize_on_device,
    samples_on_device: bool = D.samples_on_device,
    pinned_host_samples: bool = D.pinned_host_samples,
    prefer_nhwc: bool = D.prefer_nhwc,
    onnx_sessions: int = D.onnx_sessions,
    postprocess_on_cpu: bool = D.postprocess_on_cpu,
    execution_device: ExecutionDevice = D.execution_device,
    cpu_threads: int = D.cpu_threads,
    dataset_url: str | None = D.dataset_url,
    model_url: str | None = D.model_url,
    model_md5: str | None = D.model_md5,
    tolerate_bad_outputs: bool = D.tolerate_bad_outputs,
    dataset_mirrors: list[str] | None = None,
    model_mirrors: list[str] | None = None,
    storage_block: str | None = None,
    storage_url: str | None = None,
    sources_block: str | None = None,
) -> dict[str, Any]:
    """Fetch COCO and the model, preprocess, run LoadGen, score mAP, publish artifacts.

    Args:
        model_name: The detector: ssd_resnet34 (1200x1200), retinanet / retinanet_coco (800x800, the COCO
            fine-tune) or retinanet_openimages (its label space differs from COCO's).
        framework: The inference framework; this benchmark runs onnx models.
        batch_size: Samples per inference (1 to 64). The official model files take 1; the stand-ins
            (model_url standin or standin-full) take batches (their post-processing loops over the batch).
            Batches form within a query (Offline, MultiStream); cannot be combined with samples_on_device.
        verbosity: Log detail of the benchmark core: 0 warnings only, 1-2 progress, 3 debug.
        loadgen_dataset_size: N, the first N images of the annotation file (MLPerf's qsl_idx order).
        loadgen_buffer_size: LoadGen's performance sample count: samples held in memory for timed queries
            (unset: the profile's, official 64 as MLPerf sets it for both models, quick 8 as axs had it).
        loadgen_scenario: The LoadGen scenario: Offline (one query of all samples; throughput), SingleStream (one
            sample per query, the next after the last answer; p90 latency), MultiStream (loadgen_multistreamness
            samples per query; p99 query latency) or Server (single-sample queries at Poisson arrivals of
            loadgen_target_qps within a latency bound; scheduled samples/s).
        loadgen_mode: AccuracyOnly (every sample once, scored as COCO mAP), PerformanceOnly (timed),
            FindPeakPerformance (Server only: LoadGen searches the highest valid QPS) or Submission (AccuracyOnly,
            then PerformanceOnly: mAP and performance in one result, logs under accuracy/ and performance/run_1/).
        loadgen_profile: official (LoadGen's mlperf.conf, plus the published per-model values it no longer lists
            for ssd-resnet34, written into user.conf) or quick (a timed run of seconds for demos and smoke
            tests). Options set here override either; the result's effective_settings say what LoadGen used.
        loadgen_target_qps: Offline: expected throughput (samples/s); Server: the arrival rate. Unset in a timed
            run: calibrated from a short measured pass, recorded in the result's calibration.
        loadgen_target_latency: SingleStream/MultiStream: expected latency in ms (unset in a timed run:
            calibrated); Server: the latency bound in ms (unset: the official value). Not for Offline.
        loadgen_count_override: Exactly this many queries (and no minimum duration): a short timed run.
        loadgen_min_duration_s: Minimum duration of a timed run in seconds (official: 600).
        loadgen_max_duration_s: Maximum duration of a timed run in seconds.
        loadgen_query_count: The axs name of loadgen_count_override (an alias): exactly this many queries.
        loadgen_min_query_count: LoadGen's min_query_count, the fewest queries of a timed run; no alias of ours
            (loadgen_count_override sets both this and the maximum).
        loadgen_max_query_count: LoadGen's max_query_count, the most queries of a timed run (0: no maximum); no
            alias of ours (loadgen_count_override sets both this and the minimum).
        loadgen_duration_s: The axs name of loadgen_min_duration_s (an alias): minimum duration in seconds.
        loadgen_multistreamness: MultiStream samples per query (unset: LoadGen's 8); MultiStream only.
        loadgen_compliance_test: MLPerf compliance test: TEST01 (logged samples in a timed run match the
            accuracy run) or TEST04 (one sample repeated is not faster than unique samples); runs the reference
            passes it compares against, keeps the audit logs under audit/ and reports the verdict. Needs
            loadgen_mode PerformanceOnly or Submission.
        loadgen_concurrency: Inferences in flight at once (SUT worker threads); Server and MultiStream need more
            than 1 to overlap queries.
        preprocess_resize_dtype: float32 resizes as the MLPerf reference does (exact; 4x the stored bytes) or
            uint8 (up to 0.8 grey level off, a quarter of the bytes); docs/preprocessing.md has the measurement.
        loadgen_warmup_samples: Untimed inferences on loaded samples before a timed test, so a short
            run does not time cuDNN autotuning or an engine build (stops after 10 s); 0: none. The result
            records the warm-up's samples and seconds.
        model_precision: fp32 runs the model file as it is; fp16 runs its conversion (convolutions in float16,
            box decoding, TopK and NMS in float32; converted once and stored beside it). docs/performance.md
            has the measured speed and agreement with fp32.
        normalize_on_device: Send the stored sample as it is (uint8 with preprocess_resize_dtype=uint8: a quarter
            of the bytes) and let a prefix in the graph normalize it on the accelerator; same model input.
        samples_on_device: LoadGen's untimed sample load copies each sample into accelerator memory, and
            inference reads it there (onnxruntime IO binding): no host-to-device copy is timed.
        pinned_host_samples: On a GPU provider (CUDA, TensorRT), with samples in host memory: LoadGen's untimed
            sample load page-locks each sample (cudaHostRegister), so its timed copy to the GPU is direct DMA
            (docs/performance.md: lower SingleStream latency, more throughput at one in flight). Not with
            samples_on_device or batch_size > 1; ignored (with a warning) on the CPU provider. The result says
            whether it applied.
        prefer_nhwc: CUDA: run the convolutions in NHWC layout (onnxruntime's prefer_nhwc; faster cuDNN
            kernels on an H200, docs/performance.md); no effect on the CPU provider.
        onnx_sessions: onnxruntime sessions of the model, each with its own CUDA stream; the SUT's workers
            (loadgen_concurrency) take them in turn. 1: all workers share one session.
        postprocess_on_cpu: Run the convolutions on the accelerator and everything after them (decoding,
            softmax, TopK, NMS) on the CPU, one thread per worker, overlapping the accelerator's next samples
            (use loadgen_concurrency > 1). Same detections; helps where the post-processing idles the GPU
            (SSD-ResNet34's per-class NMS on CUDA), docs/performance.md.
        execution_device: onnxruntime provider: "" or auto (CUDA when a GPU is present), cpu, cuda/gpu,
            tensorrt/trt. The result says which providers ran.
        cpu_threads: onnxruntime intra-op threads; 0 is onnxruntime's default.
        dataset_url: Unset for the official COCO 2017 val archives, `synthetic` for a generated set, or the URL
            of a COCO-layout folder (annotations/instances_val2017.json, val2017/*.jpg).
        model_url: Unset for the registry's official file, `standin` for a small stand-in with the real I/O
            contract, `standin-full` for an architecture-faithful full-size one (docs/standins.md; stand-in
            numbers are not the real model's), or any model file URL.
        model_md5: Expected md5 of the file at model_url; a mismatch fails the run.
        tolerate_bad_outputs: Drop and count detections that break the model's spec (non-finite values, labels
            outside its label space, boxes far outside the image, more than the spec allows) instead of
            failing the run; the counts are in the result either way.
        dataset_mirrors: Folder URLs each holding the official COCO archives under their own names
            (val2017.zip, annotations_trainval2017.zip), tried in order before the COCO server; the first that
            answers and verifies wins. Only with dataset_url unset. Unset: the sources_block's, if any.
        model_mirrors: URLs of the same model file (same md5), tried in order before model_url or the
            registry's URL. Unset: the sources_block's mirrors of this model, if any.
        storage_block: Name of a saved BenchmarkStorage block: where sources, models, runs and history live.
        storage_url: Storage root URL when no block is given (default: $ODBENCH_STORAGE_URL or
            ~/.cache/odbench).
        sources_block: Name of a saved SourceMirrors block: mirrors of the COCO archives (or md5s of other
            archives its mirrors serve) and of each model; dataset_mirrors / model_mirrors given here win.
    """
    arguments = locals()
    params = BenchmarkParams(**{f.name: arguments[f.name] for f in fields(BenchmarkParams)})
    logging.getLogger("odbench").setLevel(log_level(verbosity))
    block = resolve_storage(storage_block, storage_url)
    storage, result_storage, locks = block.storage(), block.result_storage(), block.lock_manager()
    source, mirrors = _sources(params, sources_block)
    states: dict[str, str] = {}
    policy = RetryPolicy.from_env()
    retries = [policy.delay(number) for number in range(1, TASK_RETRIES + 1)]

    def run(task, *args, outputs: Callable[[Any], Iterable[str]], verify: Callable[[Any], str | None] = _fine,
            **kwargs):
        """Call a cached task; a cached result whose files storage lost, or whose files fail their
        check (`verify`: None, or what is wrong), is recomputed, not trusted."""
        def call(refresh: bool):
            # None, not False: PREFECT_TASKS_REFRESH_CACHE=true still forces a refresh
            # SERIALIZABLE: of two runs that need the same step, one computes it, the other waits and reuses it
            policy = task.cache_policy.configure(lock_manager=locks, isolation_level="SERIALIZABLE")
            # the fetching tasks (those with a retry condition) retry transient failures, with the core's backoff
            again = dict(retries=len(retries), retry_delay_seconds=retries) if task.retry_condition_fn and retries \
                else {}
            configured = task.with_options(result_storage=result_storage, refresh_cache=refresh or None,
                                           cache_policy=policy, **again)
            return configured(*args, **kwargs, storage=storage, return_state=True)

        state = call(False)
        if state.name == "Cached" and (problem := _stale(state.result(), storage, outputs, verify)):
            get_run_logger().warning("%s: %s; recomputing", task.name, problem)
            state = call(True)
        states[task.name] = state.name
        return state.result()

    resolution = params.spec.resolution
    manifest = run(download_dataset, source, loadgen_dataset_size, fingerprint(source, loadgen_dataset_size),
                   outputs=lambda m: m.files)
    # this run's source, whichever run's download it reuses (the cache key is content, not the URL)
    manifest = replace(manifest, source=redact_text(source.describe()))
    dtype = params.preprocess_resize_dtype
    run(preprocess_images, manifest, resolution, resize_dtype=dtype,
        outputs=lambda _: preprocessed_files(manifest, resolution, resize_dtype=dtype))
    model = run(fetch_model, params.spec, model_url, model_md5,
                model_fingerprint(params.spec, model_url, model_md5, mirrors), mirrors=mirrors,
                outputs=lambda m: m.files, verify=lambda m: check_stored(m, storage))
    model = replace(model, source=redact_url(model_url) or params.spec.url)
    result = run(run_inference, params, manifest, model, outputs=lambda r: r.files)
    result = for_this_run(result, manifest.source, model.source, reused=states[run_inference.name] == "Cached")
    publish_artifacts(result)
    return {**result.to_json(), "task_states": states}


def _sources(params: BenchmarkParams, sources_block: str | None) -> tuple[DatasetSource, tuple[str, ...]]:
    """The dataset source and the model's mirror URLs: the parameters' mirrors, else the block's."""
    block = SourceMirrors.load(sources_block) if sources_block else None
    model_mirrors = params.model_mirrors
    if model_mirrors is None:
        model_mirrors = tuple(block.for_model(params.spec.name)) if block else ()
    if params.dataset_url or not block:
        return parse_dataset_url(params.dataset_url, params.loadgen_dataset_size, params.dataset_mirrors or ()), \
            model_mirrors
    return block.archives(params.dataset_mirrors), model_mirrors


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.detect --model_name retinanet ...` (flows/command.py)."""
    from flows.command import detect_command

    return detect_command(detect, argv)


if __name__ == "__main__":
    sys.exit(main())

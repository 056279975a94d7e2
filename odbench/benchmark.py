"""One benchmark run without Prefect: the steps the `detect` flow orchestrates, and their result.

`run_benchmark` chains them for the command line of the GPU machine (no Prefect there); the flow
calls the same step functions as cached tasks.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from odbench import coco
from odbench.accuracy import AccuracyResult, decode_accuracy_log, evaluate
from odbench.backend import OnnxBackend
from odbench.dataset import DatasetManifest, ingest, parse_dataset_url
from odbench.harness import DetectionSUT, SampleLibrary, run_loadgen
from odbench.loadgen_log import LoadGenSummary, summarize
from odbench.model_store import StoredModel, fetch_model, model_bytes
from odbench.params import BenchmarkParams
from odbench.preprocess import load_uint8, preprocess, preprocessed_files, to_model_input
from odbench.progress import LogProgress
from odbench.storage import Storage

log = logging.getLogger(__name__)
LOADGEN_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "user.conf")
ACCURACY_PASS_THROUGHPUT = "accuracy pass: samples / SUT inference time (not a LoadGen performance result)"


@dataclass(frozen=True)
class BenchmarkResult:
    """Everything one run measured and where its evidence lives; serialises to result.json."""

    run_id: str
    run_dir: str  # URL of the run's folder in storage
    model_name: str
    stand_in: bool
    model_md5: str
    model_source: str
    dataset: str
    dataset_size: int
    dataset_digest: str
    scenario: str
    mode: str
    providers: list[str]
    mAP: float | None  # percent; None in PerformanceOnly
    coco_stats: dict[str, float] | None
    samples_per_second: float | None
    samples_per_second_source: str | None  # "loadgen", or ACCURACY_PASS_THROUGHPUT
    validity: str | None
    latency_ns: dict[str, float]
    performance_metric: str
    performance: float | None
    effective_settings: dict[str, Any] = field(default_factory=dict)
    loadgen_errors: list[str] = field(default_factory=list)
    started: str = ""
    duration_s: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def files(self) -> tuple[str, ...]:
        """The run's evidence in storage."""
        return tuple(f"runs/{self.run_id}/{name}" for name in (*LOADGEN_FILES, "result.json"))


def environment() -> dict[str, str]:
    """Package versions and machine facts (host, CPU, GPU, driver, hardware class) that a result depends on."""
    from odbench.machine import hardware_class, machine_facts

    packages = ("onnxruntime-gpu", "onnxruntime", "mlcommons-loadgen", "numpy", "opencv-python-headless",
                "pycocotools")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    facts = {"python": platform.python_version(), "machine": platform.machine(),
             "processor": platform.processor() or platform.machine(), **versions, **machine_facts()}
    return facts | {"hardware_class": hardware_class(facts)}


def new_run_id(params: BenchmarkParams) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{params.spec.name}-{params.loadgen_scenario}-{params.loadgen_mode}-{uuid.uuid4().hex[:6]}"


def run_inference(params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel,
                  storage: Storage, run_id: str | None = None) -> BenchmarkResult:
    """The LoadGen test over preprocessed samples, then accuracy; logs and result.json go to storage."""
    run_id = run_id or new_run_id(params)
    run_rel = f"runs/{run_id}"
    local = storage.local_path(run_rel)
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = local or Path(tmp)
        result = _run_in(log_dir, params, manifest, model, storage, run_id, storage.uri(run_rel))
        if local is None:
            storage.upload_dir(log_dir, run_rel)
    storage.write_json(f"{run_rel}/result.json", result.to_json())
    return result


def _run_in(log_dir: Path, params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel,
            storage: Storage, run_id: str, run_uri: str) -> BenchmarkResult:
    spec, config = params.spec, params.loadgen_config
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), time.perf_counter()
    annotations = coco.parse_annotations(storage.read_bytes(manifest.annotations_rel))
    backend = OnnxBackend(model_bytes(model, storage), spec, params.execution_device, params.cpu_threads)
    images = manifest.images
    if any(im.index != i for i, im in enumerate(images)):
        raise ValueError("the manifest is not the first N images in annotation order: qsl_idx would be wrong")
    if lost := storage.missing(preprocessed_files(manifest, spec.resolution)):
        raise FileNotFoundError(f"{len(lost)} preprocessed sample(s) missing from {storage.uri()}, e.g. {lost[0]}: "
                                "run the preprocessing step again")
    library = SampleLibrary(len(images), lambda i: to_model_input(load_uint8(storage, spec.resolution, images[i].md5), spec))
    sut = DetectionSUT(backend, library, spec)
    log.info("LoadGen %s %s over %d samples on %s", config.scenario, config.mode, len(images), backend.providers)
    run_loadgen(sut, config, spec.loadgen_model, log_dir)
    summary = summarize(log_dir / "mlperf_log_detail.txt", config.scenario, config.mode)
    accuracy = _accuracy(log_dir, annotations, len(images)) if config.mode == "AccuracyOnly" else None
    throughput, source = _throughput(summary, sut)
    metric, value = summary.performance
    return BenchmarkResult(
        run_id=run_id, run_dir=run_uri, model_name=spec.name, stand_in=model.stand_in, model_md5=model.md5,
        model_source=model.source, dataset=manifest.source, dataset_size=manifest.size,
        dataset_digest=manifest.digest, scenario=config.scenario, mode=config.mode,
        providers=list(backend.providers), mAP=accuracy.mAP if accuracy else None,
        coco_stats=accuracy.stats if accuracy else None, samples_per_second=throughput,
        samples_per_second_source=source, validity=summary.validity, latency_ns=summary.latency_ns,
        performance_metric=metric, performance=value,
        effective_settings=summary.effective_settings, loadgen_errors=summary.errors, started=started,
        duration_s=round(time.perf_counter() - t0, 3), environment=environment(),
    )


def _accuracy(log_dir: Path, annotations: dict, expected: int) -> AccuracyResult:
    decoded = decode_accuracy_log(log_dir / "mlperf_log_accuracy.json")
    if len(decoded) != expected:
        raise RuntimeError(f"the accuracy log covers {len(decoded)} of {expected} samples")
    return evaluate(decoded, annotations)


def _throughput(summary: LoadGenSummary, sut: DetectionSUT) -> tuple[float | None, str | None]:
    if summary.samples_per_second is not None:
        return summary.samples_per_second, "loadgen"
    measured = sut.throughput()
    return (round(measured, 3), ACCURACY_PASS_THROUGHPUT) if measured else (None, None)


def run_benchmark(params: BenchmarkParams, storage: Storage | None = None) -> BenchmarkResult:
    """The whole benchmark in one process, no Prefect: data, preprocessing, model, LoadGen, accuracy."""
    storage = storage or Storage()
    source = parse_dataset_url(params.dataset_url, params.loadgen_dataset_size)
    manifest = ingest(source, params.loadgen_dataset_size, storage, LogProgress("download images", log))
    preprocess(manifest, params.spec.resolution, storage, progress=LogProgress("preprocess", log))
    model = fetch_model(params.spec, params.model_url, params.model_md5, storage)
    return run_inference(params, manifest, model, storage)

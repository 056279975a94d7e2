"""One benchmark run without Prefect: the steps the `detect` flow orchestrates, and their result.

`run_benchmark` chains them for the command line of the GPU machine (no Prefect there); the flow
calls the same step functions as cached tasks. Ctrl-C during a step ends it with `Interrupted`, a
KeyboardInterrupt that names the step; LoadGen itself is stopped cleanly first (odbench/harness.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from odbench import coco
from odbench.accuracy import AccuracyResult, decode_accuracy_log, evaluate
from odbench.backend import OnnxBackend
from odbench.dataset import DatasetManifest, ingest, parse_dataset_url
from odbench.harness import run_loadgen
from odbench.loadgen_log import LoadGenSummary, summarize
from odbench.model_store import StoredModel, fetch_model, model_bytes
from odbench.models import LabelSpace, ModelSpec
from odbench.output_checks import BadModelOutputsError, OutputTally
from odbench.params import BenchmarkParams
from odbench.preprocess import load_sample, preprocess, to_model_input
from odbench.progress import LogProgress
from odbench.redact import redact_text
from odbench.storage import Storage
from odbench.sut import DetectionSUT, SampleLibrary, Warmup, warm_up

log = logging.getLogger(__name__)
LOADGEN_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "user.conf")
ACCURACY_PASS_THROUGHPUT = "accuracy pass: samples / SUT inference time (not a LoadGen performance result)"
FOREIGN_LABELS_NOTE = ("{model} labels are {space} classes, not COCO categories: its mAP on a COCO annotation "
                       "file does not measure the model")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during one step of the benchmark; `step` names it (download, preprocess, fetch-model, inference)."""

    def __init__(self, step: str):
        super().__init__(f"interrupted during {step}")
        self.step = step


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Label a KeyboardInterrupt raised inside with the step it interrupted."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as err:
        raise Interrupted(name) from err


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
    effective_settings: dict[str, Any] = field(default_factory=dict)  # as LoadGen used them (its detail log)
    loadgen_profile: str = "official"  # the settings profile (odbench/loadgen_settings.py: official or quick)
    loadgen_errors: list[str] = field(default_factory=list)
    started: str = ""
    duration_s: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)
    output_problems: dict[str, int] = field(default_factory=dict)  # detections dropped, by problem (output_checks)
    notes: list[str] = field(default_factory=list)  # what a reader must know to read the numbers right
    reused_from: str | None = None  # the run folder whose detections a cached result reuses
    # the untimed warm-up before a timed test: {"samples": n, "seconds": s}; AccuracyOnly (untimed) has none
    warmup: dict[str, float] = field(default_factory=lambda: Warmup().to_json())

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
    # LoadGen's untimed load step: each sample verified, and recomputed when missing or corrupt
    def load(i: int):
        return to_model_input(load_sample(storage, images[i], spec.resolution), spec)

    library = SampleLibrary(len(images), load)
    sut = DetectionSUT(backend, library, spec, workers=params.loadgen_concurrency)
    notes = _notes(spec, config.mode)
    for note in notes:
        log.warning("%s", note)
    log.info("LoadGen %s %s over %d samples on %s", config.scenario, config.mode, len(images), backend.providers)
    warmup = _warm_up(backend, load, len(images), params)
    run_loadgen(sut, config, spec.loadgen_model, log_dir)
    notes += _output_verdict(sut.outputs, spec, params.tolerate_bad_outputs)
    summary = summarize(log_dir / "mlperf_log_detail.txt", config.scenario, config.mode)
    accuracy = _accuracy(log_dir, annotations, len(images), spec) if config.mode == "AccuracyOnly" else None
    throughput, source = _throughput(summary, sut)
    metric, value = summary.performance
    return BenchmarkResult(
        run_id=run_id, run_dir=redact_text(run_uri), model_name=spec.name, stand_in=model.stand_in,
        model_md5=model.md5, model_source=redact_text(model.source), dataset=redact_text(manifest.source),
        dataset_size=manifest.size,
        dataset_digest=manifest.digest, scenario=config.scenario, mode=config.mode,
        providers=list(backend.providers), mAP=accuracy.mAP if accuracy else None,
        coco_stats=accuracy.stats if accuracy else None, samples_per_second=throughput,
        samples_per_second_source=source, validity=summary.validity, latency_ns=summary.latency_ns,
        performance_metric=metric, performance=value,
        effective_settings=summary.effective_settings, loadgen_profile=config.profile,
        loadgen_errors=summary.errors, started=started,
        duration_s=round(time.perf_counter() - t0, 3), environment=environment(),
        output_problems=sut.outputs.counts(), notes=notes, warmup=warmup.to_json(),
    )


def _warm_up(backend: OnnxBackend, load, count: int, params: BenchmarkParams) -> Warmup:
    """The untimed warm-up before a PerformanceOnly test (none for AccuracyOnly, which is not timed)."""
    if params.loadgen_mode != "PerformanceOnly":
        return Warmup()
    return warm_up(backend, load, count, params.loadgen_warmup_samples)


def _notes(spec: ModelSpec, mode: str) -> list[str]:
    """What the result's reader must be told: a model scored against labels it does not use."""
    if spec.label_space is LabelSpace.OPENIMAGES and mode == "AccuracyOnly":
        return [FOREIGN_LABELS_NOTE.format(model=spec.name, space="OpenImages")]
    return []


def _output_verdict(outputs: OutputTally, spec: ModelSpec, tolerate: bool) -> list[str]:
    """Fail on bad model outputs, or (tolerated) say in a note what was dropped."""
    if not outputs.counts():
        return []
    if not tolerate:
        raise BadModelOutputsError(f"the {spec.name} model's outputs failed the checks: {outputs.message(spec)}. "
                                   "Fix the model, or pass tolerate_bad_outputs=True to drop these detections "
                                   "and score the rest")
    note = f"dropped bad model outputs (tolerate_bad_outputs): {outputs.message(spec)}"
    log.warning("%s", note)
    return [note]


def _accuracy(log_dir: Path, annotations: dict, expected: int, spec: ModelSpec) -> AccuracyResult:
    decoded = decode_accuracy_log(log_dir / "mlperf_log_accuracy.json")
    if len(decoded) != expected:
        raise RuntimeError(f"the accuracy log covers {len(decoded)} of {expected} samples")
    return evaluate(decoded, annotations, use_inv_map=spec.uses_inverse_map)


def _throughput(summary: LoadGenSummary, sut: DetectionSUT) -> tuple[float | None, str | None]:
    if summary.samples_per_second is not None:
        return summary.samples_per_second, "loadgen"
    measured = sut.throughput()
    return (round(measured, 3), ACCURACY_PASS_THROUGHPUT) if measured else (None, None)


def run_benchmark(params: BenchmarkParams, storage: Storage | None = None) -> BenchmarkResult:
    """The whole benchmark in one process, no Prefect: data, preprocessing, model, LoadGen, accuracy."""
    storage = storage or Storage()
    with step("download"):
        source = parse_dataset_url(params.dataset_url, params.loadgen_dataset_size)
        manifest = ingest(source, params.loadgen_dataset_size, storage, LogProgress("download images", log))
    with step("preprocess"):
        preprocess(manifest, params.spec.resolution, storage, progress=LogProgress("preprocess", log))
    with step("fetch-model"):
        model = fetch_model(params.spec, params.model_url, params.model_md5, storage)
    with step("inference"):
        return run_inference(params, manifest, model, storage)

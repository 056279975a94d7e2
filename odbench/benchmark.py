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
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from odbench import coco, compliance
from odbench.accuracy import AccuracyResult, decode_accuracy_log, evaluate
from odbench.backend import OnnxBackend
from odbench.calibration import calibrate
from odbench.dataset import DatasetManifest, ingest, parse_dataset_url
from odbench.energy import Energy, EnergyMeter
from odbench.harness import run_loadgen
from odbench.input_prefix import device_input
from odbench.loadgen_log import LoadGenSummary, summarize
from odbench.loadgen_settings import LoadGenConfig
from odbench.model_store import StoredModel, fetch_model, model_data
from odbench.model_variants import at_precision, session_model
from odbench.models import LabelSpace, ModelSpec
from odbench.nvml import free_device_memory
from odbench.output_checks import BadModelOutputsError, OutputTally
from odbench.params import BenchmarkParams
from odbench.precision import AGREEMENT_LIMITS, Agreement, agreement
from odbench.preprocess import load_sample, preprocess, to_model_input
from odbench.progress import LogProgress
from odbench.redact import redact_text
from odbench.storage import Storage
from odbench.sut import DetectionSUT, SampleLibrary, Warmup, waits_for_answers, warm_up

log = logging.getLogger(__name__)
AGREEMENT_SAMPLES = 2  # samples an fp16 run compares with fp32 (two sessions more, briefly; seconds on a CPU)
LOADGEN_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "user.conf")
# where each LoadGen test's logs go when a run has several (MLPerf's submission layout); a run of one test keeps
# them in its own folder
PASS_FOLDERS = {"AccuracyOnly": "accuracy", "PerformanceOnly": "performance/run_1"}
ACCURACY_PASS_THROUGHPUT = "accuracy pass: samples / SUT inference time (not a LoadGen performance result)"
SUT_THROUGHPUT = "samples / SUT inference time (LoadGen reports no samples/s in {}; see performance)"
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
    mAP: float | None  # percent; None without an AccuracyOnly pass
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
    loadgen: dict[str, Any] = field(default_factory=dict)  # the timed pass's parsed LoadGen summary (loadgen_log.py)
    calibration: dict[str, Any] | None = None  # the target measured for a timed test that had none (calibration.py)
    compliance: dict[str, Any] | None = None  # the compliance test's verdict (compliance.py)
    log_files: list[str] = field(default_factory=lambda: list(LOADGEN_FILES))  # relative to the run's folder
    loadgen_concurrency: int = 1  # inferences in flight (SUT worker threads)
    preprocess_resize_dtype: str = "uint8"  # the stored samples' resize (preprocess.py); results before it: uint8
    model_precision: str = "fp32"  # fp16: the stored fp16 conversion ran (model_variants.py)
    normalize_on_device: bool = False  # the model normalized the stored samples (input_prefix.py)
    samples_on_device: bool = False  # samples were in accelerator memory (IO binding); False on the CPU provider
    pinned_host_samples: bool = False  # samples were page-locked in host memory; False where nothing is copied to a GPU
    prefer_nhwc: bool = False  # the CUDA provider ran convolutions in NHWC layout; False on the CPU provider
    onnx_sessions: int = 1  # onnxruntime sessions the SUT's workers shared
    batch_size: int = 1  # samples per inference (batching.py); batches form within a query
    postprocess_on_cpu: bool = False  # the post-processing ran in a CPU session (split_model.py)
    energy: dict[str, Any] | None = None  # the GPU's energy during the timed test (energy.py); None: not measured
    precision_agreement: dict[str, Any] | None = None  # fp16 against fp32 on the run's first samples (precision.py)
    converted_model_md5: str | None = None  # md5 of the fp16 conversion that ran (model_md5 is the fetched file's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def files(self) -> tuple[str, ...]:
        """The run's evidence in storage."""
        return tuple(f"runs/{self.run_id}/{name}" for name in (*self.log_files, "result.json"))


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


@dataclass(frozen=True)
class _Bench:
    """What every LoadGen pass of one run shares: the parameters, the model session and the samples."""

    params: BenchmarkParams
    spec: ModelSpec
    model: StoredModel  # the file the session runs: the fetched model, or its fp16 conversion
    backend: OnnxBackend
    load: Callable[[int], Any]
    count: int
    annotations: dict

    def sut(self, scenario: str) -> DetectionSUT:
        """A fresh SUT for one LoadGen test of `scenario` (run_loadgen closes it); outside Server, LoadGen's issue
        thread drains each query too (odbench/sut.py)."""
        return DetectionSUT(self.backend, SampleLibrary(self.count, self.load, release=self.backend.release), self.spec,
                            workers=self.params.loadgen_concurrency, batch_size=self.params.batch_size,
                            drain_on_issue_thread=waits_for_answers(scenario))


@dataclass(frozen=True)
class _Pass:
    """One LoadGen test's outcome: its folder (relative to the run's), summary, SUT and mAP if scored."""

    folder: str
    summary: LoadGenSummary
    sut: DetectionSUT
    accuracy: AccuracyResult | None
    energy: Energy | None = None


def _run_in(log_dir: Path, params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel,
            storage: Storage, run_id: str, run_uri: str) -> BenchmarkResult:
    spec = params.spec
    started, t0 = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), time.perf_counter()
    bench = _bench(params, manifest, model, storage)
    agreement = _precision_agreement(params, manifest, model, bench.model, storage)
    log.info("LoadGen %s %s over %d samples on %s", params.loadgen_scenario, params.loadgen_mode, bench.count,
             bench.backend.providers)
    config = params.loadgen_config
    warmup = _warm_up(bench.backend, bench.load, bench.count, params)
    if config.mode != "AccuracyOnly":
        config, calibration = calibrate(config, bench.backend, bench.load, bench.count, params.loadgen_concurrency)
    else:
        calibration = None
    passes = _planned_passes(config, params.loadgen_compliance_test)
    notes = _notes(spec, scored=any(p.mode == "AccuracyOnly" for p in passes))
    flat = len(passes) == 1 and not params.loadgen_compliance_test
    outcomes: dict[str, _Pass] = {}
    for planned in passes:  # bad model outputs fail the run after the pass that found them
        outcomes[planned.mode] = _run_pass(bench, planned, log_dir, "" if flat else PASS_FOLDERS[planned.mode])
        notes += _output_verdict(outcomes[planned.mode].sut.outputs, spec, params.tolerate_bad_outputs)
    verdict, audit = _compliance(bench, config, outcomes, log_dir) if params.loadgen_compliance_test else (None, None)
    if audit:
        notes += _output_verdict(audit.sut.outputs, spec, params.tolerate_bad_outputs)
    scored = outcomes.get("AccuracyOnly")
    timed = next((o for m, o in outcomes.items() if m != "AccuracyOnly"), scored)
    accuracy = scored.accuracy if scored else None
    throughput, source = _throughput(timed.summary, timed.sut)
    metric, value = timed.summary.performance
    return BenchmarkResult(
        run_id=run_id, run_dir=redact_text(run_uri), model_name=spec.name, stand_in=model.stand_in,
        model_md5=model.md5, model_source=redact_text(model.source), dataset=redact_text(manifest.source),
        dataset_size=manifest.size, dataset_digest=manifest.digest, scenario=config.scenario,
        mode=params.loadgen_mode, providers=list(bench.backend.providers), mAP=accuracy.mAP if accuracy else None,
        coco_stats=accuracy.stats if accuracy else None, samples_per_second=throughput,
        samples_per_second_source=source, validity=timed.summary.validity, latency_ns=timed.summary.latency_ns,
        performance_metric=metric, performance=value,
        effective_settings=timed.summary.effective_settings, loadgen_profile=config.profile,
        loadgen_errors=[e for o in outcomes.values() for e in o.summary.errors], started=started,
        duration_s=round(time.perf_counter() - t0, 3), environment=environment(),
        output_problems=_problem_counts([*outcomes.values(), *([audit] if audit else [])]), notes=notes,
        warmup=warmup.to_json(),
        loadgen=timed.summary.to_json(), calibration=calibration.to_json() if calibration else None,
        compliance=verdict, log_files=_log_files(log_dir), loadgen_concurrency=params.loadgen_concurrency,
        preprocess_resize_dtype=params.preprocess_resize_dtype, model_precision=params.model_precision,
        normalize_on_device=params.normalize_on_device, samples_on_device=bench.backend.input_device != "cpu",
        pinned_host_samples=bench.backend.pinned_host_samples,
        prefer_nhwc=params.prefer_nhwc and bench.backend.on_gpu, onnx_sessions=params.onnx_sessions,
        batch_size=params.batch_size, postprocess_on_cpu=params.postprocess_on_cpu,
        energy=timed.energy.to_json() if timed.energy else None,
        precision_agreement=agreement.to_json() if agreement else None,
        converted_model_md5=bench.model.md5 if bench.model.md5 != model.md5 else None,
    )


def _bench(params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel, storage: Storage) -> _Bench:
    """The model session, the annotations and the sample loader every pass of the run uses."""
    spec, dtype = params.spec, params.preprocess_resize_dtype
    annotations = coco.parse_annotations(storage.read_bytes(manifest.annotations_rel))
    model = at_precision(model, storage, params.model_precision)
    graph = session_model(model, storage, spec, params.normalize_on_device, dtype, params.batch_size,
                          params.postprocess_on_cpu)
    backend = OnnxBackend(graph, spec, params.execution_device, params.cpu_threads,
                          samples_on_device=params.samples_on_device, prefer_nhwc=params.prefer_nhwc,
                          sessions=params.onnx_sessions, batch_size=params.batch_size,
                          pinned_host_samples=params.pinned_host_samples)
    if backend.input_device == "cuda" and (free := free_device_memory()) is not None:
        params.check_device_buffer(free)
    images = manifest.images
    if any(im.index != i for i, im in enumerate(images)):
        raise ValueError("the manifest is not the first N images in annotation order: qsl_idx would be wrong")
    model_input = device_input if params.normalize_on_device else partial(to_model_input, spec=spec)

    def load(i: int):  # LoadGen's untimed load step: each sample verified, recomputed when missing or corrupt
        return backend.place(model_input(load_sample(storage, images[i], spec.resolution, resize_dtype=dtype)))

    return _Bench(params, spec, model, backend, load, len(images), annotations)


def _precision_agreement(params: BenchmarkParams, manifest: DatasetManifest, model: StoredModel,
                         converted: StoredModel, storage: Storage) -> Agreement | None:
    """With model_precision=fp16: the converted model against the fp32 file on the run's first AGREEMENT_SAMPLES
    samples (untimed, before any LoadGen test): pre-NMS relative error and the share of fp32 detections it
    reproduces. A diagnostic: when it cannot be measured the run goes on without it (logged)."""
    if converted.md5 == model.md5:
        return None
    spec, dtype = params.spec, params.preprocess_resize_dtype
    try:
        inputs = [to_model_input(load_sample(storage, image, spec.resolution, resize_dtype=dtype), spec)
                  for image in manifest.images[:AGREEMENT_SAMPLES]]
        reference, test = (model_data(m, storage) for m in (model, converted))
        found = agreement(reference, test, inputs, spec, params.execution_device)
    except (ValueError, RuntimeError) as err:  # e.g. a graph whose head outputs cannot be found
        log.warning("fp16 agreement with fp32 not measured: %s", err)
        return None
    within = "within" if found.within(params.model_precision) else "OUTSIDE"
    log.info("fp16 against fp32 on %d sample(s): pre-NMS relative error %.2e (%s the limit %g), %d of %d fp32 "
             "detections reproduced", found.inputs, found.pre_nms_relative_error, within,
             AGREEMENT_LIMITS[params.model_precision], found.detections_reproduced, found.detections_reference)
    return found


def _planned_passes(config: LoadGenConfig, compliance_test: str | None) -> list[LoadGenConfig]:
    """The LoadGen tests to run, accuracy first: the mode's own, plus those a compliance test compares against."""
    passes = {p.mode: p for p in config.passes()}
    for mode in compliance.reference_modes(compliance_test) if compliance_test else ():
        passes.setdefault(mode, replace(config, mode=mode))
    return sorted(passes.values(), key=lambda p: p.mode != "AccuracyOnly")


def _run_pass(bench: _Bench, config: LoadGenConfig, log_dir: Path, folder: str,
              audit_config: Path | None = None) -> _Pass:
    """One LoadGen test with its logs in log_dir/folder, summarized (and scored in AccuracyOnly)."""
    pass_dir = log_dir / folder
    sut = bench.sut(config.scenario)
    meter = EnergyMeter() if config.mode != "AccuracyOnly" and bench.backend.on_gpu else None
    with meter or contextlib.nullcontext():
        run_loadgen(sut, config, bench.spec.loadgen_model, pass_dir, audit_config)
    summary = summarize(pass_dir / "mlperf_log_detail.txt", config.scenario, config.mode)
    accuracy = (_accuracy(pass_dir, bench.annotations, bench.count, bench.spec)
                if config.mode == "AccuracyOnly" and audit_config is None else None)
    energy = meter.energy(sut.first_issued_at, sut.last_answered_at, sut.completed) if meter else None
    return _Pass(folder, summary, sut, accuracy, energy)


def _compliance(bench: _Bench, config: LoadGenConfig, outcomes: dict[str, _Pass],
                log_dir: Path) -> tuple[dict[str, Any], _Pass]:
    """The compliance test's audit pass (its audit.config applied), and its verdict against the reference passes
    with paths relative to the run's folder (which may be a temporary copy of a remote one)."""
    test = bench.params.loadgen_compliance_test
    audit_dir = compliance.audit_dir(log_dir, test)
    audit_config = compliance.write_audit_config(audit_dir, test, bench.spec.loadgen_model)
    audited = replace(config, mode="PerformanceOnly")
    audit = _run_pass(bench, audited, log_dir,
                      str(compliance.audit_performance_dir(log_dir, test).relative_to(log_dir)), audit_config)
    references = {mode: log_dir / outcome.folder for mode, outcome in outcomes.items()}
    verdict = compliance.verify(test, references, audit_dir, config.scenario).to_json()
    if test == "TEST01":
        _score_sampled_logs(bench, audit_dir / "accuracy")
    return _relative(verdict, log_dir), audit


def _relative(value: Any, base: Path) -> Any:
    """`value` (JSON data) with every path inside `base` made relative to it."""
    if isinstance(value, dict):
        return {key: _relative(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative(item, base) for item in value]
    if isinstance(value, str) and Path(value).is_relative_to(base):
        return str(Path(value).relative_to(base))
    return value


def _score_sampled_logs(bench: _Bench, folder: Path) -> None:
    """TEST01's accuracy/ as MLCommons' checker expects it: the accuracy script's mAP line for the sampled log
    (accuracy.txt), and after a mismatch also for the audit log and its baseline (compliance_accuracy.txt,
    baseline_accuracy.txt)."""
    texts = {"mlperf_log_accuracy.json": ("accuracy.txt",)}
    if (folder / compliance.BASELINE_LOG).exists():
        texts = {"mlperf_log_accuracy.json": ("accuracy.txt", "compliance_accuracy.txt"),
                 compliance.BASELINE_LOG: ("baseline_accuracy.txt",)}
    for log_name, text_names in texts.items():
        decoded = decode_accuracy_log(folder / log_name)
        line = (f"mAP={evaluate(decoded, bench.annotations, bench.spec.uses_inverse_map).mAP:.3f}%\n" if decoded
                else "mAP=n/a (the log holds no sampled responses)\n")
        for name in text_names:
            (folder / name).write_text(line)


def _problem_counts(outcomes: Iterable[_Pass]) -> dict[str, int]:
    """Bad-output counts summed over the passes."""
    total: Counter[str] = Counter()
    for outcome in outcomes:
        total.update(outcome.sut.outputs.counts())
    return dict(total)


def _log_files(log_dir: Path) -> list[str]:
    """Every file the run's LoadGen tests left, relative to the run's folder."""
    return sorted(str(p.relative_to(log_dir)) for p in log_dir.rglob("*") if p.is_file())


def _warm_up(backend: OnnxBackend, load, count: int, params: BenchmarkParams) -> Warmup:
    """The untimed warm-up before a timed test (none for AccuracyOnly, which is not timed)."""
    if params.loadgen_mode == "AccuracyOnly":
        return Warmup()
    return warm_up(backend, load, count, params.loadgen_warmup_samples)


def _notes(spec: ModelSpec, scored: bool) -> list[str]:
    """What the result's reader must be told: a model scored (an AccuracyOnly pass) against labels it does not
    use."""
    if spec.label_space is LabelSpace.OPENIMAGES and scored:
        note = FOREIGN_LABELS_NOTE.format(model=spec.name, space="OpenImages")
        log.warning("%s", note)
        return [note]
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
    """LoadGen's samples/s; where it reports none (AccuracyOnly, MultiStream), the SUT's own, labelled so."""
    if summary.samples_per_second is not None:
        return summary.samples_per_second, "loadgen"
    measured = sut.throughput()
    label = ACCURACY_PASS_THROUGHPUT if summary.mode == "AccuracyOnly" else SUT_THROUGHPUT.format(summary.scenario)
    return (round(measured, 3), label) if measured else (None, None)


def run_benchmark(params: BenchmarkParams, storage: Storage | None = None) -> BenchmarkResult:
    """The whole benchmark in one process, no Prefect: data, preprocessing, model, LoadGen, accuracy."""
    storage = storage or Storage()
    with step("download"):
        source = parse_dataset_url(params.dataset_url, params.loadgen_dataset_size, params.dataset_mirrors or ())
        manifest = ingest(source, params.loadgen_dataset_size, storage, LogProgress("download images", log))
    with step("preprocess"):
        preprocess(manifest, params.spec.resolution, storage, progress=LogProgress("preprocess", log),
                   resize_dtype=params.preprocess_resize_dtype)
    with step("fetch-model"):
        model = fetch_model(params.spec, params.model_url, params.model_md5, storage, params.model_mirrors or ())
    with step("inference"):
        return run_inference(params, manifest, model, storage)

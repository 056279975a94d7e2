"""Hostile numbers and faults (issue 6, cases 6-8): model outputs that must not be scored silently,
parameters that must fail before LoadGen naming themselves, Ctrl-C during LoadGen, markdown injection,
and a model scored against a label space it does not use. Everything runs for real: ONNX models with
the real contracts, onnxruntime, LoadGen, pycocotools, and `python -m odbench` in a subprocess."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, stored_files

from odbench import bounds
from odbench.accuracy import decode_accuracy_log, encode_detections, encode_if_clean
from odbench.backend import OnnxBackend
from odbench.benchmark import BenchmarkResult, run_benchmark
from odbench.harness import run_loadgen
from odbench.loadgen_settings import LoadGenConfig
from odbench.machine import usable_cpus
from odbench.models import ModelSpec, get_spec
from odbench.output_checks import BadModelOutputsError, check_outputs
from odbench.params import BenchmarkParams
from odbench.report import summary_markdown, terminal_summary
from odbench.standin import build_standin, constant_standin
from odbench.storage import Storage
from odbench.sut import DetectionSUT, SampleLibrary

N = 4
LOADGEN_STARTED = "LoadGen test started"


def hostile_rows(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One good detection and six bad ones: NaN box, inf box, NaN score (non-finite: 3), a box of ±1e12
    (far outside: 1), label -1 and one past the label space (outside it: 2)."""
    s = spec.box_scale
    good = [0.1 * s, 0.1 * s, 0.5 * s, 0.5 * s]
    past = 81 if spec.name == "ssd_resnet34" else 300
    boxes = [good, [np.nan, *good[1:]], [*good[:3], np.inf], good, [-1e12, good[1], 1e12, good[3]], good, good]
    scores = [0.9, 0.8, 0.8, np.nan, 0.8, 0.8, 0.8]
    labels = [1, 1, 1, 1, 1, -1, past]
    return np.asarray(boxes), np.asarray(scores), np.asarray(labels)


@pytest.fixture(scope="module")
def bench_storage(tmp_path_factory) -> Storage:
    """One storage for the module: the runs share the synthetic set's preprocessing."""
    return Storage(str(tmp_path_factory.mktemp("hostile-storage")))


def _params(model: Path | str, dataset: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "retinanet", "model_url": str(model), "dataset_url": str(dataset),
                              "loadgen_dataset_size": N, "execution_device": "cpu", **overrides})


def _hostile_model(tmp_path: Path, spec: ModelSpec) -> Path:
    """A model file answering `hostile_rows` for every image."""
    path = tmp_path / "hostile.onnx"
    path.write_bytes(constant_standin(spec, *hostile_rows(spec)))
    return path


@pytest.mark.parametrize("model_name", ["retinanet_coco", "ssd_resnet34"])
def test_bad_outputs_fail_the_run_naming_each_problem_and_its_count(tmp_path, synthetic_dir, bench_storage,
                                                                     model_name):
    path = _hostile_model(tmp_path, get_spec(model_name))
    with pytest.raises(BadModelOutputsError) as failure:
        run_benchmark(_params(path, synthetic_dir, model_name=model_name), bench_storage)
    message = str(failure.value)
    labels = "1..80" if model_name == "ssd_resnet34" else "1..90"
    for says in (f"{3 * N} detections with a NaN or infinite box coordinate or score",
                 f"{2 * N} detections with a label outside the model's label space {labels}",
                 f"{N} detections with a box more than 1 image size(s) outside the image",
                 f"in {N} sample(s), first qsl_idx 0", "tolerate_bad_outputs=True"):
        assert says in message, message


@pytest.mark.parametrize("model_name", ["retinanet_coco", "ssd_resnet34"])
def test_tolerated_bad_outputs_are_dropped_counted_and_never_remapped(tmp_path, synthetic_dir, bench_storage,
                                                                      model_name):
    path = _hostile_model(tmp_path, get_spec(model_name))
    result = run_benchmark(_params(path, synthetic_dir, model_name=model_name, tolerate_bad_outputs=True),
                           bench_storage)
    expected = {"non_finite": 3 * N, "label_outside_label_space": 2 * N, "box_far_outside_image": N}
    assert result.output_problems == expected and result.mAP is not None
    assert any("dropped bad model outputs" in note for note in result.notes)
    run_dir = Path(bench_storage.path(f"runs/{result.run_id}"))
    assert json.loads((run_dir / "result.json").read_text())["output_problems"] == expected
    decoded = decode_accuracy_log(run_dir / "mlperf_log_accuracy.json")
    assert sorted(decoded) == list(range(N))
    for rows in decoded.values():  # only the good detection, label 1 (person in both label spaces): never -1 read from the map's end
        assert rows.shape == (1, 7) and rows[0, 6] == 1 and np.isfinite(rows).all()
    assert "detections dropped: non_finite: 12" in terminal_summary(result)
    assert "label\\_outside\\_label\\_space: 8" in summary_markdown(result)


def test_more_detections_than_the_spec_allows_keeps_the_best_and_counts_the_rest(tmp_path, synthetic_dir,
                                                                                bench_storage):
    spec = get_spec("retinanet_coco")
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 600, (200_000, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(10, 200, (200_000, 2))], axis=1)
    scores = rng.permutation(200_000) / 200_000
    path = tmp_path / "crowded.onnx"
    path.write_bytes(constant_standin(spec, boxes, scores, rng.choice([1, 2, 3, 90], 200_000)))
    excess = (200_000 - spec.max_detections) * N
    with pytest.raises(BadModelOutputsError, match=f"{excess} detections beyond the model's maximum of 300"):
        run_benchmark(_params(path, synthetic_dir), bench_storage)
    result = run_benchmark(_params(path, synthetic_dir, tolerate_bad_outputs=True), bench_storage)
    assert result.output_problems == {"too_many_detections": excess} and result.mAP is not None
    rows = decode_accuracy_log(Path(bench_storage.path(f"runs/{result.run_id}/mlperf_log_accuracy.json")))[0]
    assert len(rows) == 300 and rows[:, 5].min() >= np.sort(scores)[-300].astype(np.float32)


def test_encoding_never_indexes_the_id_table_with_a_bad_label():
    spec = get_spec("ssd_resnet34")
    for label in (-1, 0, 81):
        with pytest.raises(ValueError, match="outside its label space 1..80"):
            encode_detections(0, np.asarray([[0.1, 0.1, 0.2, 0.2]]), np.asarray([0.5]), np.asarray([label]), spec)


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco", "retinanet_openimages"])
def test_the_one_pass_encoding_of_clean_outputs_is_the_checked_one_bit_for_bit(model_name):
    """Real stand-in outputs take the SUT's one-pass path and give the rows of the checked path exactly."""
    spec = get_spec(model_name)
    backend = OnnxBackend(build_standin(spec), spec, "cpu", 1)
    for seed in range(3):
        found = backend.infer(np.random.default_rng(seed).random((1, 3, spec.resolution, spec.resolution),
                                                                 np.float32))
        checked = check_outputs(*found, spec)
        fast = encode_if_clean(5, *found, spec)
        assert not checked.problems and len(found[1]) > 0 and fast is not None
        assert fast.tobytes() == encode_detections(5, checked.boxes, checked.scores, checked.labels, spec).tobytes()


def _variants(spec: ModelSpec) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Outputs the checks must see: each of hostile_rows' bad detections alone beside a good one, and the
    shapes and types the contract excludes."""
    boxes, scores, labels = (a.astype(t) for a, t in zip(hostile_rows(spec), (np.float32, np.float32, np.int64)))
    cases = {f"detection {i}": (boxes[[0, i]], scores[[0, i]], labels[[0, i]]) for i in range(1, len(scores))}
    good = boxes[:1], scores[:1], labels[:1]
    many = spec.max_detections + 1
    cases |= {"mismatched lengths": (boxes[:2], scores[:1], labels[:1]),
              "float64 boxes": (good[0].astype(np.float64), *good[1:]),
              "float labels": (*good[:2], good[2].astype(np.float32)),
              "boxes [K, 1, 4]": (good[0].reshape(1, 1, 4), *good[1:]),
              "labels [K, 1]": (*good[:2], good[2].reshape(1, 1)),
              "scores [K, 1]": (good[0], good[1].reshape(1, 1), good[2]),
              "float64 scores": (good[0], good[1].astype(np.float64), good[2]),
              "too many": (np.repeat(good[0], many, 0), np.repeat(good[1], many), np.repeat(good[2], many))}
    return cases


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco"])
def test_outputs_with_any_problem_or_off_contract_take_the_checked_path(model_name):
    spec = get_spec(model_name)
    for name, found in _variants(spec).items():
        assert encode_if_clean(0, *found, spec) is None, name


# --- parameters: each fails before LoadGen (and before any download), naming itself -------------------

PARAMETER_CASES = [
    (["--loadgen_target_qps", "inf"], "loadgen_target_qps=inf is not a finite number"),
    (["--loadgen_target_qps", "nan"], "loadgen_target_qps=nan is not a finite number"),
    (["--loadgen_target_latency", "nan"], "loadgen_target_latency=nan is not a finite number"),
    (["--loadgen_min_duration_s", "nan"], "loadgen_min_duration_s=nan is not a finite number"),
    (["--loadgen_max_duration_s", "inf"], "loadgen_max_duration_s=inf is not a finite number"),
    (["--loadgen_count_override", str(10**20)], f"loadgen_count_override={10**20} is out of range: it must be a "
                                                "whole number from 1 to 10000000"),
    (["--loadgen_count_override", "0"], "loadgen_count_override=0 is out of range"),
    (["--loadgen_dataset_size", str(10**12)], f"loadgen_dataset_size={10**12} is out of range"),
    (["--loadgen_buffer_size", "-3"], "loadgen_buffer_size=-3 is out of range"),
    (["--loadgen_buffer_size", "1000000", "--loadgen_dataset_size", "1000000"],
     "loadgen_buffer_size=1000000 keeps 1000000 samples of 7.7 MB"),
    (["--cpu_threads", "100000"], "cpu_threads=100000 is out of range: it must be a whole number from 0 to "
                                  f"{usable_cpus()} (the CPUs this process may use; 0 is onnxruntime's default; "
                                  "ODBENCH_MAX_CPU_THREADS=N sets another limit)"),
    (["--cpu_threads", "-1"], "cpu_threads=-1 is out of range"),
    (["--verbosity", "9"], "verbosity=9 is out of range: it must be a whole number from 0 to 3"),
    (["--loadgen_target_qps", "1000000"], "LoadGen would generate about 660000000 samples"),
    (["--loadgen_scenario", "SingleStream", "--loadgen_target_latency", "0.01"],
     "LoadGen would generate about 120000000 samples"),
]


def _odbench(args: list[str], storage: Path, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "odbench", "--model_name", "retinanet", "--model_url", "standin",
               "--storage_url", str(storage), *args]
    return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.fixture(scope="module")
def parameter_runs(tmp_path_factory, synthetic_dir) -> dict[str, tuple[int, str, list[str]]]:
    """Every case of PARAMETER_CASES through `python -m odbench`, all at once: rc, stderr, stored files."""
    running = {}
    for i, (args, _) in enumerate(PARAMETER_CASES):
        storage = tmp_path_factory.mktemp(f"params-{i}")
        running[" ".join(args)] = (_odbench([*args, "--dataset_url", str(synthetic_dir), "--loadgen_mode",
                                             "PerformanceOnly"], storage), storage)
    done = {}
    for key, (proc, storage) in running.items():
        _, err = proc.communicate(timeout=120)
        done[key] = (proc.returncode, err, stored_files(Storage(str(storage))))
    return done


@pytest.mark.parametrize("args, says", PARAMETER_CASES, ids=[" ".join(a) for a, _ in PARAMETER_CASES])
def test_absurd_parameters_fail_before_any_work_naming_the_parameter(parameter_runs, args, says):
    rc, err, stored = parameter_runs[" ".join(args)]
    assert rc == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("benchmark failed: ParameterRangeError: ") and says in last, last
    assert stored == []  # nothing downloaded, preprocessed or run


def test_a_float_for_a_whole_number_option_is_an_argument_error(tmp_path):
    proc = _odbench(["--loadgen_count_override", "1e20"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "argument --loadgen_count_override: invalid int value: '1e20'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("bad, says", [
    (dict(loadgen_dataset_size=5.0), "loadgen_dataset_size=5.0 is not a whole number"),
    (dict(loadgen_buffer_size=True), "loadgen_buffer_size=True is not a number"),
    (dict(loadgen_target_qps="fast"), "loadgen_target_qps='fast' is not a number"),
    (dict(loadgen_min_duration_s=10**6), "loadgen_min_duration_s=1000000 is out of range: it must be 0 or more "
                                         "and at most 86400 s"),
    (dict(loadgen_target_latency=1e-3), "it must be from 0.01 to 3600000 ms"),
    (dict(tolerate_bad_outputs="yes"), "tolerate_bad_outputs='yes' is not a boolean"),
])
def test_parameter_types_and_ranges_in_python(bad, says):
    with pytest.raises(ValueError, match=re_escape(says)):
        BenchmarkParams(**bad)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_cpu_threads_limit_is_the_usable_cpus_and_can_be_set(monkeypatch):
    cores = usable_cpus()
    assert BenchmarkParams(cpu_threads=cores).cpu_threads == cores
    with pytest.raises(bounds.ParameterRangeError, match="the CPUs this process may use"):
        BenchmarkParams(cpu_threads=cores + 1)
    monkeypatch.setenv(bounds.CPU_THREADS_ENV, str(cores + 1))
    assert BenchmarkParams(cpu_threads=cores + 1).cpu_threads == cores + 1
    monkeypatch.setenv(bounds.CPU_THREADS_ENV, "many")
    with pytest.raises(ValueError, match="ODBENCH_MAX_CPU_THREADS='many' is not a positive whole number"):
        BenchmarkParams(cpu_threads=1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_cpu_threads_limit_follows_the_cpus_this_process_may_use():
    """Pinned to one CPU, a run may ask for one intra-op thread, not the host's count."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert BenchmarkParams(cpu_threads=1).cpu_threads == 1
        with pytest.raises(bounds.ParameterRangeError, match="from 0 to 1 "):
            BenchmarkParams(cpu_threads=2)
    finally:
        os.sched_setaffinity(0, allowed)


def test_samples_on_device_must_fit_in_the_gpus_free_memory():
    """10 RetinaNet samples of 7.7 MB kept on the GPU: fine with 1 GB free, refused with 50 MB free (naming the
    buffer size that fits, and the way out), refused without a buffer size to offer when not even one fits."""
    params = BenchmarkParams(model_name="retinanet", samples_on_device=True, loadgen_dataset_size=10,
                             loadgen_buffer_size=10)
    params.check_device_buffer(10**9)
    with pytest.raises(bounds.ParameterRangeError, match=re_escape(
            "samples_on_device with loadgen_buffer_size=10 keeps 10 samples of 7.7 MB (77 MB) in GPU memory, more "
            "than 80% of the 50 MB free there: use loadgen_buffer_size=5 or less, or set samples_on_device=false "
            "(pinned_host_samples=true keeps them in host memory, page-locked)")):
        params.check_device_buffer(50 * 10**6)
    with pytest.raises(bounds.ParameterRangeError, match="free there: set samples_on_device=false"):
        params.check_device_buffer(10**6)
    uint8 = BenchmarkParams(model_name="retinanet", samples_on_device=True, normalize_on_device=True,
                            preprocess_resize_dtype="uint8", loadgen_dataset_size=10, loadgen_buffer_size=10)
    uint8.check_device_buffer(50 * 10**6)  # a quarter of the bytes: 19 MB of 40 MB allowed


def test_the_bounds_table_is_documented_and_covers_every_numeric_parameter():
    numeric = {f.name for f in fields(BenchmarkParams) if "int" in str(f.type) or "float" in str(f.type)}
    assert set(bounds.bounds()) == numeric
    for name in bounds.bounds():
        assert f"| {name}" in bounds.__doc__ or f", {name} |" in bounds.__doc__, name


# --- Ctrl-C during LoadGen ----------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_sigint_during_loadgen_exits_130_with_one_line(tmp_path, synthetic_dir, scenario):
    proc = _odbench(["--dataset_url", str(synthetic_dir), "--loadgen_dataset_size", "8", "--loadgen_mode",
                     "PerformanceOnly", "--loadgen_min_duration_s", "30", "--loadgen_scenario", scenario], tmp_path)
    seen = []
    for line in proc.stderr:  # the core logs at INFO by default (verbosity 2)
        seen.append(line)
        if LOADGEN_STARTED in line:
            break
    assert seen and LOADGEN_STARTED in seen[-1], "".join(seen)
    time.sleep(1.0)  # well inside the 30 s test
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20, "LoadGen was not stopped: it ran on towards its 30 s"
    assert proc.returncode == 130, (proc.returncode, err)  # not 139 (segfault) nor 134 (abort)
    assert err.strip() == "interrupted during inference" and out == ""  # one line after the signal, no traceback


def test_sigint_stops_loadgen_in_process_restores_the_handler_and_loadgen_runs_again(tmp_path):
    """The harness itself: KeyboardInterrupt after a clean stop, the previous SIGINT handler back, and a
    second LoadGen test in the same process completes (SUT and QSL were destroyed properly)."""
    spec = get_spec("retinanet")
    backend = OnnxBackend(build_standin(spec), spec, "cpu")
    started = threading.Event()

    class Watched:
        providers = backend.providers

        def infer(self, x):
            started.set()
            return backend.infer(x)

    def interrupt() -> None:
        if started.wait(60):
            os.kill(os.getpid(), signal.SIGINT)

    library = SampleLibrary(8, lambda i: np.zeros((1, 3, 800, 800), np.float32))
    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        run_loadgen(DetectionSUT(Watched(), library, spec),
                    LoadGenConfig("Offline", "PerformanceOnly", min_duration_s=30), spec.loadgen_model, tmp_path / "a")
    assert time.monotonic() - begun < 20 and signal.getsignal(signal.SIGINT) is before
    library = SampleLibrary(8, lambda i: np.zeros((1, 3, 800, 800), np.float32))
    run_loadgen(DetectionSUT(backend, library, spec), LoadGenConfig("Offline", "PerformanceOnly", count_override=8),
                spec.loadgen_model, tmp_path / "b")
    assert "result_validity" in (tmp_path / "b" / "mlperf_log_detail.txt").read_text()


def test_exceptions_in_loadgen_callbacks_fail_the_run_without_killing_the_process(tmp_path):
    spec = get_spec("retinanet")

    class Exploding:
        providers = ["CPUExecutionProvider"]

        def infer(self, x):
            raise SystemExit("the backend exits")  # a BaseException: would abort LoadGen's thread

    library = SampleLibrary(4, lambda i: np.zeros((1, 3, 800, 800), np.float32))
    with pytest.raises(RuntimeError, match="4 inference\\(s\\) failed; first: SystemExit\\('the backend exits'\\)"):
        run_loadgen(DetectionSUT(Exploding(), library, spec), LoadGenConfig(), spec.loadgen_model, tmp_path / "a")
    sut = DetectionSUT(Exploding(), SampleLibrary(4, lambda i: np.zeros(1, np.float32)), spec)
    sut.pool.shutdown()  # issue_queries itself now fails: LoadGen must still get its answers
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        run_loadgen(sut, LoadGenConfig(), spec.loadgen_model, tmp_path / "b")


# --- reports: escaped markdown, redacted URLs, the label-space note --------------------------------------

def _result(**overrides) -> BenchmarkResult:
    values = dict(run_id="r1", run_dir="file:///tmp/runs/`r1`", model_name="retinanet_coco", stand_in=False,
                  model_md5="0" * 32, model_source="standin", dataset="synthetic", dataset_size=4,
                  dataset_digest="d", scenario="Offline", mode="AccuracyOnly", providers=["CPUExecutionProvider"],
                  mAP=1.0, coco_stats=None, samples_per_second=1.0, samples_per_second_source="loadgen",
                  validity=None, latency_ns={}, performance_metric="samples per second", performance=None)
    return BenchmarkResult(**{**values, **overrides})


def test_markdown_report_escapes_every_data_derived_cell_and_redacts_urls():
    result = _result(dataset="http://user:s3cret@example.com/# x/[a](javascript:alert(1))",
                     notes=["<img src=x onerror=alert(1)> | col"], output_problems={"non_finite": 2})
    markdown = summary_markdown(result)
    assert "s3cret" not in markdown and "s3cret" not in terminal_summary(result)
    assert "](javascript:" not in markdown and "\\[a\\]\\(javascript:alert\\(1\\)\\)" in markdown
    assert not any(line.startswith("# x") for line in markdown.splitlines())
    assert "<img" not in markdown and "&lt;img" in markdown
    assert "\\`r1\\`" in markdown  # escaped: no code span can open
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == 1 for line in table[1:])  # a pipe in data cannot add a column


def test_openimages_scored_on_coco_says_the_label_spaces_differ(synthetic_dir, bench_storage):
    params = BenchmarkParams(model_name="retinanet_openimages", model_url="standin", dataset_url=str(synthetic_dir),
                             loadgen_dataset_size=N, execution_device="cpu")
    result = run_benchmark(params, bench_storage)
    assert result.mAP is not None
    assert result.notes == ["retinanet_openimages labels are OpenImages classes, not COCO categories: its mAP on "
                            "a COCO annotation file does not measure the model"]
    assert "note         retinanet_openimages labels are OpenImages classes" in terminal_summary(result)
    assert "> **Note:** retinanet\\_openimages labels are OpenImages classes" in summary_markdown(result)


def test_the_harness_loads_verified_samples_and_recomputes_a_corrupt_one(synthetic_dir, bench_storage, caplog):
    """LoadGen's sample loads go through preprocess.load_sample: a truncated stored sample is recomputed
    during the run (untimed), which completes and scores as before."""
    from odbench.coco import images_in_order
    from odbench.preprocess import preprocessed_path

    params = BenchmarkParams(model_name="retinanet", model_url="standin", dataset_url=str(synthetic_dir),
                             loadgen_dataset_size=N, execution_device="cpu")
    first = run_benchmark(params, bench_storage)
    annotations = json.loads((synthetic_dir / "annotations/instances_val2017.json").read_text())
    image = images_in_order(annotations)[1]
    jpeg_md5 = hashlib.md5((synthetic_dir / "val2017" / image.file_name).read_bytes()).hexdigest()
    path = Path(bench_storage.path(preprocessed_path(800, jpeg_md5)))
    path.write_bytes(path.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, "odbench.preprocess"):
        again = run_benchmark(params, bench_storage)
    assert "truncated" in caplog.text and "recomputing" in caplog.text  # in LoadGen's load step, not before
    assert again.mAP == first.mAP and again.coco_stats == first.coco_stats
    assert len(path.read_bytes()) > 100 and path.stat().st_size == len(path.read_bytes())


def test_detail_log_with_bare_non_finite_values_or_garbage_is_read_not_crashed_on(tmp_path):
    from odbench.loadgen_log import read_detail_log

    log = tmp_path / "mlperf_log_detail.txt"
    log.write_text(':::MLLOG {"key": "effective_target_qps", "value": inf, "metadata": {"is_error": false}}\n'
                   ':::MLLOG {"key": "result_mean_latency_ns", "value": nan, "metadata": {}}\n'
                   ':::MLLOG not json at all\n')
    events = read_detail_log(log)
    assert events["effective_target_qps"] == float("inf") and np.isnan(events["result_mean_latency_ns"])
    assert events["errors"] == ["unreadable LoadGen log line: :::MLLOG not json at all"]

"""No guessing a target: a timed run without one measures a short pass, records the calibrated target, and
LoadGen runs with it (read back from LoadGen's own detail log)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from odbench.backend import OnnxBackend
from odbench.benchmark import run_benchmark
from odbench.bounds import MAX_LOADGEN_SAMPLES
from odbench.calibration import Measurement, apply, derive, measure, missing_target
from odbench.loadgen_settings import LoadGenConfig
from odbench.models import get_spec
from odbench.params import BenchmarkParams
from odbench.standin import build_standin
from odbench.storage import Storage

N = 8


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "retinanet", "loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                              "loadgen_profile": "quick", "loadgen_mode": "PerformanceOnly", **overrides})


@pytest.fixture(scope="module")
def calib_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("calibration-storage")))


@pytest.mark.parametrize("scenario, setting, effective_key", [
    ("Offline", "loadgen_target_qps", "target_qps"),
    ("SingleStream", "loadgen_target_latency", "target_qps"),  # LoadGen logs SingleStream's latency as 1/latency
])
def test_a_timed_run_without_a_target_calibrates_and_is_valid(synthetic_dir, calib_storage, scenario, setting,
                                                              effective_key):
    result = run_benchmark(_params(synthetic_dir, loadgen_scenario=scenario), calib_storage)
    calibration = result.calibration
    assert calibration is not None and calibration["setting"] == setting
    assert calibration["samples"] >= 1 and calibration["fastest_latency_ms"] <= calibration["median_latency_ms"]
    assert result.validity == "VALID", result.loadgen
    effective = result.effective_settings[effective_key]
    expected = calibration["value"] if setting == "loadgen_target_qps" else 1000 / calibration["value"]
    assert effective == pytest.approx(expected, rel=1e-3)  # LoadGen ran with the calibrated value
    user_conf = Path(calib_storage.path(f"runs/{result.run_id}/user.conf")).read_text()
    assert f"{scenario}.{setting.removeprefix('loadgen_')} = {calibration['value']}" in user_conf


def test_a_given_target_is_not_calibrated(synthetic_dir, calib_storage):
    result = run_benchmark(_params(synthetic_dir, loadgen_target_qps=50.0), calib_storage)
    assert result.calibration is None
    assert result.effective_settings["target_qps"] == 50


def test_accuracy_runs_and_given_targets_need_no_calibration():
    assert missing_target(LoadGenConfig(mode="AccuracyOnly")) is None
    assert missing_target(LoadGenConfig(mode="PerformanceOnly", target_qps=5)) is None
    assert missing_target(LoadGenConfig(mode="PerformanceOnly")) == "loadgen_target_qps"
    assert missing_target(LoadGenConfig(scenario="SingleStream", mode="PerformanceOnly")) == "loadgen_target_latency"
    assert missing_target(LoadGenConfig(scenario="Server", mode="PerformanceOnly")) == "loadgen_target_qps"


def test_a_cheap_model_is_measured_for_the_minimum_time_not_just_its_few_inferences():
    """A few milliseconds of inferences are at the mercy of one scheduler hiccup (an Offline target set from
    a halved throughput ends the test before its minimum duration): the pass lasts min_s at least."""
    spec = get_spec("retinanet")
    backend = OnnxBackend(build_standin(spec), spec, "cpu", 0)
    sample = np.zeros((1, 3, 800, 800), np.float32)
    measured = measure(backend, lambda i: sample, count=1, samples=4, concurrency=2, min_s=0.3)
    wall = len(measured.latencies_s) / measured.throughput
    assert wall >= 0.3 and len(measured.latencies_s) > 4


def test_targets_follow_the_measured_pass_on_the_safe_side():
    """Measured on a real onnxruntime session: Offline asks for more than the SUT did, Server for less,
    SingleStream expects the fastest latency, MultiStream a query of samples_per_query of them."""
    spec = get_spec("retinanet")
    backend = OnnxBackend(build_standin(spec), spec, "cpu", 0)
    sample = np.zeros((1, 3, 800, 800), np.float32)
    measured = measure(backend, lambda i: sample, count=1, samples=4, concurrency=2, min_s=0.0)
    latencies = measured.latencies_s
    assert len(latencies) == 4 and all(t > 0 for t in latencies) and measured.throughput > 0
    offline = derive(LoadGenConfig(mode="PerformanceOnly"), measured, concurrency=2)
    server = derive(LoadGenConfig(scenario="Server", mode="PerformanceOnly"), measured, concurrency=2)
    single = derive(LoadGenConfig(scenario="SingleStream", mode="PerformanceOnly"), measured, concurrency=2)
    multi = derive(LoadGenConfig(scenario="MultiStream", mode="PerformanceOnly", samples_per_query=4), measured,
                   concurrency=2)
    assert server.value < measured.throughput < offline.value
    assert single.value == pytest.approx(min(latencies) * 1000, rel=1e-3)
    assert multi.value == pytest.approx(min(latencies) * 1000 * 4 / 2, rel=1e-3)
    # batches of 8: a query of 8 is one inference, however many workers could run more
    batched = derive(LoadGenConfig(scenario="MultiStream", mode="PerformanceOnly", samples_per_query=8),
                     Measurement(latencies, measured.throughput, batch=8), concurrency=4)
    assert batched.value == pytest.approx(min(latencies) * 1000, rel=1e-3)
    assert "throughput" in offline.basis and "fastest" in single.basis and "clamped" not in offline.basis


def test_a_calibrated_target_never_leaves_the_allowed_range():
    """A very fast SUT (here: measured figures of a microsecond) gets the nearest allowed target, said in the
    basis, instead of a run that fails after all the data work."""
    fast = Measurement([1e-6] * 8, throughput=8e6)
    offline = derive(LoadGenConfig(mode="PerformanceOnly"), fast, concurrency=1)  # official: 600 s
    planned, _, _ = apply(LoadGenConfig(mode="PerformanceOnly"), offline.value, offline.setting).planned_samples()
    assert planned <= MAX_LOADGEN_SAMPLES and "clamped" in offline.basis
    single = derive(LoadGenConfig(scenario="SingleStream", mode="PerformanceOnly"), fast, concurrency=1)
    assert single.value >= 0.01 and "clamped" in single.basis
    apply(LoadGenConfig(scenario="SingleStream", mode="PerformanceOnly"), single.value, single.setting)  # allowed


def test_a_fixed_query_count_needs_no_target_except_servers_arrival_rate():
    fixed = dict(mode="PerformanceOnly", count_override=16)
    assert missing_target(LoadGenConfig(**fixed)) is None
    assert missing_target(LoadGenConfig(scenario="SingleStream", **fixed)) is None
    assert missing_target(LoadGenConfig(scenario="Server", **fixed)) == "loadgen_target_qps"

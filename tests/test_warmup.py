"""The untimed warm-up before a timed LoadGen test: its samples run before LoadGen's first query, its length
is recorded, 0 disables it, and AccuracyOnly (untimed) has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odbench import benchmark
from odbench import sut as sut_module
from odbench.backend import OnnxBackend
from odbench.benchmark import run_benchmark
from odbench.params import BenchmarkParams
from odbench.report import metrics_rows, summary_markdown, terminal_summary
from odbench.storage import Storage

N = 6


class _Tracker:
    """Counts inferences on the stand-in backend and notes how many had run when LoadGen's first query came."""

    def __init__(self, monkeypatch):
        self.infers = 0
        self.at_first_query: int | None = None
        self.queries = 0
        tracker = self

        class CountingBackend(OnnxBackend):
            def infer(self, x):
                tracker.infers += 1
                return super().infer(x)

        real_issue = sut_module.DetectionSUT.issue_queries

        def issue_queries(sut, samples):
            if tracker.at_first_query is None:
                tracker.at_first_query = tracker.infers  # LoadGen's issue thread: the first timed query
            tracker.queries += len(samples)
            return real_issue(sut, samples)

        monkeypatch.setattr(benchmark, "OnnxBackend", CountingBackend)
        monkeypatch.setattr(sut_module.DetectionSUT, "issue_queries", issue_queries)


@pytest.fixture(scope="module")
def warm_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("warmup-storage")))


def _run(synthetic_dir: Path, storage: Storage, **overrides):
    # a given target: a calibration pass (odbench/calibration.py) would add its inferences to those counted here
    scenario = overrides.get("loadgen_scenario", "Offline")
    target = {"loadgen_target_qps": 100.0} if scenario == "Offline" else {"loadgen_target_latency": 10.0}
    params = BenchmarkParams(**{"model_name": "retinanet", "loadgen_dataset_size": N, "model_url": "standin",
                                "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                                "loadgen_mode": "PerformanceOnly", "loadgen_count_override": 4,
                                "loadgen_buffer_size": 4, **target, **overrides})
    result = run_benchmark(params, storage)
    stored = json.loads(Path(storage.path(f"runs/{result.run_id}/result.json")).read_text())
    return result, stored


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_performance_run_warms_up_before_loadgens_first_query(synthetic_dir, warm_storage, monkeypatch, scenario):
    tracker = _Tracker(monkeypatch)
    result, stored = _run(synthetic_dir, warm_storage, loadgen_scenario=scenario, loadgen_warmup_samples=10)
    # 10 warm-up inferences (cycling over the 6 samples), all of them before LoadGen issued its first query
    assert result.warmup["samples"] == 10 and result.warmup["seconds"] > 0
    assert tracker.at_first_query == 10
    assert tracker.infers == 10 + tracker.queries  # LoadGen's own queries come on top, none of them warm-up
    assert stored["warmup"] == result.warmup
    assert "warm-up      10 samples in" in terminal_summary(result)
    assert {"metric": "warmup", "value": f"10 samples in {result.warmup['seconds']:.3f} s (untimed)"} \
        in metrics_rows(result)
    assert "| warmup | 10 samples in" in summary_markdown(result)


def test_the_default_warms_up_with_8_samples(synthetic_dir, warm_storage, monkeypatch):
    tracker = _Tracker(monkeypatch)
    result, _ = _run(synthetic_dir, warm_storage)
    assert BenchmarkParams().loadgen_warmup_samples == 8
    assert result.warmup["samples"] == 8 and tracker.at_first_query == 8


def test_zero_disables_the_warm_up(synthetic_dir, warm_storage, monkeypatch):
    tracker = _Tracker(monkeypatch)
    result, stored = _run(synthetic_dir, warm_storage, loadgen_warmup_samples=0)
    assert result.warmup == stored["warmup"] == {"samples": 0, "seconds": 0.0}
    assert tracker.at_first_query == 0 and tracker.infers == tracker.queries
    assert "warm-up      none" in terminal_summary(result)


def test_accuracy_runs_are_not_timed_and_record_no_warm_up(synthetic_dir, warm_storage, monkeypatch):
    tracker = _Tracker(monkeypatch)
    result, stored = _run(synthetic_dir, warm_storage, loadgen_mode="AccuracyOnly", loadgen_count_override=None)
    assert result.warmup == stored["warmup"] == {"samples": 0, "seconds": 0.0}
    assert tracker.at_first_query == 0 and tracker.infers == N


def test_the_warm_up_stops_after_its_time_limit_but_runs_at_least_once():
    class Slow:
        calls = 0

        def infer(self, x):
            Slow.calls += 1
            import time
            time.sleep(0.05)

    warm = sut_module.warm_up(Slow(), lambda i: i, count=3, samples=100, max_s=0.12)
    assert 1 <= warm.samples == Slow.calls < 100 and warm.seconds >= 0.12
    assert sut_module.warm_up(Slow(), lambda i: i, count=3, samples=5, max_s=0.0).samples == 1


@pytest.mark.parametrize("bad", [-1, 10_001, 2.5, True])
def test_warmup_samples_out_of_range_fail_naming_the_parameter(bad):
    with pytest.raises(ValueError, match="loadgen_warmup_samples="):
        BenchmarkParams(loadgen_warmup_samples=bad)

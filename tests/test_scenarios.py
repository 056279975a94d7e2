"""LoadGen's four scenarios and its modes on the real stand-ins: parsed per-scenario results, Server validity,
FindPeakPerformance, scenario-specific option errors, and the SUT under failure and a stop request."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from odbench.backend import OnnxBackend
from odbench.benchmark import _Bench, run_benchmark
from odbench.harness import run_loadgen
from odbench.loadgen_log import LoadGenSummary, summarize
from odbench.loadgen_settings import QUICK_MIN_QUERY_COUNT, SCENARIOS, LoadGenConfig
from odbench.models import get_spec
from odbench.params import BenchmarkParams
from odbench.standin import build_standin
from odbench.storage import Storage
from odbench.sut import ANSWER_EVERY, DetectionSUT, SampleLibrary

N = 8
GUARD_S = 120  # no LoadGen test here may take longer (each takes seconds): a hang fails instead of blocking
METRICS = {"Offline": "samples per second", "SingleStream": "90th percentile latency (ns)",
           "MultiStream": "99th percentile per-query latency (ns)", "Server": "scheduled samples per second"}


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"loadgen_dataset_size": N, "model_url": "standin", "dataset_url": str(synthetic_dir),
                              "execution_device": "cpu", "loadgen_profile": "quick", **overrides})


def _within(seconds: float, work: Callable[[], object]) -> object:
    """Run `work` on a helper thread; fail (instead of hanging the suite) when it takes longer than `seconds`."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # noqa: BLE001 — re-raised below
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the LoadGen test did not end within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _summary(storage: Storage, result, scenario: str, mode: str) -> LoadGenSummary:
    """The parsed logs of a one-pass run (its logs lie in the run's folder)."""
    return summarize(Path(storage.path(f"runs/{result.run_id}")) / "mlperf_log_detail.txt", scenario, mode)


@pytest.fixture(scope="module")
def scenario_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("scenario-storage")))


# every scenario x mode on both stand-ins; quick tests shortened to 1 s (SSD's 1200x1200 stand-in is the slow one)
MATRIX = [(model, scenario, mode) for model in ("ssd_resnet34", "retinanet_coco")
          for scenario in METRICS for mode in ("AccuracyOnly", "PerformanceOnly")]


@pytest.mark.parametrize("model_name, scenario, mode", MATRIX, ids=["-".join(case) for case in MATRIX])
def test_every_scenario_and_mode_gives_its_own_results(synthetic_dir, scenario_storage, model_name, scenario, mode):
    params = _params(synthetic_dir, model_name=model_name, loadgen_scenario=scenario, loadgen_mode=mode,
                     loadgen_min_duration_s=1 if mode == "PerformanceOnly" else None, loadgen_warmup_samples=2)
    result = _within(GUARD_S, lambda: run_benchmark(params, scenario_storage))
    summary = _summary(scenario_storage, result, scenario, mode)
    assert result.scenario == scenario and summary.effective_settings["scenario"] == scenario
    assert result.performance_metric == METRICS[scenario] == summary.performance[0]
    if mode == "AccuracyOnly":
        entries = json.loads(Path(scenario_storage.path(f"runs/{result.run_id}/mlperf_log_accuracy.json")).read_text())
        assert sorted({e["qsl_idx"] for e in entries}) == list(range(N))  # every image answered and scored
        assert 0.0 <= result.mAP <= 100.0 and summary.validity is None and summary.performance[1] is None
        return
    assert result.mAP is None and summary.validity in ("VALID", "INVALID") and summary.errors == []
    assert result.performance == summary.performance[1] and result.validity == summary.validity
    assert summary.summary_fields["Scenario"] == scenario and summary.summary_fields["Result is"] == summary.validity
    assert summary.query_count >= (1 if scenario == "Offline" else QUICK_MIN_QUERY_COUNT)  # Offline: one query
    assert summary.min_queries_met
    assert (summary.validity == "VALID") == (summary.reason is None)
    _check_scenario_fields(summary)


def _check_scenario_fields(summary: LoadGenSummary) -> None:
    """The scenario's own numbers are present and plausible (the stand-ins do ~100-500 samples/s on 2 cores)."""
    value = summary.performance[1]
    if summary.scenario == "Offline":
        assert 5 < value < 20_000 and summary.summary_fields["Samples per second"] == pytest.approx(value, rel=1e-3)
    elif summary.scenario == "SingleStream":
        assert 1e5 < value < 5e9 and summary.latency_ns["p50"] <= summary.latency_ns["p99"]
        assert "90.0th percentile latency (ns)" in summary.summary_fields
    elif summary.scenario == "MultiStream":  # 1 s of 8-sample queries: far fewer than the 662 early stopping needs
        assert summary.effective_settings["samples_per_query"] == 8
        assert 1e5 < value < 5e9 and summary.per_query_latency_ns["p50"] <= value
        assert summary.validity == "INVALID" and not summary.early_stopping_met
        assert "662 queries" in summary.reason and "early stopping not met" in summary.reason
    else:
        rate = summary.effective_settings["target_qps"]
        assert 0.4 * rate < value < 2.5 * rate  # Poisson arrivals at the target rate
        assert summary.completed_samples_per_second > 0 and summary.overlatency_query_count >= 0
        assert summary.perf_constraints_met is not None and "Scheduled samples per second" in summary.summary_fields


def test_server_at_a_sustainable_rate_is_valid_and_at_fifty_times_it_is_invalid(synthetic_dir, scenario_storage):
    """retinanet's stand-in does ~100 samples/s on these images with other tests on the 2 cores (up to ~700/s on
    a quiet machine): 60/s under a 1 s bound (a margin for the shared machine) stays VALID, and 500 queries are
    enough for early stopping (459 when none is over the bound); at 50x that rate (3000/s, 600 queries in 0.2 s)
    under the official 100 ms bound a queue piles up on any of these machines, INVALID."""
    common = dict(model_name="retinanet_coco", loadgen_scenario="Server", loadgen_mode="PerformanceOnly",
                  loadgen_warmup_samples=2)
    ok = _within(GUARD_S, lambda: run_benchmark(_params(
        synthetic_dir, **common, loadgen_target_qps=60, loadgen_target_latency=1000, loadgen_min_duration_s=0.5,
        loadgen_min_query_count=500), scenario_storage))
    summary = _summary(scenario_storage, ok, "Server", "PerformanceOnly")
    assert ok.validity == "VALID", summary.reason
    assert summary.perf_constraints_met and summary.early_stopping_met and summary.query_count >= 500
    assert summary.effective_settings["target_latency_ns"] == 1_000_000_000
    over = _within(GUARD_S, lambda: run_benchmark(_params(
        synthetic_dir, **common, loadgen_target_qps=3000, loadgen_min_duration_s=0.2, loadgen_min_query_count=200),
        scenario_storage))
    summary = _summary(scenario_storage, over, "Server", "PerformanceOnly")
    assert summary.effective_settings["target_latency_ns"] == 100_000_000  # the official bound, not the default 10 ms
    assert over.validity == "INVALID" and summary.perf_constraints_met is False
    assert summary.latency_ns["p99"] > 100_000_000 and summary.overlatency_query_count > 0
    assert "Reduce target QPS to improve latency" in summary.reason
    assert summary.completed_samples_per_second < summary.scheduled_samples_per_second
    assert over.performance == summary.scheduled_samples_per_second


def test_find_peak_performance_searches_server_rates_and_reports_the_peak(synthetic_dir, scenario_storage):
    """Short tests (0.25 s, at least 16 queries each) from 20 samples/s: LoadGen doubles the rate until the
    100 ms bound fails, then bisects to 0.1 samples/s; the outcome is the highest rate that met the bound."""
    params = _params(synthetic_dir, model_name="retinanet_coco", loadgen_scenario="Server",
                     loadgen_mode="FindPeakPerformance", loadgen_target_qps=20, loadgen_min_duration_s=0.25,
                     loadgen_warmup_samples=2)
    result = _within(GUARD_S, lambda: run_benchmark(params, scenario_storage))
    summary = _summary(scenario_storage, result, "Server", "FindPeakPerformance")
    peak = summary.peak
    assert peak is not None and peak.tested_qps[0] == 20 and summary.summary_fields["Mode"] == "FindPeakPerformance"
    if peak.peak_qps is None:  # a machine too busy for even the first rate: LoadGen says so
        assert "Initial lower bound does not satisfy" in peak.message
    else:
        assert len(peak.tested_qps) >= 3 and peak.peak_qps >= 20 and peak.peak_qps in peak.tested_qps
        assert summary.summary_fields["target_qps"] == pytest.approx(peak.peak_qps, rel=1e-3)
    assert result.performance_metric == "scheduled samples per second" and result.performance > 0


@pytest.mark.parametrize("bad, says", [
    (dict(loadgen_scenario="SingleStream", loadgen_target_qps=50),
     "loadgen_target_qps=50 does not apply to SingleStream.*Drop loadgen_target_qps"),
    (dict(loadgen_scenario="MultiStream", loadgen_target_qps=50),
     "loadgen_target_qps=50 does not apply to MultiStream.*loadgen_target_latency sets MultiStream's expected"),
    (dict(loadgen_scenario="Offline", loadgen_target_latency=10),
     "loadgen_target_latency=10 does not apply to Offline.*Drop loadgen_target_latency"),
    (dict(loadgen_scenario="Server", loadgen_multistreamness=4),
     "loadgen_multistreamness=4 .* applies only to loadgen_scenario=MultiStream, not Server"),
    (dict(loadgen_multistreamness=8), "applies only to loadgen_scenario=MultiStream, not Offline"),
    (dict(loadgen_mode="FindPeakPerformance"),
     "FindPeakPerformance .* only with loadgen_scenario=Server, not Offline: use loadgen_scenario=Server"),
    (dict(loadgen_scenario="MultiStream", loadgen_multistreamness=0), "loadgen_multistreamness=0 is out of range"),
    (dict(loadgen_scenario="Server", loadgen_mode="PerformanceOnly", loadgen_target_qps=100_000),
     "about 60000000 samples .*loadgen_target_qps 100000 × loadgen_min_duration_s 600 s .*lower loadgen_target_qps"),
    (dict(loadgen_scenario="MultiStream", loadgen_mode="Submission", loadgen_target_latency=0.01),
     "samples .*× 8 samples per query.*raise loadgen_target_latency"),
    (dict(loadgen_scenario="Serverless"), "valid: Offline, SingleStream, MultiStream, Server"),
    (dict(loadgen_mode="Peak"), "valid: AccuracyOnly, PerformanceOnly, FindPeakPerformance, Submission"),
])
def test_options_a_scenario_has_no_use_for_fail_before_loadgen_naming_the_fix(bad, says):
    with pytest.raises(ValueError, match=says):
        BenchmarkParams(**bad)


def test_user_conf_has_each_scenarios_keys_and_submission_is_two_passes():
    multi = LoadGenConfig("MultiStream", "PerformanceOnly", target_latency_ms=50, samples_per_query=4,
                          count_override=10).user_conf("retinanet", 8)
    assert "retinanet.MultiStream.samples_per_query = 4\n" in multi and "MultiStream.target_latency = 50\n" in multi
    server = LoadGenConfig("Server", "PerformanceOnly", target_qps=40, target_latency_ms=80,
                           count_override=10).user_conf("retinanet", 8)
    assert "retinanet.Server.target_qps = 40\n" in server and "retinanet.Server.target_latency = 80\n" in server
    quick = LoadGenConfig("Server", "PerformanceOnly", profile="quick").user_conf("ssd-resnet34", 8)
    assert "ssd-resnet34.Server.target_latency = 100\n" in quick  # the bound stays official; sizes are quick
    assert "MultiStream" not in quick and "min_duration = 2000\n" in quick
    submission = LoadGenConfig("Server", "Submission", target_qps=40)
    assert [p.mode for p in submission.passes()] == ["AccuracyOnly", "PerformanceOnly"]
    assert all(p.target_qps == 40 and p.scenario == "Server" for p in submission.passes())
    assert LoadGenConfig().passes() == (LoadGenConfig(),)


# --- the SUT under every scenario: a failing inference, a stop request ---------------------------------------

RETINANET = get_spec("retinanet_coco")
COUNT = 12  # queries (MultiStream: of 8 samples)
TIMED = {"Offline": dict(target_qps=100), "SingleStream": dict(target_latency_ms=1),
         "MultiStream": dict(target_latency_ms=8), "Server": dict(target_qps=200)}


class _Scripted:
    """The stand-in backend, with something done on its k-th inference (raise, or ask the SUT to stop)."""

    def __init__(self, at: int, action: Callable[[], None]):
        self.inner = OnnxBackend(build_standin(RETINANET), RETINANET, "cpu")
        self.providers = self.inner.providers
        self.at, self.action, self.calls, self._lock = at, action, 0, threading.Lock()

    def infer(self, x):
        with self._lock:
            self.calls += 1
            now = self.calls
        if now == self.at:
            self.action()
        return self.inner.infer(x)


def _sut(backend, workers: int, on_issue_thread: bool = False) -> DetectionSUT:
    library = SampleLibrary(N, lambda i: np.random.default_rng(i).random((1, 3, 800, 800), np.float32))
    return DetectionSUT(backend, library, RETINANET, workers=workers, drain_on_issue_thread=on_issue_thread)


# each scenario with its queries handed to the pool, and (not Server: a run never does) drained on the issue thread
DRAINS = [(scenario, False) for scenario in TIMED] + [(scenario, True) for scenario in TIMED if scenario != "Server"]


def _expected_samples(scenario: str) -> int:
    return COUNT * 8 if scenario == "MultiStream" else COUNT


def _fail() -> None:
    raise RuntimeError("inference 5 failed on purpose")


@pytest.mark.parametrize("scenario, on_issue_thread", DRAINS)
def test_a_failing_inference_ends_the_test_with_its_error_every_sample_answered_once(tmp_path, scenario,
                                                                                     on_issue_thread):
    sut = _sut(_Scripted(5, _fail), workers=2, on_issue_thread=on_issue_thread)
    config = LoadGenConfig(scenario, "PerformanceOnly", count_override=COUNT, **TIMED[scenario])
    with pytest.raises(RuntimeError, match=re.escape("1 inference(s) failed; first: RuntimeError('inference 5 "
                                                     "failed on purpose')")):
        _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.issued == sut.answered == _expected_samples(scenario) == sut.completed
    assert "result_validity" in (tmp_path / "mlperf_log_detail.txt").read_text()  # LoadGen finished its test


@pytest.mark.parametrize("scenario, on_issue_thread", DRAINS)
def test_a_stop_request_answers_the_rest_at_once_and_loadgen_ends(tmp_path, scenario, on_issue_thread):
    holder: list[DetectionSUT] = []
    sut = _sut(_Scripted(5, lambda: holder[0].request_stop()), workers=2, on_issue_thread=on_issue_thread)
    holder.append(sut)
    config = LoadGenConfig(scenario, "PerformanceOnly", count_override=COUNT, **TIMED[scenario])
    _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.issued == sut.answered == _expected_samples(scenario)
    assert 5 <= sut.completed <= 6  # the 5th inference (and one already running on the other worker), no more
    assert sut.errors == []


@pytest.mark.parametrize("scenario", ["MultiStream", "Server"])
def test_several_samples_are_in_flight_with_several_workers(tmp_path, scenario):
    """MultiStream's 8 samples of a query, and Server queries arriving faster than one worker answers them,
    run on both workers at once."""
    sut = _sut(_Scripted(0, lambda: None), workers=2)
    rate = dict(target_qps=1000) if scenario == "Server" else TIMED[scenario]
    config = LoadGenConfig(scenario, "PerformanceOnly", count_override=COUNT, **rate)
    _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.peak_in_flight == 2 and sut.issued == sut.answered == sut.completed == _expected_samples(scenario)


class _Paced(_Scripted):
    """The stand-in backend on unequal workers: an inference on worker k takes at least (k + 1) x `pace_s` (one
    fast worker, one slow, as when one shares the accelerator); records when each worker's last one ended."""

    def __init__(self, pace_s: float):
        super().__init__(0, lambda: None)
        self.pace_s = pace_s
        self.ended: dict[str, float] = {}

    def infer(self, x):
        start = time.perf_counter()
        outputs = super().infer(x)
        name = threading.current_thread().name  # the pool's threads are sut_0, sut_1
        time.sleep(max(0.0, self.pace_s * (1 + int(name.rsplit("_", 1)[1])) - (time.perf_counter() - start)))
        self.ended[name] = time.perf_counter()
        return outputs


def test_workers_drain_an_offline_query_and_finish_within_about_one_inference(tmp_path):
    """Offline's one query of 120 samples on a fast (10 ms) and a slow (20 ms) worker: each takes the next sample
    whenever it is free, so they finish within about one inference of each other. (Runs of 15 samples fixed up
    front, as before, left the fast worker idle for the slow one's last run: 150 ms.)"""
    backend = _Paced(0.01)
    sut = _sut(backend, workers=2)
    config = LoadGenConfig("Offline", "PerformanceOnly", count_override=120, target_qps=100)
    _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.issued == sut.answered == sut.completed == 120 and len(backend.ended) == 2
    first, last = sorted(backend.ended.values())
    assert last - first < 0.06


class _LoggedBackend(_Scripted):
    """The stand-in backend, each inference logged in `events`."""

    def __init__(self, events: list[str]):
        super().__init__(0, lambda: None)
        self.events = events

    def infer(self, x):
        self.events.append("infer")
        return super().infer(x)


class _LoggedSUT(DetectionSUT):
    """The SUT with each sample's output check and encoding logged in its backend's `events`."""

    def _rows(self, qsl_idx, found):
        self.backend.events.append("rows")
        return super()._rows(qsl_idx, found)


def test_a_worker_infers_a_run_of_samples_back_to_back_then_checks_and_encodes_them(tmp_path):
    """Python work right after an inference runs several times slower (the inference has just evicted it from
    the CPU's caches; docs/performance.md section 3b), so a draining worker infers up to ANSWER_EVERY samples
    with nothing in between, then checks, encodes and answers them together."""
    events: list[str] = []
    library = SampleLibrary(N, lambda i: np.random.default_rng(i).random((1, 3, 800, 800), np.float32))
    sut = _LoggedSUT(_LoggedBackend(events), library, RETINANET, workers=1)
    count = ANSWER_EVERY + 36
    config = LoadGenConfig("Offline", "PerformanceOnly", count_override=count, target_qps=1000)
    _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    runs = [(name, len(list(group))) for name, group in itertools.groupby(events)]
    assert runs == [("infer", ANSWER_EVERY), ("rows", ANSWER_EVERY), ("infer", 36), ("rows", 36)]
    assert sut.issued == sut.answered == sut.completed == count and not sut.errors


class _FailsOneSample(DetectionSUT):
    """The SUT whose output checks fail for one sample index (as a model's unencodable output would)."""

    def _rows(self, qsl_idx, found):
        if qsl_idx == 3:
            raise ValueError("sample 3's outputs cannot be encoded")
        return super()._rows(qsl_idx, found)


def test_a_sample_whose_rows_fail_is_answered_empty_and_its_neighbours_as_usual(tmp_path):
    """The rows of a run of inferred samples are built together; one failing fails only itself (the error
    recorded, the run failing with it afterwards), and every sample is still answered exactly once."""
    library = SampleLibrary(N, lambda i: np.random.default_rng(i).random((1, 3, 800, 800), np.float32))
    sut = _FailsOneSample(_Scripted(0, lambda: None), library, RETINANET, workers=2)
    config = LoadGenConfig("Offline", "PerformanceOnly", count_override=40, target_qps=1000)
    with pytest.raises(RuntimeError, match="sample 3's outputs cannot be encoded"):
        _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.issued == sut.answered == sut.completed == 40 and sut.in_flight == 0
    assert 0 < len(sut.errors) < 40 and all("sample 3" in str(err) for err in sut.errors)


class _ThreadsSeen(_Scripted):
    """The stand-in backend, recording the name of each thread that infers."""

    def __init__(self):
        super().__init__(0, lambda: None)
        self.threads: list[str] = []

    def infer(self, x):
        self.threads.append(threading.current_thread().name)
        return super().infer(x)


@pytest.mark.parametrize("scenario, workers, on_issue_thread, pool_threads", [
    ("SingleStream", 1, True, 0),  # every query on LoadGen's issue thread: no hand-off inside its latency
    ("SingleStream", 1, False, 1),
    ("Offline", 2, True, 1),  # the issue thread and one pool thread: still 2 in flight
    ("Offline", 2, False, 2),
    ("MultiStream", 4, True, 3),  # never a 5th thread, though a query's tasks may end while the next one starts
])
def test_loadgens_issue_thread_drains_a_query_alongside_the_pool_when_asked(tmp_path, scenario, workers,
                                                                            on_issue_thread, pool_threads):
    backend = _ThreadsSeen()
    library = SampleLibrary(N, lambda i: np.random.default_rng(i).random((1, 3, 800, 800), np.float32))
    sut = DetectionSUT(backend, library, RETINANET, workers=workers, drain_on_issue_thread=on_issue_thread)
    config = LoadGenConfig(scenario, "PerformanceOnly", count_override=COUNT * 4, **TIMED[scenario])
    _within(GUARD_S, lambda: run_loadgen(sut, config, RETINANET.loadgen_model, tmp_path))
    assert sut.issued == sut.answered == sut.completed == _expected_samples(scenario) * 4 and not sut.errors
    issue_thread = {name for name in backend.threads if not name.startswith("sut")}
    assert len(set(backend.threads) - issue_thread) == pool_threads and bool(issue_thread) == on_issue_thread


def test_a_runs_sut_drains_on_loadgens_issue_thread_in_every_scenario_but_server(synthetic_dir):
    """Server's issue thread must return at once (its arrivals are scheduled); the others wait for each answer."""
    backend = OnnxBackend(build_standin(RETINANET), RETINANET, "cpu")
    bench = _Bench(_params(synthetic_dir, loadgen_concurrency=2), RETINANET, model=None, backend=backend,
                   load=lambda i: None, count=N, annotations={})
    drains = {scenario: bench.sut(scenario) for scenario in SCENARIOS}
    assert {s: sut.drain_on_issue_thread for s, sut in drains.items()} == {s: s != "Server" for s in SCENARIOS}
    assert drains["Server"].pool._max_workers == 2 and drains["Offline"].pool._max_workers == 1
    for sut in drains.values():
        sut.close()

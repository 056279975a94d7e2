"""The LoadGen harness: settings (written as a user.conf), the sample library, the SUT, one test run.

LoadGen reads its official settings (the mlperf.conf built into the library) under the model's
official key and then the generated user.conf, so official values apply unless the user overrides
them. The SUT takes queries on LoadGen's thread and runs them on a worker pool, answering with
`QuerySamplesComplete` from the workers; response buffers stay alive until that call returns.

Nothing may raise into LoadGen's C++ threads (an exception there aborts the process), so every
callback records its errors and still answers. Ctrl-C during a test stops it cleanly: LoadGen runs on
a helper thread while the main thread waits in Python, where a SIGINT handler asks the SUT to stop;
the SUT then answers every outstanding and later query at once, empty, LoadGen finishes its test,
SUT and QSL are destroyed, and `run_loadgen` raises KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import numpy as np

from odbench import bounds
from odbench.accuracy import encode_detections
from odbench.backend import Backend
from odbench.models import ModelSpec
from odbench.output_checks import OutputTally, check_outputs

log = logging.getLogger(__name__)
Scenario = Literal["Offline", "SingleStream"]
Mode = Literal["AccuracyOnly", "PerformanceOnly"]
Profile = Literal["official", "quick"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)
MODES: tuple[str, ...] = get_args(Mode)
PROFILES: tuple[str, ...] = get_args(Profile)
# LoadGenConfig field -> the parameter a user sets it with (errors name the parameter)
PARAMETER_NAMES = {
    "buffer_size": "loadgen_buffer_size",
    "target_qps": "loadgen_target_qps",
    "target_latency_ms": "loadgen_target_latency",
    "count_override": "loadgen_count_override",
    "min_duration_s": "loadgen_min_duration_s",
    "max_duration_s": "loadgen_max_duration_s",
    "min_query_count": "loadgen_min_query_count",
    "max_query_count": "loadgen_max_query_count",
}
# mlperf.conf's values where the user sets none (its `*.*` lines; retinanet adds a min query count)
OFFICIAL_MIN_DURATION_S = 600.0
OFFICIAL_OFFLINE_QPS = 1.0
OFFICIAL_SINGLE_STREAM_LATENCY_MS = 10.0
# The published per-model values that current LoadGen's mlperf.conf no longer lists, written into user.conf
# by the `official` profile (key after the model: `scenario.setting`, `*` for every scenario). ssd-resnet34's
# come from the last mlperf.conf that had them, mlcommons/inference tag v2.0 (`mlperf.conf`, removed in v2.1, when
# the benchmark moved to retinanet): its `ssd-resnet34.*` lines, and the Offline minimum of 24576 samples,
# then a `*.Offline` line, which current LoadGen (6.0.x, loadgen/mlperf.conf) lists per model instead
# (retinanet's is 24576; an unlisted model gets LoadGen's default). v2.0's `*.SingleStream.min_query_count =
# 1024` is left out: current LoadGen dropped it for every model (early stopping). The user's options, and
# loadgen_buffer_size's performance_sample_count_override, still override these (they are per-scenario keys).
PUBLISHED_VALUES: dict[str, dict[str, float]] = {
    "ssd-resnet34": {
        "*.performance_sample_count_override": 64,
        "Offline.min_query_count": 24576,
        "MultiStream.target_latency": 528,
        "Server.target_latency": 100,
    },
}
# The `quick` profile (demos, smoke tests): a PerformanceOnly test of seconds, not minutes, on the stand-ins;
# these replace the official minimum duration and query count unless the user sets them (or a count override).
# SingleStream's expected latency (LoadGen generates twice min duration / expected latency queries, and ends the
# test with an error when a fast SUT uses them up before the minimum duration) is set low for the same reason:
# 8000 queries in 2 s; it only sizes the query pool, it is no latency bound in SingleStream.
QUICK_MIN_DURATION_S = 2.0
QUICK_MIN_QUERY_COUNT = 16
QUICK_SINGLE_STREAM_LATENCY_MS = 0.5
_NO_ROWS = np.zeros((0, 7), np.float32)
_EMPTY = np.zeros(1, np.float32)  # a valid address for empty responses (size 0)


@dataclass(frozen=True)
class LoadGenConfig:
    """The LoadGen knobs, named as the axs workflow named them (durations in s, latency in ms)."""

    scenario: str = "Offline"
    mode: str = "AccuracyOnly"
    buffer_size: int = 8  # performance sample count
    target_qps: float | None = None
    target_latency_ms: float | None = None
    count_override: int | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_query_count: int | None = None  # LoadGen's min_query_count (count_override sets it and max_query_count)
    max_query_count: int | None = None  # LoadGen's max_query_count; 0: no maximum
    profile: str = "official"  # official: mlperf.conf plus PUBLISHED_VALUES; quick: QUICK_* minimums

    def __post_init__(self) -> None:
        """Fail on values LoadGen would abort on, or plan too much memory for (odbench/bounds.py)."""
        if self.profile not in PROFILES:
            raise ValueError(f"unknown loadgen_profile {self.profile!r}; valid: {', '.join(PROFILES)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown loadgen_scenario {self.scenario!r}; valid: {', '.join(SCENARIOS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown loadgen_mode {self.mode!r}; valid: {', '.join(MODES)}")
        table = bounds.bounds()
        for f in fields(self):
            if f.name in PARAMETER_NAMES:
                bounds.check(PARAMETER_NAMES[f.name], getattr(self, f.name), table[PARAMETER_NAMES[f.name]])
        if self.min_duration_s and self.max_duration_s and self.min_duration_s > self.max_duration_s:
            raise ValueError(f"loadgen_min_duration_s ({self.min_duration_s}) is above loadgen_max_duration_s "
                             f"({self.max_duration_s})")
        if self.min_query_count and self.max_query_count and self.min_query_count > self.max_query_count:
            raise ValueError(f"loadgen_min_query_count ({self.min_query_count}) is above loadgen_max_query_count "
                             f"({self.max_query_count})")
        for name in ("min_query_count", "max_query_count"):
            value = getattr(self, name)
            if self.count_override is not None and value is not None and value != self.count_override:
                raise ValueError(f"{PARAMETER_NAMES[name]}={value} contradicts loadgen_count_override="
                                 f"{self.count_override} (or its alias loadgen_query_count), which sets both the "
                                 "minimum and the maximum query count: give one of them")
        if self.mode == "PerformanceOnly":
            self._check_planned_samples()

    def planned_samples(self) -> tuple[float, str, str]:
        """About how many samples LoadGen generates for a PerformanceOnly test (it allocates them all
        before the first query), the product that gives them, and how to lower it, in words."""
        quick = self.quick_minimums()
        count = max(self.count_override or 0, self.min_query_count or 0, int(quick.get("min_query_count", 0)))
        duration = (self.min_duration_s if self.min_duration_s is not None
                    else 0.0 if self.count_override
                    else quick["min_duration"] / 1000 if quick else OFFICIAL_MIN_DURATION_S)
        dur = f"loadgen_min_duration_s {duration:g} s" + ("" if self.min_duration_s is not None
                                                          else f" ({self.profile})")
        if self.scenario == "Offline":  # one query of max(min_query_count, 1.1 x duration x qps) samples
            qps = self.target_qps or OFFICIAL_OFFLINE_QPS
            qps_text = f"loadgen_target_qps {qps:g}" + ("" if self.target_qps else " (official)")
            return (max(count, 1.1 * duration * qps), f"1.1 × {qps_text} × {dur}",
                    "lower loadgen_target_qps or loadgen_min_duration_s")
        latency = (self.target_latency_ms or quick.get("target_latency")
                   or OFFICIAL_SINGLE_STREAM_LATENCY_MS)  # twice the expected queries
        latency_text = f"loadgen_target_latency {latency:g} ms" + ("" if self.target_latency_ms
                                                                   else f" ({self.profile})")
        return (max(count, 2 * duration * 1000 / latency), f"2 × {dur} / {latency_text}",
                "raise loadgen_target_latency or lower loadgen_min_duration_s")

    def _check_planned_samples(self) -> None:
        planned, how, fix = self.planned_samples()
        if planned > bounds.MAX_LOADGEN_SAMPLES:
            raise bounds.ParameterRangeError(
                f"LoadGen would generate about {planned:.0f} samples for this test ({how}) and allocates them "
                f"all before it starts; at most {bounds.MAX_LOADGEN_SAMPLES}: {fix}, or set loadgen_count_override "
                f"for an exact count")

    def performance_count(self, total_count: int) -> int:
        """Samples LoadGen keeps loaded in performance mode: the buffer size, at most the dataset."""
        return min(self.buffer_size, total_count)

    def quick_minimums(self) -> dict[str, float]:
        """The `quick` profile's user.conf values (min_duration in ms, target_latency in ms) for what the user
        left unset; none with the official profile, and only the latency with a count override (which already
        fixes the count and drops the duration)."""
        if self.profile != "quick":
            return {}
        values: dict[str, float] = {}
        if self.scenario == "SingleStream" and self.target_latency_ms is None:
            values["target_latency"] = QUICK_SINGLE_STREAM_LATENCY_MS
        if self.count_override is not None:
            return values
        if self.min_duration_s is None:
            seconds = min(QUICK_MIN_DURATION_S, self.max_duration_s or QUICK_MIN_DURATION_S)
            values["min_duration"] = round(seconds * 1000)
        if self.min_query_count is None:
            values["min_query_count"] = min(QUICK_MIN_QUERY_COUNT, self.max_query_count or QUICK_MIN_QUERY_COUNT)
        return values

    def user_conf(self, model_key: str, total_count: int) -> str:
        """The user.conf lines for these settings, under LoadGen's key for the model: with the official
        profile first the published values current LoadGen lacks (PUBLISHED_VALUES), then the user's."""
        entries: dict[str, float] = {}
        if self.profile == "official":
            entries |= {f"{model_key}.{key}": value for key, value in PUBLISHED_VALUES.get(model_key, {}).items()}
        lines: dict[str, float] = {"performance_sample_count_override": self.performance_count(total_count)}
        lines |= self.quick_minimums()
        if self.target_qps is not None:
            lines["target_qps"] = self.target_qps
        if self.target_latency_ms is not None:
            lines["target_latency"] = self.target_latency_ms
        if self.count_override is not None:  # exactly this many queries, however long they take
            lines["min_query_count"] = lines["max_query_count"] = self.count_override
            lines["min_duration"] = 0
        if self.min_query_count is not None:
            lines["min_query_count"] = self.min_query_count
        if self.max_query_count is not None:
            lines["max_query_count"] = self.max_query_count
        if self.min_duration_s is not None:
            lines["min_duration"] = round(self.min_duration_s * 1000)
        if self.max_duration_s is not None:
            lines["max_duration"] = round(self.max_duration_s * 1000)
        entries |= {f"{model_key}.{self.scenario}.{key}": value for key, value in lines.items()}
        return "".join(f"{key} = {value}\n" for key, value in entries.items())


class SampleLibrary:
    """LoadGen's QSL: loads samples (already normalized) into RAM on LoadGen's request.

    A failed load is recorded, never raised: an exception escaping into LoadGen's C++ thread kills
    the process. The SUT then fails that sample, and the run reports the first error. Once stopping,
    loads are skipped (the SUT answers without the samples)."""

    def __init__(self, count: int, load: Callable[[int], np.ndarray]):
        self.count = count
        self._load = load
        self._samples: dict[int, np.ndarray] = {}
        self.errors: list[BaseException] = []
        self.stopping = False  # a plain flag: set from a signal handler

    def load_samples(self, indices: Sequence[int]) -> None:
        for idx in indices:
            if self.stopping:
                return
            try:
                self._samples[idx] = self._load(idx)
            except BaseException as err:  # noqa: BLE001 — see the class docstring
                self.errors.append(err)

    def unload_samples(self, indices: Sequence[int]) -> None:
        try:
            for idx in indices:
                self._samples.pop(idx, None)
        except BaseException as err:  # noqa: BLE001 — see the class docstring
            self.errors.append(err)

    def __getitem__(self, idx: int) -> np.ndarray:
        return self._samples[idx]


class DetectionSUT:
    """LoadGen's SUT: each query sample becomes one inference on a worker thread, its outputs checked
    (odbench/output_checks.py: offending detections dropped and counted in `outputs`)."""

    def __init__(self, backend: Backend, library: SampleLibrary, spec: ModelSpec, workers: int = 1):
        self.backend, self.library, self.spec, self.workers = backend, library, spec, workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sut")
        self.errors: list[BaseException] = []
        self.outputs = OutputTally()
        self._lock = threading.Lock()
        self.completed = 0
        self.busy_s = 0.0  # summed over workers: time spent inferring and encoding
        self.stopping = False  # a plain flag: set from a signal handler

    def request_stop(self) -> None:
        """Answer every outstanding and later query at once, empty, so LoadGen ends its test."""
        self.stopping = self.library.stopping = True

    def issue_queries(self, samples) -> None:
        done = 0
        try:
            for sample in samples:
                if self.stopping:
                    self._complete_empty([s.id for s in samples[done:]])
                    return
                self.pool.submit(self._run_one, sample.id, sample.index)
                done += 1
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            self._record(err)
            self._complete_empty([s.id for s in samples[done:]])

    def flush_queries(self) -> None:
        pass

    def _run_one(self, sample_id: int, qsl_idx: int) -> None:
        if self.stopping:
            self._complete_empty([sample_id])
            return
        start = time.perf_counter()
        try:
            rows = self._detect(qsl_idx)
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            self._record(err)
            rows = _NO_ROWS
        self._complete(sample_id, rows)
        with self._lock:
            self.completed += 1
            self.busy_s += time.perf_counter() - start

    def _detect(self, qsl_idx: int) -> np.ndarray:
        """One sample's checked detections as accuracy-log rows."""
        boxes, scores, labels = self.backend.infer(self.library[qsl_idx])
        checked = check_outputs(boxes, scores, labels, self.spec)
        self.outputs.add(qsl_idx, checked.problems)
        return encode_detections(qsl_idx, checked.boxes, checked.scores, checked.labels, self.spec)

    def _complete(self, sample_id: int, rows: np.ndarray) -> None:
        """Answer one sample; `rows` stays alive (and contiguous) until LoadGen has copied it."""
        try:
            import mlperf_loadgen as lg

            rows = np.ascontiguousarray(rows, np.float32)
            data = rows if rows.size else _EMPTY
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, data.ctypes.data, rows.nbytes)])
        except BaseException as err:  # noqa: BLE001 — never into LoadGen's thread
            self._record(err)

    def _complete_empty(self, sample_ids: list[int]) -> None:
        try:
            import mlperf_loadgen as lg

            lg.QuerySamplesComplete([lg.QuerySampleResponse(i, _EMPTY.ctypes.data, 0) for i in sample_ids])
        except BaseException as err:  # noqa: BLE001 — never into LoadGen's thread
            self._record(err)

    def _record(self, err: BaseException) -> None:
        with self._lock:
            self.errors.append(err)

    def throughput(self) -> float | None:
        """Samples per second of the SUT's own inference time (LoadGen's untimed sample loads, which
        AccuracyOnly interleaves with queries, excluded); None before any sample."""
        if self.completed == 0 or self.busy_s <= 0:
            return None
        return self.completed * self.workers / self.busy_s

    def close(self) -> None:
        self.pool.shutdown(wait=True)


WARMUP_MAX_S = 10.0  # a warm-up stops after this long (past its first inference), whatever its sample count


@dataclass(frozen=True)
class Warmup:
    """An untimed warm-up before a timed test: inferences run, and how long they took in seconds."""

    samples: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"samples": self.samples, "seconds": self.seconds}


def warm_up(backend: Backend, load: Callable[[int], np.ndarray], count: int, samples: int,
            max_s: float = WARMUP_MAX_S) -> Warmup:
    """Run up to `samples` inferences on the first samples of the dataset (cycled when it has fewer),
    outside LoadGen's timing, so a short test does not time cuDNN autotuning or an engine build. The
    first inference always runs; later ones stop once `max_s` has passed. 0 samples: no warm-up."""
    if samples <= 0 or count <= 0:
        return Warmup()
    inputs = [load(i) for i in range(min(samples, count))]  # loaded (and normalized) before timing starts
    start = time.perf_counter()
    done = 0
    while done < samples:
        backend.infer(inputs[done % len(inputs)])
        done += 1
        if time.perf_counter() - start >= max_s:
            break
    seconds = round(time.perf_counter() - start, 3)
    log.info("warm-up: %d inference(s) in %.3f s before the timed test (untimed)", done, seconds)
    return Warmup(done, seconds)


@dataclass(frozen=True)
class LoadGenRun:
    log_dir: Path
    user_conf: Path


class _StopOnInterrupt:
    """While active (main thread only), SIGINT sets a flag and stops the SUT instead of raising
    KeyboardInterrupt; the previous handler is restored on exit."""

    def __init__(self, sut: DetectionSUT):
        self.sut, self.interrupted, self._previous, self._installed = sut, False, None, False

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        self.sut.request_stop()

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


def _wait_for(test: Callable[[], None], interrupts: _StopOnInterrupt) -> None:
    """Run LoadGen's blocking test on a helper thread while this thread waits in Python, so that a
    signal handler runs here promptly (it cannot while this thread is inside LoadGen's C++). Whatever
    interrupts the wait (a KeyboardInterrupt from another handler, a SystemExit from a SIGTERM handler)
    stops the SUT first and is raised only once LoadGen has finished its test."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            test()
        except BaseException as err:  # noqa: BLE001 — re-raised on the calling thread
            failures.append(err)

    thread = threading.Thread(target=target, name="loadgen")
    thread.start()
    pending: BaseException | None = None
    told = False
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            interrupts.interrupted = True
            interrupts.sut.request_stop()
        except BaseException as err:  # noqa: BLE001 — raised below, after LoadGen has stopped
            pending = pending or err
            interrupts.sut.request_stop()
        if (interrupts.interrupted or pending) and not told:
            # debug only: the command line's one line after Ctrl-C says what was interrupted
            log.debug("interrupted: stopping LoadGen (outstanding queries are answered empty)")
            told = True
    if pending is not None:
        raise pending
    if failures:
        raise failures[0]


def run_loadgen(sut: DetectionSUT, config: LoadGenConfig, model_key: str, log_dir: Path) -> LoadGenRun:
    """Run one LoadGen test, writing user.conf and LoadGen's logs into log_dir; Ctrl-C stops it
    cleanly and raises KeyboardInterrupt afterwards."""
    import mlperf_loadgen as lg

    log_dir.mkdir(parents=True, exist_ok=True)
    user_conf = log_dir / "user.conf"
    library = sut.library
    user_conf.write_text(config.user_conf(model_key, library.count))
    settings = lg.TestSettings()
    # conf_type 0: the official mlperf.conf built into LoadGen; 2: a user.conf file. (conf_type 1
    # would do both, but loads mlperf.conf only on its first call in a process.)
    if settings.FromConfig("", model_key, config.scenario, 0) or settings.FromConfig(
            str(user_conf), model_key, config.scenario, 2):
        raise ValueError(f"LoadGen rejected its settings for {model_key} {config.scenario} ({user_conf})")
    settings.scenario = getattr(lg.TestScenario, config.scenario)
    settings.mode = getattr(lg.TestMode, config.mode)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    qsl = lg.ConstructQSL(library.count, config.performance_count(library.count),
                          library.load_samples, library.unload_samples)
    handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    with _StopOnInterrupt(sut) as interrupts:  # also over the clean-up: a second Ctrl-C cannot cut it short
        try:
            log.info("LoadGen test started: %s %s, %d samples (Ctrl-C stops it cleanly)", config.scenario,
                     config.mode, library.count)
            _wait_for(lambda: lg.StartTestWithLogSettings(handle, qsl, settings, log_settings, ""), interrupts)
        finally:
            lg.DestroySUT(handle)
            lg.DestroyQSL(qsl)
            sut.close()
    if interrupts.interrupted:
        raise KeyboardInterrupt(f"the LoadGen test was interrupted; its logs in {log_dir} are incomplete")
    if library.errors:
        raise RuntimeError(f"{len(library.errors)} sample(s) failed to load; first: {library.errors[0]}") \
            from library.errors[0]
    if sut.errors:
        raise RuntimeError(f"{len(sut.errors)} inference(s) failed; first: {sut.errors[0]!r}") from sut.errors[0]
    return LoadGenRun(log_dir, user_conf)

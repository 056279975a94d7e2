"""The LoadGen harness: settings (written as a user.conf), the sample library, the SUT, one test run.

LoadGen reads its official settings (the mlperf.conf built into the library) under the model's
official key and then the generated user.conf, so official values apply unless the user overrides
them. The SUT takes queries on LoadGen's thread and runs them on a worker pool, answering with
`QuerySamplesComplete` from the workers; response buffers stay alive until that call returns.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import numpy as np

from odbench.accuracy import encode_detections
from odbench.backend import Backend
from odbench.models import ModelSpec

log = logging.getLogger(__name__)
Scenario = Literal["Offline", "SingleStream"]
Mode = Literal["AccuracyOnly", "PerformanceOnly"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)
MODES: tuple[str, ...] = get_args(Mode)


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

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown loadgen_scenario {self.scenario!r}; valid: {', '.join(SCENARIOS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown loadgen_mode {self.mode!r}; valid: {', '.join(MODES)}")
        for name in ("buffer_size", "target_qps", "target_latency_ms", "count_override"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"loadgen_{name} must be positive, got {value}")
        for name in ("min_duration_s", "max_duration_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"loadgen_{name} must be 0 or more, got {value}")
        if self.min_duration_s and self.max_duration_s and self.min_duration_s > self.max_duration_s:
            raise ValueError(f"loadgen_min_duration_s ({self.min_duration_s}) is above loadgen_max_duration_s "
                             f"({self.max_duration_s})")

    def performance_count(self, total_count: int) -> int:
        """Samples LoadGen keeps loaded in performance mode: the buffer size, at most the dataset."""
        return min(self.buffer_size, total_count)

    def user_conf(self, model_key: str, total_count: int) -> str:
        """The user.conf lines for these settings, under LoadGen's key for the model."""
        lines: dict[str, float] = {"performance_sample_count_override": self.performance_count(total_count)}
        if self.target_qps is not None:
            lines["target_qps"] = self.target_qps
        if self.target_latency_ms is not None:
            lines["target_latency"] = self.target_latency_ms
        if self.count_override is not None:  # exactly this many queries, however long they take
            lines["min_query_count"] = lines["max_query_count"] = self.count_override
            lines["min_duration"] = 0
        if self.min_duration_s is not None:
            lines["min_duration"] = round(self.min_duration_s * 1000)
        if self.max_duration_s is not None:
            lines["max_duration"] = round(self.max_duration_s * 1000)
        prefix = f"{model_key}.{self.scenario}"
        return "".join(f"{prefix}.{key} = {value}\n" for key, value in lines.items())


class SampleLibrary:
    """LoadGen's QSL: loads samples (already normalized) into RAM on LoadGen's request.

    A failed load is recorded, never raised: an exception escaping into LoadGen's C++ thread kills
    the process. The SUT then fails that sample, and the run reports the first error."""

    def __init__(self, count: int, load: Callable[[int], np.ndarray]):
        self.count = count
        self._load = load
        self._samples: dict[int, np.ndarray] = {}
        self.errors: list[BaseException] = []

    def load_samples(self, indices: Sequence[int]) -> None:
        for idx in indices:
            try:
                self._samples[idx] = self._load(idx)
            except Exception as err:  # noqa: BLE001 — see the class docstring
                self.errors.append(err)

    def unload_samples(self, indices: Sequence[int]) -> None:
        for idx in indices:
            self._samples.pop(idx, None)

    def __getitem__(self, idx: int) -> np.ndarray:
        return self._samples[idx]


class DetectionSUT:
    """LoadGen's SUT: each query sample becomes one inference on a worker thread."""

    def __init__(self, backend: Backend, library: SampleLibrary, spec: ModelSpec, workers: int = 1):
        self.backend, self.library, self.spec, self.workers = backend, library, spec, workers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sut")
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.completed = 0
        self.busy_s = 0.0  # summed over workers: time spent inferring and encoding

    def issue_queries(self, samples) -> None:
        for sample in samples:
            self.pool.submit(self._run_one, sample.id, sample.index)

    def flush_queries(self) -> None:
        pass

    def _run_one(self, sample_id: int, qsl_idx: int) -> None:
        import mlperf_loadgen as lg

        start = time.perf_counter()
        try:
            boxes, scores, labels = self.backend.infer(self.library[qsl_idx])
            rows = encode_detections(qsl_idx, boxes, scores, labels, self.spec)
        except BaseException as err:  # noqa: BLE001 — LoadGen must still get an answer, or it hangs
            with self._lock:
                self.errors.append(err)
            rows = np.zeros((0, 7), np.float32)
        buffer = array.array("B", rows.tobytes())
        address, _ = buffer.buffer_info()
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, address, len(buffer))])
        with self._lock:
            self.completed += 1
            self.busy_s += time.perf_counter() - start

    def throughput(self) -> float | None:
        """Samples per second of the SUT's own inference time (LoadGen's untimed sample loads, which
        AccuracyOnly interleaves with queries, excluded); None before any sample."""
        if self.completed == 0 or self.busy_s <= 0:
            return None
        return self.completed * self.workers / self.busy_s

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass(frozen=True)
class LoadGenRun:
    log_dir: Path
    user_conf: Path


def run_loadgen(sut: DetectionSUT, config: LoadGenConfig, model_key: str, log_dir: Path) -> LoadGenRun:
    """Run one LoadGen test, writing user.conf and LoadGen's logs into log_dir."""
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
    try:
        lg.StartTestWithLogSettings(handle, qsl, settings, log_settings, "")
    finally:
        lg.DestroySUT(handle)
        lg.DestroyQSL(qsl)
        sut.close()
    if library.errors:
        raise RuntimeError(f"{len(library.errors)} sample(s) failed to load; first: {library.errors[0]}") \
            from library.errors[0]
    if sut.errors:
        raise RuntimeError(f"{len(sut.errors)} inference(s) failed; first: {sut.errors[0]!r}") from sut.errors[0]
    return LoadGenRun(log_dir, user_conf)

"""No guessing a target: a timed test without one gets it from a short measured pass, recorded in the result.

LoadGen sizes a timed test from its target (Offline issues 1.1 × duration × target QPS samples;
SingleStream and MultiStream generate 2 × duration / expected latency queries; Server issues queries
at the target QPS). A wrong guess makes the run INVALID (too few samples for the minimum duration)
or far longer than asked, so when the user gives none, half a second (at least 8) of untimed-by-LoadGen
inferences on loaded samples (after the warm-up, so no engine build is timed) measure this SUT, and the target follows:

| scenario | target set | from the pass | why this side |
|---|---|---|---|
| Offline | loadgen_target_qps | 1.5 × measured throughput | too low ends before min duration |
| SingleStream | loadgen_target_latency | the fastest latency | too high runs out of queries |
| MultiStream | loadgen_target_latency | fastest × ⌈inferences per query / concurrency⌉ | as SingleStream |
| Server | loadgen_target_qps | 0.5 × measured throughput | a load this SUT sustains |

(Erring on the other side only lengthens the run or generates more queries than it uses.) The pass runs
through `loadgen_concurrency` worker threads, as the SUT does, so throughput is measured, not assumed to
grow with concurrency. A value outside the setting's range, or one that would make LoadGen plan more
samples than odbench/bounds.py allows, is clamped to the nearest allowed value, and the basis says so.
With `loadgen_count_override` the query count is fixed and the target sizes nothing (Server aside, where it
is the arrival rate), so no target is calibrated.
FindPeakPerformance starts its search from the Server value. Server's latency bound is no guess (the
official value applies) and is never calibrated.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from odbench import bounds
from odbench.backend import Backend, infer_cycled, placed_samples
from odbench.loadgen_settings import OFFICIAL_SAMPLES_PER_QUERY, LoadGenConfig

log = logging.getLogger(__name__)
CALIBRATION_SAMPLES = 8  # inferences the measured pass makes at least (and 2 per worker)
# A cheap model's 8 inferences take ~20 ms, where one scheduler hiccup halves the throughput measured and an
# Offline target set from it ends the test before its minimum duration (INVALID): the pass lasts this long at least.
CALIBRATION_MIN_S = 0.5
CALIBRATION_MAX_S = 10.0  # the pass stops after this long (past its first inference)
MAX_CALIBRATION_INFERENCES = 100_000  # bounds the latencies kept, for a model of microseconds
OFFLINE_HEADROOM = 1.5
SERVER_LOAD = 0.5
TARGET_FIELDS = {"loadgen_target_qps": "target_qps", "loadgen_target_latency": "target_latency_ms"}
MIN_TARGET = bounds.bounds()["loadgen_target_latency"].low  # a sub-10-µs latency still gets an allowed value


@dataclass(frozen=True)
class Calibration:
    """A target set from a measured pass: which setting, its value, and how it was derived."""

    setting: str  # loadgen_target_qps or loadgen_target_latency (ms)
    value: float
    basis: str  # in words, with the measured numbers
    samples: int  # inferences measured
    median_latency_ms: float
    fastest_latency_ms: float

    def to_json(self) -> dict[str, float | str | int]:
        return {"setting": self.setting, "value": self.value, "basis": self.basis, "samples": self.samples,
                "median_latency_ms": self.median_latency_ms, "fastest_latency_ms": self.fastest_latency_ms}


def missing_target(config: LoadGenConfig) -> str | None:
    """The target setting a timed test of this scenario lacks (None: it has one, or is untimed)."""
    if config.mode == "AccuracyOnly" or (config.count_override is not None and config.scenario != "Server"):
        return None
    if config.scenario in ("Offline", "Server"):
        return None if config.target_qps is not None else "loadgen_target_qps"
    return None if config.target_latency_ms is not None else "loadgen_target_latency"


@dataclass(frozen=True)
class Measurement:
    """The calibration pass: each inference's seconds, and samples per second of the whole pass."""

    latencies_s: list[float]
    throughput: float
    batch: int = 1  # samples per inference


def measure(backend: Backend, load: Callable[[int], np.ndarray], count: int, samples: int = CALIBRATION_SAMPLES,
            concurrency: int = 1, max_s: float = CALIBRATION_MAX_S, batch: int = 1,
            min_s: float = CALIBRATION_MIN_S) -> Measurement:
    """At least `samples` inferences (2 per worker) and `min_s` seconds of them, of `batch` loaded samples each
    (cycled), `concurrency` at a time; each worker stops starting new ones once `max_s` has passed."""
    samples = max(samples, 2 * concurrency)
    with placed_samples(backend, load, min(samples, count)) as inputs:
        return _timed_pass(backend, inputs, samples, concurrency, max_s, batch, min_s)


def _timed_pass(backend: Backend, inputs: list, samples: int, concurrency: int, max_s: float, batch: int,
                min_s: float) -> Measurement:
    """`measure`'s inferences over the loaded inputs."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:  # claim the next inference's slot
                slot, elapsed = len(latencies), time.perf_counter() - start
                enough = slot >= samples and elapsed >= min_s
                if enough or slot >= MAX_CALIBRATION_INFERENCES or (slot and elapsed >= max_s):
                    return
                latencies.append(float("nan"))
            t0 = time.perf_counter()
            infer_cycled(backend, inputs, slot, batch)
            latencies[slot] = time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="calibration") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    return Measurement(latencies, len(latencies) * batch / wall, batch)


def derive(config: LoadGenConfig, measured: Measurement, concurrency: int) -> Calibration:
    """The missing target of `config` from the measured pass (see the module's table), inside what is allowed."""
    latencies = measured.latencies_s
    median, fastest = statistics.median(latencies), min(latencies)
    facts = dict(samples=len(latencies), median_latency_ms=round(median * 1000, 3),
                 fastest_latency_ms=round(fastest * 1000, 3))
    batched = f" of {measured.batch} samples" if measured.batch > 1 else ""
    seen = (f"{len(latencies)} inferences{batched}, {concurrency} in flight: {measured.throughput:.4g} samples/s, "
            f"median {median * 1000:.3f} ms, fastest {fastest * 1000:.3f} ms")
    if config.scenario in ("Offline", "Server"):
        share = OFFLINE_HEADROOM if config.scenario == "Offline" else SERVER_LOAD
        setting, value, how = "loadgen_target_qps", share * measured.throughput, f"{share} × measured throughput"
    elif config.scenario == "SingleStream":
        setting, value, how = "loadgen_target_latency", fastest * 1000, "fastest latency"
    else:
        per_query = config.samples_per_query or OFFICIAL_SAMPLES_PER_QUERY
        steps = -(-per_query // measured.batch)  # inferences per query, run on at most `concurrency` workers at once
        rounds = -(-steps // min(concurrency, steps))
        setting, value = "loadgen_target_latency", fastest * 1000 * rounds
        how = f"fastest latency × {rounds} (ceil of {steps} inferences per query / {concurrency} in flight)"
    value, clamp = _allowed(config, setting, float(f"{value:.4g}"))
    return Calibration(setting, value, f"{how} ({seen}){clamp}", **facts)


def _allowed(config: LoadGenConfig, setting: str, value: float) -> tuple[float, str]:
    """The value inside its parameter's range and the planned-sample ceiling, and what clamping it did."""
    bound = bounds.bounds()[setting]
    clamped = min(max(value, bound.low if not bound.positive else MIN_TARGET), bound.high)
    # an untimed copy: its checks leave out the planned-sample ceiling this computes against
    planned, _, _ = apply(replace(config, mode="AccuracyOnly"), clamped, setting).planned_samples()
    if planned > bounds.MAX_LOADGEN_SAMPLES:  # planned samples grow with QPS, and shrink as latency grows
        factor = planned / bounds.MAX_LOADGEN_SAMPLES * 1.01
        clamped = float(f"{clamped / factor if setting == 'loadgen_target_qps' else clamped * factor:.4g}")
    if clamped == value:
        return value, ""
    return clamped, f"; {value:g} clamped to {clamped:g}, the nearest value odbench/bounds.py allows"


def apply(config: LoadGenConfig, value: float, setting: str) -> LoadGenConfig:
    """The config with `setting` (a target) set to `value`, checked again like a target the user gave."""
    return replace(config, **{TARGET_FIELDS[setting]: value})


def calibrate(config: LoadGenConfig, backend: Backend, load: Callable[[int], np.ndarray], count: int,
              concurrency: int) -> tuple[LoadGenConfig, Calibration | None]:
    """The config to run, with its missing target measured and set; unchanged (None) when none is missing."""
    if missing_target(config) is None:
        return config, None
    # batches form within a query: Offline's and MultiStream's many-sample queries run batched, the rest alone
    batch = getattr(backend, "batch_size", 1) if config.scenario in ("Offline", "MultiStream") else 1
    calibration = derive(config, measure(backend, load, count, concurrency=concurrency, batch=batch), concurrency)
    log.info("calibrated %s = %g (%s)", calibration.setting, calibration.value, calibration.basis)
    return apply(config, calibration.value, calibration.setting), calibration

"""No guessing a target: a timed test without one gets it from a short measured pass, recorded in the result.

LoadGen sizes a timed test from its target (Offline issues 1.1 × duration × target QPS samples;
SingleStream and MultiStream generate 2 × duration / expected latency queries; Server issues queries
at the target QPS). A wrong guess makes the run INVALID (too few samples for the minimum duration)
or far longer than asked, so when the user gives none, a few untimed-by-LoadGen inferences on loaded
samples (after the warm-up, so no engine build is timed) measure this SUT, and the target follows:

| scenario | target set | from the pass | why this side |
|---|---|---|---|
| Offline | loadgen_target_qps | 1.5 × concurrency / median latency | too low ends before min duration |
| SingleStream | loadgen_target_latency | the fastest latency | too high runs out of queries |
| MultiStream | loadgen_target_latency | fastest × samples per query / concurrency | as SingleStream |
| Server | loadgen_target_qps | 0.5 / median latency | a load this SUT sustains |

(Erring on the other side only lengthens the run or generates more queries than it uses.)
FindPeakPerformance starts its search from the Server value. Server's latency bound is no guess (the
official value applies) and is never calibrated.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from odbench import bounds
from odbench.backend import Backend
from odbench.loadgen_settings import LoadGenConfig

log = logging.getLogger(__name__)
CALIBRATION_SAMPLES = 8  # inferences in the measured pass
CALIBRATION_MAX_S = 10.0  # the pass stops after this long (past its first inference)
OFFLINE_HEADROOM = 1.5
SERVER_LOAD = 0.5
DEFAULT_SAMPLES_PER_QUERY = 8  # LoadGen's MultiStream default
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
    if config.mode == "AccuracyOnly":
        return None
    if config.scenario in ("Offline", "Server"):
        return None if config.target_qps is not None else "loadgen_target_qps"
    return None if config.target_latency_ms is not None else "loadgen_target_latency"


def measure(backend: Backend, load: Callable[[int], np.ndarray], count: int, samples: int = CALIBRATION_SAMPLES,
            max_s: float = CALIBRATION_MAX_S) -> list[float]:
    """Seconds of each of up to `samples` sequential inferences on loaded samples (cycled), at least one."""
    inputs = [load(i) for i in range(min(samples, count))]
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < samples:
        t0 = time.perf_counter()
        backend.infer(inputs[len(latencies) % len(inputs)])
        latencies.append(time.perf_counter() - t0)
        if time.perf_counter() - start >= max_s:
            break
    return latencies


def derive(config: LoadGenConfig, latencies_s: list[float], concurrency: int) -> Calibration:
    """The missing target of `config` from measured latencies (see the module's table)."""
    median, fastest = statistics.median(latencies_s), min(latencies_s)
    facts = dict(samples=len(latencies_s), median_latency_ms=round(median * 1000, 3),
                 fastest_latency_ms=round(fastest * 1000, 3))
    measured = f"{len(latencies_s)} inferences: median {median * 1000:.3f} ms, fastest {fastest * 1000:.3f} ms"
    if config.scenario == "Offline":
        qps = OFFLINE_HEADROOM * concurrency / median
        return Calibration("loadgen_target_qps", _round(qps), f"{OFFLINE_HEADROOM} × {concurrency} in flight / "
                           f"median latency ({measured})", **facts)
    if config.scenario == "Server":
        return Calibration("loadgen_target_qps", _round(SERVER_LOAD / median),
                           f"{SERVER_LOAD} / median latency ({measured})", **facts)
    if config.scenario == "SingleStream":
        return Calibration("loadgen_target_latency", _round(fastest * 1000), f"fastest latency ({measured})",
                           **facts)
    per_query = config.samples_per_query or DEFAULT_SAMPLES_PER_QUERY
    latency = fastest * 1000 * per_query / concurrency
    return Calibration("loadgen_target_latency", _round(latency), f"fastest latency × {per_query} samples per "
                       f"query / {concurrency} in flight ({measured})", **facts)


def apply(config: LoadGenConfig, calibration: Calibration) -> LoadGenConfig:
    """The config with the calibrated target set (checked again, like a target the user gave)."""
    if calibration.setting == "loadgen_target_qps":
        return replace(config, target_qps=calibration.value)
    return replace(config, target_latency_ms=calibration.value)


def calibrate(config: LoadGenConfig, backend: Backend, load: Callable[[int], np.ndarray], count: int,
              concurrency: int) -> tuple[LoadGenConfig, Calibration | None]:
    """The config to run, with its missing target measured and set; unchanged (None) when none is missing."""
    setting = missing_target(config)
    if setting is None:
        return config, None
    calibration = derive(config, measure(backend, load, count), concurrency)
    log.info("calibrated %s = %g (%s)", calibration.setting, calibration.value, calibration.basis)
    return apply(config, calibration), calibration


def _round(value: float) -> float:
    """Four significant digits (a readable user.conf value, not a false precision), inside the setting's range."""
    return max(float(f"{value:.4g}"), MIN_TARGET)

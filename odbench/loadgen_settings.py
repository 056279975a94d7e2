"""LoadGen's settings: the scenarios, modes and profiles, their checks, and the user.conf they become.

LoadGen reads its official settings (the mlperf.conf built into the library) under the model's
official key and then the generated user.conf, so official values apply unless the user overrides
them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

from odbench import bounds

Scenario = Literal["Offline", "SingleStream", "MultiStream", "Server"]
# LoadGen's own test modes, and Submission: an AccuracyOnly pass, then a PerformanceOnly pass, one result
LoadGenMode = Literal["AccuracyOnly", "PerformanceOnly", "FindPeakPerformance"]
Mode = Literal["AccuracyOnly", "PerformanceOnly", "FindPeakPerformance", "Submission"]
Profile = Literal["official", "quick"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)
LOADGEN_MODES: tuple[str, ...] = get_args(LoadGenMode)
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
    samples_per_query: int | None = None  # MultiStream's samples per query (loadgen_multistreamness)
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

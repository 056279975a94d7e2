"""LoadGen's settings: the scenarios, modes and profiles, their checks, and the user.conf they become.

LoadGen reads its official settings (the mlperf.conf built into the library) under the model's
official key and then the generated user.conf, so official values apply unless the user overrides
them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
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
    "samples_per_query": "loadgen_multistreamness",
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
# loadgen_buffer_size when unset: official, the performance sample count MLPerf sets for both our models (retinanet's
# mlperf.conf line, ssd-resnet34's published one); quick, the axs workflow's default (fewer samples to load)
PERFORMANCE_SAMPLE_COUNT = {"official": 64, "quick": 8}
PUBLISHED_VALUES: dict[str, dict[str, float]] = {
    "ssd-resnet34": {
        "*.performance_sample_count_override": 64,
        "Offline.min_query_count": 24576,
        "MultiStream.target_latency": 528,
        "Server.target_latency": 100,
    },
}
# LoadGen's values where neither mlperf.conf nor PUBLISHED_VALUES set one for our models: MultiStream's expected
# query latency (retinanet's mlperf.conf line and ssd-resnet34's published one agree: 528 ms), its samples per query
# (mlperf.conf's `*.MultiStream.samples_per_query`), the Server arrival rate (TestSettings' default: mlperf.conf has
# none) and the Server latency bound of both our models (retinanet's mlperf.conf line, ssd-resnet34's published one).
OFFICIAL_MULTI_STREAM_LATENCY_MS = 528.0
OFFICIAL_SAMPLES_PER_QUERY = 8
OFFICIAL_SERVER_QPS = 1.0
OFFICIAL_SERVER_LATENCY_MS = 100.0
# PUBLISHED_VALUES keys that define what a valid result is (not how long a test runs): the quick profile keeps them
LATENCY_BOUND_KEYS = ("Server.target_latency",)
# The `quick` profile (demos, smoke tests): a PerformanceOnly test of seconds, not minutes, on the stand-ins;
# these replace the official minimum duration and query count unless the user sets them (or a count override).
# Their targets apply only to a LoadGenConfig used without calibration (the benchmark measures a missing target,
# odbench/calibration.py) and to the planned-sample check before any work. SingleStream's and MultiStream's
# expected latency (LoadGen generates twice min duration / expected latency
# queries, and ends the test with an error when a fast SUT uses them up before the minimum duration) are set low
# for the same reason: 8000 queries in 2 s, 1000 MultiStream queries of 8 samples; they only size the query pool,
# neither is a latency bound. Server's arrival rate is one both stand-ins sustain on 2 shared cores (~200-500
# samples/s each) well inside the 100 ms bound. A quick MultiStream or Server run is INVALID by early stopping
# (too few queries: MultiStream needs 662, Server about 459); docs/scenarios.md says how to make it VALID.
QUICK_MIN_DURATION_S = 2.0
QUICK_MIN_QUERY_COUNT = 16
QUICK_SINGLE_STREAM_LATENCY_MS = 0.5
QUICK_MULTI_STREAM_LATENCY_MS = 4.0
QUICK_SERVER_QPS = 50.0
# Modes whose LoadGen test is timed (planned-sample checks apply); Submission times its PerformanceOnly pass
TIMED_MODES = ("PerformanceOnly", "FindPeakPerformance", "Submission")


@dataclass(frozen=True)
class LoadGenConfig:
    """The LoadGen knobs, named as the axs workflow named them (durations in s, latency in ms)."""

    scenario: str = "Offline"
    mode: str = "AccuracyOnly"
    buffer_size: int | None = None  # performance sample count; None: the profile's (PERFORMANCE_SAMPLE_COUNT)
    target_qps: float | None = None  # Offline: expected samples/s; Server: Poisson arrival rate
    target_latency_ms: float | None = None  # SingleStream/MultiStream: expected latency; Server: the p99 bound
    count_override: int | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_query_count: int | None = None  # LoadGen's min_query_count (count_override sets it and max_query_count)
    max_query_count: int | None = None  # LoadGen's max_query_count; 0: no maximum
    samples_per_query: int | None = None  # MultiStream's samples per query (loadgen_multistreamness)
    profile: str = "official"  # official: mlperf.conf plus PUBLISHED_VALUES; quick: QUICK_* values

    def __post_init__(self) -> None:
        """Fail on values LoadGen would abort on, ignore, or plan too much memory for (odbench/bounds.py)."""
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
        self._check_counts()
        self._check_scenario_options()
        if self.timed:
            self._check_planned_samples()

    def _check_counts(self) -> None:
        """Minimums above maximums, and a count override contradicted by a separate count."""
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

    def _check_scenario_options(self) -> None:
        """Options the scenario (or mode) has no use for: LoadGen would ignore them silently, so say so."""
        scenario = self.scenario
        if self.target_qps is not None and scenario in ("SingleStream", "MultiStream"):
            raise ValueError(
                f"loadgen_target_qps={self.target_qps:g} does not apply to {scenario}: LoadGen issues each query "
                "when the previous one has completed, so there is no arrival rate to set. Drop loadgen_target_qps "
                f"(loadgen_target_latency sets {scenario}'s expected latency), or use loadgen_scenario=Server")
        if self.target_latency_ms is not None and scenario == "Offline":
            raise ValueError(
                f"loadgen_target_latency={self.target_latency_ms:g} does not apply to Offline: LoadGen sends every "
                "sample in one query and bounds no latency. Drop loadgen_target_latency (loadgen_target_qps sizes "
                "the Offline query), or use loadgen_scenario=Server, SingleStream or MultiStream")
        if self.samples_per_query is not None and scenario != "MultiStream":
            raise ValueError(
                f"loadgen_multistreamness={self.samples_per_query} (samples per query) applies only to "
                f"loadgen_scenario=MultiStream, not {scenario}: drop it, or use loadgen_scenario=MultiStream")
        if self.mode == "FindPeakPerformance" and scenario != "Server":
            raise ValueError(
                "loadgen_mode=FindPeakPerformance searches for the highest Server arrival rate that meets the "
                f"latency bound; LoadGen supports it only with loadgen_scenario=Server, not {scenario}: use "
                "loadgen_scenario=Server, or loadgen_mode=PerformanceOnly")

    @property
    def timed(self) -> bool:
        """Whether a LoadGen test of this mode is timed (and generates its queries up front)."""
        return self.mode in TIMED_MODES

    def passes(self) -> tuple[LoadGenConfig, ...]:
        """The LoadGen tests this mode runs, in order: Submission is an AccuracyOnly test, then a
        PerformanceOnly one (one result); every other mode is one LoadGen test of itself."""
        if self.mode == "Submission":
            return replace(self, mode="AccuracyOnly"), replace(self, mode="PerformanceOnly")
        return (self,)

    def planned_samples(self) -> tuple[float, str, str]:
        """About how many samples LoadGen generates for a timed test (it allocates them all before the first
        query), the product that gives them, and how to lower it, in words. FindPeakPerformance: its first
        test (each later one runs at a higher rate, and is allocated when it starts)."""
        quick = self.quick_minimums()
        count = max(self.count_override or 0, self.min_query_count or 0, int(quick.get("min_query_count", 0)))
        duration = (self.min_duration_s if self.min_duration_s is not None
                    else 0.0 if self.count_override
                    else quick["min_duration"] / 1000 if "min_duration" in quick else OFFICIAL_MIN_DURATION_S)
        dur = _given("loadgen_min_duration_s", duration, " s", self.min_duration_s is not None, self.profile)
        if self.scenario in ("Offline", "Server"):
            qps = self.target_qps or quick.get("target_qps") or _official_qps(self.scenario)
            qps_text = _given("loadgen_target_qps", qps, "", self.target_qps is not None, self.profile)
            fix = "lower loadgen_target_qps or loadgen_min_duration_s"
            if self.scenario == "Offline":  # one query of max(min_query_count, 1.1 x duration x qps) samples
                return max(count, 1.1 * duration * qps), f"1.1 × {qps_text} × {dur}", fix
            return max(count, duration * qps), f"{qps_text} × {dur}", fix  # queries scheduled over the duration
        latency = self.target_latency_ms or quick.get("target_latency") or _official_latency(self.scenario)
        latency_text = _given("loadgen_target_latency", latency, " ms", self.target_latency_ms is not None,
                              self.profile)
        per_query = (self.samples_per_query or OFFICIAL_SAMPLES_PER_QUERY) if self.scenario == "MultiStream" else 1
        per_text = f" × {per_query} samples per query" if per_query > 1 else ""
        return (max(count, 2 * duration * 1000 / latency) * per_query, f"2 × {dur} / {latency_text}{per_text}",
                "raise loadgen_target_latency or lower loadgen_min_duration_s")  # twice the expected queries

    def _check_planned_samples(self) -> None:
        planned, how, fix = self.planned_samples()
        if planned > bounds.MAX_LOADGEN_SAMPLES:
            raise bounds.ParameterRangeError(
                f"LoadGen would generate about {planned:.0f} samples for this test ({how}) and allocates them "
                f"all before it starts; at most {bounds.MAX_LOADGEN_SAMPLES}: {fix}, or set loadgen_count_override "
                f"for an exact count")

    def performance_count(self, total_count: int) -> int:
        """Samples LoadGen keeps loaded in performance mode: the buffer size (unset: the profile's), at most the
        dataset."""
        return min(self.buffer_size or PERFORMANCE_SAMPLE_COUNT[self.profile], total_count)

    def quick_minimums(self) -> dict[str, float]:
        """The `quick` profile's user.conf values (min_duration and target_latency in ms, target_qps) for what
        the user left unset; none with the official profile, and no duration or count with a count override
        (which already fixes the count and drops the duration)."""
        if self.profile != "quick":
            return {}
        values: dict[str, float] = {}
        if self.target_latency_ms is None and self.scenario in QUICK_LATENCY_MS:
            values["target_latency"] = QUICK_LATENCY_MS[self.scenario]
        if self.target_qps is None and self.scenario == "Server":
            values["target_qps"] = QUICK_SERVER_QPS
        if self.count_override is not None:
            return values
        if self.min_duration_s is None:
            seconds = min(QUICK_MIN_DURATION_S, self.max_duration_s or QUICK_MIN_DURATION_S)
            values["min_duration"] = round(seconds * 1000)
        if self.min_query_count is None:
            values["min_query_count"] = min(QUICK_MIN_QUERY_COUNT, self.max_query_count or QUICK_MIN_QUERY_COUNT)
        return values

    def published_values(self, model_key: str) -> dict[str, float]:
        """PUBLISHED_VALUES for the model that this profile writes: all of them with the official profile,
        with the quick one only the latency bound of this scenario (it decides validity, not duration)."""
        published = PUBLISHED_VALUES.get(model_key, {})
        if self.profile == "official":
            return dict(published)
        return {key: value for key, value in published.items()
                if key in LATENCY_BOUND_KEYS and key.startswith(f"{self.scenario}.")}

    def scenario_lines(self) -> dict[str, float]:
        """The user's scenario options under LoadGen's user.conf keys (loadgen/test_settings_internal.cc):
        target_qps (Offline, Server), target_latency (SingleStream, MultiStream, Server), samples_per_query
        (MultiStream); the checks above reject the others."""
        lines: dict[str, float] = {}
        if self.target_qps is not None:
            lines["target_qps"] = self.target_qps
        if self.target_latency_ms is not None:
            lines["target_latency"] = self.target_latency_ms
        if self.samples_per_query is not None:
            lines["samples_per_query"] = self.samples_per_query
        return lines

    def user_conf(self, model_key: str, total_count: int) -> str:
        """The user.conf lines for these settings, under LoadGen's key for the model: first the published
        values current LoadGen lacks (PUBLISHED_VALUES, see published_values), then the user's."""
        entries = {f"{model_key}.{key}": value for key, value in self.published_values(model_key).items()}
        lines: dict[str, float] = {"performance_sample_count_override": self.performance_count(total_count)}
        lines |= self.quick_minimums()
        lines |= self.scenario_lines()
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


QUICK_LATENCY_MS = {"SingleStream": QUICK_SINGLE_STREAM_LATENCY_MS, "MultiStream": QUICK_MULTI_STREAM_LATENCY_MS}


def _official_qps(scenario: str) -> float:
    """The arrival rate (Server) or expected samples/s (Offline) LoadGen uses when nobody sets one."""
    return OFFICIAL_SERVER_QPS if scenario == "Server" else OFFICIAL_OFFLINE_QPS


def _official_latency(scenario: str) -> float:
    """The expected latency (ms) LoadGen sizes a SingleStream or MultiStream test with when nobody sets one."""
    return OFFICIAL_MULTI_STREAM_LATENCY_MS if scenario == "MultiStream" else OFFICIAL_SINGLE_STREAM_LATENCY_MS


def _given(parameter: str, value: float, unit: str, by_user: bool, profile: str) -> str:
    """`loadgen_target_qps 50`, or `loadgen_target_qps 1 (official)` for a value the user did not give."""
    return f"{parameter} {value:g}{unit}" + ("" if by_user else f" ({profile})")

"""Read LoadGen's results: `mlperf_log_detail.txt` for exact typed values, `mlperf_log_summary.txt` for every field
as LoadGen prints it, both into one `LoadGenSummary` per test, scenario by scenario.

The detail log's `:::MLLOG {json}` lines give every number and the effective settings (after mlperf.conf and
user.conf) as typed JSON values, and the course of a FindPeakPerformance search; the summary file says the same
for people, plus the early-stopping verdict and LoadGen's recommendations as text. Keys per scenario (LoadGen
6.0.17, loadgen/results.cc): Offline `result_samples_per_second`; SingleStream `result_qps_with_loadgen_overhead`
and `early_stopping_latency_ss` (the p90 estimate); MultiStream `result_*_per_query_latency_ns` and
`early_stopping_latency_ms` (the p99 estimate, in ns despite its name); Server `result_scheduled_samples_per_sec`,
`result_completed_samples_per_sec`, `result_overlatency_query_count`, `result_perf_constraints_met`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90")
SUMMARY_FILE = "mlperf_log_summary.txt"
# the summary file's text sections: a heading line, then ` * item` lines (an item may wrap onto lines without `:`)
TEXT_SECTIONS = {"Recommendations:": "recommendations", "Early Stopping Result:": "early_stopping"}
# each scenario's headline metric, as MLPerf reports it, by name (LoadGenSummary.performance gives its value)
METRICS = {
    "Offline": "samples per second",
    "SingleStream": "90th percentile latency (ns)",
    "MultiStream": "99th percentile per-query latency (ns)",
    "Server": "scheduled samples per second",
}

# LoadGen prints a non-finite double as a bare nan / inf, which is not JSON
_BARE_NON_FINITE = re.compile(r"(?<=[:\[,\s])(-?)(nan|inf)(?=\s*[,}\]])")
_FIELD = re.compile(r"^\s*(?P<key>[^:*][^:]*?)\s*:\s*(?P<value>.*?)\s*$")
_INTEGER = re.compile(r"^-?\d+$")
_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_ITEM = re.compile(r"(?:^|\s)\*\s")  # the start of an item in LoadGen's early-stopping text
_PEAK_TESTS = (  # the FindPeakPerformance messages that start one LoadGen test, and where its rate is
    (re.compile(r"Check validity of the base settings field: ([\d.]+)"), 1),
    (re.compile(r"FindBoundaries: Checking fields \[[\d.]+, ([\d.]+)\)"), 1),
    (re.compile(r"Testing the mid value of bounds \[[\d.]+, [\d.]+\): ([\d.]+)"), 1),
)
_PEAK_FOUND = re.compile(r"FindPeakPerformance: Found peak performance field: ([\d.]+)")
_PEAK_FAILED = "FindPeakPerformance: Initial lower bound does not satisfy"


def _event(payload: str) -> dict[str, Any] | None:
    """One MLLOG event, bare nan/inf read as NaN/Infinity; None when it still is not JSON."""
    try:
        return json.loads(payload)
    except ValueError:
        pass
    try:
        return json.loads(_BARE_NON_FINITE.sub(
            lambda m: "NaN" if m.group(2) == "nan" else f"{m.group(1)}Infinity", payload))
    except ValueError:
        return None


def read_events(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every MLLOG event of a detail log in order, and the lines that do not parse (as messages)."""
    events, unreadable = [], []
    for line in Path(path).read_text().splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        event = _event(line[len(":::MLLOG "):])
        if isinstance(event, dict) and "key" in event:
            events.append(event)
        else:
            unreadable.append(f"unreadable LoadGen log line: {line[:200]}")
    return events, unreadable


def read_detail_log(path: str | Path) -> dict[str, Any]:
    """key -> value of every MLLOG event (the last value wins; errors, and lines that do not parse,
    are kept in a list under "errors", every generic message under "messages")."""
    events, unreadable = read_events(path)
    values: dict[str, Any] = {"errors": unreadable, "messages": []}
    for event in events:
        if event.get("metadata", {}).get("is_error"):
            values["errors"].append(f"{event['key']}: {event['value']}")
        if event["key"] == "generic_message":
            values["messages"].append(str(event["value"]))
        values[event["key"]] = event["value"]
    return values


@dataclass(frozen=True)
class SummaryFile:
    """`mlperf_log_summary.txt`, parsed: every `key : value` line (numbers as numbers, Yes/No as booleans;
    a key printed twice keeps its first value), the text sections' items, and the other lines."""

    fields: dict[str, Any] = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)
    early_stopping: list[str] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)  # e.g. "No warnings encountered during test."


def _value(text: str) -> Any:
    """A summary value: int, float, bool (Yes/No), or the text itself."""
    if _INTEGER.match(text):
        return int(text)  # exact: the seeds are 64-bit
    if _NUMBER.match(text):
        return float(text)
    return {"yes": True, "no": False}.get(text.lower(), text)


def read_summary(path: str | Path) -> SummaryFile:
    """Parse LoadGen's summary file (see SummaryFile); section rules (`====`) and empty lines are skipped."""
    parsed = SummaryFile()
    section: list[str] | None = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("===="):
            continue
        if line in TEXT_SECTIONS:
            section = getattr(parsed, TEXT_SECTIONS[line])
        elif section is not None and line.startswith("*"):
            section.append(line.lstrip("* ").strip())
        elif section is not None and section and ":" not in line:
            section[-1] += " " + line  # a wrapped item
        elif match := _FIELD.match(raw):
            section = None
            if match["value"]:  # a bare heading such as `Per-query latency:` has none
                parsed.fields.setdefault(match["key"], _value(match["value"]))
        else:
            section = None
            parsed.other_lines.append(line)
    return parsed


@dataclass(frozen=True)
class PeakSearch:
    """A FindPeakPerformance outcome: the highest tested Server rate that met the latency bound (None when the
    first test already failed it), every rate LoadGen tested in order, and LoadGen's closing message."""

    peak_qps: float | None
    tested_qps: list[float]
    message: str


def peak_search(messages: list[str], errors: list[str]) -> PeakSearch | None:
    """The FindPeakPerformance search from the detail log's generic messages and errors; None when none ran."""
    tested = [float(m[group]) for text in messages for pattern, group in _PEAK_TESTS if (m := pattern.search(text))]
    if not tested:
        return None
    found = next((m for text in messages if (m := _PEAK_FOUND.search(text))), None)
    if found:
        return PeakSearch(float(found[1]), tested, found[0])
    failed = next((text for text in errors if _PEAK_FAILED in text), "the search did not finish")
    return PeakSearch(None, tested, failed)


def _ns(value: Any) -> float | None:
    """A latency in ns; LoadGen's 0 means it has no estimate."""
    return float(value) if isinstance(value, (int, float)) and value and math.isfinite(value) else None


def _early_stopping_text(text: str | None) -> str | None:
    """LoadGen's early-stopping verdict (` * item` lines, some wrapped) as one line of sentences."""
    items = [" ".join(item.split()) for item in _ITEM.split(text or "")]
    return " ".join(item if item.endswith((".", ")")) else item + "." for item in items if item) or None


def _percentiles(events: dict[str, Any], template: str, extremes: str) -> dict[str, float]:
    """min, mean, max, p50 … p99.9 from keys like result_{p}_percentile_latency_ns / result_{m}_latency_ns."""
    values = {name: events.get(extremes.format(name)) for name in ("min", "mean", "max")}
    values |= {f"p{p.rstrip('0').rstrip('.')}": events.get(template.format(p)) for p in PERCENTILES}
    return {k: float(v) for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class LoadGenSummary:
    """What one LoadGen test measured; performance fields are None in AccuracyOnly mode. Latencies in ns."""

    scenario: str
    mode: str
    validity: str | None = None  # VALID / INVALID
    invalid_reason: str | None = None  # LoadGen's result_invalid_reason (its recommendation), when it gives one
    min_duration_met: bool | None = None
    min_queries_met: bool | None = None
    perf_constraints_met: bool | None = None  # Server: the latency bound held at its percentile
    early_stopping_met: bool | None = None
    early_stopping: str | None = None  # LoadGen's early-stopping verdict, as text
    query_count: int | None = None
    samples_per_second: float | None = None  # Offline; SingleStream (QPS with LoadGen overhead); Server (completed)
    scheduled_samples_per_second: float | None = None  # Server: the Poisson rate LoadGen achieved issuing
    completed_samples_per_second: float | None = None  # Server
    overlatency_query_count: int | None = None  # Server: queries over the latency bound
    latency_ns: dict[str, float] = field(default_factory=dict)  # per sample: min, mean, max, p50 … p99.9
    per_query_latency_ns: dict[str, float] = field(default_factory=dict)  # MultiStream: per query of N samples
    early_stopping_latency_ns: float | None = None  # SingleStream p90 / MultiStream p99 early-stopping estimate
    peak: PeakSearch | None = None  # FindPeakPerformance's outcome
    summary_fields: dict[str, Any] = field(default_factory=dict)  # every `key : value` of the summary file
    recommendations: list[str] = field(default_factory=list)  # the summary file's Recommendations
    effective_settings: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        """Why LoadGen called the result INVALID, in its words: each unmet condition (early stopping with its
        verdict) and its recommendation; None for a VALID (or untimed) result."""
        if self.validity != "INVALID":
            return None
        unmet = [name for name, met in (("performance constraints (latency bound)", self.perf_constraints_met),
                                        ("min duration", self.min_duration_met),
                                        ("min queries", self.min_queries_met)) if met is False]
        parts = [f"{name} not met" for name in unmet]
        if self.early_stopping_met is False:
            parts.append(f"early stopping not met ({self.early_stopping})" if self.early_stopping
                         else "early stopping not met")
        if self.invalid_reason:
            parts.append(f"LoadGen recommends: {self.invalid_reason}")
        return "; ".join(parts) or "LoadGen gave no reason"

    @property
    def performance(self) -> tuple[str, float | None]:
        """The scenario's headline metric, as MLPerf reports it: Offline samples/s, SingleStream's p90 latency
        and MultiStream's p99 per-query latency (LoadGen's early-stopping estimates; the measured percentile
        when LoadGen has none, i.e. too few queries, then the result is INVALID), Server's scheduled samples/s."""
        value = {
            "Offline": self.samples_per_second,
            "SingleStream": self.early_stopping_latency_ns or self.latency_ns.get("p90"),
            "MultiStream": self.early_stopping_latency_ns or self.per_query_latency_ns.get("p99"),
            "Server": self.scheduled_samples_per_second,
        }[self.scenario]
        return METRICS[self.scenario], value

    def to_json(self) -> dict[str, Any]:
        """Every parsed field, plus the headline metric and the reason, as JSON-ready values."""
        metric, value = self.performance
        return asdict(self) | {"performance_metric": metric, "performance": value, "reason": self.reason}


def summarize(detail_log: str | Path, scenario: str, mode: str,
              summary_log: str | Path | None = None) -> LoadGenSummary:
    """One LoadGen test's results from its detail log and its summary file (default: the detail log's sibling
    mlperf_log_summary.txt, skipped when absent); performance fields only for a timed test."""
    events = read_detail_log(detail_log)
    summary_path = Path(summary_log) if summary_log else Path(detail_log).with_name(SUMMARY_FILE)
    text = read_summary(summary_path) if summary_path.exists() else SummaryFile()
    effective = {k.removeprefix("effective_"): v for k, v in events.items() if k.startswith("effective_")}
    common = dict(scenario=scenario, mode=mode, effective_settings=effective, errors=events["errors"],
                  summary_fields=text.fields, recommendations=text.recommendations)
    if mode == "AccuracyOnly" or "result_validity" not in events:
        return LoadGenSummary(**common)
    return LoadGenSummary(**common, **_timed_results(events, scenario), peak=peak_search(events["messages"],
                                                                                           events["errors"]))


def _timed_results(events: dict[str, Any], scenario: str) -> dict[str, Any]:
    """A timed test's validity, its reasons and the scenario's numbers, from the detail log's values."""
    server = scenario == "Server"
    throughput = events.get("result_samples_per_second", events.get("result_qps_with_loadgen_overhead"))
    early_latency = events.get("early_stopping_latency_ms" if scenario == "MultiStream" else
                               "early_stopping_latency_ss")
    return dict(
        validity=events.get("result_validity"),
        invalid_reason=(events.get("result_invalid_reason") or "").strip() or None,
        min_duration_met=events.get("result_min_duration_met"),
        min_queries_met=events.get("result_min_queries_met"),
        perf_constraints_met=events.get("result_perf_constraints_met"),
        early_stopping_met=events.get("early_stopping_met"),
        early_stopping=_early_stopping_text(events.get("early_stopping_result")),
        query_count=events.get("result_query_count"),
        samples_per_second=events.get("result_completed_samples_per_sec") if server else throughput,
        scheduled_samples_per_second=events.get("result_scheduled_samples_per_sec"),
        completed_samples_per_second=events.get("result_completed_samples_per_sec"),
        overlatency_query_count=events.get("result_overlatency_query_count"),
        latency_ns=_percentiles(events, "result_{}_percentile_latency_ns", "result_{}_latency_ns"),
        per_query_latency_ns=_percentiles(events, "result_{}_percentile_per_query_latency_ns",
                                          "result_{}_query_latency_ns") if scenario == "MultiStream" else {},
        early_stopping_latency_ns=_ns(early_latency) if scenario in ("SingleStream", "MultiStream") else None,
    )

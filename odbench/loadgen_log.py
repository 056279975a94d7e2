"""Read LoadGen's results from `mlperf_log_detail.txt`, whose `:::MLLOG {json}` lines are exact.

The summary text file says the same for people; the detail log gives every number and the
effective settings (after mlperf.conf and user.conf) as typed JSON values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = ("50.00", "90.00", "95.00", "97.00", "99.00", "99.90")


# LoadGen prints a non-finite double as a bare nan / inf, which is not JSON
_BARE_NON_FINITE = re.compile(r"(?<=[:\[,\s])(-?)(nan|inf)(?=\s*[,}\]])")


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


def read_detail_log(path: str | Path) -> dict[str, Any]:
    """key -> value of every MLLOG event (the last value wins; errors, and lines that do not parse,
    are kept in a list)."""
    events: dict[str, Any] = {"errors": []}
    for line in Path(path).read_text().splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        event = _event(line[len(":::MLLOG "):])
        if not isinstance(event, dict) or "key" not in event:
            events["errors"].append(f"unreadable LoadGen log line: {line[:200]}")
            continue
        if event.get("metadata", {}).get("is_error"):
            events["errors"].append(f"{event['key']}: {event['value']}")
        events[event["key"]] = event["value"]
    return events


@dataclass(frozen=True)
class LoadGenSummary:
    """What one LoadGen test measured; performance fields are None in AccuracyOnly mode."""

    scenario: str
    mode: str
    validity: str | None = None  # VALID / INVALID
    samples_per_second: float | None = None
    query_count: int | None = None
    latency_ns: dict[str, float] = field(default_factory=dict)  # min, mean, max, p50 … p99.9
    early_stopping: str | None = None
    early_stopping_latency_ns: float | None = None  # SingleStream: the p90 after early stopping
    effective_settings: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def performance(self) -> tuple[str, float | None]:
        """The scenario's headline metric, as MLPerf reports it."""
        if self.scenario == "SingleStream":
            value = self.early_stopping_latency_ns or self.latency_ns.get("p90")
            return "90th percentile latency (ns)", value
        return "samples per second", self.samples_per_second


def summarize(detail_log: str | Path, scenario: str, mode: str) -> LoadGenSummary:
    events = read_detail_log(detail_log)
    effective = {k.removeprefix("effective_"): v for k, v in events.items() if k.startswith("effective_")}
    if mode != "PerformanceOnly":
        return LoadGenSummary(scenario, mode, effective_settings=effective, errors=events["errors"])
    latency = {name: events.get(f"result_{name}_latency_ns") for name in ("min", "mean", "max")}
    latency |= {f"p{p.rstrip('0').rstrip('.')}": events.get(f"result_{p}_percentile_latency_ns") for p in PERCENTILES}
    throughput = events.get("result_samples_per_second", events.get("result_qps_with_loadgen_overhead"))
    return LoadGenSummary(
        scenario=scenario,
        mode=mode,
        validity=events.get("result_validity"),
        samples_per_second=throughput,
        query_count=events.get("result_query_count"),
        latency_ns={k: float(v) for k, v in latency.items() if v is not None},
        early_stopping=(events.get("early_stopping_result") or "").strip() or None,
        early_stopping_latency_ns=events.get("early_stopping_latency_ss") or None,
        effective_settings=effective,
        errors=events["errors"],
    )

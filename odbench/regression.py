"""A run against its baseline: the comparable runs before it, per-metric thresholds, and what changed.

Comparable runs have the same entry (what is measured) and the same hardware class, and were recorded
before the run. The baseline of a metric is the median over the last K comparable runs that measured
it, so one outlier night neither hides nor fakes a regression; or the values of one pinned run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from odbench.history import HistoryRecord, Metrics

# Default thresholds: a run regresses when it is worse than its baseline by MORE than these. About twice
# the largest run-to-run deviation measured by benchmarks/regression_noise.py (docs/regression.md).
DEFAULT_MAP_DROP_POINTS = 0.5  # mAP, in percentage points (deterministic on one machine and engine)
DEFAULT_THROUGHPUT_DROP_PERCENT = 20.0  # LoadGen samples/s (measured: up to 9.8% off the median)
DEFAULT_LATENCY_RISE_PERCENT = 35.0  # LoadGen p90 latency (measured: up to 17.3% off the median)
DEFAULT_LAST_K = 5

NO_BASELINE, PASS, REGRESSED = "no-baseline", "pass", "regressed"


@dataclass(frozen=True)
class Thresholds:
    """How much worse than its baseline a run may be before it counts as a regression."""

    map_drop_points: float = DEFAULT_MAP_DROP_POINTS
    throughput_drop_percent: float = DEFAULT_THROUGHPUT_DROP_PERCENT
    latency_rise_percent: float = DEFAULT_LATENCY_RISE_PERCENT

    def __post_init__(self) -> None:
        """A threshold is a finite number >= 0; anything else would silently pass or fail every run."""
        for name in ("map_drop_points", "throughput_drop_percent", "latency_rise_percent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"threshold {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class _Check:
    """One compared metric: how its change is measured and which direction is worse."""

    metric: str
    label: str
    value_unit: str
    unit: str  # of the change and the threshold
    change: Callable[[float, float], float | None]  # (value, baseline) -> change; None when undefined
    worse: int  # -1: a fall is worse, +1: a rise is worse
    threshold: Callable[[Thresholds], float]


def _points(value: float, baseline: float) -> float:
    return value - baseline


def _percent(value: float, baseline: float) -> float | None:
    return None if baseline == 0 else 100.0 * (value - baseline) / baseline


CHECKS = (
    _Check("mAP", "mAP", "%", "points", _points, -1, lambda t: t.map_drop_points),
    _Check("samples_per_second", "samples/s", " samples/s", "%", _percent, -1, lambda t: t.throughput_drop_percent),
    _Check("latency_p90_ms", "p90 latency", " ms", "%", _percent, +1, lambda t: t.latency_rise_percent),
)


@dataclass(frozen=True)
class Finding:
    """One checked metric: its value, the baseline, the signed change and whether it crossed the threshold."""

    metric: str
    value: float
    baseline: float
    change: float  # value - baseline: points for mAP, percent of the baseline otherwise
    threshold: float
    unit: str  # of change and threshold: "points" or "%"
    crossed: bool
    basis: str  # how the baseline was made: "median of last 3" or "pinned run <id>"
    baseline_run_ids: tuple[str, ...] = ()

    def line(self) -> str:
        """The finding in one line, e.g. "mAP 34.100% vs baseline 35.000% (median of last 3): -0.900 points, ..."."""
        check = _check(self.metric)
        return (f"{check.label} {self.value:.3f}{check.value_unit} vs baseline {self.baseline:.3f}{check.value_unit} "
                f"({self.basis}): {self.change:+.3f} {self.unit}, threshold: a {'rise' if check.worse > 0 else 'drop'} "
                f"over {self.threshold:g} {self.unit}")


def _check(metric: str) -> _Check:
    return next(check for check in CHECKS if check.metric == metric)


@dataclass(frozen=True)
class Comparison:
    """A run against its baseline: status, the checked metrics, and what differs from the previous comparable run."""

    record: HistoryRecord
    status: str  # "no-baseline" | "pass" | "regressed"
    baseline_run_ids: list[str]
    findings: list[Finding]
    changes: list[str]
    comparable_runs: int = 0

    def message(self) -> str:
        """The result for people: the crossed metrics with the run and the changes, or a one-line summary."""
        rec = self.record
        where = f"{rec.entry_label} on {rec.hardware}"
        if self.status == NO_BASELINE:
            why = ("no comparable run yet (same entry and hardware)" if not self.comparable_runs else
                   "no metric in common with the comparable runs")
            return f"{where}: {why}; run {rec.run_id} passes and becomes part of the baseline."
        if self.status == PASS:
            checked = "; ".join(f"{_check(f.metric).label} {f.change:+.2f} {f.unit}" for f in self.findings)
            return f"{where}: pass (run {rec.run_id}; {checked}; {self.findings[0].basis})."
        lines = [f"REGRESSION {where}: {f.line()}; run {rec.run_id} ({rec.run_dir})"
                 for f in self.findings if f.crossed]
        lines += ["changes since the previous comparable run:", *(f"  {c}" for c in self.changes)] \
            if self.changes else ["nothing recorded changed since the previous comparable run"]
        return "\n".join(lines)


def comparable_runs(record: HistoryRecord, history: Sequence[HistoryRecord]) -> list[HistoryRecord]:
    """Runs of the same entry on the same hardware recorded before `record`, oldest first. A record may
    repeat an earlier run id: an AccuracyOnly result served from the cache (same model, data, settings,
    onnxruntime and driver give the same detections) is a valid baseline of itself."""
    runs = [r for r in history if r.entry == record.entry and r.hardware == record.hardware
            and r.recorded_at < record.recorded_at]
    return sorted(runs, key=lambda r: (r.recorded_at, r.run_id))


def compare(record: HistoryRecord, history: Sequence[HistoryRecord], thresholds: Thresholds,
            last_k: int = DEFAULT_LAST_K, pinned_run_id: str | None = None) -> Comparison:
    """`record` against the median of the last `last_k` comparable runs per metric, or against a pinned run."""
    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, got {last_k}")
    runs = comparable_runs(record, history)
    pinned = _pinned(record, runs, pinned_run_id) if pinned_run_id is not None else None
    findings = [f for check in CHECKS if (f := _finding(check, record, runs, thresholds, last_k, pinned))]
    status = NO_BASELINE if not findings else REGRESSED if any(f.crossed for f in findings) else PASS
    used = {run_id for f in findings for run_id in f.baseline_run_ids}
    return Comparison(record=record, status=status, baseline_run_ids=[r.run_id for r in runs if r.run_id in used],
                      findings=findings, changes=changes(runs[-1], record) if runs else [], comparable_runs=len(runs))


def _pinned(record: HistoryRecord, runs: list[HistoryRecord], run_id: str) -> HistoryRecord:
    found = [r for r in runs if r.run_id == run_id]
    if not found:
        raise ValueError(f"pinned run {run_id!r} is not a comparable run of entry {record.entry_label!r} "
                         f"({record.entry}) on {record.hardware!r} recorded before run {record.run_id!r}")
    return found[-1]


def _metric(metrics: Metrics, name: str) -> float | None:
    return getattr(metrics, name)


def _finding(check: _Check, record: HistoryRecord, runs: list[HistoryRecord], thresholds: Thresholds,
             last_k: int, pinned: HistoryRecord | None) -> Finding | None:
    """The check of one metric, or None when either side lacks it (or a percent change is undefined)."""
    value = _metric(record.metrics, check.metric)
    if pinned is not None:
        basis_runs, basis = [pinned], f"pinned run {pinned.run_id}"
    else:
        basis_runs = [r for r in runs if _metric(r.metrics, check.metric) is not None][-last_k:]
        basis = f"median of last {len(basis_runs)}"
    values = [v for r in basis_runs if (v := _metric(r.metrics, check.metric)) is not None]
    if value is None or not values:
        return None
    baseline = statistics.median(values)
    change = check.change(value, baseline)
    if change is None:
        return None
    threshold = check.threshold(thresholds)
    return Finding(metric=check.metric, value=value, baseline=baseline, change=change, threshold=threshold,
                   unit=check.unit, crossed=change * check.worse > threshold, basis=basis,
                   baseline_run_ids=tuple(r.run_id for r in basis_runs))


def changes(previous: HistoryRecord, record: HistoryRecord) -> list[str]:
    """What differs between two runs: model md5, dataset digest, and every environment value."""
    found = []
    if previous.model_md5 != record.model_md5:
        found.append(f"model md5 {_short(previous.model_md5, record.model_md5)}")
    if previous.dataset_digest != record.dataset_digest:
        found.append(f"dataset digest {_short(previous.dataset_digest, record.dataset_digest)}")
    for key in sorted(previous.environment.keys() | record.environment.keys()):
        before, after = previous.environment.get(key, "(absent)"), record.environment.get(key, "(absent)")
        if before != after:
            found.append(f"{key} {before} → {after}")
    return found


def _short(before: str, after: str) -> str:
    """"1234abcd → 5678ef01": 8 characters of each digest, all of them where 8 would look the same."""
    n = 8 if before[:8] != after[:8] else max(len(before), len(after))
    return f"{before[:n]} → {after[:n]}"

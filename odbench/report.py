"""Human-readable views of a result: the terminal summary, the markdown report, the metrics table.

Every cell of the markdown report that comes from data (names, sources, folders, problems, notes) is
escaped, so a dataset or model name cannot inject markup; URLs are shown with credentials redacted.
"""

from __future__ import annotations

from typing import Any

from odbench.benchmark import BenchmarkResult
from odbench.redact import redact_text
from odbench.trend import escape_markdown

STAND_IN_NOTE = "stand-in model (random weights, the real I/O contract): its numbers are not the real model's"


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def model_label(model_name: str, stand_in: bool) -> str:
    return f"{model_name} [STAND-IN]" if stand_in else model_name


def _latency_ms(result: BenchmarkResult, key: str) -> float | None:
    value = result.latency_ns.get(key)
    return None if value is None else value / 1e6


def problems_text(result: BenchmarkResult) -> str:
    """`non_finite: 3, too_many_detections: 199700`, or `none`."""
    problems = result.output_problems
    return ", ".join(f"{name}: {count}" for name, count in problems.items()) or "none"


def warmup_text(result: BenchmarkResult) -> str:
    """`8 samples in 0.412 s (untimed)`, or `none`."""
    samples = int(result.warmup.get("samples", 0))
    return f"{samples} samples in {result.warmup.get('seconds', 0.0):.3f} s (untimed)" if samples else "none"


def calibration_text(result: BenchmarkResult) -> str:
    """`loadgen_target_qps = 310.5 (calibrated: 1.5 × 1 in flight / median latency (...))`, or `given`."""
    c = result.calibration
    return f"{c['setting']} = {c['value']:g} (calibrated: {c['basis']})" if c else "given (or untimed)"


def compliance_text(result: BenchmarkResult) -> str:
    """`TEST01 PASS`, `TEST04 FAIL (why)`, or `none`."""
    c = result.compliance
    if not c:
        return "none"
    if c["passed"]:
        return f"{c['test']} PASS"
    accuracy, performance = c.get("accuracy"), c["performance"]
    reasons = [*c["audit_config_problems"]]
    if accuracy and not accuracy["passed"]:
        reasons.append(f"{accuracy['num_perf_log_data_mismatch']} sampled response(s) differ from the accuracy run")
    if not performance["passed"]:
        scores = (f"audit {performance['audit_score']:g} vs reference {performance['reference_score']:g} "
                  f"{performance['metric']}, tolerance {performance['threshold']:.0%}"
                  if performance["audit_score"] and performance["reference_score"] and performance["threshold"]
                  else "")
        reasons.append("; ".join(r for r in (performance["failure"], scores) if r) or "performance out of tolerance")
    return f"{c['test']} FAIL ({'; '.join(reasons)})"


def performance_text(result: BenchmarkResult) -> str:
    """The scenario's headline metric and its value (latencies in ms), or `n/a`."""
    if result.performance is None:
        return "n/a"
    if "(ns)" in result.performance_metric:
        return f"{result.performance_metric.replace('(ns)', '(ms)')} {result.performance / 1e6:.3f}"
    return f"{result.performance_metric} {result.performance:.3f}"


def metrics_rows(result: BenchmarkResult) -> list[dict[str, Any]]:
    """The headline metrics as table rows of JSON types (Prefect table artifacts need that)."""
    rows: list[tuple[str, Any]] = [
        ("model", model_label(result.model_name, result.stand_in)),
        ("stand_in", result.stand_in),
        ("dataset", redact_text(result.dataset)),
        ("dataset_size", result.dataset_size),
        ("scenario", result.scenario),
        ("mode", result.mode),
        ("providers", ", ".join(result.providers)),
        ("mAP (%)", result.mAP),
        ("samples_per_second", result.samples_per_second),
        ("samples_per_second_source", result.samples_per_second_source),
        ("performance", performance_text(result)),
        ("result_validity", result.validity),
        ("invalid_reason", result.loadgen.get("reason") or None),
        ("target", calibration_text(result)),
        ("compliance", compliance_text(result)),
        *((f"latency_{k}_ms", _latency_ms(result, k)) for k in ("p50", "p90", "p99")),
        ("warmup", warmup_text(result)),
        ("output_problems", problems_text(result)),
        ("run_dir", redact_text(result.run_dir)),
    ]
    return [{"metric": name, "value": value} for name, value in rows]


def summary_markdown(result: BenchmarkResult) -> str:
    """The run's report for the Prefect UI; every data-derived cell escaped."""
    lines = [
        f"# detect: {escape_markdown(model_label(result.model_name, result.stand_in))}",
        "",
        f"> **{STAND_IN_NOTE}**" if result.stand_in else f"Model file md5 {escape_markdown(result.model_md5)}.",
        *(line for note in result.notes for line in ("", f"> **Note:** {escape_markdown(note)}")),
        "",
        "| | |",
        "|---|---|",
        *(f"| {escape_markdown(row['metric'])} | {_cell(row['value'])} |" for row in metrics_rows(result)),
        "",
        f"LoadGen logs, user.conf and result.json: {escape_markdown(redact_text(result.run_dir))}",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else escape_markdown(value)


def terminal_summary(result: BenchmarkResult) -> str:
    """A few lines for the terminal."""
    lines = [
        f"model        {model_label(result.model_name, result.stand_in)}"
        + ("  <- " + STAND_IN_NOTE if result.stand_in else ""),
        f"dataset      {redact_text(result.dataset)} (first {result.dataset_size} images)",
        f"loadgen      {result.scenario} / {result.mode}, providers {', '.join(result.providers)}",
        f"mAP          {_fmt(result.mAP, '%')}",
        f"samples/s    {_fmt(result.samples_per_second)}"
        + (f"  ({result.samples_per_second_source})" if result.samples_per_second_source else ""),
    ]
    if result.validity:
        reason = result.loadgen.get("reason")
        lines.append(f"result       {result.validity}" + (f" ({reason})" if reason else ""))
        lines.append(f"performance  {performance_text(result)}")
    if result.mode != "AccuracyOnly":
        lines.append(f"warm-up      {warmup_text(result)}")
        lines.append(f"target       {calibration_text(result)}")
    if result.compliance:
        lines.append(f"compliance   {compliance_text(result)}")
    if result.output_problems:
        lines.append(f"outputs      detections dropped: {problems_text(result)}")
    lines += [f"note         {note}" for note in result.notes]
    lines.append(f"logs         {redact_text(result.run_dir)}")
    return "\n".join(lines)

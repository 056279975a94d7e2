"""Human-readable views of a result: the terminal summary, the markdown report, the metrics table."""

from __future__ import annotations

from typing import Any

from odbench.benchmark import BenchmarkResult

STAND_IN_NOTE = "stand-in model (random weights, the real I/O contract): its numbers are not the real model's"


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def model_label(model_name: str, stand_in: bool) -> str:
    return f"{model_name} [STAND-IN]" if stand_in else model_name


def _latency_ms(result: BenchmarkResult, key: str) -> float | None:
    value = result.latency_ns.get(key)
    return None if value is None else value / 1e6


def metrics_rows(result: BenchmarkResult) -> list[dict[str, Any]]:
    """The headline metrics as table rows of JSON types (Prefect table artifacts need that)."""
    rows: list[tuple[str, Any]] = [
        ("model", model_label(result.model_name, result.stand_in)),
        ("stand_in", result.stand_in),
        ("dataset", result.dataset),
        ("dataset_size", result.dataset_size),
        ("scenario", result.scenario),
        ("mode", result.mode),
        ("providers", ", ".join(result.providers)),
        ("mAP (%)", result.mAP),
        ("samples_per_second", result.samples_per_second),
        ("samples_per_second_source", result.samples_per_second_source),
        ("result_validity", result.validity),
        *((f"latency_{k}_ms", _latency_ms(result, k)) for k in ("p50", "p90", "p99")),
        ("run_dir", result.run_dir),
    ]
    return [{"metric": name, "value": value} for name, value in rows]


def summary_markdown(result: BenchmarkResult) -> str:
    """The run's report for the Prefect UI."""
    lines = [
        f"# detect: {model_label(result.model_name, result.stand_in)}",
        "",
        f"> **{STAND_IN_NOTE}**" if result.stand_in else f"Model file md5 `{result.model_md5}`.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {row['metric']} | {_cell(row['value'])} |" for row in metrics_rows(result)),
        "",
        f"LoadGen logs, user.conf and result.json: `{result.run_dir}`",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def terminal_summary(result: BenchmarkResult) -> str:
    """A few lines for the terminal."""
    lines = [
        f"model        {model_label(result.model_name, result.stand_in)}" + ("  <- " + STAND_IN_NOTE if result.stand_in else ""),
        f"dataset      {result.dataset} (first {result.dataset_size} images)",
        f"loadgen      {result.scenario} / {result.mode}, providers {', '.join(result.providers)}",
        f"mAP          {_fmt(result.mAP, '%')}",
        f"samples/s    {_fmt(result.samples_per_second)}"
        + (f"  ({result.samples_per_second_source})" if result.samples_per_second_source else ""),
    ]
    if result.validity:
        lines.append(f"result       {result.validity}; p90 latency {_fmt(_latency_ms(result, 'p90'), ' ms')}")
    lines.append(f"logs         {result.run_dir}")
    return "\n".join(lines)

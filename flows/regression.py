"""The `regression` flow: run a matrix of detect runs, append each result to the history, compare it
with the baseline of comparable runs, and fail the flow run when a metric crossed its threshold.

    prefect deployment run regression/nightly                          # the schedule's matrix
    python -m flows.regression --matrix '[{"model_name": "retinanet", "model_url": "standin", ...}]'
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed, Failed, State

from blocks.storage import resolve_storage
from flows.command import run_command, state_exit_code
from flows.detect import detect
from flows.matrix import DetectParameters, resolve_matrix, with_storage
from odbench.benchmark import BenchmarkResult
from odbench.history import HistoryRecord, HistoryStore
from odbench.models import get_spec
from odbench.regression import (
    DEFAULT_LAST_K,
    DEFAULT_LATENCY_RISE_PERCENT,
    DEFAULT_MAP_DROP_POINTS,
    DEFAULT_THROUGHPUT_DROP_PERCENT,
    Comparison,
    Thresholds,
    compare,
)
from odbench.trend import chart_markdown, escape_markdown, trend_chart_png, trend_markdown
from tasks.report import slug


@dataclass(frozen=True)
class EntryOutcome:
    """One matrix entry's result: its comparison with the baseline, or why it did not run."""

    label: str
    status: str  # "no-baseline" | "pass" | "regressed" | "failed"
    message: str
    run_id: str | None = None
    flow_run_url: str | None = None


def regression_run_name() -> str:
    matrix = flow_run.parameters.get("matrix") or []
    return f"regression-{len(matrix)}-entries" if matrix else "regression-" + str(flow_run.parameters.get(
        "matrix_block") or "empty")


@flow(name="regression", flow_run_name=regression_run_name, log_prints=True)
def regression(
    matrix: list[DetectParameters] | None = None,
    matrix_block: str | None = None,
    map_drop_points: float = DEFAULT_MAP_DROP_POINTS,
    throughput_drop_percent: float = DEFAULT_THROUGHPUT_DROP_PERCENT,
    latency_rise_percent: float = DEFAULT_LATENCY_RISE_PERCENT,
    baseline_last_k: int = DEFAULT_LAST_K,
    baseline_run_id: str | None = None,
    storage_block: str | None = None,
    storage_url: str | None = None,
) -> State:
    """Run each matrix entry with `detect`, record it in the history and compare it with its baseline.

    Args:
        matrix: The runs, each a set of detect's parameters (e.g. model_name, model_url, dataset_url,
            loadgen_scenario, loadgen_mode); leave empty to use matrix_block.
        matrix_block: Name of a saved RegressionMatrix block holding the entries instead.
        map_drop_points: Fail when mAP falls more than this many percentage points below the baseline.
        throughput_drop_percent: Fail when LoadGen samples/s falls more than this percentage below the baseline.
        latency_rise_percent: Fail when LoadGen's p90 latency rises more than this percentage above the baseline.
        baseline_last_k: The baseline is the median of the last K comparable runs (same entry, same hardware).
        baseline_run_id: Compare with this one run (its run id) instead of the median.
        storage_block: Storage block for entries that name none; the history lives in each entry's storage.
        storage_url: Storage root URL for entries that name no storage (default: the local cache).
    """
    entries = resolve_matrix(matrix, matrix_block)
    thresholds = Thresholds(map_drop_points, throughput_drop_percent, latency_rise_percent)
    outcomes = [_run_entry(with_storage(e, storage_block, storage_url), thresholds, baseline_last_k, baseline_run_id)
                for e in entries]
    _publish_summary(outcomes)
    bad = [o for o in outcomes if o.status in ("regressed", "failed")]
    if bad:
        return Failed(message="\n".join(o.message for o in bad))
    return Completed(message="; ".join(f"{o.label}: {o.status}" for o in outcomes))


def _run_entry(params: dict[str, Any], thresholds: Thresholds, last_k: int, pinned: str | None) -> EntryOutcome:
    """detect as a subflow, then history, baseline comparison and the entry's artifacts."""
    logger = get_run_logger()
    label = f"{params['model_name']} {params['loadgen_scenario']} {params['loadgen_mode']}"
    state = detect(**params, return_state=True)
    run_url = _flow_run_url(state.state_details.flow_run_id)
    if not state.is_completed():
        message = f"{label}: the detect run failed ({state.message}); see {run_url or 'its flow run'}"
        logger.error(message)
        return EntryOutcome(label, "failed", message, flow_run_url=run_url)
    out = state.result()
    out.pop("task_states", None)
    result = BenchmarkResult(**out)
    record = HistoryRecord.from_result(result, _comparable(params), flow_run_id=str(state.state_details.flow_run_id),
                                       flow_run_url=run_url)
    history = HistoryStore(resolve_storage(params["storage_block"], params["storage_url"]).storage())
    comparison = compare(record, history.records(record.entry), thresholds, last_k, pinned)
    history.append(record)
    (logger.error if comparison.status == "regressed" else logger.info)(comparison.message())
    _publish_entry(comparison, history.records(record.entry))
    return EntryOutcome(record.entry_label, comparison.status, comparison.message(), record.run_id, run_url)


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    """The entry's parameters with the model alias resolved (retinanet and retinanet_coco are one entry)."""
    return {**params, "model_name": get_spec(params["model_name"]).name}


def _flow_run_url(flow_run_id: Any) -> str | None:
    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id else None


def _publish_entry(comparison: Comparison, records: list[HistoryRecord]) -> None:
    """The entry's trend (table and chart, one markdown artifact) and a link to this run's logs."""
    record = comparison.record
    key = slug("regression", record.entry_label.replace("[STAND-IN]", "standin"), record.entry[:8])
    markdown = "\n\n".join([
        f"# {escape_markdown(record.entry_label)} on {escape_markdown(record.hardware)}",
        f"**{comparison.status}**: {escape_markdown(comparison.message())}",
        chart_markdown(trend_chart_png(records), f"mAP and samples/s of {record.entry_label}"),
        trend_markdown(records),
    ])
    create_markdown_artifact(markdown, key=f"{key}-trend", description=f"trend of {record.entry_label}")
    if record.flow_run_url:
        create_link_artifact(record.flow_run_url, link_text=f"logs of run {record.run_id}", key=f"{key}-logs",
                             description=f"the detect flow run of {record.entry_label}")


def _publish_summary(outcomes: list[EntryOutcome]) -> None:
    rows = [{"entry": o.label, "status": o.status, "run_id": o.run_id, "flow_run": o.flow_run_url,
             "message": o.message} for o in outcomes]
    create_table_artifact(rows, key="regression-summary", description="each matrix entry against its baseline")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.regression", description=regression.__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=json.loads, help="JSON list of detect parameter objects")
    parser.add_argument("--matrix_block", help="name of a saved RegressionMatrix block")
    parser.add_argument("--map_drop_points", type=float, default=DEFAULT_MAP_DROP_POINTS)
    parser.add_argument("--throughput_drop_percent", type=float, default=DEFAULT_THROUGHPUT_DROP_PERCENT)
    parser.add_argument("--latency_rise_percent", type=float, default=DEFAULT_LATENCY_RISE_PERCENT)
    parser.add_argument("--baseline_last_k", type=int, default=DEFAULT_LAST_K)
    parser.add_argument("--baseline_run_id")
    parser.add_argument("--storage_block")
    parser.add_argument("--storage_url")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.regression ...`: the verdict on stdout; 1 when a metric regressed (flows/command.py)."""
    args = _parser().parse_args(argv)
    return run_command(lambda: state_exit_code(regression(**vars(args), return_state=True)))


if __name__ == "__main__":
    sys.exit(main())

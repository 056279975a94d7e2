"""The command lines of the flows: what a person at a terminal gets (options, summary, exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from prefect import Flow

from odbench.benchmark import BenchmarkResult
from odbench.cli import add_param_arguments, params_from_args
from odbench.report import terminal_summary


def offline_server_defaults() -> None:
    """The temporary Prefect server a command starts (without PREFECT_API_URL) would otherwise send
    usage telemetry, which fails with logged errors on offline machines."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _parser(detect: Flow) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.detect", description=detect.__doc__.splitlines()[0])
    add_param_arguments(parser)
    parser.add_argument("--storage_block", help="name of a saved BenchmarkStorage block")
    parser.add_argument("--storage_url", help="storage root URL (default: $ODBENCH_STORAGE_URL or ~/.cache/odbench)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    return parser


def detect_command(detect: Flow, argv: list[str] | None = None) -> int:
    """The detect flow's command line: every parameter an option; a summary, and JSON with --json."""
    args = _parser(detect).parse_args(argv)
    offline_server_defaults()
    logging.basicConfig(level=logging.WARNING)
    try:
        out = detect(**params_from_args(args), storage_block=args.storage_block, storage_url=args.storage_url)
    except Exception as err:  # noqa: BLE001 — the command line reports and exits non-zero
        print(f"detect failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    states = out.pop("task_states")
    print(terminal_summary(BenchmarkResult(**out)))
    print("tasks        " + ", ".join(f"{name}: {state}" for name, state in states.items()))
    if args.json:
        print(json.dumps({**out, "task_states": states}))
    return 0

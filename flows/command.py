"""The command lines of the flows: what a person at a terminal gets (options, summary, exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from prefect import Flow
from prefect.states import State

from flows.interrupts import run_interruptible
from flows.temporary_server import start_temporary_server
from odbench.benchmark import BenchmarkResult
from odbench.cli import add_param_arguments, params_from_args
from odbench.report import terminal_summary


def offline_server_defaults() -> None:
    """The temporary Prefect server a command starts (without PREFECT_API_URL) would otherwise send
    usage telemetry, which fails with logged errors on offline machines."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def run_command(body: Callable[[], int], server: bool = True) -> int:
    """Run a flow command's body (after its options are parsed) and return its exit code.

    Without PREFECT_API_URL the temporary Prefect server is started first (unless `server` is False:
    a body that runs no flow), tied to this process: it dies with it even after `kill -9`
    (flows/temporary_server.py). Ctrl-C anywhere in the body gives exit code 130 and one line on
    stderr saying what was interrupted (flows/interrupts.py).
    """
    offline_server_defaults()

    def guarded() -> int:
        if server:
            start_temporary_server()
        return body()

    return run_interruptible(guarded)


def state_exit_code(state: State) -> int:
    """A flow's final state at the terminal: its message on stdout; 0 when Completed, else 1."""
    print(state.message)
    return 0 if state.is_completed() else 1


def _parser(detect: Flow) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.detect", description=detect.__doc__.splitlines()[0])
    add_param_arguments(parser)
    parser.add_argument("--storage_block", help="name of a saved BenchmarkStorage block")
    parser.add_argument("--sources_block", help="name of a saved SourceMirrors block (mirrors of the sources)")
    parser.add_argument("--storage_url", help="storage root URL (default: $ODBENCH_STORAGE_URL or ~/.cache/odbench)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    return parser


def detect_command(detect: Flow, argv: list[str] | None = None) -> int:
    """The detect flow's command line: every parameter an option; a summary, and JSON with --json."""
    args = _parser(detect).parse_args(argv)
    return run_command(lambda: _detect(detect, args))


def _detect(detect: Flow, args: argparse.Namespace) -> int:
    """One detect run from parsed options: the summary (and JSON) on stdout, or the reason on stderr."""
    logging.basicConfig(level=logging.WARNING)
    try:
        out = detect(**params_from_args(args), storage_block=args.storage_block, storage_url=args.storage_url,
                     sources_block=args.sources_block)
    except Exception as err:  # noqa: BLE001 — the command line reports and exits non-zero
        print(f"detect failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    states = out.pop("task_states")
    print(terminal_summary(BenchmarkResult(**out)))
    print("tasks        " + ", ".join(f"{name}: {state}" for name, state in states.items()))
    if args.json:
        print(json.dumps({**out, "task_states": states}))
    return 0

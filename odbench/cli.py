"""The command line of the Prefect-free core: `python -m odbench --model_name retinanet ...`.

Every BenchmarkParams field is an option of the same name; the flow's command line reuses these.
Exit codes: 0 done, 1 the run failed (one line naming why), 2 a bad option, 130 interrupted (Ctrl-C:
one line naming the step, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from dataclasses import fields
from typing import Any

from odbench.params import BenchmarkParams


def parse_bool(text: str) -> bool:
    """`true`/`false` (also 1/0, yes/no) as a bool; argparse's `bool` would take "false" as True."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return value


def _option_type(hint: Any) -> tuple[Any, tuple | None, str | None]:
    """The argparse type, choices and nargs of a field: `int`, `float | None`, `bool`, `Literal[...]`,
    `tuple[str, ...]` (one or more values: `--dataset_mirrors URL1 URL2`)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint), None
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], None, "+"
    if hint is bool:
        return parse_bool, None, None
    return hint, None, None


def add_param_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, hints = BenchmarkParams(), typing.get_type_hints(BenchmarkParams)
    for f in fields(BenchmarkParams):
        kind, choices, nargs = _option_type(hints[f.name])
        parser.add_argument(f"--{f.name}", type=kind, choices=choices, nargs=nargs, default=getattr(defaults, f.name),
                            metavar="{true,false}" if kind is parse_bool else None,
                            help=f"default: {getattr(defaults, f.name)!r}")


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(BenchmarkParams)}


def log_level(verbosity: int) -> int:
    """axs's verbosity as a logging level for the core's messages."""
    return logging.WARNING if verbosity <= 0 else logging.INFO if verbosity <= 2 else logging.DEBUG


def main(argv: list[str] | None = None) -> int:
    """`python -m odbench`: the exit code of the module docstring."""
    try:
        return _main(argv)
    except KeyboardInterrupt as err:  # Ctrl-C: one line, no traceback
        print(f"interrupted during {getattr(err, 'step', 'start-up')}", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from odbench.benchmark import BenchmarkResult, run_benchmark
    from odbench.redact import redact_text
    from odbench.report import terminal_summary
    from odbench.storage import Storage, default_storage_url

    parser = argparse.ArgumentParser(prog="python -m odbench", description="ONNX detection benchmark, no Prefect")
    add_param_arguments(parser)
    parser.add_argument("--storage_url", default=default_storage_url())
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level(args.verbosity), format="%(asctime)s %(name)s %(message)s")
    try:
        result: BenchmarkResult = run_benchmark(BenchmarkParams(**params_from_args(args)), Storage(args.storage_url))
    except Exception as err:  # noqa: BLE001 — the command line reports and exits non-zero
        print(redact_text(f"benchmark failed: {type(err).__name__}: {err}"), file=sys.stderr)
        return 1
    print(terminal_summary(result))
    if args.json:
        print(json.dumps(result.to_json()))
    return 0

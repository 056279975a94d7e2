"""The `cleanup` flow: remove stored items and the cache records that point at them (axs's `remove`).

    python -m flows.cleanup --list                                      # what storage holds
    python -m flows.cleanup --kind preprocessed --resolution 800        # what would go (dry run)
    python -m flows.cleanup --kind runs --older_than_days 30 --apply    # remove
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from blocks.storage import resolve_storage
from flows.command import run_command
from odbench.inventory import (
    KINDS,
    CleanupReport,
    Kind,
    StoredItem,
    check_filters,
    inventory,
    plan_removal,
    remove,
    select,
)

MB = 1_000_000
COLUMNS = ("kind", "rel", "model", "resolution", "files", "MB", "age days", "incomplete", "action")


@flow(name="cleanup", log_prints=True)
def cleanup(
    kind: Kind | None = None,
    model_name: str | None = None,
    resolution: int | None = None,
    older_than_days: float | None = None,
    apply: bool = False,
    storage_block: str | None = None,
    storage_url: str | None = None,
) -> dict[str, Any]:
    """Remove what storage holds (the selection) and the cache records that point at it; a dry run by default.

    Args:
        kind: What to remove: sources, preprocessed, models, datasets, synthetic, runs, history or
            cache-records. Unset: every kind.
        model_name: Only items of this model (e.g. `retinanet_coco`, or its alias `retinanet`): model
            files, runs and their cache records.
        resolution: Only preprocessed samples (and their cache records) at this resolution in pixels.
        older_than_days: Only items whose newest file is older than this many days.
        apply: Remove for real. False (the default) is a dry run that reports what would be removed.
        storage_block: Name of a saved BenchmarkStorage block.
        storage_url: Storage root URL (default: $ODBENCH_STORAGE_URL or ~/.cache/odbench).
    """
    check_filters(kind, older_than_days)
    if apply and all(v is None for v in (kind, model_name, resolution, older_than_days)):
        raise ValueError("apply without a selection would remove everything, the history included: choose a kind, "
                         "model_name, resolution or older_than_days (a dry run without one lists it all)")
    storage = resolve_storage(storage_block, storage_url).storage()
    now = dt.datetime.now(dt.UTC)
    chosen = select(inventory(storage), kind, model_name, resolution, older_than_days, now)
    report = remove(storage, plan_removal(storage, chosen), dry_run=not apply)
    get_run_logger().info("%s (storage %s)", summary(report), storage.uri())
    create_table_artifact(rows(report, now), key=f"cleanup-{kind or 'all'}", description=summary(report))
    return report.to_json()


def summary(report: CleanupReport) -> str:
    """One line: how much went (or would go), and whether this was a dry run."""
    what = (f"{len(report.items)} item(s) and {len(report.records)} further cache-record group(s), "
            f"{report.files} file(s), {report.bytes / MB:.1f} MB")
    return f"dry run: would remove {what}; nothing removed" if report.dry_run else f"removed {what}"


def rows(report: CleanupReport, now: dt.datetime) -> list[dict[str, Any]]:
    """The table artifact's rows (JSON cells): every item, then the cache records that point at them."""
    action = "would remove" if report.dry_run else "removed"
    return [{**item_row(item, now), "action": action} for item in (*report.items, *report.records)]


def item_row(item: StoredItem, now: dt.datetime) -> dict[str, Any]:
    """An item as JSON cells: sizes in MB, ages in days."""
    return dict(zip(COLUMNS, (item.kind, item.rel, item.model, item.resolution, item.files,
                              round(item.bytes / MB, 3), round(item.age_days(now), 2), item.partial)))


def text_table(items: Iterable[StoredItem], now: dt.datetime, action: str | None = None) -> str:
    """A readable table (with an action column when given), then totals per kind and overall."""
    items = list(items)
    header = list(COLUMNS) if action else list(COLUMNS[:-1])
    body = [["" if value is None else str(value) for value in item_row(item, now).values()] + ([action] if action else [])
            for item in items]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *body]]
    return "\n".join([*lines, "", *_totals(items)])


def _totals(items: list[StoredItem]) -> list[str]:
    by_kind: dict[str, list[StoredItem]] = defaultdict(list)
    for item in items:
        by_kind[item.kind].append(item)
    lines = [_total(kind, group) for kind, group in by_kind.items()]
    incomplete = sum(item.partial for item in items)
    note = [(f"{incomplete} incomplete file(s) (.partial-*, .staging/, .resume/): interrupted writes and downloads, "
             "trusted by no run")]
    return [*lines, _total("total", items), *(note if incomplete else [])]


def _total(label: str, items: list[StoredItem]) -> str:
    return (f"{label}: {len(items)} item(s), {sum(i.files for i in items)} file(s), "
            f"{sum(i.bytes for i in items) / MB:.1f} MB")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.cleanup", description=cleanup.__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, help="what to remove (default: every kind)")
    parser.add_argument("--model_name", help="only items of this model (model files, runs, their cache records)")
    parser.add_argument("--resolution", type=int, help="only preprocessed samples at this resolution")
    parser.add_argument("--older_than_days", type=float, help="only items whose newest file is older than this")
    parser.add_argument("--apply", action="store_true", help="remove for real (default: a dry run)")
    parser.add_argument("--list", action="store_true", help="only list what storage holds (filters apply)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--storage_block", help="name of a saved BenchmarkStorage block")
    where.add_argument("--storage_url", help="storage root URL (default: $ODBENCH_STORAGE_URL or ~/.cache/odbench)")
    return parser


def _list(args: argparse.Namespace) -> None:
    check_filters(args.kind, args.older_than_days)
    storage = resolve_storage(args.storage_block, args.storage_url).storage()
    now = dt.datetime.now(dt.UTC)
    items = select(inventory(storage), args.kind, args.model_name, args.resolution, args.older_than_days, now)
    print(f"storage {storage.uri()}")
    print(text_table(items, now))


def _clean(args: argparse.Namespace) -> None:
    out = cleanup(kind=args.kind, model_name=args.model_name, resolution=args.resolution,
                  older_than_days=args.older_than_days, apply=args.apply, storage_block=args.storage_block,
                  storage_url=args.storage_url)
    report = CleanupReport.from_json(out)
    action = "would remove" if report.dry_run else "removed"
    print(text_table((*report.items, *report.records), dt.datetime.now(dt.UTC), action))
    print("dry run: nothing removed; pass --apply" if report.dry_run else summary(report))


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.cleanup ...` (flows/command.py); `--list` of a storage URL needs no Prefect server."""
    args = _parser().parse_args(argv)
    return run_command(lambda: _command(args), server=not args.list or bool(args.storage_block))


def _command(args: argparse.Namespace) -> int:
    """List, or clean up (a dry run unless --apply); a failure is one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.list:
            _list(args)
        else:
            _clean(args)
    except Exception as err:  # noqa: BLE001 — the command line reports and exits non-zero
        print(f"cleanup failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' common dataset options: a COCO-layout folder (default: the shared real mini set, never copied
into the project), the first N images of it, and where temporary storage roots go."""

from __future__ import annotations

import argparse
from pathlib import Path

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2017-val-mini"


def add_arguments(parser: argparse.ArgumentParser, tmp: bool = True) -> None:
    """--data, --images and (with `tmp`) --tmp."""
    parser.add_argument("--data", type=Path, default=MINI, help="a COCO-layout folder (default: the shared mini set)")
    parser.add_argument("--images", type=int, default=80, help="the first N images of the annotation file")
    if tmp:
        parser.add_argument("--tmp", type=Path, default=None, help="where the temporary storage root goes")


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed arguments; a --data that is not a COCO-layout folder is a usage error naming the fix."""
    args = parser.parse_args()
    if not (args.data / "annotations" / "instances_val2017.json").exists():
        parser.error(f"{args.data} is not a COCO-layout folder (annotations/instances_val2017.json): pass --data")
    return args

"""`make demo`: the detect flow offline, on the synthetic COCO set and stand-in models for both
detectors, in AccuracyOnly (mAP) and PerformanceOnly (LoadGen samples/s). Stand-in numbers say
nothing about the real models, and the table says so.
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.command import run_command
from flows.detect import detect
from odbench.report import STAND_IN_NOTE, model_label

MODELS = ("ssd_resnet34", "retinanet")
DATASET_SIZE = 20
PERFORMANCE_QUERIES = 64


@flow(name="detect-demo", flow_run_name="demo-both-models-offline")
def demo(storage_url: str | None = None) -> list[dict]:
    """Both models, both modes, Offline, on offline sources."""
    rows = []
    for model_name in MODELS:
        common = dict(model_name=model_name, loadgen_dataset_size=DATASET_SIZE, model_url="standin",
                      dataset_url="synthetic", storage_url=storage_url)
        accuracy = detect(**common, loadgen_mode="AccuracyOnly")
        performance = detect(**common, loadgen_mode="PerformanceOnly", loadgen_count_override=PERFORMANCE_QUERIES)
        rows.append({"model": accuracy["model_name"], "stand_in": accuracy["stand_in"], "mAP": accuracy["mAP"],
                     "samples_per_second": performance["samples_per_second"], "validity": performance["validity"],
                     "providers": ", ".join(performance["providers"]), "run_dir": performance["run_dir"]})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\nOffline, synthetic COCO ({DATASET_SIZE} images), {PERFORMANCE_QUERIES} performance samples\n")
    print(f"{'model':<28}{'mAP (%)':>10}{'samples/s':>12}  {'LoadGen':<9}providers")
    for row in rows:
        label = model_label(row["model"], row["stand_in"])
        print(f"{label:<28}{row['mAP']:>10.3f}{row['samples_per_second']:>12.1f}  {row['validity']:<9}{row['providers']}")
    if any(row["stand_in"] for row in rows):
        print(f"\n[STAND-IN] = {STAND_IN_NOTE}.")


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.demo [STORAGE_URL]` (`make demo`): the table on stdout (flows/command.py)."""
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        print_table(demo(storage_url=argv[0] if argv else None))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

"""Run-to-run noise of the metrics the nightly regression compares, to choose its thresholds.

Each repetition is a separate `python -m odbench` process (as each nightly run is), same model, data
and settings; the table gives, per metric, the median and the largest deviation from it. The
regression thresholds (odbench/regression.py) should sit well above that deviation.

    .venv/bin/python benchmarks/regression_noise.py [--repeats 8] [--model retinanet] [--execution_device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CONFIGS = {
    "AccuracyOnly mAP": ["--loadgen_mode", "AccuracyOnly"],
    "Offline samples/s": ["--loadgen_mode", "PerformanceOnly", "--loadgen_scenario", "Offline",
                          "--loadgen_count_override", "2000"],
    "SingleStream p90": ["--loadgen_mode", "PerformanceOnly", "--loadgen_scenario", "SingleStream",
                         "--loadgen_count_override", "1000"],
}


@dataclass(frozen=True)
class Spread:
    metric: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max_deviation_percent(self) -> float:
        m = self.median
        return 0.0 if m == 0 else max(abs(v - m) for v in self.values) / abs(m) * 100

    @property
    def max_deviation(self) -> float:
        return max(abs(v - self.median) for v in self.values)


def _run(args: list[str], storage: str) -> dict:
    cmd = [sys.executable, "-m", "odbench", "--model_url", "standin", "--dataset_url", "synthetic",
           "--loadgen_dataset_size", "40", "--loadgen_buffer_size", "40", "--storage_url", storage, "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _metric(name: str, result: dict) -> float:
    if name.endswith("mAP"):
        return result["mAP"]
    if name.endswith("samples/s"):
        return result["samples_per_second"]
    return result["latency_ns"]["p90"] / 1e6


def measure(repeats: int, extra: list[str]) -> list[Spread]:
    with tempfile.TemporaryDirectory() as storage:
        _run(["--loadgen_mode", "AccuracyOnly", *extra], storage)  # fetch and preprocess once, untimed
        spreads = []
        for name, args in CONFIGS.items():
            values = [_metric(name, _run([*args, *extra], storage)) for _ in range(repeats)]
            spreads.append(Spread(name, values))
        return spreads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--model", default="retinanet")
    parser.add_argument("--execution_device", default="cpu")
    args = parser.parse_args()
    extra = ["--model_name", args.model, "--execution_device", args.execution_device]
    print(f"{args.repeats} separate processes each; stand-in {args.model} [STAND-IN], synthetic COCO, "
          f"{args.execution_device}, {os.cpu_count()} CPUs")
    print(f"{'metric':<20}{'median':>10}{'min':>10}{'max':>10}{'max dev':>10}{'max dev %':>11}")
    for s in measure(args.repeats, extra):
        print(f"{s.metric:<20}{s.median:>10.3f}{min(s.values):>10.3f}{max(s.values):>10.3f}"
              f"{s.max_deviation:>10.3f}{s.max_deviation_percent:>10.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

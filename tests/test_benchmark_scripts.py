"""The benchmark scripts run on a CPU-only machine as documented (docs/performance.md), printing their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_harness_gap_prints_the_split_and_its_parts_add_up_to_the_total():
    """benchmarks/harness_gap.py on the small RetinaNet stand-in: every Offline row's four parts of the time
    outside the engine sum to its total (each round's parts are measured together; one round, so no medians)."""
    done = subprocess.run([sys.executable, "benchmarks/harness_gap.py", "--device", "cpu", "--small", "--seconds",
                           "0.2", "--rounds", "1", "--models", "retinanet_coco"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = done.stdout[done.stdout.index("Harness gap on"):]
    splits = [line for line in final.splitlines() if "outside the engine" in line]
    assert len(splits) == 4  # bare and harness, for no option and for the best options
    for line in splits:
        *parts, total = (float(cell) for cell in line.split("|")[-7:-2])
        assert sum(parts) == pytest.approx(total, abs=0.3), line
    assert "harness / bare" in final
    single_stream = [line for line in final.splitlines() if "SingleStream p50 / p90 ms" in line]
    assert len(single_stream) == 2 and all(line.count(" / ") == 4 + 1 for line in single_stream)  # 4 sides

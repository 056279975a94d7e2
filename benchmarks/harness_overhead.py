"""Harness overhead: LoadGen and the SUT around a trivially cheap model, against a bare loop on the same samples.

    .venv/bin/python benchmarks/harness_overhead.py [--samples 4000] [--concurrency 1] [--repeats 3]

The model has the real `retinanet_coco` I/O contract and answers constant detections without reading its
input, so almost all the time measured is the harness's: LoadGen's scheduling, the SUT's worker hand-off, the
output checks, the accuracy-log encoding and `QuerySamplesComplete`. SingleStream is measured as a run's SUT
answers it (LoadGen's issue thread drains each query) and with each query handed to a pool thread, as in
Server. The bare loop calls the same onnxruntime
session (`OnnxBackend.infer`) on the same in-memory samples. Prints one table, measured side by side in one run
(the best of `--repeats` for each side), with issue 9's targets: overhead under 50 µs per sample, Offline at
least 0.98× the bare loop's samples/s, SingleStream p90 within 0.2 ms of the bare loop's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odbench.backend import Detections, OnnxBackend, infer_cycled  # noqa: E402
from odbench.energy import EnergyMeter  # noqa: E402
from odbench.harness import run_loadgen  # noqa: E402
from odbench.loadgen_log import summarize  # noqa: E402
from odbench.loadgen_settings import LoadGenConfig  # noqa: E402
from odbench.models import ModelSpec, get_spec  # noqa: E402
from odbench.standin import constant_standin  # noqa: E402
from odbench.sut import DetectionSUT, SampleLibrary, waits_for_answers  # noqa: E402

DETECTIONS = 10  # rows each answer carries: enough for the checks and the encoding to do real work
DISTINCT_SAMPLES = 16  # in-memory inputs, cycled


def trivial_model(spec: ModelSpec) -> bytes:
    """A graph with `spec`'s exact inputs and outputs that answers DETECTIONS constant detections (no compute)."""
    boxes = np.tile(np.array([[10, 20, 110, 220]], np.float32), (DETECTIONS, 1))
    return constant_standin(spec, boxes, np.linspace(0.9, 0.1, DETECTIONS, dtype=np.float32),
                            np.arange(1, DETECTIONS + 1, dtype=np.int64))


def bare_offline(backend: OnnxBackend, inputs: list[np.ndarray], samples: int, concurrency: int) -> float:
    """Samples per second of `samples` samples, `concurrency` inferences at a time (of backend.batch_size each)."""
    batch = backend.batch_size

    def run(count: int, offset: int) -> None:
        for i in range(0, count, batch):
            infer_cycled(backend, inputs, offset + i, min(batch, count - i))

    share = samples // concurrency
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(run, share, k * share) for k in range(concurrency)]:
            future.result()
    return share * concurrency / (time.perf_counter() - start)


def bare_latencies_ms(backend: OnnxBackend, inputs: list[np.ndarray], samples: int,
                      then: Callable[[int, Detections], Any] | None = None) -> tuple[float, float]:
    """p50 and p90 in ms of sequential inferences, one at a time (SingleStream's pattern); `then`, given the
    sample's index and detections, runs inside each timed step (the SUT's per-sample work, for comparison)."""
    latencies = []
    for i in range(samples):
        t0 = time.perf_counter()
        found = backend.infer(inputs[i % len(inputs)])
        if then is not None:
            then(i % len(inputs), found)
        latencies.append(time.perf_counter() - t0)
    p50, p90 = np.percentile(latencies, [50, 90]) * 1000
    return float(p50), float(p90)


def harness(backend: OnnxBackend, spec: ModelSpec, inputs: list, scenario: str, samples: int,
            concurrency: int, meter: EnergyMeter | None = None, pool_only: bool = False) -> dict[str, Any]:
    """One LoadGen PerformanceOnly test of exactly `samples` queries through the benchmark's SUT; with a
    meter, also the GPU's energy over the timed span (`energy`: odbench.energy.Energy or None); Offline also
    gives the SUT's `span` (perf_counter at its first query and its last answer). `pool_only`: LoadGen's issue
    thread only hands queries over, as in Server (a run's SUT drains them on it too outside Server)."""
    library = SampleLibrary(len(inputs), lambda i: inputs[i])
    sut = DetectionSUT(backend, library, spec, workers=concurrency, batch_size=backend.batch_size,
                       drain_on_issue_thread=waits_for_answers(scenario) and not pool_only)
    target = {"target_qps": 1e5} if scenario == "Offline" else {"target_latency_ms": 0.05}
    config = LoadGenConfig(scenario=scenario, mode="PerformanceOnly", count_override=samples, profile="quick",
                           buffer_size=len(inputs), **target)
    with tempfile.TemporaryDirectory() as tmp:
        with meter or contextlib.nullcontext():
            run_loadgen(sut, config, spec.loadgen_model, Path(tmp))
        summary = summarize(Path(tmp) / "mlperf_log_detail.txt", scenario, "PerformanceOnly")
    energy = meter.energy(sut.first_issued_at, sut.last_answered_at, sut.completed) if meter else None
    if scenario == "Offline":  # with the SUT's own span: its first query to its last answer (perf_counter)
        return {"samples_per_second": summary.samples_per_second, "energy": energy,
                "span": (sut.first_issued_at, sut.last_answered_at)}
    return {"p50_ms": summary.latency_ns["p50"] / 1e6, "p90_ms": summary.latency_ns["p90"] / 1e6, "energy": energy}


def measure(samples: int, concurrency: int, repeats: int) -> dict[str, float]:
    """Both sides, best of `repeats` each, interleaved so that drift on a shared machine hits both."""
    spec = get_spec("retinanet_coco")
    backend = OnnxBackend(trivial_model(spec), spec, "cpu", 1)
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, 3, spec.resolution, spec.resolution), dtype=np.float32)
              for _ in range(DISTINCT_SAMPLES)]
    best: dict[str, float] = {}
    for _ in range(repeats):
        runs = {"bare_qps": bare_offline(backend, inputs, samples, concurrency),
                "harness_qps": harness(backend, spec, inputs, "Offline", samples, concurrency)["samples_per_second"]}
        runs["bare_p50"], runs["bare_p90"] = bare_latencies_ms(backend, inputs, samples)
        single = harness(backend, spec, inputs, "SingleStream", samples, 1)
        runs["harness_p50"], runs["harness_p90"] = single["p50_ms"], single["p90_ms"]
        pooled = harness(backend, spec, inputs, "SingleStream", samples, 1, pool_only=True)
        runs["pool_p50"], runs["pool_p90"] = pooled["p50_ms"], pooled["p90_ms"]
        for key, value in runs.items():
            better = max if key.endswith("qps") else min
            best[key] = better(best.get(key, value), value)
    return best


def table(best: dict[str, float], samples: int, concurrency: int) -> str:
    overhead_us = (1 / best["harness_qps"] - 1 / best["bare_qps"]) * 1e6
    ratio = best["harness_qps"] / best["bare_qps"]
    p90_gap = best["harness_p90"] - best["bare_p90"]
    rows = [
        ("Offline samples/s", f"{best['bare_qps']:,.0f}", f"{best['harness_qps']:,.0f}", f"{ratio:.3f}×",
         "≥ 0.98×", ratio >= 0.98),
        ("Offline overhead per sample", "", "", f"{overhead_us:.1f} µs", "< 50 µs", overhead_us < 50),
        ("SingleStream p50 (ms)", f"{best['bare_p50']:.3f}", f"{best['harness_p50']:.3f}",
         f"{best['harness_p50'] - best['bare_p50']:+.3f} ms", "", None),
        ("SingleStream p90 (ms)", f"{best['bare_p90']:.3f}", f"{best['harness_p90']:.3f}", f"{p90_gap:+.3f} ms",
         "within 0.2 ms", p90_gap <= 0.2),
        ("SingleStream p50 / p90 (ms), queries handed to a pool thread (as in Server)", "",
         f"{best['pool_p50']:.3f} / {best['pool_p90']:.3f}",
         f"{best['pool_p50'] - best['bare_p50']:+.3f} / {best['pool_p90'] - best['bare_p90']:+.3f} ms", "", None),
    ]
    lines = [f"Harness overhead, trivial retinanet_coco-contract model on CPU, {samples} samples, "
             f"{concurrency} in flight (Offline), best of each side",
             "| measure | bare loop | harness | harness − bare | target | meets |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {bare} | {ours} | {diff} | {target} | {'' if ok is None else ('yes' if ok else 'NO')} |"
              for name, bare, ours, diff, target, ok in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(table(measure(args.samples, args.concurrency, args.repeats), args.samples, args.concurrency))


if __name__ == "__main__":
    main()

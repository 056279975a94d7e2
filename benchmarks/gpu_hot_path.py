"""The harness against a bare loop on one accelerator: Offline samples/s and SingleStream p50/p90, side by side.

    python benchmarks/gpu_hot_path.py --device cuda --models retinanet_coco ssd_resnet34 --samples 400

Runs without Prefect (the GPU machine has none). For each model (the full-size stand-in where
odbench/standin_full.py can build it, else the small one; `--small` forces the small ones) it measures, on the
same in-memory samples and the same onnxruntime session: a bare `session.run` loop with 1, 2 and 4 threads, and
the benchmark's harness (LoadGen and the SUT) with loadgen_concurrency 1, 2 and 4, plus SingleStream latencies of
both. The samples are the stand-ins' calibration scene (odbench/standin_full.py `probe_input`): random noise
would pass several times more candidates to the NMS than an image does (2383 vs 351 for retinanet_coco).
Prints one table; every ratio is against the bare single-thread loop of the same run. Stand-in numbers are
not the real models' numbers.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_overhead import bare_latencies_ms, bare_offline, harness  # noqa: E402

from odbench.backend import OnnxBackend  # noqa: E402
from odbench.models import ModelSpec, get_spec  # noqa: E402
from odbench.standin import build_standin  # noqa: E402
from odbench.standin_full import probe_input  # noqa: E402

CONCURRENCY = (1, 2, 4)
DISTINCT_SAMPLES = 16
WARMUP = 20


def build_model(spec: ModelSpec, small: bool) -> tuple[bytes, str]:
    """The full-size stand-in when it can be built (and not `small`), else the small one; and which it is."""
    if not small:
        try:
            from odbench.standin_full import build_full_standin
        except ImportError:
            pass
        else:
            return build_full_standin(spec), "full-size stand-in"
    return build_standin(spec), "small stand-in"


def measure_model(name: str, device: str, samples: int, small: bool) -> list[tuple[str, str, float, str]]:
    """Rows (model, variant, value, unit) for one model."""
    spec = get_spec(name)
    t0 = time.perf_counter()
    model, kind = build_model(spec, small)
    label = f"{name} [{kind}, {len(model) / 1e6:.0f} MB, built in {time.perf_counter() - t0:.0f} s]"
    backend = OnnxBackend(model, spec, device, 0)
    inputs = [probe_input(spec).copy() for _ in range(DISTINCT_SAMPLES)]
    for i in range(WARMUP):  # cuDNN autotuning and allocations before anything is timed
        backend.infer(inputs[i % len(inputs)])
    rows = []
    for threads in CONCURRENCY:
        rows.append((label, f"bare loop, {threads} thread(s): Offline", bare_offline(backend, inputs, samples, threads),
                     "samples/s"))
    for workers in CONCURRENCY:
        qps = harness(backend, spec, inputs, "Offline", samples, workers)["samples_per_second"]
        rows.append((label, f"harness, loadgen_concurrency={workers}: Offline", qps, "samples/s"))
    p50, p90 = bare_latencies_ms(backend, inputs, samples // 2)
    single = harness(backend, spec, inputs, "SingleStream", samples // 2, 1)
    rows += [(label, "bare loop: SingleStream p50", p50, "ms"), (label, "bare loop: SingleStream p90", p90, "ms"),
             (label, "harness: SingleStream p50", single["p50_ms"], "ms"),
             (label, "harness: SingleStream p90", single["p90_ms"], "ms")]
    return rows


def table(rows: list[tuple[str, str, float, str]], providers: str) -> str:
    lines = [f"Hot path on {platform.node()} ({providers}); ratios against the bare single-thread loop of the "
             "same model",
             "| model | variant | value | unit | ratio |", "|---|---|---|---|---|"]
    baseline: dict[str, float] = {}
    for model, variant, value, unit in rows:
        if variant.startswith("bare loop, 1 thread"):
            baseline[model] = value
        ratio = f"{value / baseline[model]:.2f}×" if unit == "samples/s" and model in baseline else ""
        lines.append(f"| {model} | {variant} | {value:,.3f} | {unit} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["retinanet_coco", "ssd_resnet34"])
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--small", action="store_true", help="the small stand-ins, even where full-size ones build")
    args = parser.parse_args()
    import onnxruntime

    rows = [row for name in args.models for row in measure_model(name, args.device, args.samples, args.small)]
    print(table(rows, f"onnxruntime {onnxruntime.__version__}, execution_device={args.device}"))


if __name__ == "__main__":
    main()

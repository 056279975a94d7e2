"""The hot path on one accelerator: a bare fp32 batch-1 loop against the harness with each option and the best mix.

    python benchmarks/gpu_hot_path.py --device cuda --models retinanet_coco ssd_resnet34 --seconds 8

Runs without Prefect (the GPU machine has none). For each model (the full-size stand-in; `--small` for the
small ones) it measures, side by side in one run and on the same images (synthetic scenes,
odbench/standin_full.py `probe_image`, stored as uint8 samples are):
- the bare loop: `OnnxBackend.infer` on host float32 inputs, one thread, Offline samples/s and SingleStream
  p50/p90; and the same loop with the best options, for the ratio at equal options;
- the harness (LoadGen PerformanceOnly through the benchmark's SUT) with no option, with each option alone
  (loadgen_concurrency, samples_on_device, normalize_on_device with uint8 samples, model_precision=fp16,
  prefer_nhwc) and with the best combination: Offline samples/s with the GPU's energy per sample (NVML),
  SingleStream p50/p90; and the bare loop over several sessions (one CUDA stream each), one thread on each;
- agreement with fp32 on the same inputs: pre-NMS outputs ‖Δ‖/‖ref‖ and the share of fp32 detections
  reproduced (IoU >= 0.9, same label), for fp16, for uint8 normalized on the device, and for fp32 itself in a
  second session (the spread of the GPU's own post-processing on tied scores).
Each measurement runs for about `--seconds` (its sample count from a short untimed probe of the same setup).
Prints two tables; ratios are against the bare fp32 single-thread loop of the same model. Stand-in numbers are
not the real models' numbers.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_overhead import bare_latencies_ms, bare_offline, harness  # noqa: E402

from odbench.backend import OnnxBackend  # noqa: E402
from odbench.energy import Energy, EnergyMeter  # noqa: E402
from odbench.fp16 import to_fp16  # noqa: E402
from odbench.input_prefix import device_input  # noqa: E402
from odbench.model_variants import prepare  # noqa: E402
from odbench.models import ModelSpec, get_spec  # noqa: E402
from odbench.precision import agreement  # noqa: E402
from odbench.preprocess import to_model_input  # noqa: E402
from odbench.split_model import SplitModel  # noqa: E402
from odbench.standin import build_standin  # noqa: E402
from odbench.standin_full import PROBE_SEED, probe_image  # noqa: E402

T = TypeVar("T")

DISTINCT_SAMPLES = 8
WARMUP = 10
AGREEMENT_IMAGES = 4


@dataclass(frozen=True)
class Variant:
    """One setting of the hot-path options (the flow's parameters of the same names)."""

    label: str
    model_precision: str = "fp32"
    normalize_on_device: bool = False
    samples_on_device: bool = False
    loadgen_concurrency: int = 1
    prefer_nhwc: bool = False
    onnx_sessions: int = 1
    batch_size: int = 1
    postprocess_on_cpu: bool = False
    pinned_host_samples: bool = False


NONE = Variant("no option")
PINNED = Variant("pinned_host_samples", pinned_host_samples=True)
BEST = Variant("best: fp16, NHWC, uint8 normalized on device, samples on device, 4 in flight", "fp16", True, True, 4,
               True)
VARIANTS = (NONE, Variant("loadgen_concurrency=4", loadgen_concurrency=4),
            Variant("samples_on_device", samples_on_device=True), PINNED,
            Variant("normalize_on_device (uint8 samples)", normalize_on_device=True),
            Variant("model_precision=fp16", "fp16"), Variant("prefer_nhwc", prefer_nhwc=True),
            Variant("fp16 + prefer_nhwc", "fp16", prefer_nhwc=True), BEST,
            Variant("best, 8 in flight", "fp16", True, True, 8, True),
            Variant("best, 4 in flight on onnx_sessions=4", "fp16", True, True, 4, True, 4))
# the bare loop over 4 sessions (one CUDA stream each), one thread on each (each thread keeps its own session)
BEST_ON_SESSIONS = replace(BEST, label="best options, 4 sessions x 1 thread", onnx_sessions=4)
# batches are assembled in host memory, so samples_on_device is off (odbench/params.py)
BATCH_BEST = Variant("batched best: fp16, NHWC, uint8 normalized on device", "fp16", True, False, 1, True)
# per model, the mixes that came closest in docs/performance.md section 10; the last is also measured paired
CANDIDATES = {
    "ssd_resnet34": (BEST, *(replace(BEST, label=f"best, post-processing on the CPU, {c} in flight{s}",
                                     loadgen_concurrency=c, onnx_sessions=n, postprocess_on_cpu=True)
                             for c, n, s in ((8, 1, ""), (12, 1, ""), (16, 1, ""),
                                             (16, 2, " on onnx_sessions=2")))),
    "retinanet_coco": (replace(BATCH_BEST, label=f"{BATCH_BEST.label}, batch 8, 4 in flight", batch_size=8,
                               loadgen_concurrency=4),
                       *(replace(BEST, label=f"best, {c} in flight{s}", loadgen_concurrency=c, onnx_sessions=n)
                         for c, n, s in ((4, 1, ""), (8, 4, " on onnx_sessions=4"), (8, 1, "")))),
}
Row = tuple[str, str, str, str, str]  # model, variant, measure, value, ratio or note


def build_model(spec: ModelSpec, small: bool) -> tuple[bytes, str]:
    """The full-size stand-in (the small one with `small`), and which it is (benchmarks/op_profile.py too)."""
    if small:
        return build_standin(spec), "small stand-in"
    from odbench.standin_full import build_full_standin

    return build_full_standin(spec), "full-size stand-in"


class Setup:
    """One model's fp32 and fp16 files, its images, and backends per variant."""

    def __init__(self, spec: ModelSpec, device: str, small: bool):
        self.spec, self.device = spec, device
        t0 = time.perf_counter()
        fp32, kind = build_model(spec, small)
        self.models = {"fp32": fp32, "fp16": to_fp16(fp32)}
        self.label = f"{spec.name} [{kind}, {len(fp32) / 1e6:.0f} MB, built in {time.perf_counter() - t0:.0f} s]"
        self.images = [probe_image(spec, PROBE_SEED + i) for i in range(DISTINCT_SAMPLES)]

    def model(self, variant: Variant) -> bytes | SplitModel:
        """The precision's model prepared for the variant's options, as a run prepares it."""
        return prepare(self.models[variant.model_precision], self.spec, variant.normalize_on_device, "uint8",
                       variant.batch_size, variant.postprocess_on_cpu)

    def backend(self, variant: Variant) -> tuple[OnnxBackend, list]:
        """A session for the variant, warmed up, and the images as that variant's samples."""
        backend = OnnxBackend(self.model(variant), self.spec, self.device, 0,
                              samples_on_device=variant.samples_on_device, prefer_nhwc=variant.prefer_nhwc,
                              sessions=variant.onnx_sessions, batch_size=variant.batch_size,
                              pinned_host_samples=variant.pinned_host_samples)
        inputs = [backend.place(self.sample(image, variant)) for image in self.images]  # pinned while backend lives
        backend.prime(inputs[0])  # every session's first inference
        for i in range(WARMUP):  # cuDNN autotuning and allocations before anything is timed
            backend.infer(inputs[i % len(inputs)])
        return backend, inputs

    def sample(self, image: np.ndarray, variant: Variant) -> np.ndarray:
        return device_input(image) if variant.normalize_on_device else to_model_input(image, self.spec)


def count_for(backend: OnnxBackend, inputs: list, concurrency: int, seconds: float) -> int:
    """Samples that take about `seconds` at this setup's speed (from an untimed probe of 2 per thread)."""
    rate = bare_offline(backend, inputs, 2 * concurrency, concurrency)
    return max(32, int(rate * seconds))


def metered_bare(backend: OnnxBackend, inputs: list, samples: int, threads: int) -> tuple[float, Energy | None]:
    """The bare loop's samples/s and the GPU's energy over it."""
    meter = EnergyMeter()
    meter.start()
    t0 = time.perf_counter()
    rate = bare_offline(backend, inputs, samples, threads)
    t1 = time.perf_counter()
    meter.stop()
    return rate, meter.energy(t0, t1, samples // threads * threads)


def energy_note(energy: Energy | None) -> str:
    return f"{energy.joules_per_sample:.3f} J/sample at {energy.average_watts:.0f} W" if energy else "no NVML"


def bare_rows(setup: Setup, variant: Variant, seconds: float) -> list[Row]:
    """The bare loop with a variant's options: Offline samples/s with energy; SingleStream p50/p90."""
    backend, inputs = setup.backend(variant)
    threads = variant.loadgen_concurrency
    rate, energy = metered_bare(backend, inputs, count_for(backend, inputs, threads, seconds), threads)
    name = f"bare loop, {variant.label}"
    rows = [(setup.label, name, "Offline samples/s", f"{rate:,.2f}", energy_note(energy))]
    if threads == 1:
        p50, p90 = bare_latencies_ms(backend, inputs, max(16, int(rate * seconds / 2)))
        rows.append((setup.label, name, "SingleStream p50 / p90 ms", f"{p50:.3f} / {p90:.3f}", ""))
    return rows


def harness_rows(setup: Setup, variant: Variant, seconds: float) -> list[Row]:
    """The harness with a variant's options: Offline samples/s with energy; SingleStream p50/p90."""
    backend, inputs = setup.backend(variant)
    workers = variant.loadgen_concurrency
    samples = count_for(backend, inputs, workers, seconds)
    offline = harness(backend, setup.spec, inputs, "Offline", samples, workers, EnergyMeter())
    name = f"harness, {variant.label}"
    rows = [(setup.label, name, "Offline samples/s", f"{offline['samples_per_second']:,.2f}",
             energy_note(offline["energy"]))]
    if (workers == 1 or variant is BEST) and variant.batch_size == 1:
        single = harness(backend, setup.spec, inputs, "SingleStream", max(16, samples // workers // 2), 1)
        rows.append((setup.label, name, "SingleStream p50 / p90 ms",
                     f"{single['p50_ms']:.3f} / {single['p90_ms']:.3f}", ""))
    return rows


def agreement_rows(setup: Setup) -> list[Row]:
    """fp16 and uint8-normalized-on-device against fp32 on the same images."""
    images = setup.images[:AGREEMENT_IMAGES]
    reference = [to_model_input(image, setup.spec) for image in images]
    rows = []
    for variant in (Variant("model_precision=fp16", "fp16"), Variant("normalize_on_device", normalize_on_device=True),
                    Variant("fp32 again (a second session: the GPU's own run-to-run spread)")):
        found = agreement(setup.models["fp32"], setup.model(variant), reference, setup.spec, setup.device,
                          [setup.sample(image, variant) for image in images])
        rows.append((setup.label, variant.label, "pre-NMS ‖Δ‖/‖ref‖; fp32 detections reproduced",
                     f"{found.pre_nms_relative_error:.2e}; {found.share_reproduced:.1%}",
                     f"{found.detections_reproduced} of {found.detections_reference}"))
    return rows


def alternated(steps: dict[str, Callable[[], T]], rounds: int) -> list[dict[str, T]]:
    """Each step once per round, every other round in the opposite order so drift favours none: each round's results
    by step name."""
    return [{name: steps[name]() for name in (reversed(steps) if k % 2 else steps)} for k in range(rounds)]


def side_by_side(device: str) -> tuple[Variant, ...]:
    """The option sets measured bare against harness: none, pinned host samples (CUDA only: nothing to pin for the
    CPU provider), and the best mix."""
    return (NONE, PINNED, BEST) if device != "cpu" else (NONE, BEST)


def paired_rows(setup: Setup, variant: Variant, rounds: int, seconds: float) -> list[Row]:
    """Bare loop and harness on one session with the same options, alternated `rounds` times (drift hits both; every
    other round harness first), best of each: Offline samples/s and SingleStream p90, with the harness's ratio and
    gap."""
    backend, inputs = setup.backend(variant)
    workers = variant.loadgen_concurrency
    samples = count_for(backend, inputs, workers, seconds)
    single = max(16, samples // workers // 2)
    steps = {"bare": lambda: bare_offline(backend, inputs, samples, workers),
             "ours": lambda: harness(backend, setup.spec, inputs, "Offline", samples, workers)["samples_per_second"],
             "bare_p90": lambda: bare_latencies_ms(backend, inputs, single)[1],
             "ours_p90": lambda: harness(backend, setup.spec, inputs, "SingleStream", single, 1)["p90_ms"]}
    runs = alternated(steps, rounds)
    best = {name: (min if name.endswith("p90") else max)(run[name] for run in runs) for name in steps}
    bare, ours, bare_p90, ours_p90 = best["bare"], best["ours"], best["bare_p90"], best["ours_p90"]
    name = f"{variant.label}; best of {rounds} alternated"
    return [(setup.label, f"bare loop, {name}", "Offline samples/s", f"{bare:,.2f}", ""),
            (setup.label, f"harness, {name}", "Offline samples/s", f"{ours:,.2f}", f"harness / bare {ours / bare:.3f}"),
            (setup.label, f"bare loop / harness, {name}", "SingleStream p90 ms", f"{bare_p90:.3f} / {ours_p90:.3f}",
             f"harness − bare {ours_p90 - bare_p90:+.3f} ms")]


def measure_model(name: str, device: str, seconds: float, small: bool, paired: int = 0,
                  candidates: bool = False) -> tuple[list[Row], list[Row]]:
    setup = Setup(get_spec(name), device, small)
    if paired:
        return [row for variant in side_by_side(device) for row in paired_rows(setup, variant, paired, seconds)], []
    if candidates:
        rows = bare_rows(setup, NONE, seconds)  # measured first and last: the table takes the faster one
        for variant in CANDIDATES[name]:
            rows += harness_rows(setup, variant, seconds)
        rows += paired_rows(setup, CANDIDATES[name][-1], paired or 2, seconds)
        return rows + bare_rows(setup, replace(NONE, label=f"{NONE.label} (again, last)"), seconds), []
    speed = bare_rows(setup, NONE, seconds) + bare_rows(setup, BEST, seconds)
    speed += bare_rows(setup, BEST_ON_SESSIONS, seconds)
    for variant in VARIANTS:
        speed += harness_rows(setup, variant, seconds)
    return speed, agreement_rows(setup)


def table(title: str, rows: list[Row]) -> str:
    """One markdown table; Offline rows get their ratio to the bare fp32 single-thread loop of the same model (the
    fastest of its measurements, where it was measured more than once: the ratios err low, never high)."""
    lines = [title, "| model | variant | measure | value | ratio to bare fp32 × 1 | note |",
             "|---|---|---|---|---|---|"]
    baseline: dict[str, float] = {}
    for model, variant, measure, value, _ in rows:
        if measure == "Offline samples/s" and variant.startswith(f"bare loop, {NONE.label}"):
            baseline[model] = max(baseline.get(model, 0.0), float(value.replace(",", "")))
    for model, variant, measure, value, note in rows:
        ratio = ""
        if measure == "Offline samples/s" and model in baseline:
            ratio = f"{float(value.replace(',', '')) / baseline[model]:.2f}×"
        lines.append(f"| {model} | {variant} | {measure} | {value} | {ratio} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["retinanet_coco", "ssd_resnet34"])
    parser.add_argument("--seconds", type=float, default=8.0, help="about how long each measurement runs")
    parser.add_argument("--small", action="store_true", help="the small stand-ins instead of the full-size ones")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="only the harness-vs-bare ratios at equal options (no option; pinned host samples on "
                             "CUDA; best), alternated ROUNDS times (at least 1)")
    parser.add_argument("--candidates", action="store_true",
                        help="only each model's CANDIDATES for the best mix (batching, postprocess_on_cpu, more in "
                             "flight), the last one also paired; the bare fp32 loop first and last")
    args = parser.parse_args()
    if args.paired < 0:
        parser.error(f"--paired {args.paired}: rounds must be at least 1 (0: the full table)")
    import onnxruntime

    speed: list[Row] = []
    agree: list[Row] = []
    for name in args.models:
        s, a = measure_model(name, args.device, args.seconds, args.small, args.paired, args.candidates)
        speed, agree = speed + s, agree + a
        print(table(f"(so far) {name}", s), flush=True)
    where = f"{platform.node()}, onnxruntime {onnxruntime.__version__}, execution_device={args.device}"
    print(table(f"Hot path on {where}", speed))
    print()
    print(table(f"Agreement with fp32 on the same images ({where})", agree))


if __name__ == "__main__":
    main()

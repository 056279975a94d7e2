"""Where the harness's time goes against the bare loop at equal options: inside the engine call, and around it.

    python benchmarks/harness_gap.py --device cuda --models ssd_resnet34 retinanet_coco --seconds 3 --rounds 3

Section 3 of docs/performance.md found the harness a few percent behind the bare loop on SSD, and its SingleStream
p90 1.6 ms behind with fp32 host inputs, with no CPU cost of the harness to explain it. This splits each gap
into the engine's time (every `infer` call timed, in both loops) and the time around it, and tests the two
suspects: the thread that makes the call (the bare SingleStream loop runs on the main thread, the SUT on LoadGen's
issue thread and pool threads) and the host memory the input is copied from (pageable, or page-locked with
cudaHostRegister: the run option pinned_host_samples). For each model and option set, `--rounds` rounds (every
other one in the opposite order; the medians are printed):
- SingleStream: p50/p90 of the bare loop on the main thread (also with each answer encoded as the SUT does) and on
  one pool thread, LoadGen's through the harness, and the engine calls' own p90 in each;
- Offline: samples/s of both, the mean engine call in ms, and the µs per sample the calling threads spend outside
  the engine (summed over them), split into before the first call, between calls, after the last and beyond;
- on a CUDA device, the same with pinned_host_samples (both loops get the same page-locked inputs).
Full-size stand-ins (`--small`: the small ones); stand-in numbers are not the real models' numbers.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_hot_path import Row, Setup, Variant, alternated, count_for, side_by_side  # noqa: E402
from harness_overhead import bare_latencies_ms, bare_offline, harness  # noqa: E402

from odbench.accuracy import encode_if_clean  # noqa: E402
from odbench.backend import Detections, OnnxBackend  # noqa: E402
from odbench.models import ModelSpec, get_spec  # noqa: E402

PARTS = ("head", "between", "tail", "beyond", "total")  # see `outside`
SS_SIDES = ("main", "rows", "pool", "harness")  # see `single_stream`


Call = tuple[int, float, float, int]  # the calling thread's id, perf_counter at the start and end, inputs


class TimedBackend:
    """The backend with every `infer` / `infer_batch` call recorded (the SUT sees the same calls)."""

    def __init__(self, backend: OnnxBackend):
        self._backend = backend
        self.batch_size, self.providers = backend.batch_size, backend.providers
        self.calls: list[Call] = []  # list.append is atomic: the SUT's workers share it

    def place(self, x: np.ndarray) -> Any:
        return self._backend.place(x)

    def release(self, x: Any) -> None:
        self._backend.release(x)

    def prime(self, x: Any) -> None:
        self._backend.prime(x)

    def infer(self, x: Any) -> Detections:
        return self._timed(self._backend.infer, x, 1)

    def infer_batch(self, xs: Sequence[Any]) -> list[Detections]:
        return self._timed(self._backend.infer_batch, xs, len(xs))

    def _timed(self, call: Callable[[Any], Any], arg: Any, inputs: int) -> Any:
        t0 = time.perf_counter()
        found = call(arg)
        self.calls.append((threading.get_ident(), t0, time.perf_counter(), inputs))
        return found

    def taken(self) -> list[Call]:
        """The calls recorded since the last `taken`."""
        calls, self.calls = self.calls, []
        return calls


def _p90_ms(calls: list[Call]) -> float:
    return float(np.percentile([end - start for _, start, end, _ in calls], 90) * 1000)


def outside(calls: list[Call], span: tuple[float, float], wall: float, samples: int) -> dict[str, float]:
    """The calling threads' time outside the engine, in µs per sample, summed over the threads: before each one's
    first call (from the span's start), between its calls, after its last (to the span's end), the test's wall
    time beyond the span (the harness: LoadGen's own start and end; the bare loop: ~0, its own timing's), and
    their total, (wall × threads − Σ calls) / samples."""
    per_thread: dict[int, list[tuple[float, float]]] = {}
    for thread, start, end, _ in calls:
        per_thread.setdefault(thread, []).append((start, end))
    head = between = tail = 0.0
    for spans in per_thread.values():
        spans.sort()
        head += spans[0][0] - span[0]
        between += sum(nxt[0] - cur[1] for cur, nxt in zip(spans, spans[1:]))
        tail += span[1] - spans[-1][1]
    beyond = (wall - (span[1] - span[0])) * len(per_thread)
    parts = {"head": head, "between": between, "tail": tail, "beyond": beyond}
    return {name: value / samples * 1e6 for name, value in {**parts, "total": sum(parts.values())}.items()}


def offline(timed: TimedBackend, setup: Setup, inputs: list, workers: int, samples: int,
            side: str) -> dict[str, float]:
    """One Offline test of the bare loop or the harness: samples/s, the mean engine call in ms, and the time outside
    the engine (`outside`)."""
    if side == "bare":
        t0 = time.perf_counter()
        rate = bare_offline(timed, inputs, samples, workers)
        span = (t0, time.perf_counter())
    else:
        ours = harness(timed, setup.spec, inputs, "Offline", samples, workers)
        rate, span = ours["samples_per_second"], ours["span"]
    calls = timed.taken()
    done = sum(inputs for *_, inputs in calls)
    inside = sum(end - start for _, start, end, _ in calls)
    return {"rate": rate, "call_ms": inside * 1000 / len(calls), **outside(calls, span, done / rate, done)}


def _encode(qsl_idx: int, found: Detections, spec: ModelSpec) -> None:
    """The SUT's per-sample work on a clean answer (odbench/sut.py `_rows`)."""
    encode_if_clean(qsl_idx, *found, spec)


def single_stream(timed: TimedBackend, setup: Setup, inputs: list, samples: int, where: str) -> dict[str, float]:
    """SingleStream's p50/p90 and the engine calls' own p90 (ms): the bare loop on the main thread (`rows`: also
    encoding each answer's accuracy-log rows, as the SUT does) or on a pool thread, or LoadGen's through the
    harness."""
    if where == "main":
        p50, p90 = bare_latencies_ms(timed, inputs, samples)
    elif where == "rows":
        p50, p90 = bare_latencies_ms(timed, inputs, samples, then=partial(_encode, spec=setup.spec))
    elif where == "pool":
        with ThreadPoolExecutor(max_workers=1) as pool:
            p50, p90 = pool.submit(bare_latencies_ms, timed, inputs, samples).result()
    else:
        ours = harness(timed, setup.spec, inputs, "SingleStream", samples, 1)
        p50, p90 = ours["p50_ms"], ours["p90_ms"]
    return {"p50": p50, "p90": p90, "infer_p90": _p90_ms(timed.taken())}


def round_steps(timed: TimedBackend, setup: Setup, inputs: list, workers: int,
                samples: int) -> dict[str, Callable[[], dict[str, float]]]:
    """Every measure of one round: SingleStream on the main thread, there also encoding, on a pool thread and
    through the harness; Offline bare and through the harness."""
    steps = {f"ss_{where}": partial(single_stream, timed, setup, inputs, max(16, samples // workers // 2), where)
             for where in SS_SIDES}
    return steps | {f"off_{side}": partial(offline, timed, setup, inputs, workers, samples, side)
                    for side in ("bare", "harness")}


def rows_for(setup: Setup, variant: Variant, seconds: float, rounds: int) -> list[Row]:
    """The variant's measures, median of `rounds` alternated rounds."""
    backend, inputs = setup.backend(variant)
    timed = TimedBackend(backend)
    workers = variant.loadgen_concurrency
    samples = count_for(backend, inputs, workers, seconds)
    runs = [{f"{step}_{key}": value for step, measured in run.items() for key, value in measured.items()}
            for run in alternated(round_steps(timed, setup, inputs, workers, samples), rounds)]
    m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    name = f"{variant.label}; median of {rounds}"
    ratio = m["off_harness_rate"] / m["off_bare_rate"]
    return [
        (setup.label, name,
         "SingleStream p50 / p90 ms: bare main thread | the same encoding rows | bare pool thread | harness",
         " | ".join(f"{m[f'ss_{where}_p50']:.3f} / {m[f'ss_{where}_p90']:.3f}" for where in SS_SIDES),
         f"harness − main {m['ss_harness_p90'] - m['ss_main_p90']:+.3f} ms at p90, rows − main "
         f"{m['ss_rows_p90'] - m['ss_main_p90']:+.3f} ms"),
        (setup.label, name, "SingleStream p90 ms inside infer: main | rows | pool | harness",
         " | ".join(f"{m[f'ss_{where}_infer_p90']:.3f}" for where in SS_SIDES),
         f"harness − main {m['ss_harness_infer_p90'] - m['ss_main_infer_p90']:+.3f} ms"),
        (setup.label, name, f"Offline samples/s, {workers} in flight: bare | harness",
         f"{m['off_bare_rate']:,.2f} | {m['off_harness_rate']:,.2f}", f"harness / bare {ratio:.3f}"),
        (setup.label, name, "Offline mean ms per engine call: bare | harness",
         f"{m['off_bare_call_ms']:.3f} | {m['off_harness_call_ms']:.3f}",
         f"harness / bare {m['off_harness_call_ms'] / m['off_bare_call_ms']:.3f}"),
        *[(setup.label, name,
           (f"Offline µs per sample outside the engine, summed over threads, {side}: before first | between | "
            "after last | beyond the span | total"),
           " | ".join(f"{m[f'off_{side}_{part}']:.1f}" for part in PARTS), "")
          for side in ("bare", "harness")],
    ]


def measure_model(name: str, device: str, seconds: float, rounds: int, small: bool) -> list[Row]:
    setup = Setup(get_spec(name), device, small)
    return [row for variant in side_by_side(device) for row in rows_for(setup, variant, seconds, rounds)]


def table(title: str, rows: list[Row]) -> str:
    lines = [title, "| model | options | measure | value | note |", "|---|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["ssd_resnet34", "retinanet_coco"])
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long each Offline measurement runs")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds; the median is printed")
    parser.add_argument("--small", action="store_true", help="the small stand-ins instead of the full-size ones")
    args = parser.parse_args()
    import onnxruntime

    rows: list[Row] = []
    for name in args.models:
        found = measure_model(name, args.device, args.seconds, args.rounds, args.small)
        print(table(f"(so far) {name}", found), flush=True)
        rows += found
    print(table(f"Harness gap on {platform.node()}, onnxruntime {onnxruntime.__version__}, "
                f"execution_device={args.device}", rows))


if __name__ == "__main__":
    main()

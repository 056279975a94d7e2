"""The allowed range of every numeric parameter, in one table, checked before any download or LoadGen.

Out-of-range numbers do harm far from where they were typed: LoadGen aborts the process on an
infinite target or a count beyond 64 bits, a NaN lands in user.conf, onnxruntime starts one thread
per requested thread, and LoadGen allocates every query of a test before the first one runs (about
420 bytes per sample, measured). So each parameter has a range, and one derived value (the samples
LoadGen will generate) a ceiling; an error names the parameter, its value and the allowed range.

| parameter | allowed | why |
|---|---|---|
| verbosity | whole number 0 to 3 | 0 warnings, 1-2 progress, 3 debug |
| loadgen_dataset_size | whole number 1 to 1,000,000 | COCO val has 5,000 images |
| loadgen_buffer_size | whole number 1 to 1,000,000; its samples in half the RAM | LoadGen keeps them loaded |
| loadgen_target_qps | positive, at most 1,000,000 samples/s | LoadGen plans target × duration samples |
| loadgen_target_latency | 0.01 to 3,600,000 ms | LoadGen plans duration / latency queries |
| loadgen_count_override | whole number 1 to 10,000,000 | LoadGen allocates them all up front |
| loadgen_query_count | as loadgen_count_override (its alias, the axs name) | |
| loadgen_min_query_count | whole number 1 to 10,000,000 | LoadGen allocates them all up front |
| loadgen_max_query_count | whole number 0 to 10,000,000 | 0: no maximum |
| loadgen_min_duration_s, loadgen_max_duration_s | 0 to 86,400 s (a day) | 0 max: no maximum |
| loadgen_duration_s | as loadgen_min_duration_s (its alias, the axs name) | |
| loadgen_warmup_samples | whole number 0 to 10,000 | untimed inferences before a timed test; 0: none |
| loadgen_multistreamness | whole number 1 to 1,024 | MultiStream samples per query |
| loadgen_concurrency | whole number 1 to 64 | SUT worker threads, one inference each |
| onnx_sessions | whole number 1 to 16 | sessions of the model, each with its weights on the device |
| batch_size | whole number 1 to 64 | samples per inference, concatenated in host memory |
| cpu_threads | whole number 0 (onnxruntime's default) to the CPUs this process may use | one thread each |
| (derived) samples LoadGen generates in PerformanceOnly | at most 10,000,000 | see `planned_samples` |

The CPU limit is the CPUs this process may use (odbench/machine.py `usable_cpus`: its affinity, lowered to a
cgroup CPU quota, so a 2-CPU container on a 64-core host allows 2); `ODBENCH_MAX_CPU_THREADS` sets another
(oversubscription on purpose wants more).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Real

from odbench.machine import usable_cpus

MAX_LOADGEN_SAMPLES = 10_000_000  # ~4 GB of LoadGen's per-sample bookkeeping, allocated before the test
CPU_THREADS_ENV = "ODBENCH_MAX_CPU_THREADS"


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric parameter: `low` to `high` (`low` excluded when `positive`)."""

    low: float
    high: float
    integer: bool = False
    positive: bool = False  # low (0) itself is not allowed
    unit: str = ""
    high_note: str = ""  # where `high` comes from, when it is not a constant

    def describe(self) -> str:
        """The range in words: `a whole number from 1 to 10000000`, `positive and at most 1000000 samples/s`."""
        high = f"{_number(self.high)}{self.unit}{self.high_note}"
        kind = "a whole number " if self.integer else ""
        if self.positive:
            return f"{kind}positive and at most {high}"
        if self.low == 0 and not self.integer:
            return f"0 or more and at most {high}"
        return f"{kind}from {_number(self.low)} to {high}"

    def problem(self, value: object) -> str | None:
        """Why `value` is not allowed, or None when it is."""
        if isinstance(value, bool) or not isinstance(value, Real):
            return "is not a number"
        if self.integer and not isinstance(value, int):
            return "is not a whole number"
        if not math.isfinite(value):
            return "is not a finite number"
        too_low = value <= self.low if self.positive else value < self.low
        return "is out of range" if too_low or value > self.high else None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def max_cpu_threads() -> int:
    """The most intra-op threads a run may ask for: the CPUs this process may use, or $ODBENCH_MAX_CPU_THREADS."""
    text = os.environ.get(CPU_THREADS_ENV, "").strip()
    if not text:
        return usable_cpus()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{CPU_THREADS_ENV}={text!r} is not a positive whole number; set it like "
                         f"{CPU_THREADS_ENV}=8, or unset it for the CPUs this process may use")
    return value


def bounds() -> dict[str, Bound]:
    """The table of the module docstring, by parameter name (cpu_threads's limit read now)."""
    limit = ("$" + CPU_THREADS_ENV) if os.environ.get(CPU_THREADS_ENV, "").strip() else "the CPUs this process may use"
    cpu_note = f" ({limit}; 0 is onnxruntime's default; {CPU_THREADS_ENV}=N sets another limit)"
    return {
        "verbosity": Bound(0, 3, integer=True),
        "loadgen_dataset_size": Bound(1, 1_000_000, integer=True, unit=" images"),
        "loadgen_buffer_size": Bound(1, 1_000_000, integer=True, unit=" samples"),
        "loadgen_target_qps": Bound(0, 1_000_000, positive=True, unit=" samples/s"),
        "loadgen_target_latency": Bound(0.01, 3_600_000, unit=" ms"),
        "loadgen_count_override": Bound(1, MAX_LOADGEN_SAMPLES, integer=True, unit=" queries"),
        "loadgen_min_duration_s": Bound(0, 86_400, unit=" s"),
        "loadgen_max_duration_s": Bound(0, 86_400, unit=" s"),
        # the axs names: loadgen_query_count aliases loadgen_count_override, loadgen_duration_s loadgen_min_duration_s
        "loadgen_query_count": Bound(1, MAX_LOADGEN_SAMPLES, integer=True, unit=" queries"),
        "loadgen_min_query_count": Bound(1, MAX_LOADGEN_SAMPLES, integer=True, unit=" queries"),
        "loadgen_max_query_count": Bound(0, MAX_LOADGEN_SAMPLES, integer=True, unit=" queries"),
        "loadgen_duration_s": Bound(0, 86_400, unit=" s"),
        "loadgen_warmup_samples": Bound(0, 10_000, integer=True, unit=" inferences"),
        "loadgen_multistreamness": Bound(1, 1024, integer=True, unit=" samples per query"),
        "loadgen_concurrency": Bound(1, 64, integer=True, unit=" inferences in flight"),
        "onnx_sessions": Bound(1, 16, integer=True, unit=" sessions"),
        "batch_size": Bound(1, 64, integer=True, unit=" samples per inference"),
        "cpu_threads": Bound(0, max_cpu_threads(), integer=True, high_note=cpu_note),
    }


class ParameterRangeError(ValueError):
    """A numeric parameter outside its range; the message names the parameter, the value and the range."""


def check(name: str, value: object, bound: Bound | None = None) -> None:
    """Raise ParameterRangeError unless `value` (None: unset, always allowed) is inside `name`'s bound."""
    if value is None:
        return
    bound = bound or bounds()[name]
    if problem := bound.problem(value):
        raise ParameterRangeError(f"{name}={value!r} {problem}: it must be {bound.describe()}")

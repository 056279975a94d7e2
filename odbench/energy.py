"""GPU energy during a timed LoadGen test, read through NVML (nvidia-ml-py), with no external power analyzer.

A thread reads the board's cumulative energy counter (NVML's total energy, millijoules since the driver loaded;
Volta and later) every SAMPLE_PERIOD_S while the test runs; boards without the counter are sampled for power
and integrated. The energy of the timed window (the SUT's first query to its last answer) is interpolated from
those readings. It is the whole board's draw, idle power included: what the GPU cost while the test ran.
Machines without an NVIDIA GPU, driver or nvidia-ml-py measure nothing, and the result's energy is null; so do
runs on the CPU provider, a board NVML cannot name (a MIG slice, no visible device), and a meter whose readings
failed mid-test (logged). Metering never fails a run. With 50 ms readings interpolated, a window of a few
seconds carries a few percent of error; `readings` says how many the window spans.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from odbench.nvml import cuda_device_index, open_nvml

log = logging.getLogger(__name__)
SAMPLE_PERIOD_S = 0.05


@dataclass(frozen=True)
class Energy:
    """The GPU's energy over a timed window, and per sample answered in it."""

    gpu: str  # NVML's name of the board, and its NVML index
    source: str  # "NVML energy counter" or "NVML power samples"
    seconds: float
    joules: float
    average_watts: float
    samples: int
    joules_per_sample: float | None
    readings: int  # meter readings within the window

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class EnergyMeter:
    """Reads the GPU's cumulative energy in the background between `start` and `stop`; `energy` then gives any
    window inside. A meter on a machine without NVML measures nothing (`available` False)."""

    def __init__(self, period_s: float = SAMPLE_PERIOD_S):
        self._nvml = open_nvml()
        self._period = period_s
        self._times: list[float] = []
        self._millijoules: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = False
        self.gpu = self.source = ""
        if self._nvml:
            self._open_board()

    def _open_board(self) -> None:
        """The board's handle, name and energy source; on any NVML error (or no board to name) nothing is metered."""
        try:
            index = cuda_device_index(self._nvml)
            if index is None:
                log.warning("no GPU energy: CUDA_VISIBLE_DEVICES=%s names no board NVML can meter",
                            os.environ.get("CUDA_VISIBLE_DEVICES"))
            else:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                self.gpu = f"{self._nvml.nvmlDeviceGetName(self._handle)} (NVML index {index})"
                self._counter = self._has_counter()
                self.source = "NVML energy counter" if self._counter else "NVML power samples"
                return
        except self._nvml.NVMLError as err:
            log.warning("no GPU energy: NVML could not open the board: %s", err)
        self._nvml.nvmlShutdown()
        self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _has_counter(self) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError:
            return False
        return True

    def _read(self) -> None:
        """One reading: the counter, or the power since the last reading integrated onto the last value. A failed
        reading ends the metering (logged once): the window is then unmeasured, the run goes on."""
        now = time.perf_counter()
        try:
            if self._counter:
                value = float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            else:
                watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
                value = self._millijoules[-1] + watts * (now - self._times[-1]) * 1000.0 if self._times else 0.0
        except self._nvml.NVMLError as err:
            if not self.failed:
                log.warning("GPU energy not measured: an NVML reading failed: %s", err)
            self.failed = True
            return
        self._times.append(now)
        self._millijoules.append(value)

    def _loop(self) -> None:
        while not self.failed and not self._stop.wait(self._period):
            self._read()

    def start(self) -> None:
        if not self.available:
            return
        self._read()
        self._thread = threading.Thread(target=self._loop, name="energy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the readings (one last one first); never raises."""
        if not self._thread:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        try:
            self._read()
        finally:
            self._nvml.nvmlShutdown()

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def energy(self, start: float, end: float, samples: int) -> Energy | None:
        """The energy between two time.perf_counter() instants within the metered span, None if unmeasured."""
        if not self.available or self.failed or len(self._times) < 2:
            return None
        start, end = max(start, self._times[0]), min(end, self._times[-1])
        if end <= start:
            return None
        millijoules = np.interp([start, end], self._times, self._millijoules)
        joules = float(millijoules[1] - millijoules[0]) / 1000.0
        seconds = end - start
        readings = sum(start <= t <= end for t in self._times)
        return Energy(self.gpu, self.source, round(seconds, 3), round(joules, 3), round(joules / seconds, 1),
                      samples, round(joules / samples, 4) if samples else None, readings)

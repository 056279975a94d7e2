"""GPU energy (odbench/energy.py) and free memory (odbench/nvml.py). NVML cannot run on this CPU machine, so these
tests stand a small fake NVML library in for it (the only part not real): its counter advances at a fixed power,
and it can be told to fail. They check the arithmetic of the window and that metering never fails a run; the
real library is measured on the GPU machine (benchmarks/gpu_hot_path.py, docs/performance.md)."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

from odbench.energy import EnergyMeter
from odbench.nvml import free_device_memory

WATTS = 250.0
FREE_BYTES = 3 * 10**9


class _FakeNvml(types.ModuleType):
    """pynvml's calls the meter makes: a board whose energy counter grows at WATTS; `fail_after` readings, errors."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_after: int | None = None, counter: bool = True):
        super().__init__("pynvml")
        self.t0, self.fail_after, self.counter, self.reads, self.shut = time.perf_counter(), fail_after, counter, 0, 0

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None:
        self.shut += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "Fake H200"

    def _tick(self) -> None:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise self.NVMLError("GPU is lost")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.counter:
            raise self.NVMLError("Not Supported")
        self._tick()
        return int((time.perf_counter() - self.t0) * WATTS * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._tick()
        return int(WATTS * 1000)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:
        self._tick()
        return types.SimpleNamespace(total=FREE_BYTES * 2, free=FREE_BYTES, used=FREE_BYTES)


@pytest.fixture
def nvml(monkeypatch):
    def install(**kwargs) -> _FakeNvml:
        fake = _FakeNvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return fake
    return install


@pytest.mark.parametrize("counter", [True, False], ids=["energy counter", "power samples"])
def test_the_window_energy_is_power_times_time(nvml, counter) -> None:
    """Readings every 10 ms; the energy of a window inside them is its length at the board's power, per sample."""
    fake = nvml(counter=counter)
    with EnergyMeter(period_s=0.01) as meter:
        time.sleep(0.05)
        start = time.perf_counter()
        time.sleep(0.3)
        end = time.perf_counter()
        time.sleep(0.05)
    energy = meter.energy(start, end, samples=30)
    assert energy.source == ("NVML energy counter" if counter else "NVML power samples")
    assert energy.average_watts == pytest.approx(WATTS, rel=0.05)
    assert energy.joules == pytest.approx(WATTS * (end - start), rel=0.05)
    assert energy.joules_per_sample == pytest.approx(energy.joules / 30, rel=1e-3) and energy.readings >= 10
    assert fake.shut == 1


def test_a_failing_reading_leaves_the_energy_unmeasured_and_raises_nothing(nvml) -> None:
    fake = nvml(fail_after=5)
    with EnergyMeter(period_s=0.01) as meter:
        time.sleep(0.2)
    assert meter.failed and meter.energy(0.0, time.perf_counter(), 10) is None and fake.shut == 1


@pytest.mark.parametrize("visible", ["", "-1", "7", "MIG-4f1c"])
def test_a_visible_device_nvml_cannot_name_is_not_metered(nvml, monkeypatch, visible) -> None:
    """No GPU visible, an index the board count lacks, or a MIG slice: nothing metered (never another board)."""
    nvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    meter = EnergyMeter()
    assert not meter.available
    with meter:
        pass
    assert meter.energy(0.0, 1.0, 1) is None


def test_free_device_memory_is_the_visible_boards_and_none_where_nvml_cannot_say(nvml, monkeypatch) -> None:
    fake = nvml()
    assert free_device_memory() == FREE_BYTES and fake.shut == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert free_device_memory() is None
    nvml(fail_after=0)
    assert free_device_memory() is None


def test_free_device_memory_is_none_without_a_driver() -> None:
    """This machine's own NVML, unfaked: without an NVIDIA driver it has nothing to say (and raises nothing); with
    one, free bytes or nothing (no visible board)."""
    found = free_device_memory()
    assert found is None if not Path("/dev/nvidiactl").exists() else (found is None or found > 0)

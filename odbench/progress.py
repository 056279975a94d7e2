"""Progress of long steps (downloads, preprocessing) as log lines every few percent, with rate and ETA.

`LogProgress(what, logger)` counts items (`3/20 images`); `LogProgress(what, logger, unit="B")` counts
bytes and writes them in MiB (`120.0/778.0 MiB (15%), 35.2 MiB/s, ETA 19 s`). Subclasses send the
percentage elsewhere too (`report`: a Prefect progress artifact in the tasks).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MIB = 1 << 20


def _amount(value: float, unit: str) -> str:
    return f"{value / MIB:.1f}" if unit == "B" else f"{value:.0f}"


def _unit_name(unit: str) -> str:
    return "MiB" if unit == "B" else unit


def eta_text(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `2 h 4 min`: how long is left, readable at a glance."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class LogProgress:
    """A `(done, total)` callback that logs at most every `step` percent, and at the end, with the rate
    since the first call and the time left at that rate."""

    def __init__(self, what: str, logger: logging.Logger | logging.LoggerAdapter, step: float = 10.0,
                 unit: str = "", clock: Callable[[], float] = time.monotonic):
        self.what, self.logger, self.step, self.unit, self.clock = what, logger, step, unit, clock
        self.last, self.started, self.first_done = -step, None, 0

    def __call__(self, done: int, total: int) -> None:
        if self.started is None:
            self.started, self.first_done = self.clock(), done
        percent = 100.0 * done / max(total, 1)
        if percent - self.last >= self.step or done == total:
            self.last = percent
            self.logger.info("%s", self.line(done, total))
            self.report(percent)

    def line(self, done: int, total: int) -> str:
        """`what: done/total unit (p%), rate, ETA t`; the rate once some time has passed."""
        unit = _unit_name(self.unit)
        text = f"{self.what}: {_amount(done, self.unit)}/{_amount(total, self.unit)}{' ' + unit if unit else ''} " \
               f"({100.0 * done / max(total, 1):.0f}%)"
        elapsed = self.clock() - (self.started or 0.0)
        rate = (done - self.first_done) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            text += f", {_amount(rate, self.unit)} {unit or 'items'}/s"
            if done < total:
                text += f", ETA {eta_text((total - done) / rate)}"
        return text

    def report(self, percent: float) -> None:
        """Where else progress goes (a Prefect progress artifact, in tasks)."""


ProgressFactory = Callable[[str, str], LogProgress]  # (what, unit) -> a progress callback


def log_progress_factory(logger: logging.Logger | logging.LoggerAdapter) -> ProgressFactory:
    """Progress callbacks that only log (the core without Prefect)."""
    return lambda what, unit="": LogProgress(what, logger, unit=unit)

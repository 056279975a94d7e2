"""Progress of long steps (downloads, preprocessing) as log lines every few percent."""

from __future__ import annotations

import logging


class LogProgress:
    """A `(done, total)` callback that logs at most every `step` percent, and at the end."""

    def __init__(self, what: str, logger: logging.Logger | logging.LoggerAdapter, step: float = 10.0):
        self.what, self.logger, self.step, self.last = what, logger, step, -step

    def __call__(self, done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        if percent - self.last >= self.step or done == total:
            self.last = percent
            self.logger.info("%s: %d/%d (%.0f%%)", self.what, done, total, percent)
            self.report(percent)

    def report(self, percent: float) -> None:
        """Where else progress goes (a Prefect progress artifact, in tasks)."""

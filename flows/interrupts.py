"""Ctrl-C at a flow's command line: exit code 130 and one line on stderr saying what was interrupted.

Prefect (3.9.1) turns a KeyboardInterrupt inside a flow into a Crashed run: the task engine and the
flow engine each log "Crash detected! Execution was aborted by an interrupt signal.", the run's
final state, and "Engine execution interrupted by base exception" with the traceback, then re-raise
it. Those records still reach the API (the run's logs in the UI say what happened); on the terminal
they are replaced by one line, `interrupted during preprocess (flow run retinanet-offline-...)`.

The step and flow run come from Prefect's run contexts where SIGINT lands (the main thread runs the
flow and its tasks), or, when another handler took SIGINT (LoadGen's clean stop installs its own), from
the first record that reports the interrupt (a record logged with `extra={"interrupt": True}`, or
Prefect's crash record). A second Ctrl-C while the run is being recorded exits at
once; the temporary server then dies with the command (`flows/temporary_server.py`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
CRASH_MESSAGE = "aborted by an interrupt signal"  # prefect.states.exception_to_crashed_state
UNKNOWN = (None, "<unknown>")


class InterruptWatch(logging.Filter):
    """What an interrupt interrupted; as a filter on the terminal's log handlers, it silences them after one."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False
        self.task: str | None = None
        self.flow_run: str | None = None

    def on_sigint(self, signum: int, frame: object) -> None:
        """The SIGINT handler: note where it landed and raise KeyboardInterrupt; a second one exits now."""
        if self.interrupted:
            say(self.describe())
            os._exit(INTERRUPTED)
        self._note_run_context()
        self.interrupted = True
        raise KeyboardInterrupt

    def _note_run_context(self) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        task, flow = TaskRunContext.get(), FlowRunContext.get()
        self.task = task.task.name if task else None
        self.flow_run = flow.flow_run.name if flow and flow.flow_run else None

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass records until an interrupt; after it, learn the step and run from them and drop them."""
        if not self.interrupted and _reports_interrupt(record):
            self.interrupted = True
        if not self.interrupted:
            return True
        if self.task in UNKNOWN and getattr(record, "task_name", None) not in UNKNOWN:
            self.task = record.task_name
        if self.flow_run in UNKNOWN and getattr(record, "flow_run_name", None) not in UNKNOWN:
            self.flow_run = record.flow_run_name
        return False

    def describe(self) -> str:
        """`interrupted during <step> (flow run <name>)`, with what is known of the two."""
        step = f" during {self.task}" if self.task else ""
        run = f" (flow run {self.flow_run})" if self.flow_run else ""
        return f"interrupted{step}{run}"


def say(line: str) -> None:
    """A line on stderr, written directly: in a flow with `log_prints`, `print` would become a log record."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _reports_interrupt(record: logging.LogRecord) -> bool:
    """A record that says SIGINT arrived while another handler held it: one logged with
    `extra={"interrupt": True}`, or Prefect's crash handling of the KeyboardInterrupt."""
    exc = record.exc_info[1] if record.exc_info else None
    return (getattr(record, "interrupt", False) is True or isinstance(exc, KeyboardInterrupt)
            or CRASH_MESSAGE in record.getMessage())


def terminal_handlers() -> list[logging.Handler]:
    """The stream handlers of every logger (Prefect's console and debug handlers), not files or the API."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    handlers = {id(h): h for logger in loggers for h in logger.handlers}
    return [h for h in handlers.values()
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


@contextmanager
def watch_interrupts() -> Iterator[InterruptWatch]:
    """Take SIGINT (main thread only) and filter the terminal's log handlers for the block.

    After an interrupt both stay in place, so Prefect's clean-up at exit (the last logs, stopping the
    temporary server) stays quiet and a second Ctrl-C exits at once; otherwise both are restored.
    """
    watch, handlers = InterruptWatch(), terminal_handlers()
    for handler in handlers:
        handler.addFilter(watch)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, watch.on_sigint) if in_main else None
    try:
        yield watch
    finally:
        if not watch.interrupted:
            if in_main and previous is not None:  # None: a handler not set from Python, left as it is
                signal.signal(signal.SIGINT, previous)
            for handler in handlers:
                handler.removeFilter(watch)


def run_interruptible(body: Callable[[], int]) -> int:
    """`body()`'s exit code, or 130 and one line on stderr if Ctrl-C interrupted it."""
    with watch_interrupts() as watch:
        try:
            return body()
        except KeyboardInterrupt:
            watch.interrupted = True
            say(watch.describe())
            return INTERRUPTED

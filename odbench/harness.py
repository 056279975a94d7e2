"""One LoadGen test: settings written as a user.conf, LoadGen run on the SUT, logs in a folder.

Ctrl-C during a test stops it cleanly: LoadGen runs on a helper thread while the main thread waits
in Python, where a SIGINT handler asks the SUT to stop; the SUT then answers every outstanding and
later query at once, empty, LoadGen finishes its test, SUT and QSL are destroyed, and `run_loadgen`
raises KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from odbench.loadgen_settings import LOADGEN_MODES, LoadGenConfig
from odbench.sut import DetectionSUT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadGenRun:
    log_dir: Path
    user_conf: Path


class _StopOnInterrupt:
    """While active (main thread only), SIGINT sets a flag and stops the SUT instead of raising
    KeyboardInterrupt; the previous handler is restored on exit."""

    def __init__(self, sut: DetectionSUT):
        self.sut, self.interrupted, self._previous, self._installed = sut, False, None, False

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        self.sut.request_stop()

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


def _wait_for(test: Callable[[], None], interrupts: _StopOnInterrupt) -> None:
    """Run LoadGen's blocking test on a helper thread while this thread waits in Python, so that a
    signal handler runs here promptly (it cannot while this thread is inside LoadGen's C++). Whatever
    interrupts the wait (a KeyboardInterrupt from another handler, a SystemExit from a SIGTERM handler)
    stops the SUT first and is raised only once LoadGen has finished its test."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            test()
        except BaseException as err:  # noqa: BLE001 — re-raised on the calling thread
            failures.append(err)

    thread = threading.Thread(target=target, name="loadgen")
    thread.start()
    pending: BaseException | None = None
    told = False
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            interrupts.interrupted = True
            interrupts.sut.request_stop()
        except BaseException as err:  # noqa: BLE001 — raised below, after LoadGen has stopped
            pending = pending or err
            interrupts.sut.request_stop()
        if (interrupts.interrupted or pending) and not told:
            # debug only: the command line's one line after Ctrl-C says what was interrupted
            log.debug("interrupted: stopping LoadGen (outstanding queries are answered empty)")
            told = True
    if pending is not None:
        raise pending
    if failures:
        raise failures[0]


def run_loadgen(sut: DetectionSUT, config: LoadGenConfig, model_key: str, log_dir: Path,
                audit_config: Path | None = None) -> LoadGenRun:
    """Run one LoadGen test, writing user.conf and LoadGen's logs into log_dir; Ctrl-C stops it
    cleanly and raises KeyboardInterrupt afterwards. `audit_config`: a compliance test's audit.config
    (odbench/compliance.py), which LoadGen applies over every other setting; None: no audit."""
    import mlperf_loadgen as lg

    if config.mode not in LOADGEN_MODES:
        raise ValueError(f"{config.mode} is no LoadGen test mode: run each of its tests (LoadGenConfig.passes())")
    log_dir.mkdir(parents=True, exist_ok=True)
    user_conf = log_dir / "user.conf"
    library = sut.library
    user_conf.write_text(config.user_conf(model_key, library.count))
    settings = lg.TestSettings()
    # conf_type 0: the official mlperf.conf built into LoadGen; 2: a user.conf file. (conf_type 1
    # would do both, but loads mlperf.conf only on its first call in a process.)
    if settings.FromConfig("", model_key, config.scenario, 0) or settings.FromConfig(
            str(user_conf), model_key, config.scenario, 2):
        raise ValueError(f"LoadGen rejected its settings for {model_key} {config.scenario} ({user_conf})")
    settings.scenario = getattr(lg.TestScenario, config.scenario)
    settings.mode = getattr(lg.TestMode, config.mode)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(log_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    qsl = lg.ConstructQSL(library.count, config.performance_count(library.count),
                          library.load_samples, library.unload_samples)
    handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    with _StopOnInterrupt(sut) as interrupts:  # also over the clean-up: a second Ctrl-C cannot cut it short
        try:
            log.info("LoadGen test started: %s %s, %d samples (Ctrl-C stops it cleanly)", config.scenario,
                     config.mode, library.count)
            _wait_for(lambda: lg.StartTestWithLogSettings(handle, qsl, settings, log_settings,
                                                          str(audit_config) if audit_config else ""), interrupts)
        finally:
            lg.DestroySUT(handle)
            lg.DestroyQSL(qsl)
            sut.close()
    if interrupts.interrupted:
        raise KeyboardInterrupt(f"the LoadGen test was interrupted; its logs in {log_dir} are incomplete")
    if library.errors:
        raise RuntimeError(f"{len(library.errors)} sample(s) failed to load; first: {library.errors[0]}") \
            from library.errors[0]
    if sut.errors:
        raise RuntimeError(f"{len(sut.errors)} inference(s) failed; first: {sut.errors[0]!r}") from sut.errors[0]
    return LoadGenRun(log_dir, user_conf)

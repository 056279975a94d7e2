"""The temporary Prefect server of a command run without PREFECT_API_URL, tied to the command's life.

Without PREFECT_API_URL, Prefect (3.9.1) starts a temporary ("ephemeral") API server the first time a
client needs one: `prefect.server.api.server.SubprocessASGIServer`, a per-port singleton, runs
`python -m uvicorn --factory prefect.server.api.server:create_app` on a free port in 8000-8999 as a
plain child in the command's own process group, and registers `stop()` (SIGTERM, 5 s, SIGKILL) with
`atexit`. So a `kill -9` (or an abort) of the command skips `atexit` and orphans the server, and a
terminal's Ctrl-C reaches the server too, which then dies while the flow still reports its final
state.

`start_temporary_server()` starts that server before the flow, as the singleton Prefect looks up
(`SubprocessASGIServer()`, port None), so every Prefect client of the command uses it and Prefect
starts no other. Its process differs from Prefect's in two ways:

- a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`, set by a small interpreter that
  then execs the server): the kernel kills the server when the command dies, however it dies. SIGKILL rather than SIGTERM: the parent is gone, so nothing
  in flight is worth finishing, a graceful shutdown could hang, and SQLite's journal makes a kill
  safe. The signal fires when the *thread* that started the child ends, so the server is started here,
  from the command's main thread, never lazily from one of Prefect's worker threads;
- its own session (`start_new_session`): Ctrl-C at the terminal interrupts the command, not the
  server, which lives until the command has recorded the interrupted run and exits (Prefect's
  `atexit` stop, unchanged).

Where a user runs a long-lived `prefect server start` and sets PREFECT_API_URL (or disables the
ephemeral mode), nothing is started. Without `prctl` (macOS, Windows) the server is started without a
parent-death signal and a warning says that a killed command leaves it running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
logger = logging.getLogger(__name__)


# Run in a fresh interpreter between this process and the server: set the parent-death signal, then
# become the server (exec keeps it). A parent that died before the prctl call would never signal: exit.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def has_parent_death_signal() -> bool:
    """Whether this platform offers prctl(PR_SET_PDEATHSIG): Linux (glibc or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "prctl")
    except OSError:
        return False


def die_with_parent(argv: list[str]) -> list[str]:
    """The command `argv`, run so that it gets SIGKILL when this process dies; unchanged where unsupported.

    A small interpreter (`python -S`, no site-packages) sets the signal and execs `argv`, rather than a
    `preexec_fn`, which would run Python between fork and exec in a process that has threads.
    """
    if not has_parent_death_signal():
        return argv
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


class GuardedServer(SubprocessASGIServer):
    """Prefect's temporary server, started with a parent-death signal in a session of its own."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        """Prefect 3.9.1's command and environment (`SubprocessASGIServer._run_uvicorn_command`)."""
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            args=die_with_parent([sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                                  "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                                  "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]),
            env={**os.environ, **server_env,
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            start_new_session=True,
        )


def needs_temporary_server() -> bool:
    """Whether Prefect would start a temporary server: no API URL and the ephemeral mode on."""
    settings = get_current_settings()
    return not settings.api.url and settings.server.ephemeral.enabled


def start_temporary_server() -> SubprocessASGIServer | None:
    """Start the command's temporary server now, guarded, and return it; None where none is needed.

    It stops at exit as Prefect's does (`atexit`), after Prefect has sent the run's last states and
    logs; if the command is killed instead, the kernel kills it.
    """
    if not needs_temporary_server():
        return None
    server = GuardedServer()  # registers as the instance every `SubprocessASGIServer()` call returns
    if not isinstance(server, GuardedServer):
        logger.warning("a temporary Prefect server was started before the guard: it may outlive this command")
    elif not has_parent_death_signal():
        logger.warning("no parent-death signal on %s: if this command is killed, stop the temporary Prefect "
                       "server yourself, or run `prefect server start` and set PREFECT_API_URL", sys.platform)
    server.start()
    return server

"""A real Prefect stack for end-to-end tests: `prefect server start` on a free port (SQLite in a
temporary PREFECT_HOME), the venv's `prefect` CLI, process workers, and the API client.

Everything runs as the user would run it, as subprocesses; `stop()` ends each process group, worker
first, and any flow-run subprocess that left its group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).parent / "prefect"
POOL = "odbench-process"  # prefect.yaml's work pool
SERVER_TIMEOUT_S = 120
CLI_TIMEOUT_S = 180
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """A process's descendants (Linux /proc), e.g. a worker's flow-run subprocess in its own session."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def new_prefect_home(home: Path, db_template: Path) -> Path:
    """A new PREFECT_HOME whose database is a fresh copy of a migrated empty one (no rows of any run):
    what a first server creates, without the minute of migrations."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db_template, home / "prefect.db")
    return home


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "<no output>"


class LiveStack:
    """The server, background processes and CLI commands of one test session."""

    def __init__(self, tmp: Path, db_template: Path | None = None) -> None:
        """`db_template`: a migrated empty Prefect database (conftest's `prefect_db_template`) to start from."""
        self.tmp = tmp
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.home, self.storage_root = tmp / "prefect-home", tmp / "storage"
        self.home.mkdir(parents=True)
        if db_template is not None:
            new_prefect_home(self.home, db_template)
        self.storage_root.mkdir()
        self.env = self._environment()
        self.background: list[tuple[str, subprocess.Popen, IO[bytes]]] = []
        self.logs: dict[str, Path] = {}
        self.t0 = time.perf_counter()

    def _environment(self) -> dict[str, str]:
        env = {**os.environ,
               "PREFECT_HOME": str(self.home),
               "PREFECT_PROFILES_PATH": str(self.home / "profiles.toml"),
               "PREFECT_API_URL": self.api_url,
               "PREFECT_UI_API_URL": self.api_url,
               "PREFECT_UI_URL": self.ui_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_LOGGING_EXTRA_LOGGERS": "odbench",
               "ODBENCH_STORAGE_URL": str(self.storage_root),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
               "PYTHONUNBUFFERED": "1"}
        for name in ("PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL"):
            env.pop(name, None)
        return env

    def mark(self, what: str) -> None:
        print(f"[e2e {time.perf_counter() - self.t0:6.1f}s] {what}", flush=True)

    def start(self, name: str, *args: str, cwd: Path = ROOT, program: Path = PREFECT) -> subprocess.Popen:
        """A background process (server, worker), its output in `<tmp>/<name>.log`."""
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen([str(program), *args], cwd=cwd, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.background.append((name, proc, handle))
        self.logs[name] = log
        return proc

    def start_server(self) -> None:
        self.launch_server()
        self.wait_for_server()

    def launch_server(self) -> None:
        """`prefect server start` in the background; `wait_for_server()` waits until it answers."""
        self.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port))

    def wait_for_server(self) -> None:
        server = next(proc for name, proc, _ in self.background if name == "server")
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(self.report(f"prefect server exited early with {server.returncode}"))
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        self.mark(f"server healthy at {self.api_url}")
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        pytest.fail(self.report(f"{self.api_url} did not answer within {SERVER_TIMEOUT_S}s"))

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen:
        """A process worker on the pool, started outside the project folder: the pull step finds it."""
        cwd = self.tmp / f"{name}-cwd"
        cwd.mkdir(exist_ok=True)
        return self.start(name, "worker", "start", "--pool", POOL, "--type", "process", *extra, cwd=cwd)

    def run(self, *args: str, program: Path = PREFECT, check: bool = True) -> subprocess.CompletedProcess:
        """One command to completion (`prefect ...` by default); fails the test with its output if asked."""
        start = time.perf_counter()
        try:
            done = subprocess.run([str(program), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            pytest.fail(self.report(f"`{program.name} {' '.join(args)}` timed out:\n{err.stdout}\n{err.stderr}"))
        took = time.perf_counter() - start
        self.mark(f"{program.name} {' '.join(args)[:100]} -> rc {done.returncode} in {took:.1f}s")
        if check and done.returncode != 0:
            pytest.fail(self.report(f"`{program.name} {' '.join(args)}` exited {done.returncode}:\n"
                                    f"{(done.stdout + done.stderr)[-4000:]}"))
        return done

    def python(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(*args, program=Path(sys.executable), check=check)

    def wait_for_flow_run(self, flow_run_id: str, timeout_s: float = 300):
        """Poll the API until the flow run is final; returns it. Fails on timeout or a dead worker."""
        from prefect.client.orchestration import get_client

        deadline, last = time.monotonic() + timeout_s, None
        with get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                state = flow_run.state
                if state is not None and state.name != last:
                    last = state.name
                    self.mark(f"flow run {flow_run.name}: {state.type.value} ({state.name})")
                if state is not None and state.type.value in FINAL_STATES:
                    return flow_run
                if time.monotonic() > deadline:
                    pytest.fail(self.report(f"flow run {flow_run_id} not final within {timeout_s}s (last {last})"))
                time.sleep(1)

    def report(self, message: str) -> str:
        """The message plus the tail of every background process's output."""
        tails = (f"\n\n--- tail of {name} ({path}) ---\n{tail(path)}" for name, path in self.logs.items())
        return message + "".join(tails)

    def stop_process(self, name: str) -> None:
        for entry in [e for e in self.background if e[0] == name]:
            self._terminate(*entry)
            self.background.remove(entry)

    def stop(self) -> None:
        for entry in reversed(self.background):
            self._terminate(*entry)
        self.background.clear()

    @staticmethod
    def _terminate(name: str, proc: subprocess.Popen, handle: IO[bytes]) -> None:
        """SIGTERM then SIGKILL to the group, and SIGKILL to descendants that left it."""
        strays = _descendants(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), *(lambda p=p: os.kill(p, signal.SIGKILL)
                                                                   for p in strays)):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        handle.close()

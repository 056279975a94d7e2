"""The prefect.yaml walk-through, for real: a local Prefect server, the work pool, `prefect deploy`,
a process worker and `prefect deployment run detect/onnx`, all through the venv's `prefect` CLI.

The flow run (synthetic COCO, stand-in RetinaNet) must complete and publish its artifacts, whose
numbers must match the run's result.json in the (temporary) storage root.
"""

from __future__ import annotations

import json
import os
import re
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
SERVER_TIMEOUT_S = 90
RUN_TIMEOUT_S = 240
CLI_TIMEOUT_S = 120
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """The ids of a process's descendants (Linux /proc; empty elsewhere), e.g. a worker's flow-run
    subprocess, which Prefect starts in a session of its own, out of reach of the worker's group."""
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


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "<no output>"


class _Walkthrough:
    """The background processes (server, worker) and the CLI commands of one walk-through."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.background: list[tuple[subprocess.Popen, IO[bytes]]] = []
        self.logs: dict[str, Path] = {}
        self.t0 = time.perf_counter()

    def mark(self, what: str) -> None:
        print(f"[e2e {time.perf_counter() - self.t0:6.1f}s] {what}", flush=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp_path / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen([str(PREFECT), *args], cwd=ROOT, env=self.env, stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.background.append((proc, handle))
        self.logs[name] = log
        return proc

    def cli(self, *args: str) -> str:
        """Run one CLI command to completion; fail with its output when it exits non-zero."""
        start = time.perf_counter()
        try:
            done = subprocess.run([str(PREFECT), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            pytest.fail(self.report(f"`prefect {' '.join(args)}` timed out after {CLI_TIMEOUT_S}s:\n"
                                    f"{err.stdout}\n{err.stderr}"))
        out = done.stdout + done.stderr
        self.mark(f"prefect {' '.join(args)} -> rc {done.returncode} in {time.perf_counter() - start:.1f}s")
        if done.returncode != 0:
            pytest.fail(self.report(f"`prefect {' '.join(args)}` exited {done.returncode}:\n{out[-4000:]}"))
        return out

    def report(self, message: str) -> str:
        """The message plus the tail of every background process's output."""
        tails = "".join(f"\n\n--- tail of {name} output ({path}) ---\n{_tail(path)}" for name, path in self.logs.items())
        return message + tails

    def stop(self) -> None:
        """Terminate each process group (SIGTERM, then SIGKILL), worker first, and any descendant
        that left the group (a flow-run subprocess)."""
        for proc, handle in reversed(self.background):
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
            # The group's other members (the flow-run subprocess, uvicorn) may outlive the leader.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            handle.close()


def _wait_for_health(w: _Walkthrough, server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/api/health"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(w.report(f"prefect server exited early with {server.returncode}"))
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(w.report(f"{url} did not answer within {SERVER_TIMEOUT_S}s"))


def test_walkthrough_deploys_and_runs_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home, storage_root = tmp_path / "prefect-home", tmp_path / "storage"
    home.mkdir()
    storage_root.mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "ODBENCH_STORAGE_URL": str(storage_root),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    for name, value in env.items():
        if name.startswith(("PREFECT_", "ODBENCH_")):
            monkeypatch.setenv(name, value)

    w = _Walkthrough(tmp_path, env)
    try:
        # 1. The server, SQLite under the temporary PREFECT_HOME.
        server = w.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        _wait_for_health(w, server, port)
        w.mark(f"server healthy at {api_url}")
        env["PREFECT_API_URL"] = api_url
        monkeypatch.setenv("PREFECT_API_URL", api_url)

        # 2-3. The work pool and the deployment, from prefect.yaml.
        w.cli("work-pool", "create", POOL, "--type", "process")
        w.cli("--no-prompt", "deploy", "--name", "onnx")

        # 4. A process worker on the pool.
        worker = w.start("worker", "worker", "start", "--pool", POOL, "--type", "process")

        # 5. A run of the deployment.
        out = w.cli("deployment", "run", "detect/onnx", "-p", "model_name=retinanet", "-p", "model_url=standin",
                    "-p", "dataset_url=synthetic")
        found = re.search(rf"UUID:\s*({UUID_RE})", out) or re.search(UUID_RE, out)
        assert found, w.report(f"no flow run id in `prefect deployment run` output:\n{out}")
        flow_run_id = found.group(found.lastindex or 0)
        w.mark(f"flow run {flow_run_id} created")

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            deadline, last = time.monotonic() + RUN_TIMEOUT_S, None
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                state = flow_run.state
                if state is not None and state.name != last:
                    last = state.name
                    w.mark(f"flow run state {state.type.value} ({state.name})")
                if state is not None and state.type.value in FINAL_STATES:
                    break
                if worker.poll() is not None:
                    pytest.fail(w.report(f"the worker exited with {worker.returncode} before the run finished"))
                if time.monotonic() > deadline:
                    pytest.fail(w.report(f"flow run {flow_run_id} not finished within {RUN_TIMEOUT_S}s "
                                         f"(last state {last})"))
                time.sleep(1)

            # 6. The run completed, and its artifacts carry the numbers of its result.json.
            assert state.is_completed(), w.report(f"flow run ended {state.type.value} ({state.name}): "
                                                  f"{state.message}")
            results = sorted(storage_root.glob("runs/*/result.json"))
            assert len(results) == 1, w.report(f"expected one result.json under {storage_root}, got {results}")
            result = json.loads(results[0].read_text())
            assert result["model_name"].startswith("retinanet") and result["stand_in"] is True, result
            assert result["mAP"] is not None and result["samples_per_second"] is not None, result

            def artifact(key: str):
                found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
                assert len(found) == 1, w.report(f"expected one artifact {key}, got {found}")
                return found[0]

            summary = artifact("detect-retinanet-coco-summary")
            assert summary.type == "markdown", summary
            assert summary.flow_run_id is not None and str(summary.flow_run_id) == flow_run_id, summary
            markdown = summary.data
            assert isinstance(markdown, str), summary
            assert f"{result['mAP']:.3f}" in markdown, (result["mAP"], markdown)
            assert f"{result['samples_per_second']:.3f}" in markdown, (result["samples_per_second"], markdown)

            table = artifact("detect-retinanet-coco-metrics")
            assert table.type == "table", table
            assert str(table.flow_run_id) == flow_run_id, table
        w.mark("artifacts match result.json")
    finally:
        w.stop()
        w.mark("server and worker stopped")

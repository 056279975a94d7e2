"""Ctrl-C and `kill -9` at the flows' command lines (issue 6, acceptance 3), as real subprocesses.

Each command runs without PREFECT_API_URL, so it starts its temporary Prefect server, and in a session
of its own, as a shell runs a foreground command; Ctrl-C is SIGINT to that process group, as a
terminal sends it. Expected: exit code 130, one line on stderr after the signal saying what was
interrupted, no traceback, and within 10 s no process the command started still running (the
temporary server included, and after `kill -9` too).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.live_prefect import ROOT, _descendants, new_prefect_home

GONE_WITHIN_S = 10  # the bound for every process the command started
REACH_STEP_S = 60  # a command reaches the watched step within this (its temporary server's start included)
EXIT_WITHIN_S = 30  # an interrupted command exits within this
TRICKLE_S = 0.05  # the slow server sends one byte of an image per this many seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the guard is Linux-first")

Process = tuple[int, str]  # pid and start time (/proc/<pid>/stat field 22): a reused pid is another process


def _identity(pid: int) -> Process | None:
    """The pid with its start time, or None when it is gone or a zombie (dead, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (pid, fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "<gone>"


def _environment(home: Path, tmp: Path) -> dict[str, str]:
    """Prefect in `home`, storage in the test's folder, and no API URL: the command starts a temporary server."""
    env = {**os.environ,
           "PREFECT_HOME": str(home),
           "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
           "ODBENCH_STORAGE_URL": str(tmp / "storage"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONUNBUFFERED": "1"}
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    return env


class Command:
    """A flow's command line in a session of its own; its stderr in a file; the processes it started."""

    def __init__(self, home: Path, tmp: Path, module: str, *args: str) -> None:
        self.stderr_path = tmp / "stderr.txt"
        with open(tmp / "stdout.txt", "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=_environment(home, tmp),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        self.started: dict[Process, str] = {}
        self.t0 = time.monotonic()

    def mark(self, what: str) -> None:
        """A timed line in the test's captured output (shown when it fails)."""
        print(f"[{time.monotonic() - self.t0:5.1f}s] {what}", flush=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def note_children(self) -> None:
        """Record every descendant now running (after a `kill -9` they are no longer its descendants), with its
        latest command line: a child seen between fork and exec still shows its parent's."""
        for pid in _descendants(self.proc.pid):
            if (identity := _identity(pid)) and ((line := _cmdline(pid)) != "<gone>" or identity not in self.started):
                self.started[identity] = line

    def wait_for(self, pattern: str, timeout_s: float = REACH_STEP_S) -> None:
        """Until stderr matches the pattern, noting children; fails if the command ends or takes too long."""
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.stderr()):
            self.note_children()
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {pattern!r}:\n{self.stderr()[-4000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout_s}s:\n{self.stderr()[-4000:]}"
            time.sleep(0.2)
        self.note_children()
        self.mark(f"stderr shows {pattern!r}")

    def ctrl_c(self) -> int:
        """SIGINT to the command's process group, as a terminal sends it; returns stderr's length before."""
        self.note_children()
        mark = len(self.stderr())
        os.killpg(self.proc.pid, signal.SIGINT)
        self.mark("SIGINT sent to the process group")
        return mark

    def kill_9(self) -> None:
        self.note_children()
        self.proc.kill()
        self.proc.wait(timeout=EXIT_WITHIN_S)
        self.mark("killed (SIGKILL)")

    def exit_code(self) -> int:
        try:
            code = self.proc.wait(timeout=EXIT_WITHIN_S)
            self.mark(f"exited {code}")
            return code
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_S}s after the signal:\n{self.stderr()[-4000:]}")

    def left_running(self) -> list[str]:
        """What the command started that still runs GONE_WITHIN_S after it ended ([] if nothing)."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while True:
            self.note_children()  # a live command's own descendants count too
            alive = [f"{pid} {cmd}" for (pid, start), cmd in self.started.items() if _identity(pid) == (pid, start)]
            if not alive or time.monotonic() > deadline:
                self.mark(f"left running: {alive}")
                return alive
            time.sleep(0.2)

    def stop(self) -> None:
        """Test teardown: whatever is left, killed (the assertions have already spoken)."""
        self.note_children()
        if self.proc.poll() is None:
            self.proc.kill()
        for pid, start in self.started:
            if _identity(pid) == (pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.wait(timeout=EXIT_WITHIN_S)

    def had_temporary_server(self) -> bool:
        return any("uvicorn" in cmd and "prefect.server.api.server:create_app" in cmd for cmd in self.started.values())


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory, prefect_db_template) -> Path:
    """One PREFECT_HOME for the module, its database migrated already (a minute's migrations on a small
    machine): every temporary server starts in seconds."""
    return new_prefect_home(tmp_path_factory.mktemp("prefect-home"), prefect_db_template)


@pytest.fixture
def command(prefect_home, tmp_path) -> Iterator[Callable[..., Command]]:
    """`command(module, *args)` starts a flow's command line; every one is stopped after the test."""
    started: list[Command] = []

    def start(module: str, *args: str) -> Command:
        started.append(Command(prefect_home, tmp_path, module, *args))
        return started[-1]

    yield start
    for cmd in started:
        cmd.stop()


def assert_interrupted(cmd: Command, mark: int, step: str) -> None:
    """Exit code 130, no traceback, one line after the signal naming the step, nothing left running."""
    code, err = cmd.exit_code(), cmd.stderr()
    assert code == 130, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    assert re.fullmatch(rf"interrupted during {step} \(flow run [\w-]+\)", err[mark:].strip()), err[-4000:]
    assert cmd.had_temporary_server(), cmd.started
    assert cmd.left_running() == []


class TrickleHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the body of an image comes one byte per TRICKLE_S, so its download lasts minutes."""

    trickling, stopping = threading.Event(), threading.Event()

    def copyfile(self, source, outputfile) -> None:
        if not self.path.endswith(".jpg"):
            return super().copyfile(source, outputfile)
        self.trickling.set()
        try:
            while not self.stopping.is_set() and (byte := source.read(1)):
                outputfile.write(byte)
                outputfile.flush()
                time.sleep(TRICKLE_S)
        except (BrokenPipeError, ConnectionResetError):  # the interrupted command hung up
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_dataset_url(tmp_path) -> Iterator[str]:
    """A small synthetic COCO folder over loopback HTTP whose images trickle in."""
    from odbench.synthetic import generate_dataset

    folder = generate_dataset(tmp_path / "coco", num_images=4, seed=0)
    TrickleHandler.trickling.clear()
    TrickleHandler.stopping.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(TrickleHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    TrickleHandler.stopping.set()
    server.shutdown()
    server.server_close()


def test_ctrl_c_during_download(command, slow_dataset_url):
    cmd = command("flows.detect", "--model_url", "standin", "--dataset_url", slow_dataset_url,
                  "--loadgen_dataset_size", "4")
    cmd.wait_for(r"Task run 'download-[^']*' - ")
    assert TrickleHandler.trickling.wait(REACH_STEP_S), "no image was requested"
    time.sleep(0.5)  # a few bytes into the image
    assert_interrupted(cmd, cmd.ctrl_c(), "download")


def test_ctrl_c_during_preprocessing(command):
    # 1000 synthetic images at SSD's 1200 px: several seconds of preprocessing on any machine
    cmd = command("flows.detect", "--model_name", "ssd_resnet34", "--model_url", "standin", "--dataset_url", "synthetic",
                  "--loadgen_dataset_size", "1000")
    cmd.wait_for(r"Task run 'preprocess-[^']*' - ")
    assert_interrupted(cmd, cmd.ctrl_c(), "preprocess")


def test_ctrl_c_during_loadgen(command):
    """LoadGen's own clean stop (odbench/harness.py) holds SIGINT while it runs."""
    cmd = command("flows.detect", "--model_url", "standin", "--dataset_url", "synthetic", "--loadgen_dataset_size", "20",
                  "--loadgen_mode", "PerformanceOnly", "--loadgen_min_duration_s", "60")
    cmd.wait_for(r"Task run 'inference-[^']*' - LoadGen")
    time.sleep(1)  # LoadGen's test under way
    assert_interrupted(cmd, cmd.ctrl_c(), "inference")


def test_second_ctrl_c_exits_at_once(command):
    """A second Ctrl-C while the first is being recorded: out at once, still one line and nothing left."""
    cmd = command("flows.detect", "--model_url", "standin", "--dataset_url", "synthetic", "--loadgen_dataset_size", "1000")
    cmd.wait_for(r"Task run 'preprocess-[^']*' - ")
    mark = cmd.ctrl_c()
    time.sleep(0.05)
    cmd.ctrl_c()
    assert_interrupted(cmd, mark, "preprocess")


def test_ctrl_c_in_another_flows_command(command):
    """The regression command: the nested detect run is the one named."""
    entry = {"model_name": "ssd_resnet34", "model_url": "standin", "dataset_url": "synthetic",
             "loadgen_dataset_size": 1000}
    cmd = command("flows.regression", "--matrix", json.dumps([entry]))
    cmd.wait_for(r"Task run 'preprocess-[^']*' - ")
    assert_interrupted(cmd, cmd.ctrl_c(), "preprocess")


def test_kill_9_leaves_no_process(command):
    cmd = command("flows.detect", "--model_url", "standin", "--dataset_url", "synthetic", "--loadgen_dataset_size", "500")
    cmd.wait_for(r"Beginning flow run")
    cmd.kill_9()
    assert cmd.had_temporary_server(), cmd.started
    assert cmd.left_running() == []


def test_parent_death_signal_reaches_the_child(prefect_home, tmp_path):
    """The mechanism alone: a child started with `die_with_parent()` dies when its parent is SIGKILLed."""
    code = ("import subprocess, sys, time\n"
            "from flows.temporary_server import die_with_parent\n"
            "child = subprocess.Popen(die_with_parent(['sleep', '300']))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_environment(prefect_home, tmp_path),
                              stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = _identity(int(parent.stdout.readline()))
        assert child is not None
        parent.kill()
        parent.wait(timeout=EXIT_WITHIN_S)
        deadline = time.monotonic() + GONE_WITHIN_S
        while _identity(child[0]) == child and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _identity(child[0]) != child, "the child outlived its parent"
    finally:
        parent.kill()
        if child and _identity(child[0]) == child:
            os.kill(child[0], signal.SIGKILL)


def test_no_server_is_started_with_an_api_url():
    """A user's long-running server (PREFECT_API_URL): the command starts none."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.temporary_server import start_temporary_server

    before = dict(SubprocessASGIServer._instances)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert start_temporary_server() is None
    assert SubprocessASGIServer._instances == before

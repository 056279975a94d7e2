"""Shared fixtures. Prefect and storage are pointed at temporary folders before anything imports them."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="odbench-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["ODBENCH_STORAGE_URL"] = str(_SESSION_TMP / "default-storage")

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "coco2017-val-mini"


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    """The 80 real COCO val2017 images of the shared folder (skipped where it is absent)."""
    if not (MINI / "annotations" / "instances_val2017.json").exists():
        pytest.skip(f"the real mini COCO set is not at {MINI}")
    return MINI


@pytest.fixture(scope="session")
def coco_dir(request) -> Path:
    """The real mini set where present, else the synthetic set: any COCO-layout folder."""
    if (MINI / "annotations" / "instances_val2017.json").exists():
        return MINI
    return request.getfixturevalue("synthetic_dir")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from odbench.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "coco", num_images=40, seed=0)


@pytest.fixture
def storage(tmp_path):
    from odbench.storage import Storage

    return Storage(str(tmp_path / "storage"))


def stored_files(storage) -> list[str]:
    """Every file under a storage root, relative to it."""
    root = Path(storage.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (the test harness: a temporary server on SQLite) for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_db_template(tmp_path_factory) -> Path:
    """An empty Prefect database, migrated once (`prefect server database upgrade`). Migrating takes
    most of a first server start; live_prefect's `new_prefect_home` gives each fresh PREFECT_HOME a copy instead."""
    home = tmp_path_factory.mktemp("prefect-db-template")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_PROFILES_PATH": str(home / "profiles.toml")}
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    prefect = Path(sys.executable).parent / "prefect"
    subprocess.run([str(prefect), "server", "database", "upgrade", "-y"], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=300)
    assert (home / "prefect.db").is_file()
    return home / "prefect.db"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request."""

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve_dir():
    """Serve folders over HTTP on loopback: `serve_dir(path[, handler])` returns the base URL."""
    servers = []

    def start(directory: Path, handler: type[QuietHandler] = QuietHandler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()

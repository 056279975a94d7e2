"""One timed run per accelerator: a Prefect global concurrency limit of 1 slot per machine and GPU.

The inference task holds the slot while LoadGen runs, so two flow runs on one machine (two workers,
the nightly run and an on-demand one) never time each other. The limit is named after the machine
(`$ODBENCH_ACCELERATOR_HOST`, else the hostname: set it where the hostname is a container's or a pod's)
and the GPUs the process may use (`CUDA_VISIBLE_DEVICES`), and created on first use.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

HOST_ENV = "ODBENCH_ACCELERATOR_HOST"
WAIT_TIMEOUT_S = 6 * 3600  # a queued run gives up after this long rather than waiting forever


def slot_name() -> str:
    """`odbench-accelerator-<host>[-gpu<ids>]`: one limit per machine and visible GPU set."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    host = os.environ.get(HOST_ENV, "").strip() or socket.gethostname()
    name = f"odbench-accelerator-{host}" + (f"-gpu{gpus}" if gpus else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lower()


def _ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextlib.contextmanager
def exclusive_accelerator() -> Iterator[str]:
    """Hold this machine's accelerator slot (waiting for it) for the duration of the block."""
    name = slot_name()
    _ensure_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=WAIT_TIMEOUT_S, strict=True):
        yield name

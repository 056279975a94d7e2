"""The `sweep` flow: fan a matrix of detect runs out over a work pool's workers with `run_deployment`,
wait for all, and report each run's state. Start several workers on the pool to run entries in parallel;
they share the storage root, so each sample is fetched and preprocessed once (content-derived keys).

    python -m flows.sweep --matrix '[{"model_name": "retinanet"}, {"model_name": "ssd_resnet34"}]'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from flows.command import run_command, state_exit_code
from flows.matrix import DetectParameters, resolve_matrix

POLL_S = 2.0


@flow(name="sweep", flow_run_name="sweep-{deployment}", log_prints=True)
def sweep(
    matrix: list[DetectParameters] | None = None,
    matrix_block: str | None = None,
    deployment: str = "detect/onnx",
    storage_block: str | None = None,
    timeout_s: float = 6 * 3600,
) -> State:
    """Run every matrix entry as a flow run of a deployment, in parallel over the pool's workers.

    Args:
        matrix: The runs, each a set of detect's parameters; leave empty to use matrix_block.
        matrix_block: Name of a saved RegressionMatrix block holding the entries instead.
        deployment: The deployment that runs each entry, as `flow/deployment`.
        storage_block: Storage block for entries that name none (workers on several machines need a shared one).
        timeout_s: Give up waiting after this many seconds (the runs go on).
    """
    entries = resolve_matrix(matrix, matrix_block)
    runs = [run_deployment(deployment, parameters=_parameters(e, storage_block), timeout=0) for e in entries]
    get_run_logger().info("%d flow runs of %s scheduled: %s", len(runs), deployment, ", ".join(r.name for r in runs))
    finished = _wait(runs, timeout_s)
    rows = [{"flow_run": r.name, "id": str(r.id), "state": r.state.name if r.state else None,
             "parameters": json.dumps(_parameters(e, storage_block), sort_keys=True)}
            for r, e in zip(finished, entries)]
    create_table_artifact(rows, key="sweep-runs", description=f"the flow runs of a sweep over {deployment}")
    failed = [r for r in finished if not (r.state and r.state.is_completed())]
    if failed:
        return Failed(message=f"{len(failed)} of {len(finished)} runs did not complete: "
                      + ", ".join(f"{r.name} ({r.state.name if r.state else 'no state'})" for r in failed))
    return Completed(message=f"{len(finished)} runs of {deployment} completed")


def _parameters(entry: DetectParameters, storage_block: str | None) -> dict[str, Any]:
    """What the entry sets (the deployment's defaults apply to the rest), plus the shared storage."""
    params = entry.model_dump(exclude_unset=True)
    if storage_block and not params.get("storage_block") and not params.get("storage_url"):
        params["storage_block"] = storage_block
    return params


def _wait(runs: list[FlowRun], timeout_s: float) -> list[FlowRun]:
    """Poll until every run is final (or the timeout), then return them as the API has them."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            current = [client.read_flow_run(r.id) for r in runs]
            if all(r.state and r.state.is_final() for r in current) or time.monotonic() > deadline:
                return current
            time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=sweep.__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=json.loads, help="JSON list of detect parameter objects")
    parser.add_argument("--matrix_block")
    parser.add_argument("--deployment", default="detect/onnx")
    parser.add_argument("--storage_block")
    args = parser.parse_args(argv)
    return run_command(lambda: state_exit_code(sweep(**vars(args), return_state=True)))


if __name__ == "__main__":
    sys.exit(main())

"""The README's Prefect walk-through, for real: a local Prefect server, the work pool,
`prefect --no-prompt deploy --all`, process workers started outside the project folder, and runs of
both deployments through the CLI, read back through the API, the storage root and the UI.

One server (module fixture) serves every test here; each test starts the workers it needs.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import threading
from pathlib import Path

import pytest

from tests import browser
from tests.live_prefect import POOL, ROOT, UUID_RE, LiveStack
from tests.replay_model import build_replay_model

OUTPUT = ROOT / "test-output"  # screenshots kept for people (git-ignored)
REPLAY_N = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_db_template):
    """Server, pool and both deployments, as a user sets them up; the API client points at it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    live = LiveStack(tmp_path_factory.mktemp("e2e"), prefect_db_template)
    try:
        live.start_server()
        with temporary_settings(updates={PREFECT_API_URL: live.api_url, PREFECT_UI_URL: live.ui_url}):
            live.run("work-pool", "create", POOL, "--type", "process")
            live.run("--no-prompt", "deploy", "--all")
            yield live
    finally:
        live.stop()
        live.mark("server and workers stopped")


def _run_deployment(stack: LiveStack, name: str, *args: str) -> str:
    """`prefect deployment run NAME ...`; returns the new flow run's id."""
    out = stack.run("deployment", "run", name, *args)
    found = re.search(rf"UUID:\s*({UUID_RE})", out.stdout) or re.search(UUID_RE, out.stdout)
    assert found, stack.report(f"no flow run id in `prefect deployment run` output:\n{out.stdout}")
    return found.group(found.lastindex or 0)


def _artifact(client, key: str, flow_run_id: str | None = None):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    if flow_run_id:
        flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    found = client.read_artifacts(artifact_filter=flt)
    assert found, f"no artifact {key} (flow run {flow_run_id})"
    return found[0]


def test_deploy_all_registers_both_deployments_portably(stack):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        detect = client.read_deployment_by_name("detect/onnx")
        nightly = client.read_deployment_by_name("regression/nightly")
    crons = {(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules}
    assert ("30 1 * * *", "Europe/Amsterdam") in crons, nightly.schedules
    assert all(s.active and s.parameters.get("matrix") for s in nightly.schedules), nightly.schedules
    assert not detect.schedules
    for deployment in (detect, nightly):
        steps = json.dumps(deployment.pull_steps)
        assert "flows.project_dir.set_project_directory" in steps, steps
        for local in (str(ROOT), str(stack.tmp), "/tmp/"):
            assert local not in steps, f"{deployment.name}'s pull steps name {local}: {steps}"
        assert deployment.path is None or str(ROOT) not in deployment.path, deployment.path
    schema = detect.parameter_openapi_schema["properties"]
    assert set(schema["model_name"]["enum"]) == {"ssd_resnet34", "retinanet", "retinanet_coco", "retinanet_openimages"}
    assert all(prop.get("description") for prop in schema.values()), "a detect parameter lacks a description"


def test_a_wrong_parameter_is_rejected_before_a_run_exists(stack):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("detect/onnx")

        def runs() -> int:
            return sum(r.deployment_id == deployment.id for r in client.read_flow_runs())

        before = runs()
        done = stack.run("deployment", "run", "detect/onnx", "-p", "model_name=yolo", check=False)
        assert done.returncode != 0, done.stdout
        assert "yolo" in done.stdout + done.stderr and "retinanet" in done.stdout + done.stderr
        assert runs() == before


def test_detect_deployment_runs_named_after_what_it_runs(stack):
    from prefect.client.orchestration import get_client

    stack.start_worker("worker-detect")
    try:
        run_id = _run_deployment(stack, "detect/onnx", "-p", "model_name=retinanet", "-p", "model_url=standin",
                                 "-p", "dataset_url=synthetic", "-p", "loadgen_dataset_size=8")
        flow_run = stack.wait_for_flow_run(run_id)
    finally:
        stack.stop_process("worker-detect")
    assert flow_run.state.is_completed(), stack.report(f"{flow_run.state.name}: {flow_run.state.message}")
    assert flow_run.name == "retinanet-offline-accuracyonly-standin"
    result_files = [p for p in stack.storage_root.glob("runs/*/result.json")
                    if json.loads(p.read_text())["mode"] == "AccuracyOnly"]
    result = json.loads(result_files[-1].read_text())
    with get_client(sync_client=True) as client:
        summary = _artifact(client, "detect-retinanet-coco-offline-accuracyonly-standin-summary", run_id)
        assert f"{result['mAP']:.3f}" in summary.data and "STAND-IN" in summary.data
        _artifact(client, "detect-retinanet-coco-offline-accuracyonly-standin-metrics", run_id)


class _WebhookReceiver:
    """An HTTP endpoint on loopback that keeps every POSTed JSON body."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    receiver = _WebhookReceiver()
    yield receiver
    receiver.close()


def test_nightly_regression_catches_a_worse_model_and_alerts(stack, synthetic_dir, tmp_path, webhook):
    import time

    from odbench.history import HistoryStore
    from odbench.storage import Storage

    stack.python("-m", "flows.alerts", "--webhook_url", webhook.url)
    model = tmp_path / "served" / "detector.onnx"  # the "URL" the matrix names; replaced below
    model.parent.mkdir()
    model.write_bytes(build_replay_model(synthetic_dir, "retinanet_coco", REPLAY_N))
    entry = {"model_name": "retinanet", "model_url": str(model), "dataset_url": str(synthetic_dir),
             "loadgen_dataset_size": REPLAY_N, "loadgen_mode": "AccuracyOnly"}
    params = json.dumps({"matrix": [entry]})
    stack.start_worker("worker-nightly")
    try:
        runs = [stack.wait_for_flow_run(_run_deployment(stack, "regression/nightly", "--params", params))
                for _ in range(3)]
        assert [r.state.name for r in runs] == ["Completed"] * 3, stack.report(str([r.state for r in runs]))
        assert "no-baseline" in runs[0].state.message and "pass" in runs[2].state.message
        model.write_bytes(build_replay_model(synthetic_dir, "retinanet_coco", REPLAY_N, shift=0.5))
        worse = stack.wait_for_flow_run(_run_deployment(stack, "regression/nightly", "--params", params))
    finally:
        stack.stop_process("worker-nightly")

    records = HistoryStore(Storage(str(stack.storage_root))).records()
    assert [r.metrics.mAP for r in records] == [100.0, 100.0, 100.0, records[-1].metrics.mAP]
    assert records[-1].model_md5 != records[0].model_md5
    assert worse.state.name == "Failed", stack.report(f"{worse.state.name}: {worse.state.message}")
    message = worse.state.message
    for needle in ("mAP", f"{records[-1].metrics.mAP:g}", "100", "median of last 3", "0.5", records[-1].run_id,
                   "model md5"):
        assert needle in message, f"{needle!r} not in the failure message:\n{message}"

    deadline = time.monotonic() + 90
    while not any(worse.name in json.dumps(body) for body in webhook.received) and time.monotonic() < deadline:
        time.sleep(1)
    assert any(worse.name in json.dumps(b) and "Failed" in json.dumps(b) for b in webhook.received), \
        stack.report(f"no notification for {worse.name}; received {webhook.received}")
    _check_ui(stack, worse, records[-1])


def _check_ui(stack: LiveStack, flow_run, record) -> None:
    """The flow run's page, the trend artifact with the run's mAP, and the detect form, in Chromium."""
    from prefect.client.orchestration import get_client

    browser.require_chromium()
    OUTPUT.mkdir(exist_ok=True)
    page = browser.render_until(f"{stack.ui_url}/runs/flow-run/{flow_run.id}", flow_run.name, timeout_s=90,
                                screenshot=OUTPUT / "regression-flow-run.png")
    assert flow_run.name in browser.visible_text(page)
    with get_client(sync_client=True) as client:
        trend = next(a for a in client.read_artifacts() if a.flow_run_id == flow_run.id and a.key
                     and a.key.endswith("-trend"))
        detect = client.read_deployment_by_name("detect/onnx")
    mAP = f"{record.metrics.mAP:.3f}"
    assert mAP in trend.data
    dom = browser.render_until(f"{stack.ui_url}/artifacts/artifact/{trend.id}", mAP, timeout_s=90,
                               screenshot=OUTPUT / "regression-trend-artifact.png")
    assert mAP in browser.visible_text(dom) and 'src="data:image/png;base64,' in dom
    form = browser.visible_text(browser.render_until(f"{stack.ui_url}/deployments/deployment/{detect.id}/run",
                                                     "retinanet_openimages", timeout_s=90,
                                                     screenshot=OUTPUT / "detect-run-form.png"))
    assert "The detector: ssd_resnet34" in form and "retinanet_openimages" in form
    stack.mark(f"UI checked; screenshots in {OUTPUT}")


def _ran_by(worker_log: Path) -> set[str]:
    """The flow runs a worker submitted and the server did not abort (another worker had claimed them)."""
    text = worker_log.read_text(errors="replace")
    return set(re.findall(rf"submitting flow run '({UUID_RE})'", text)) - set(
        re.findall(rf"Aborted submission of flow run '({UUID_RE})'", text))


def test_sweep_over_two_workers_preprocesses_each_sample_once(stack, synthetic_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    root = stack.storage_root / "sweep"
    common = {"model_name": "retinanet", "model_url": "standin", "dataset_url": str(synthetic_dir),
              "loadgen_dataset_size": 8, "storage_url": str(root)}
    matrix = [{**common, "loadgen_scenario": scenario, "loadgen_mode": mode,
               **({"loadgen_count_override": 32} if mode == "PerformanceOnly" else {})}
              for scenario in ("Offline", "SingleStream") for mode in ("AccuracyOnly", "PerformanceOnly")]
    workers = [stack.start_worker(f"worker-sweep-{i}", "--limit", "1") for i in (1, 2)]
    try:
        stack.python("-m", "flows.sweep", "--matrix", json.dumps(matrix))
    finally:
        for i in (1, 2):
            stack.stop_process(f"worker-sweep-{i}")
    assert all(w.poll() is not None for w in workers)

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("storage_url") == str(root)]
        assert len(runs) == 4 and all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]
        preprocess = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="preprocess")))
    results = [json.loads(p.read_text()) for p in root.glob("runs/*/result.json")]
    spans = sorted((dt.datetime.fromisoformat(r["started"]).timestamp(), r["duration_s"]) for r in results)
    assert len(spans) == 4 and all(start + took <= following + 0.01  # `started` has ms resolution
                                   for (start, took), (following, _) in zip(spans, spans[1:])), \
        f"LoadGen runs overlapped on one machine: {spans}"  # the accelerator slot serialises them
    states = sorted(t.state.name for t in preprocess)
    assert states == ["Cached", "Cached", "Cached", "Completed"], states  # one run preprocessed, three reused
    ran = {i: _ran_by(Path(stack.logs[f"worker-sweep-{i}"])) & {str(r.id) for r in runs} for i in (1, 2)}
    assert ran[1] and ran[2] and not ran[1] & ran[2], ran  # each worker ran at least one, none ran one twice
    samples = sorted((root / "preprocessed").rglob("*.sample"))
    assert len(samples) == 8 and len({p.name for p in samples}) == 8, samples
    assert not list(root.rglob(".*partial*")), "a temporary file was left behind"

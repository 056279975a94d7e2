"""Clean-up: the inventory of a storage root, selection, the cache records a removal takes along, the
`cleanup` flow under a real Prefect API, and its command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, stored_files

from odbench.cache_keys import record_prefix
from odbench.inventory import CleanupPlan, inventory, plan_removal, remove, select
from odbench.storage import Storage

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
RUN_A = "20260101T000000Z-retinanet_coco-Offline-AccuracyOnly-abc123"
RUN_B = "20260102T000000Z-ssd_resnet34-Offline-PerformanceOnly-def456"
# rel path -> (size in bytes, age in days)
TREE = {
    "sources/aaa/instances_val2017.json": (10, 40),
    "sources/bbb/000000000001.jpg": (20, 5),
    "sources/.staging/0f0f-000000000002.jpg": (3, 1),
    "sources/.resume/" + "c" * 32 + ".part": (6, 1),  # a partial download a later fetch may resume
    "preprocessed/v2/800/a.npy": (100, 41),
    "preprocessed/v2/800/b.npy": (100, 40),
    "preprocessed/v2/1200/a.npy": (300, 2),
    "models/retinanet_coco/m1/retinanet.onnx": (50, 40),
    "models/ssd_resnet34/m2/ssd.onnx": (60, 3),
    "models/ssd_resnet34/m2/.ssd.onnx.partial-0a1b": (7, 1),
    "models/.staging/0e0e-ssd.onnx": (8, 1),  # a fetch's staged file: its folder names no model
    "models/.resume/" + "d" * 32 + ".part": (9, 1),
    "datasets/d1.json": (5, 40),
    "synthetic/seed-0-n-4/.synthetic.json": (2, 40),
    "synthetic/seed-0-n-4/val2017/000000000001.jpg": (8, 40),
    f"runs/{RUN_A}/result.json": (0, 40),  # size 0: the JSON body below is written instead
    f"runs/{RUN_A}/user.conf": (4, 40),
    f"runs/{RUN_B}/user.conf": (4, 3),  # no result.json: the model comes from the run id
    "runs/by-hand/result.json": (0, 3),
    "history/e1/results.jsonl": (9, 3),
    "prefect-results/odbench-download-" + "1" * 32: (11, 40),
    "prefect-results/odbench-download-" + "2" * 32: (11, 3),
    "prefect-results/odbench-preprocess-800-" + "3" * 32: (12, 40),
    "prefect-results/odbench-preprocess-1200-" + "4" * 32: (12, 2),
    "prefect-results/odbench-model-retinanet_coco-" + "5" * 32: (13, 40),
    "prefect-results/odbench-model-ssd_resnet34-" + "6" * 32: (13, 3),
    "prefect-results/odbench-inference-retinanet_coco-" + "7" * 32: (14, 40),
    "prefect-results/odbench-inference-ssd_resnet34-" + "8" * 32: (14, 3),
    "prefect-results/0123456789abcdef": (15, 3),  # another task's result, not odbench's
    "elsewhere/notes.txt": (1, 90),  # outside the layout: never listed, never removed
}
RESULTS = {f"runs/{RUN_A}/result.json": {"model_name": "retinanet_coco"},
           "runs/by-hand/result.json": {"model_name": "my_detector"}}


def _build(storage: Storage, set_times: bool = True) -> None:
    for rel, (size, age) in TREE.items():
        data = json.dumps(RESULTS[rel]).encode() if rel in RESULTS else b"x" * size
        storage.fs.makedirs(storage.path(rel).rsplit("/", 1)[0], exist_ok=True)
        storage.fs.pipe_file(storage.path(rel), data)
        if set_times:
            stamp = (NOW - dt.timedelta(days=age)).timestamp()
            os.utime(storage.path(rel), (stamp, stamp))


@pytest.fixture
def tree(storage) -> Storage:
    _build(storage)
    return storage


def _by_rel(items) -> dict:
    return {item.rel: item for item in items}


def test_inventory_groups_files_into_items_with_kinds_sizes_and_ages(tree):
    items = _by_rel(inventory(tree))
    assert {rel: item.kind for rel, item in items.items()} == {
        "sources/aaa": "sources", "sources/bbb": "sources", "sources/.staging": "sources",
        "sources/.resume": "sources", "models/.staging": "models", "models/.resume": "models",
        "preprocessed/v2/800": "preprocessed", "preprocessed/v2/1200": "preprocessed",
        "models/retinanet_coco/m1": "models", "models/ssd_resnet34/m2": "models",
        "datasets/d1.json": "datasets", "synthetic/seed-0-n-4": "synthetic",
        f"runs/{RUN_A}": "runs", f"runs/{RUN_B}": "runs", "runs/by-hand": "runs", "history/e1": "history",
        "prefect-results/odbench-download-*": "cache-records",
        "prefect-results/odbench-preprocess-800-*": "cache-records",
        "prefect-results/odbench-preprocess-1200-*": "cache-records",
        "prefect-results/odbench-model-retinanet_coco-*": "cache-records",
        "prefect-results/odbench-model-ssd_resnet34-*": "cache-records",
        "prefect-results/odbench-inference-retinanet_coco-*": "cache-records",
        "prefect-results/odbench-inference-ssd_resnet34-*": "cache-records",
        "prefect-results/0123456789abcdef": "cache-records",
    }
    res800 = items["preprocessed/v2/800"]
    assert (res800.resolution, res800.model, res800.files, res800.bytes) == (800, None, 2, 200)
    assert res800.modified == NOW - dt.timedelta(days=40)  # the newest file
    assert res800.age_days(NOW) == pytest.approx(40)
    assert (items["models/ssd_resnet34/m2"].model, items["models/ssd_resnet34/m2"].partial) == ("ssd_resnet34", 1)
    assert items["sources/.staging"].partial == 1 and items["sources/aaa"].partial == 0
    for leftover in ("sources/.resume", "models/.staging", "models/.resume"):  # one item each, no model named
        assert (items[leftover].files, items[leftover].partial, items[leftover].model) == (1, 1, None), leftover
    assert items[f"runs/{RUN_A}"].model == "retinanet_coco"  # from result.json
    assert items[f"runs/{RUN_B}"].model == "ssd_resnet34"  # from the run id
    assert items["runs/by-hand"].model == "my_detector"
    downloads = items["prefect-results/odbench-download-*"]
    assert downloads.files == 2 and downloads.bytes == 22 and len(downloads.paths) == 2
    assert items["prefect-results/odbench-preprocess-800-*"].resolution == 800
    assert items["prefect-results/odbench-inference-ssd_resnet34-*"].model == "ssd_resnet34"
    assert items["synthetic/seed-0-n-4"].files == 2  # its hidden marker file counts
    assert sum(item.files for item in items.values()) == len(TREE) - 1  # all but elsewhere/


def test_inventory_of_an_object_store_uses_its_listing_times():
    storage = Storage(f"memory://odbench-inventory-{uuid.uuid4().hex}")
    try:
        _build(storage, set_times=False)
        items = _by_rel(inventory(storage))
        assert items["preprocessed/v2/800"].bytes == 200 and items[f"runs/{RUN_B}"].model == "ssd_resnet34"
        assert all(abs(item.age_days()) < 0.01 for item in items.values())  # memory's "created", just now
    finally:
        storage.remove("")


def test_inventory_of_an_empty_root_is_empty(tmp_path):
    assert inventory(Storage(str(tmp_path / "nothing-here"))) == []


def test_select_filters_by_kind_model_resolution_and_age(tree):
    items = inventory(tree)
    rels = lambda **filters: sorted(item.rel for item in select(items, now=NOW, **filters))
    assert rels(kind="preprocessed", resolution=800) == ["preprocessed/v2/800"]
    assert rels(resolution=800) == ["prefect-results/odbench-preprocess-800-*", "preprocessed/v2/800"]
    assert rels(model="retinanet") == rels(model="retinanet_coco") == [  # the alias and the name
        "models/retinanet_coco/m1", "prefect-results/odbench-inference-retinanet_coco-*",
        "prefect-results/odbench-model-retinanet_coco-*", f"runs/{RUN_A}"]
    assert rels(kind="runs", model="ssd_resnet34") == [f"runs/{RUN_B}"]
    assert rels(kind="sources", older_than_days=30) == ["sources/aaa"]
    assert rels(kind="history", older_than_days=0) == ["history/e1"]
    assert len(rels()) == len(items)


def test_select_rejects_an_unknown_kind_and_a_negative_age(tree):
    with pytest.raises(ValueError, match="known kinds: sources, preprocessed, models"):
        select([], kind="images")
    with pytest.raises(ValueError, match="older_than_days must be >= 0"):
        select([], older_than_days=-1)


@pytest.mark.parametrize("filters, records", [
    ({"kind": "preprocessed", "resolution": 800}, ["odbench-preprocess-800-*"]),
    ({"kind": "preprocessed"}, ["odbench-preprocess-1200-*", "odbench-preprocess-800-*"]),
    ({"kind": "models", "model": "retinanet"}, ["odbench-model-retinanet_coco-*"]),
    ({"kind": "runs", "model": "ssd_resnet34"}, ["odbench-inference-ssd_resnet34-*"]),
    ({"kind": "runs", "model": "my_detector"}, []),
    ({"kind": "sources", "older_than_days": 30}, ["odbench-download-*"]),
    ({"kind": "datasets"}, ["odbench-download-*"]),
    ({"kind": "synthetic"}, ["odbench-download-*"]),
    ({"kind": "history"}, []),
    ({"kind": "cache-records", "model": "ssd_resnet34"}, []),  # the selection is the records themselves
])
def test_plan_takes_the_cache_records_that_point_at_the_selection(tree, filters, records):
    plan = plan_removal(tree, select(inventory(tree), now=NOW, **filters))
    assert sorted(item.rel for item in plan.records) == [f"prefect-results/{name}" for name in records]


def test_fetch_leftovers_take_no_cache_record(tree):
    """Staged files and partial downloads are pointed at by no record: removing them keeps every model record."""
    leftovers = [item for item in inventory(tree) if item.rel in ("models/.staging", "models/.resume")]
    plan = plan_removal(tree, leftovers)
    assert len(plan.items) == 2 and plan.records == () and plan.prefixes == ()


def test_a_run_of_unknown_model_takes_every_inference_record(tree):
    tree.remove(f"runs/{RUN_B}/user.conf")
    tree.write_bytes("runs/odd-name/user.conf", b"x")
    plan = plan_removal(tree, select(inventory(tree), kind="runs", now=NOW)[-1:])
    assert plan.items[0].rel == "runs/odd-name" and plan.prefixes == (record_prefix("inference"),)
    assert len(plan.records) == 2


def test_dry_run_removes_nothing_and_removal_takes_records_first(tree, monkeypatch):
    before = stored_files(tree)
    plan = plan_removal(tree, select(inventory(tree), kind="preprocessed", resolution=800))
    report = remove(tree, plan)
    assert report.dry_run and report.removed == () and stored_files(tree) == before
    assert (report.files, report.bytes) == (3, 212)

    calls: list[str] = []
    real_remove = tree.remove
    monkeypatch.setattr(tree, "remove", lambda rel: (calls.append(rel), real_remove(rel)))
    report = remove(tree, plan, dry_run=False)
    assert calls == ["prefect-results/odbench-preprocess-800-" + "3" * 32, "preprocessed/v2/800"]
    assert report.removed == tuple(calls)
    assert set(before) - set(stored_files(tree)) == {"preprocessed/v2/800/a.npy", "preprocessed/v2/800/b.npy",
                                                     calls[0]}


def test_removal_order_puts_every_record_before_any_file(tree):
    plan = plan_removal(tree, select(inventory(tree), model="retinanet", now=NOW))
    kinds = [item.kind for item in plan.ordered]
    assert kinds == sorted(kinds, key=lambda kind: kind != "cache-records") and "models" in kinds
    assert isinstance(plan, CleanupPlan) and plan.records == ()  # both record groups were selected themselves


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}
    return subprocess.run([sys.executable, "-m", "flows.cleanup", *args], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _cli_at_once(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Several independent commands run side by side (each one's start is seconds of imports)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cleanup", *args], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    return [subprocess.CompletedProcess(proc.args, proc.returncode, *out) for proc, out in zip(procs, outputs)]


def test_cli_lists_what_storage_holds(tree):
    """--list prints every kind with sizes and ages and removes nothing; bad options exit 1 or 2 saying why."""
    done, bad, unknown = _cli_at_once(["--storage_url", tree.url, "--list"],
                                      ["--storage_url", tree.url, "--list", "--older_than_days", "-1"],
                                      ["--storage_url", tree.url, "--kind", "images"])
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("sources", "preprocessed", "models", "datasets", "synthetic", "runs", "history", "cache-records"):
        assert f"\n{kind} " in done.stdout and f"\n{kind}: " in done.stdout
    assert "preprocessed/v2/800" in done.stdout and "MB" in done.stdout and "age days" in done.stdout
    assert "total: 24 item(s)" in done.stdout and "5 incomplete file(s)" in done.stdout
    assert stored_files(tree) and "elsewhere" not in done.stdout

    assert bad.returncode == 1 and "older_than_days must be >= 0" in bad.stderr
    assert unknown.returncode == 2 and "cache-records" in unknown.stderr


def test_cleanup_flow_removes_a_resolution_and_only_what_points_at_it(prefect_api, tmp_path, synthetic_dir):
    from prefect.artifacts import Artifact

    from flows.cleanup import cleanup
    from flows.detect import detect

    store = Storage(str(tmp_path / "store"))
    common = {"model_name": "retinanet", "model_url": "standin", "dataset_url": str(synthetic_dir),
              "loadgen_dataset_size": 8, "storage_url": store.url}
    detect(**common)
    before = stored_files(store)
    selection = {"kind": "preprocessed", "resolution": 800, "storage_url": store.url}

    dry = cleanup(**selection)
    assert dry["dry_run"] and dry["removed"] == [] and stored_files(store) == before
    assert [item["rel"] for item in dry["items"]] == [f"preprocessed/v{_version()}/800"]
    assert [item["rel"] for item in dry["records"]] == ["prefect-results/odbench-preprocess-800-*"]
    table = Artifact.get("cleanup-preprocessed")
    assert table.type == "table" and "would remove" in table.data

    done = cleanup(**selection, apply=True)
    gone = set(before) - set(stored_files(store))
    assert not done["dry_run"] and set(stored_files(store)) <= set(before)
    removed_prefixes = (f"preprocessed/v{_version()}/800/", "prefect-results/" + record_prefix("preprocess", 800))
    assert gone == {rel for rel in before if rel.startswith(removed_prefixes)}
    assert gone and {"sources", "models", "runs", "datasets"} <= {rel.split("/")[0] for rel in stored_files(store)}
    assert '"removed"' in Artifact.get("cleanup-preprocessed").data

    states = detect(**common)["task_states"]
    assert states["preprocess"] != "Cached"
    assert states["download"] == states["fetch-model"] == "Cached"


def test_apply_without_a_selection_is_refused(prefect_api, tree):
    from flows.cleanup import cleanup

    before = stored_files(tree)
    with pytest.raises(ValueError, match="would remove everything"):
        cleanup(apply=True, storage_url=tree.url)
    assert stored_files(tree) == before


def test_cli_dry_run_says_nothing_was_removed(prefect_api, tree):
    from prefect.settings import PREFECT_API_URL

    before = stored_files(tree)
    done = _cli(["--storage_url", tree.url, "--kind", "models", "--model_name", "retinanet"],
                PREFECT_API_URL=PREFECT_API_URL.value())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "models/retinanet_coco/m1" in done.stdout and "would remove" in done.stdout
    assert "prefect-results/odbench-model-retinanet_coco-*" in done.stdout
    assert done.stdout.strip().endswith("dry run: nothing removed; pass --apply")
    assert stored_files(tree) == before


def _version() -> int:
    from odbench.preprocess import PREPROCESS_VERSION

    return PREPROCESS_VERSION

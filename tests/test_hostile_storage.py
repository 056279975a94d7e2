"""Issue 6 against a shared storage root: nothing stored executes code, damaged files are recomputed,
a reused result says so, and credentials in URLs are written nowhere.

Real flows under the real Prefect test harness; the hostile records are written the way an attacker
with write access to `<root>/prefect-results` would write them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import pickle
import shutil
import uuid
from pathlib import Path

import prefect
import pytest

STEPS = ("download", "preprocess", "fetch-model", "inference")
RECORD_PREFIX = {"download": "odbench-download-", "preprocess": "odbench-preprocess-",
                 "fetch-model": "odbench-model-", "inference": "odbench-inference-"}


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the sentinel file exists iff a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _detect(store: Path, dataset_url: str, **overrides):
    """One real `detect` run; returns (its result dict, its flow run id)."""
    from flows.detect import detect

    kwargs = dict(model_name="retinanet", loadgen_dataset_size=4, model_url="standin", dataset_url=dataset_url,
                  storage_url=str(store)) | overrides
    state = detect(**kwargs, return_state=True)
    return state.result(), state.state_details.flow_run_id


def _record(store: Path, step: str) -> Path:
    (found,) = (store / "prefect-results").glob(RECORD_PREFIX[step] + "*")
    return found


def _prefect_record(serializer: dict, result: str) -> bytes:
    """A record in the layout Prefect 3 writes: metadata (naming its serializer) and result."""
    metadata = {"storage_key": None, "expiration": None, "serializer": serializer,
                "prefect_version": prefect.__version__, "storage_block_id": None}
    return json.dumps({"metadata": metadata, "result": result}).encode()


def _hostile_records(sentinel: Path, probe_dir: Path) -> dict[str, bytes]:
    """Records that run an attacker's code when Prefect reads them as it does by itself: one naming pickle,
    one naming compressed pickle, one naming Prefect's JSON serializer (whose decoder imports the module a
    record names: here a module that creates the sentinel on import), and raw pickle bytes (which Prefect
    hands to the task's own serializer when a record is not JSON)."""
    blob = pickle.dumps(_CreatesFile(sentinel))
    probe = f"odbench_probe_{uuid.uuid4().hex}"
    (probe_dir / f"{probe}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    return {
        "download": _prefect_record({"type": "pickle", "picklelib": "pickle"}, base64.encodebytes(blob).decode()),
        "preprocess": _prefect_record({"type": "json"}, json.dumps({"__class__": f"{probe}.Anything", "data": {}})),
        "fetch-model": _prefect_record({"type": "compressed/pickle"},
                                       base64.encodebytes(lzma.compress(base64.encodebytes(blob))).decode()),
        "inference": blob,
    }


def test_the_hostile_records_do_run_code_when_prefect_reads_them_unguarded(tmp_path, monkeypatch):
    """The records of the next tests are real attacks: Prefect's own reading runs them."""
    from prefect._internal.result_records import ResultRecord

    monkeypatch.syspath_prepend(str(tmp_path))
    sentinel = tmp_path / "pwned"
    for step, content in _hostile_records(sentinel, tmp_path).items():
        if step != "inference":  # raw bytes reach a serializer only through the task's own (ours: data)
            ResultRecord.deserialize(content)
            assert sentinel.exists(), step
            sentinel.unlink()


def _logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def _artifacts(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    assert {a.type for a in found} >= {"markdown", "table"}
    return "\n".join(f"{a.description}\n{json.dumps(a.data)}" for a in found)


def test_the_serializer_round_trips_our_types_and_refuses_every_other():
    from odbench.dataset import DatasetImage, DatasetManifest
    from tasks.serializer import RecordRefusedError, StoredTaskError, decode, encode

    image = DatasetImage(0, 7, "a.jpg", 640, 480, "f" * 32, "sources/x/a.jpg")
    manifest = DatasetManifest("folder http://user:secret@host/coco", "sources/y/ann.json", "e" * 32, (image,))
    back = decode(encode(manifest))
    assert back == DatasetManifest("folder http://***@host/coco", *list(vars(manifest).values())[1:])
    assert isinstance(back.images, tuple) and b"secret" not in encode(manifest)
    failure = decode(encode(ValueError("cannot read http://u:secret@h/x")))
    assert isinstance(failure, StoredTaskError) and "secret" not in str(failure) and "ValueError" in str(failure)
    for hostile in ('{"odbench": 1, "value": {"$type": "os.system", "fields": {}}}',
                    '{"odbench": 1, "value": {"$type": "StoredModel", "fields": {"command": "rm"}}}',
                    '{"odbench": 1, "value": {"__class__": "os.system"}}', "[1]", "\x80\x04"):
        with pytest.raises(RecordRefusedError):
            decode(hostile)
    with pytest.raises(TypeError, match="not a type odbench stores"):
        encode(Path("/tmp"))


def test_records_are_data_written_by_odbench_serializer(prefect_api, tmp_path, synthetic_dir):
    from tasks.serializer import SERIALIZER_TYPE, decode

    _detect(tmp_path / "store", str(synthetic_dir))
    for step in STEPS:
        record = json.loads(_record(tmp_path / "store", step).read_bytes())
        assert record["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
        assert type(decode(record["result"])).__name__ in {"DatasetManifest", "PreprocessedSet", "StoredModel",
                                                          "BenchmarkResult"}


def test_a_pickled_cache_record_is_never_loaded_and_the_step_recomputes(prefect_api, tmp_path, synthetic_dir,
                                                                       monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    store, sentinel = tmp_path / "store", tmp_path / "pwned"
    first, _ = _detect(store, str(synthetic_dir))
    for step, content in _hostile_records(sentinel, tmp_path).items():
        _record(store, step).write_bytes(content)

    again, run_id = _detect(store, str(synthetic_dir))
    assert not sentinel.exists()
    assert all(again["task_states"][step] == "Completed" for step in STEPS)
    assert again["mAP"] == first["mAP"] and again["run_id"] != first["run_id"]
    logs = _logs(run_id)
    for step in STEPS:
        assert f"ignoring cache record {_record(store, step).name}" in logs

    third, _ = _detect(store, str(synthetic_dir))  # the records written over the hostile ones are served
    assert all(third["task_states"][step] == "Cached" for step in STEPS) and not sentinel.exists()


def test_an_object_store_root_refuses_hostile_records_too(prefect_api, tmp_path, synthetic_dir, monkeypatch):
    import fsspec

    monkeypatch.syspath_prepend(str(tmp_path))
    root, sentinel = f"memory://odbench-{tmp_path.name}", tmp_path / "pwned"
    first, _ = _detect(root, str(synthetic_dir))
    fs = fsspec.filesystem("memory")
    records = fs.find(f"/odbench-{tmp_path.name}/prefect-results")
    assert len(records) == 4
    for record, content in zip(sorted(records), _hostile_records(sentinel, tmp_path).values()):
        fs.pipe_file(record, content)
    again, _ = _detect(root, str(synthetic_dir))
    assert not sentinel.exists() and all(again["task_states"][step] == "Completed" for step in STEPS)
    third, _ = _detect(root, str(synthetic_dir))
    assert all(third["task_states"][step] == "Cached" for step in STEPS)


@pytest.mark.parametrize("content", [b"\x00\x01garbage", b'{"metadata": {"serializer": {"type": "odbench-data"}}',
                                     b'{"metadata": {"serializer": {"type": "odbench-data"}}, "result": "[1]"}'])
def test_a_record_that_does_not_parse_is_ignored_and_recomputed(prefect_api, tmp_path, synthetic_dir, content):
    store = tmp_path / "store"
    _detect(store, str(synthetic_dir))
    _record(store, "download").write_bytes(content)
    _record(store, "inference").write_bytes(content)
    again, run_id = _detect(store, str(synthetic_dir))
    assert again["task_states"]["download"] == again["task_states"]["inference"] == "Completed"
    assert again["task_states"]["fetch-model"] == "Cached"
    assert f"ignoring cache record {_record(store, 'download').name}" in _logs(run_id)
    assert json.loads(_record(store, "download").read_bytes())["metadata"]["serializer"]["type"] == "odbench-data"


def test_a_corrupted_stored_model_is_removed_and_fetched_again(prefect_api, tmp_path, synthetic_dir):
    store = tmp_path / "store"
    first, _ = _detect(store, str(synthetic_dir))
    (model_file,) = (store / "models").rglob("*.onnx")
    good = model_file.read_bytes()
    model_file.write_bytes(b"overwritten by someone else")
    again, run_id = _detect(store, str(synthetic_dir))
    assert again["task_states"]["fetch-model"] == "Completed"  # recomputed, not INVALID_PROTOBUF
    assert model_file.read_bytes() == good and again["model_md5"] == first["model_md5"]
    assert f"{model_file.name} is missing" in _logs(run_id) or "has md5" in _logs(run_id)

    model_file.write_bytes(b"damaged again")  # inference itself checks what it loads
    perf, _ = _detect(store, str(synthetic_dir), loadgen_mode="PerformanceOnly", loadgen_count_override=8)
    assert perf["task_states"]["fetch-model"] == perf["task_states"]["inference"] == "Completed"
    assert model_file.read_bytes() == good


@pytest.mark.filterwarnings("ignore:Logger 'odbench.model_store' attempted to send logs")
def test_model_bytes_refuses_and_removes_a_damaged_model(storage):
    from odbench.model_store import CorruptModelError, fetch_model, model_bytes
    from odbench.models import get_spec

    model = fetch_model(get_spec("retinanet"), "standin", None, storage)
    path = Path(storage.path(model.rel))
    assert model_bytes(model, storage) == str(path)
    path.write_bytes(b"junk")
    with pytest.raises(CorruptModelError, match=f"{model.rel} has md5 .*, not {model.md5}"):
        model_bytes(model, storage)
    assert not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"junk")
    again = fetch_model(get_spec("retinanet"), "standin", None, storage)  # the core heals a damaged copy too
    assert again == model and hashlib.md5(path.read_bytes()).hexdigest() == model.md5


def test_a_reused_result_names_this_runs_source_and_the_run_it_reuses(prefect_api, tmp_path, synthetic_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(synthetic_dir, one)
    shutil.copytree(synthetic_dir, two)  # identical images (and stamps): the same detections
    store = tmp_path / "store"
    first, _ = _detect(store, str(one))
    second, run_id = _detect(store, str(two))
    assert second["task_states"]["inference"] == "Cached"
    assert str(two) in second["dataset"] and str(one) not in second["dataset"]
    assert first["reused_from"] is None and second["reused_from"] == first["run_dir"]
    assert second["started"] > first["started"]
    artifacts = _artifacts(run_id)
    assert str(two) in artifacts and "reused" in artifacts


def test_a_password_in_a_url_is_written_nowhere(prefect_api, tmp_path, synthetic_dir, serve_dir):
    from odbench.models import get_spec
    from odbench.standin import build_standin

    served = tmp_path / "served"
    shutil.copytree(synthetic_dir, served / "coco")
    (served / "model.onnx").write_bytes(build_standin(get_spec("retinanet"), seed=3))
    base = serve_dir(served).replace("http://", "http://user:secret@")
    store = tmp_path / "store"
    out, run_id = _detect(store, f"{base}/coco", model_url=f"{base}/model.onnx")
    assert "secret" not in json.dumps(out) and "127.0.0.1" in out["dataset"] and "***@" in out["model_source"]
    leaked = [str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and b"secret" in p.read_bytes()]
    assert leaked == []
    assert "secret" not in _logs(run_id) and "secret" not in _artifacts(run_id)

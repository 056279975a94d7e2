"""A bucket as the storage root, shared by two machines, with secret credentials: a real S3 endpoint
(moto's server on loopback, authentication on), real s3fs, real Prefect servers.

Each "machine" is its own `prefect server start` with a new PREFECT_HOME and database, its own HOME,
TMPDIR and default storage folder; the flow runs as the user runs it, `python -m flows.detect`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from live_prefect import LiveStack
from s3_server import S3Server

BUCKET = "odbench-shared"
PREFIX = "bench"
ROOT_URL = f"s3://{BUCKET}/{PREFIX}"
CACHED_TASKS = ("download", "preprocess", "fetch-model", "inference")
SAVE_BLOCK = """
import os, sys
from blocks.storage import BenchmarkStorage
name, url, endpoint = sys.argv[1:4]
BenchmarkStorage(url=url, options={"endpoint_url": endpoint},
                 secret_options={"key": os.environ["TEST_S3_KEY"], "secret": os.environ["TEST_S3_SECRET"]}
                 ).save(name, overwrite=True)
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port with one bucket; its accepted key and secret."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def _objects(s3: S3Server) -> dict[str, bytes]:
    """Every object of the bucket, by key, with its content."""
    client, found, token = s3.client(), {}, {}
    while True:
        page = client.list_objects_v2(Bucket=BUCKET, **token)
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        if not page.get("IsTruncated"):
            return found
        token = {"ContinuationToken": page["NextContinuationToken"]}


def _machine(tmp: Path, db_template: Path, key: str, secret: str) -> LiveStack:
    """A fresh Prefect server (launched, not yet waited for) and database, with HOME, TMPDIR and the
    default storage folder of its own."""
    stack = LiveStack(tmp, db_template)
    for folder in ("home", "tmp"):
        (tmp / folder).mkdir()
    stack.env.update(HOME=str(tmp / "home"), TMPDIR=str(tmp / "tmp"), TEST_S3_KEY=key, TEST_S3_SECRET=secret)
    stack.env.pop("XDG_CACHE_HOME", None)
    stack.launch_server()
    return stack


def _ready(stack: LiveStack, s3: S3Server, block: str) -> LiveStack:
    """The machine's server answering, and the storage block saved there by its administrator."""
    stack.wait_for_server()
    stack.python("-c", SAVE_BLOCK, block, ROOT_URL, s3.endpoint)
    return stack


def _detect(stack: LiveStack, synthetic_dir: Path, block: str, check: bool = True):
    return stack.python("-m", "flows.detect", "--model_name", "retinanet", "--model_url", "standin",
                        "--dataset_url", str(synthetic_dir), "--loadgen_dataset_size", "4",
                        "--storage_block", block, "--json", check=check)


def _api(stack: LiveStack, route: str, body: dict) -> list[dict]:
    """POST a filter to the machine's Prefect API; every page of the answer."""
    found: list[dict] = []
    while True:
        request = urllib.request.Request(f"{stack.api_url}/{route}", method="POST",
                                         data=json.dumps({**body, "offset": len(found), "limit": 200}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.loads(response.read())
        found += page
        if len(page) < 200:
            return found


def _block_versions(stack: LiveStack) -> dict[str, str]:
    """Each block document's id and last update: a saved block changes its `updated`."""
    return {d["id"]: d["updated"] for d in _api(stack, "block_documents/filter", {})}


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _assert_secret_nowhere(stack: LiveStack, s3: S3Server, outputs: str) -> None:
    """The secret access key in clear: not in block documents as the API serves them, logs, artifacts,
    the bucket (result.json, cache records, logs), the command's output, the server's log or database."""
    documents = _api(stack, "block_documents/filter", {"include_secrets": False})
    places = {
        "block documents": json.dumps(documents),
        "logs": json.dumps(_api(stack, "logs/filter", {})),
        "artifacts": json.dumps(_api(stack, "artifacts/filter", {})),
        "the command's output": outputs,
        "the server's log": stack.logs["server"].read_text(errors="replace"),
        "the Prefect database": (stack.home / "prefect.db").read_bytes().decode("latin-1"),
    }
    places |= {f"s3://{BUCKET}/{key}": data.decode("latin-1") for key, data in _objects(s3).items()}
    for value in (s3.secret,):
        leaks = [where for where, text in places.items() if value in text]
        assert not leaks, f"the secret appears in clear in {leaks}"
    storage_docs = [d for d in documents if d["block_type"]["slug"] == "benchmark-storage"]
    assert storage_docs and all(d["data"]["secret_options"] == {"key": "********", "secret": "********"}
                                for d in storage_docs), storage_docs
    result_docs = [d for d in documents if d["block_type"]["slug"] == "odbench-remote-result-storage"]
    assert [d["data"]["basepath"] for d in result_docs] == [f"{ROOT_URL}/prefect-results"]
    assert result_docs[0]["data"]["secret_settings"] == {"key": "********", "secret": "********"}


def test_a_second_machine_with_the_same_block_reuses_what_the_bucket_holds(tmp_path, synthetic_dir, s3,
                                                                          prefect_db_template, request):
    """Machine A fills the bucket; machine B, with the same block, reuses all of it and writes nothing;
    wrong credentials fail fast; the secret is nowhere in clear. B's server starts while A works (its
    block is saved, and its flow runs, only after A has stopped)."""
    first = _machine(tmp_path / "machine-a", prefect_db_template, s3.key, s3.secret)
    second = _machine(tmp_path / "machine-b", prefect_db_template, s3.key, s3.secret)
    request.addfinalizer(second.stop)  # whatever fails before its own `finally`
    try:
        _ready(first, s3, "shared")
        saved = _block_versions(first)
        assert len(saved) == 2  # the storage block and, saved with it, its result-storage block
        done = _detect(first, synthetic_dir, "shared")
        result_a = json.loads(done.stdout.strip().splitlines()[-1])
        assert all(result_a["task_states"][t] == "Completed" for t in CACHED_TASKS), result_a["task_states"]
        assert _block_versions(first) == saved  # a run loads the result-storage block, saves no block
        _assert_secret_nowhere(first, s3, done.stdout + done.stderr)
        artifacts = json.dumps(_api(first, "artifacts/filter", {}))
        assert f"{ROOT_URL}/runs/{result_a['run_id']}" in artifacts  # the artifacts link into the bucket
    finally:
        first.stop()

    held = _objects(s3)
    keys = sorted(held)
    run_id = result_a["run_id"]
    assert result_a["run_dir"] == f"{ROOT_URL}/runs/{run_id}"
    for part in ("sources/", "preprocessed/", "models/retinanet_coco/", "datasets/", "prefect-results/"):
        assert any(k.startswith(f"{PREFIX}/{part}") for k in keys), (part, keys)
    for log in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "result.json"):
        assert f"{PREFIX}/runs/{run_id}/{log}" in held
    assert json.loads(held[f"{PREFIX}/runs/{run_id}/result.json"])["mAP"] == result_a["mAP"]
    assert not [k for k in keys if ".partial-" in k or "/.staging/" in k]  # uploads went straight to their names
    records = [json.loads(v) for k, v in held.items() if k.startswith(f"{PREFIX}/prefect-results/")]
    assert len(records) == 4 and all(r["metadata"]["serializer"] == {"type": "odbench-data"} for r in records)
    assert not _files_under(first.storage_root) and not _files_under(tmp_path / "machine-a" / "home")

    try:
        _ready(second, s3, "shared")
        done = _detect(second, synthetic_dir, "shared")
        result_b = json.loads(done.stdout.strip().splitlines()[-1])
        assert all(result_b["task_states"][t] == "Cached" for t in CACHED_TASKS), result_b["task_states"]
        assert result_b["mAP"] == result_a["mAP"] and result_b["reused_from"] == result_a["run_dir"]
        _assert_secret_nowhere(second, s3, done.stdout + done.stderr)

        # wrong credentials fail the run at once, naming the endpoint and the bucket (and not the secret)
        second.env["TEST_S3_SECRET"] = "not-the-secret-but-still-a-secret"
        second.python("-c", SAVE_BLOCK, "wrong", ROOT_URL, s3.endpoint)
        started = time.monotonic()
        failed = _detect(second, synthetic_dir, "wrong", check=False)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0 and time.monotonic() - started < 60
        assert s3.endpoint in output and repr(BUCKET) in output and "credentials were refused" in output, output
        assert "not-the-secret-but-still-a-secret" not in output
    finally:
        second.stop()
    assert sorted(_objects(s3)) == keys  # the reuse wrote nothing new to the bucket
    assert not _files_under(second.storage_root) and not _files_under(tmp_path / "machine-b" / "home")


def _storage(s3: S3Server, url: str = ROOT_URL, secret: str | None = None):
    from blocks.storage import BenchmarkStorage

    return BenchmarkStorage(url=url, options={"endpoint_url": s3.endpoint},
                            secret_options={"key": s3.key, "secret": secret or s3.secret}).storage()


@pytest.mark.parametrize("case", ["wrong secret", "unknown key", "missing bucket"])
def test_wrong_credentials_or_a_missing_bucket_fail_fast_naming_endpoint_and_bucket(s3, case):
    from blocks.storage import BenchmarkStorage
    from odbench.storage import StorageAccessError

    secret, key, bucket = "wrong-secret-0123", s3.key, BUCKET
    if case == "unknown key":
        key, secret = "AKIAUNKNOWNKEY000000", s3.secret
    elif case == "missing bucket":
        secret, bucket = s3.secret, "no-such-bucket"
    block = BenchmarkStorage(url=f"s3://{bucket}/{PREFIX}", options={"endpoint_url": s3.endpoint},
                             secret_options={"key": key, "secret": secret})
    started = time.monotonic()
    with pytest.raises(StorageAccessError) as err:
        block.storage()
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert s3.endpoint in message and repr(bucket) in message, message
    assert ("does not exist" if case == "missing bucket" else "credentials were refused") in message
    assert secret not in message and secret not in repr(block)
    _storage(s3)  # the right credentials and bucket pass the same check


def test_credentials_are_refused_in_the_clear_options():
    from pydantic import ValidationError

    from blocks.storage import BenchmarkStorage

    with pytest.raises(ValidationError, match="move them into secret_options"):
        BenchmarkStorage(url=ROOT_URL, options={"endpoint_url": "http://x", "secret": "abcd"})
    with pytest.raises(ValidationError, match="aws_secret_access_key"):
        BenchmarkStorage(url=ROOT_URL, options={"client_kwargs": {"aws_secret_access_key": "abcd"}})


class S3Calls:
    """The S3 operations an s3fs filesystem sends, counted by botocore's own event hook."""

    def __init__(self, fs) -> None:
        fs.connect()
        self.names: list[str] = []
        fs.s3.meta.events.register("before-call.s3", self._seen)

    def _seen(self, model, **_) -> None:
        self.names.append(model.name)

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


def test_writes_are_single_uploads_and_missing_files_cost_one_listing_per_folder(s3):
    storage = _storage(s3, f"s3://{BUCKET}/unit-{time.time_ns()}")
    calls = S3Calls(storage.fs)
    storage.write_bytes("a/one.json", b"{}")
    assert calls.take() == ["PutObject"]
    with storage.atomic_writer("a/two.bin") as handle:
        handle.write(b"x" * 1000)
    assert calls.take() == ["PutObject"]  # no temporary object, copy or delete
    with pytest.raises(RuntimeError), storage.atomic_writer("a/three.bin") as handle:
        handle.write(b"partial")
        raise RuntimeError("interrupted")
    assert calls.take() == [] and not storage.exists("a/three.bin")

    for folder in ("p", "q", "r"):
        for i in range(10):
            storage.write_bytes(f"{folder}/{i}.sample", b"s")
    storage.remove("q/3.sample")
    storage.remove("r/7.sample")
    calls.take()
    wanted = [f"{folder}/{i}.sample" for folder in ("p", "q", "r") for i in range(10)]
    assert storage.missing(wanted) == ["q/3.sample", "r/7.sample"]
    assert calls.take() == ["ListObjectsV2"] * 3  # 30 files, 3 folders: 3 requests, no HEAD per file
    assert storage.missing(["gone/0.sample", "gone/1.sample"]) == ["gone/0.sample", "gone/1.sample"]
    assert set(calls.take()) == {"ListObjectsV2"}  # a folder that is gone: s3fs lists its parent too


def test_the_inference_key_follows_the_providers_that_will_run():
    import onnxruntime

    from odbench.backend import _gpu_present
    from tasks.inference import _engine

    if _gpu_present() or "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu on a machine without a GPU")
    # auto runs on the CPU here, so it shares the CPU's key; CUDA asked for explicitly is another key,
    # although the available providers (the old key) are the same for all three
    assert _engine("auto") == _engine("cpu") != _engine("cuda")
    assert _engine("cpu")[1] == ("CPUExecutionProvider",)

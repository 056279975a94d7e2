"""Real sources against a loopback HTTP server (tests/http_server.py) that counts the bytes it sends:
Range reads of archive members, resumed transfers, retries, wrong bytes, mirrors, and the flow's mAP.

The image archive is the shared real mini set (80 COCO images, ~12 MB; the synthetic set where it is
absent) padded with 1000 members of 96 KiB of random bytes (`val2017/padding/NNNN.bin`, listed by no
annotation) to ~110 MB, so that 5% of it (~5.5 MB) is well above what 20 images weigh (~3 MB): the
official archive has 5000 images, so its central directory is bigger too, as here."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MINI, stored_files
from http_server import LoopbackServer

from odbench.dataset import ArchiveSource, FolderSource, ingest
from odbench.fetch import ChecksumMismatchError, MirrorsFailedError, fetch
from odbench.remote_zip import MemberCorruptError
from odbench.storage import Storage
from odbench.synthetic import ANNOTATIONS_MEMBER, pack_archives

PADDING_MEMBERS, PADDING_BYTES = 1000, 96 << 10


@pytest.fixture(scope="session")
def dataset_dir(request) -> Path:
    """The real mini set where present, else the synthetic set (said in the test's output)."""
    if (MINI / ANNOTATIONS_MEMBER).exists():
        return MINI
    print("the real mini set is absent: using the synthetic set")
    return request.getfixturevalue("synthetic_dir")


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, dataset_dir) -> tuple[Path, str, str]:
    """A folder with the two official archive layouts, the image archive padded; their md5s."""
    folder = tmp_path_factory.mktemp("mirror")
    pack = pack_archives(dataset_dir, folder)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(pack.images_zip, "a") as archive:
        for i in range(PADDING_MEMBERS):
            archive.writestr(zipfile.ZipInfo(f"val2017/padding/{i:04d}.bin", (2017, 9, 1, 0, 0, 0)),
                             rng.bytes(PADDING_BYTES))
    return folder, hashlib.md5(pack.images_zip.read_bytes()).hexdigest(), pack.annotations_md5


@pytest.fixture
def server(mirror):
    served = LoopbackServer(mirror[0])
    yield served
    served.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("ODBENCH_RETRY_DELAY_S", "0.05")


def archives(mirror, *bases: str) -> ArchiveSource:
    return ArchiveSource(tuple(f"{b}/val2017.zip" for b in bases), mirror[1],
                         tuple(f"{b}/annotations_trainval2017.zip" for b in bases), mirror[2])


def images_zip_size(mirror) -> int:
    return (mirror[0] / "val2017.zip").stat().st_size


def image_bytes(dataset_dir: Path, manifest) -> int:
    return sum((dataset_dir / "val2017" / im.file_name).stat().st_size for im in manifest.images)


def test_first_20_reads_under_5_percent_and_more_images_read_only_the_new_ones(tmp_path, mirror, server,
                                                                                 dataset_dir, caplog):
    storage = Storage(str(tmp_path / "s"))
    caplog.set_level(logging.INFO, logger="odbench")
    first = ingest(archives(mirror, server.url), 20, storage)
    sent = server.counters.sent
    total = images_zip_size(mirror) + (mirror[0] / "annotations_trainval2017.zip").stat().st_size
    print(f"first 20: server sent {sent} bytes of {total} ({100 * sent / total:.2f}%); the 20 images are "
          f"{image_bytes(dataset_dir, first)} bytes")
    assert sent < 0.05 * images_zip_size(mirror)
    assert first.digest == ingest(FolderSource(str(dataset_dir)), 20, Storage(str(tmp_path / "f"))).digest
    assert "The archive's md5 is not checked" in caplog.text and "CRC-32" in caplog.text
    assert not any(p.endswith(".zip") for p in stored_files(storage))

    server.counters.reset()
    more = ingest(archives(mirror, server.url), 30, storage)
    new = image_bytes(dataset_dir, more) - image_bytes(dataset_dir, first)
    print(f"first 30 after first 20: server sent {server.counters.sent} bytes; the 10 new images are {new} bytes")
    assert more.images[:20] == first.images
    assert server.counters.sent < new + 600_000  # the new members, plus the central directories again
    server.counters.reset()
    assert ingest(archives(mirror, server.url), 30, storage) == more
    assert server.counters.sent == 0  # every member is stored: nothing is read


def test_a_server_refusing_range_gives_the_whole_archive_once_verified_and_reused(tmp_path, mirror, server,
                                                                                   dataset_dir):
    server.behaviour.ranges = False
    storage = Storage(str(tmp_path / "s"))
    manifest = ingest(archives(mirror, server.url), 20, storage)
    print(f"Range refused: server sent {server.counters.sent} bytes for a {images_zip_size(mirror)}-byte archive")
    assert manifest.digest == ingest(FolderSource(str(dataset_dir)), 20, Storage(str(tmp_path / "f"))).digest
    assert f"sources/{mirror[1]}/val2017.zip" in stored_files(storage)
    server.counters.reset()
    ingest(archives(mirror, server.url), 30, storage)
    assert server.counters.sent == 0  # the stored, verified archive is reused


def test_an_interrupted_transfer_resumes_and_resends_under_10_percent(tmp_path, mirror, server):
    size = images_zip_size(mirror)
    server.behaviour.drops, server.behaviour.drop_after = 1, size // 2
    stored = fetch(f"{server.url}/val2017.zip", Storage(str(tmp_path / "s")), "sources", "val2017.zip", mirror[1])
    resent = server.counters.sent - size
    print(f"dropped at {size // 2} of {size} bytes: server sent {server.counters.sent} in all, {resent} again "
          f"({100 * resent / size:.2f}%); requests {[r[2] for r in server.counters.requests if r[0] == 'GET']}")
    assert stored.md5 == mirror[1] and 0 <= resent < 0.10 * size
    resumed_at = [int(r[2][6:-1]) for r in server.counters.requests if r[2].startswith("bytes=")]
    assert len(resumed_at) == 1 and 0.4 * size < resumed_at[0] <= size // 2  # what arrived before the drop


def test_without_range_an_interrupted_transfer_starts_over_and_is_verified(tmp_path, mirror, server):
    size = images_zip_size(mirror)
    server.behaviour.ranges, server.behaviour.drops, server.behaviour.drop_after = False, 1, size // 2
    stored = fetch(f"{server.url}/val2017.zip", Storage(str(tmp_path / "s")), "sources", "val2017.zip", mirror[1])
    print(f"no Range, dropped at half: server sent {server.counters.sent} bytes for {size}")
    assert stored.md5 == mirror[1] and server.counters.sent >= size + size // 2


def test_a_partial_download_left_by_a_killed_run_is_resumed_and_a_wrong_one_is_not_trusted(tmp_path, mirror, server):
    from odbench.fetch import resume_path

    size, storage = images_zip_size(mirror), Storage(str(tmp_path / "s"))
    url = f"{server.url}/val2017.zip"
    part = resume_path(storage, "sources", url, mirror[1])
    part.write_bytes((mirror[0] / "val2017.zip").read_bytes()[: size // 2])  # what a killed run left
    assert fetch(url, storage, "sources", "val2017.zip", mirror[1]).md5 == mirror[1]
    assert server.counters.sent == size - size // 2 and not part.exists()

    other = Storage(str(tmp_path / "t"))
    part = resume_path(other, "sources", url, mirror[1])
    part.write_bytes(b"\0" * (size // 2))  # a damaged partial: resumed, then caught by the md5
    with pytest.raises(ChecksumMismatchError, match=mirror[1]):
        fetch(url, other, "sources", "val2017.zip", mirror[1])
    assert stored_files(other) == []


def test_transient_failures_are_retried_and_the_run_completes(tmp_path, mirror, server, dataset_dir, caplog):
    server.behaviour.failures = 2  # 503 twice
    caplog.set_level(logging.WARNING, logger="odbench")
    manifest = ingest(archives(mirror, server.url), 5, Storage(str(tmp_path / "s")))
    assert manifest.size == 5 and server.behaviour.failures == 0 and "failed" in caplog.text
    assert "attempt 2 of 4" in caplog.text
    server.behaviour.drops, server.behaviour.drop_after = 3, 100  # member reads cut short
    assert ingest(archives(mirror, server.url), 10, Storage(str(tmp_path / "t"))).size == 10


def test_wrong_bytes_fail_with_both_sums_and_leave_nothing(tmp_path, mirror, server):
    server.behaviour.corrupt = "val2017.zip"  # the images archive; the annotations archive is right
    storage = Storage(str(tmp_path / "s"))
    with pytest.raises(MemberCorruptError, match=r"CRC-32 [0-9a-f]{8} in the central directory, [0-9a-f]{8} of the"):
        ingest(archives(mirror, server.url), 20, storage)
    annotation_only = [f for f in stored_files(storage) if "instances_val2017" not in f
                       and "annotations_trainval2017" not in f]
    assert annotation_only == []  # the verified annotation member (and its index) only: no image, no partial
    server.behaviour.ranges = False
    whole = Storage(str(tmp_path / "whole"))
    with pytest.raises(ChecksumMismatchError, match=rf"expected {mirror[1]}, got [0-9a-f]{{32}}") as err:
        fetch(f"{server.url}/val2017.zip", whole, "sources", "val2017.zip", mirror[1])
    print(err.value)
    assert stored_files(whole) == []


def test_the_second_mirror_serves_when_the_first_fails_and_all_failing_names_each(tmp_path, mirror, server):
    dead = LoopbackServer(tmp_path)  # serves an empty folder: 404 for everything
    try:
        storage = Storage(str(tmp_path / "s"))
        assert ingest(archives(mirror, dead.url, server.url), 5, storage).size == 5
        stored = fetch([f"{dead.url}/val2017.zip", f"{server.url}/val2017.zip"], storage, "sources", "v.zip",
                       mirror[1])
        assert stored.md5 == mirror[1]
        dead_two = f"{dead.url}/other/val2017.zip"
        with pytest.raises(MirrorsFailedError) as err:
            fetch([f"{dead.url}/val2017.zip", dead_two], Storage(str(tmp_path / "t")), "sources", "v.zip", mirror[1])
        print(err.value)
        assert f"{dead.url}/val2017.zip" in str(err.value) and dead_two in str(err.value)
        assert "add a mirror" in str(err.value).lower() and "local copy" in str(err.value)
    finally:
        dead.close()


def test_the_flow_over_http_archives_scores_the_same_map_as_the_folder(prefect_api, tmp_path, mirror, server,
                                                                        dataset_dir, monkeypatch):
    from replay_model import build_replay_model

    from blocks.sources import SourceMirrors
    from flows.detect import detect

    model = tmp_path / "replay.onnx"
    model.write_bytes(build_replay_model(dataset_dir, "retinanet_coco", 20, shift=0.1))
    SourceMirrors(dataset_mirrors=[f"{server.url}/nowhere", server.url], images_md5=mirror[1],
                  annotations_md5=mirror[2]).save("test-mirrors", overwrite=True)
    # one attempt per request in the core, and both mirrors' first request fails (503): only Prefect's retry
    # of the download task (its condition: a transient failure) can complete the run
    monkeypatch.setenv("ODBENCH_FETCH_ATTEMPTS", "1")
    server.behaviour.failures = 4
    common = dict(model_name="retinanet", loadgen_dataset_size=20, model_url=str(model),
                  model_md5=hashlib.md5(model.read_bytes()).hexdigest())
    over_http = detect(**common, sources_block="test-mirrors", storage_url=str(tmp_path / "a"))
    folder = detect(**common, dataset_url=str(dataset_dir), storage_url=str(tmp_path / "b"))
    print(f"mAP over HTTP archives {over_http['mAP']}, from the folder {folder['mAP']}; server sent "
          f"{server.counters.sent} bytes of {images_zip_size(mirror)}")
    assert over_http["mAP"] == folder["mAP"] > 10 and server.behaviour.failures == 0
    assert server.counters.sent < 0.05 * images_zip_size(mirror)


def test_model_mirrors_in_order_and_the_mirror_parameters(tmp_path):
    import argparse

    from odbench.cli import add_param_arguments, params_from_args
    from odbench.model_store import fetch_model, fingerprint
    from odbench.models import get_spec
    from odbench.params import BenchmarkParams
    from odbench.standin import build_standin

    spec, folder = get_spec("retinanet_coco"), tmp_path / "models"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(build_standin(spec))
    md5 = hashlib.md5((folder / "m.onnx").read_bytes()).hexdigest()
    served = LoopbackServer(folder)
    try:
        gone, good = f"{served.url}/gone.onnx", f"{served.url}/m.onnx"
        model = fetch_model(spec, good, md5, Storage(str(tmp_path / "s")), mirrors=(gone,))
        assert model.md5 == md5 and [r[1] for r in served.counters.requests if r[0] == "GET"] == ["/gone.onnx",
                                                                                                "/m.onnx"]
        assert fingerprint(spec, good, md5, (gone,)) == fingerprint(spec, good, md5)  # content, not place
    finally:
        served.close()
    parser = argparse.ArgumentParser()
    add_param_arguments(parser)
    params = BenchmarkParams(**params_from_args(parser.parse_args(["--model_mirrors", gone, good])))
    assert params.model_mirrors == (gone, good) and params.dataset_mirrors is None
    with pytest.raises(ValueError, match="leave dataset_url unset"):
        BenchmarkParams(dataset_url="synthetic", dataset_mirrors=["http://m/coco"])

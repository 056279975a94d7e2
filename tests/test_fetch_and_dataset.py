"""Fetching sources into storage (file, plain path, HTTP on loopback, memory://) and ingesting COCO."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import stored_files

from odbench import dataset
from odbench.coco import DatasetTooSmallError
from odbench.dataset import ArchiveSource, FolderSource, SyntheticSource, ingest, parse_dataset_url
from odbench.fetch import ChecksumMismatchError, SourceUnavailableError, fetch
from odbench.storage import Storage
from odbench.synthetic import pack_archives


def _annotation_order(folder) -> list[int]:
    return [im["id"] for im in json.loads((folder / "annotations/instances_val2017.json").read_text())["images"]]


def test_fetch_verifies_md5_and_stores_by_content(tmp_path, storage, serve_dir):
    payload = b"x" * 3_000_000
    (tmp_path / "src").mkdir()
    (tmp_path / "src/blob.bin").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    for url in (str(tmp_path / "src/blob.bin"), f"file://{tmp_path}/src/blob.bin", f"{serve_dir(tmp_path / 'src')}/blob.bin"):
        stored = fetch(url, storage, "sources", "blob.bin", md5)
        assert stored.rel == f"sources/{md5}/blob.bin" and stored.size == len(payload)
        assert storage.read_bytes(stored.rel) == payload
    assert stored_files(storage) == [f"sources/{md5}/blob.bin"]


def test_md5_mismatch_names_url_and_both_sums_and_stores_nothing(tmp_path, storage, serve_dir):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/blob.bin").write_bytes(b"not what you expect")
    url = f"{serve_dir(tmp_path / 'src')}/blob.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(url, storage, "sources", "blob.bin", wrong)
    message = str(err.value)
    assert url in message and wrong in message and hashlib.md5(b"not what you expect").hexdigest() in message
    assert stored_files(storage) == []


def test_unreachable_source_names_the_url(tmp_path, storage, serve_dir):
    url = f"{serve_dir(tmp_path)}/missing.zip"
    with pytest.raises(SourceUnavailableError, match="missing.zip"):
        fetch(url, storage, "sources", "missing.zip")
    assert stored_files(storage) == []


def test_folder_source_takes_the_first_n_in_annotation_order(synthetic_dir, storage):
    manifest = ingest(FolderSource(str(synthetic_dir)), 12, storage)
    assert [im.id for im in manifest.images] == _annotation_order(synthetic_dir)[:12]
    assert [im.index for im in manifest.images] == list(range(12))
    assert sorted(im.id for im in manifest.images) != [im.id for im in manifest.images]
    for im in manifest.images:
        assert storage.read_bytes(im.rel) == (synthetic_dir / "val2017" / im.file_name).read_bytes()


def test_official_archive_layout_over_http_matches_folder_source(tmp_path, synthetic_dir, serve_dir):
    pack = pack_archives(synthetic_dir, tmp_path / "mirror")
    base = serve_dir(tmp_path / "mirror")
    source = ArchiveSource(f"{base}/val2017.zip", pack.images_md5, f"{base}/annotations_trainval2017.zip",
                           pack.annotations_md5)
    from_archives = ingest(source, 10, Storage(str(tmp_path / "a")))
    from_folder = ingest(FolderSource(str(synthetic_dir)), 10, Storage(str(tmp_path / "b")))
    assert from_archives.digest == from_folder.digest


def test_archive_md5_mismatch_fails_before_anything_is_stored(tmp_path, synthetic_dir, serve_dir):
    pack = pack_archives(synthetic_dir, tmp_path / "mirror")
    base = serve_dir(tmp_path / "mirror")
    storage = Storage(str(tmp_path / "s"))
    source = ArchiveSource(f"{base}/val2017.zip", pack.images_md5, f"{base}/annotations_trainval2017.zip", "f" * 32)
    with pytest.raises(ChecksumMismatchError, match=pack.annotations_md5):
        ingest(source, 5, storage)
    assert stored_files(storage) == []


def test_dataset_size_larger_than_dataset_names_both_numbers(synthetic_dir, storage):
    with pytest.raises(DatasetTooSmallError, match=r"loadgen_dataset_size=41 .* holds 40 images"):
        ingest(FolderSource(str(synthetic_dir)), 41, storage)


def test_memory_storage_and_fingerprints(synthetic_dir):
    storage = Storage("memory://odbench-test")
    manifest = ingest(FolderSource(str(synthetic_dir)), 5, storage)
    assert storage.exists(manifest.images[0].rel) and not storage.is_local
    folder = FolderSource(str(synthetic_dir))
    assert dataset.fingerprint(folder, 5) == dataset.fingerprint(folder, 5) != dataset.fingerprint(folder, 6)


def test_dataset_url_forms():
    assert parse_dataset_url(None, 20) == dataset.OFFICIAL_COCO_VAL2017
    assert parse_dataset_url("synthetic", 20) == SyntheticSource(num_images=40)
    assert parse_dataset_url("synthetic", 100) == SyntheticSource(num_images=100)
    assert parse_dataset_url("s3://bucket/coco", 20) == FolderSource("s3://bucket/coco")


def test_real_mini_set_ingests(mini_dir, storage):
    manifest = ingest(FolderSource(str(mini_dir)), 20, storage)
    assert [im.id for im in manifest.images] == _annotation_order(mini_dir)[:20]


def test_a_replaced_file_changes_its_signature_over_http(tmp_path, serve_dir):
    import os

    from odbench.fetch import has_change_stamp, info_signature, url_info

    (tmp_path / "m.onnx").write_bytes(b"a" * 100)
    url = f"{serve_dir(tmp_path)}/m.onnx"
    before = url_info(url)
    (tmp_path / "m.onnx").write_bytes(b"b" * 100)  # same size, new content, later mtime
    os.utime(tmp_path / "m.onnx", (os.path.getmtime(tmp_path / "m.onnx") + 5,) * 2)
    assert has_change_stamp(before) and info_signature(url_info(url)) != info_signature(before)


def test_a_coco_folder_served_over_http_is_the_same_dataset(tmp_path, synthetic_dir, serve_dir):
    url = f"{serve_dir(synthetic_dir)}"
    over_http = ingest(FolderSource(url), 8, Storage(str(tmp_path / "a")))
    local = ingest(FolderSource(str(synthetic_dir)), 8, Storage(str(tmp_path / "b")))
    assert over_http.digest == local.digest
    assert dataset.fingerprint(FolderSource(url), 8) == dataset.fingerprint(FolderSource(url), 8)

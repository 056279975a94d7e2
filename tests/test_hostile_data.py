"""Hostile data coming in (issue 6): paths confined, sizes bounded, stored samples verified, stale
temporaries removed, malformed annotations named. Real files, real archives, loopback HTTP servers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, QuietHandler, stored_files

from odbench import dataset
from odbench.coco import AnnotationError
from odbench.dataset import ArchiveSource, FolderSource, SyntheticSource, ingest, parse_dataset_url
from odbench.fetch import UnboundedSourceError, fetch, read_zip_members
from odbench.image_header import ImageHeaderError, read_header
from odbench.limits import LimitExceededError, Limits
from odbench.preprocess import (
    ImageSizeMismatchError,
    SourceChangedError,
    decode_resize,
    load_sample,
    preprocess,
    preprocessed_path,
)
from odbench.storage import Storage, UnsafePathError, safe_rel
from odbench.synthetic import ANNOTATIONS_MEMBER, generate_dataset, pack_archives

RES = 64  # a small resolution keeps preprocessing fast; the checks do not depend on it
SECRET = b"DISTINCTIVE-SECRET-BYTES-never-to-be-copied-into-storage"
SENTINEL = b"the sentinel outside the storage root"
TWO_HOURS_AGO = time.time() - 7200


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_dataset(dest: Path, synthetic_dir: Path, count: int = 3, edit=None) -> Path:
    """A COCO-layout folder with the first `count` synthetic images; `edit(images)` alters their entries."""
    document = json.loads((synthetic_dir / ANNOTATIONS_MEMBER).read_text())
    document["images"] = document["images"][:count]
    (dest / "val2017").mkdir(parents=True)
    (dest / "annotations").mkdir()
    for entry in document["images"]:
        shutil.copy(synthetic_dir / "val2017" / entry["file_name"], dest / "val2017" / entry["file_name"])
    if edit:
        edit(document["images"])
    (dest / ANNOTATIONS_MEMBER).write_text(json.dumps(document))
    return dest


def contains(storage: Storage, needle: bytes) -> list[str]:
    root = Path(storage.root)
    return [rel for rel in stored_files(storage) if needle in (root / rel).read_bytes()]


class NoStampsHandler(QuietHandler):
    """A server that gives neither size nor change stamps (no Content-Length, Last-Modified, ETag)."""

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() not in ("content-length", "last-modified", "etag"):
            super().send_header(keyword, value)


class NaiveHandler(QuietHandler):
    """A careless server: joins the percent-decoded request path to its folder without normalizing."""

    def translate_path(self, path: str) -> str:
        from urllib.parse import unquote

        return os.path.join(self.directory, unquote(path.split("?", 1)[0]).lstrip("/"))


class EndlessHandler(QuietHandler):
    """An HTTP /dev/zero: zeros without end and without a declared size."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = bytes(1 << 16)
        try:
            while True:
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()


def png_of_size(width: int, height: int) -> bytes:
    """A valid, tiny 1-bit greyscale PNG claiming width x height pixels (decoding it takes w*h*3 bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes((width + 7) // 8)
    squeeze = zlib.compressobj(9)
    data = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def age(path: Path) -> Path:
    os.utime(path, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    return path


# ---------------------------------------------------------------------------------------------
# 1. path traversal
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x.jpg", "/etc/passwd", "a/../../x.jpg", "..\\..\\x.jpg", "C:/x.jpg", "",
                                 "a//b.jpg", "./x.jpg", "x\x00.jpg"])
def test_safe_rel_refuses_every_way_out(bad):
    with pytest.raises(UnsafePathError, match="refused"):
        safe_rel(bad)
    with pytest.raises(UnsafePathError):
        Storage("/tmp/never-created-root").path(bad or "sources//x")


def test_safe_rel_keeps_plain_relative_paths():
    assert safe_rel("sources/abc/000000001.jpg") == "sources/abc/000000001.jpg"
    assert safe_rel("a..b/x.y..jpg") == "a..b/x.y..jpg"


@pytest.mark.parametrize("over_http", [False, True], ids=["local-folder", "http-folder"])
def test_annotation_traversal_reads_nothing_outside_and_writes_nothing_outside(tmp_path, synthetic_dir, serve_dir,
                                                                                over_http):
    # old code: read  <data>/val2017/../../../sentinel.txt = tmp/a/sentinel.txt (the secret)
    #           wrote <root>/sources/<md5>/../../../sentinel.txt = tmp/sentinel.txt (the sentinel)
    (tmp_path / "sentinel.txt").write_bytes(SENTINEL)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/sentinel.txt").write_bytes(SECRET)
    folder = make_dataset(tmp_path / "a/b/data", synthetic_dir,
                          edit=lambda images: images[1].update(file_name="../../../sentinel.txt"))
    storage = Storage(str(tmp_path / "storage"))
    url = serve_dir(folder) if over_http else str(folder)
    with pytest.raises(AnnotationError, match=r"images\[1\] \(id \d+\): file_name '../../../sentinel.txt' refused"):
        ingest(FolderSource(url), 3, storage)
    assert (tmp_path / "sentinel.txt").read_bytes() == SENTINEL
    assert contains(storage, SECRET) == [] and contains(storage, SENTINEL) == []


def test_a_percent_encoded_way_up_stays_a_file_name_on_a_careless_server(tmp_path, synthetic_dir, serve_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/secret.jpg").write_bytes(SECRET)
    folder = make_dataset(tmp_path / "a/b", synthetic_dir,
                          edit=lambda images: images[0].update(file_name="..%2f..%2fsecret.jpg"))
    storage = Storage(str(tmp_path / "storage"))
    with pytest.raises(OSError, match="secret.jpg"):  # the server has no file of that literal name
        ingest(FolderSource(serve_dir(folder, NaiveHandler)), 3, storage)
    assert contains(storage, SECRET) == []


def test_a_symlink_out_of_a_local_dataset_folder_is_refused(tmp_path, synthetic_dir):
    (tmp_path / "secret.jpg").write_bytes(SECRET)
    folder = make_dataset(tmp_path / "data", synthetic_dir)
    first = json.loads((folder / ANNOTATIONS_MEMBER).read_text())["images"][0]
    (folder / "val2017" / first["file_name"]).unlink()
    (folder / "val2017" / first["file_name"]).symlink_to(tmp_path / "secret.jpg")
    storage = Storage(str(tmp_path / "storage"))
    with pytest.raises(UnsafePathError, match=rf"images\[0\] \(id {first['id']}\).*outside the dataset folder"):
        ingest(FolderSource(str(folder)), 3, storage)
    assert contains(storage, SECRET) == []


def test_traversal_through_the_archive_layout_is_refused(tmp_path, synthetic_dir, serve_dir):
    (tmp_path / "sentinel.txt").write_bytes(SENTINEL)
    folder = make_dataset(tmp_path / "data", synthetic_dir,
                          edit=lambda images: images[0].update(file_name="../../../sentinel.txt"))
    pack = pack_archives(folder, tmp_path / "mirror")
    with zipfile.ZipFile(pack.images_zip, "a") as archive:  # the member the annotation points at
        archive.writestr("val2017/../../../sentinel.txt", b"overwritten by the archive")
    images_md5 = hashlib.md5(pack.images_zip.read_bytes()).hexdigest()
    base = serve_dir(tmp_path / "mirror")
    storage = Storage(str(tmp_path / "storage"))
    source = ArchiveSource(f"{base}/val2017.zip", images_md5, f"{base}/annotations_trainval2017.zip",
                           pack.annotations_md5)
    with pytest.raises(AnnotationError, match=r"images\[0\] \(id \d+\): file_name '../../../sentinel.txt' refused"):
        ingest(source, 3, storage)
    stored_zip = fetch(f"{base}/val2017.zip", storage, "sources", "val2017.zip", images_md5)
    with pytest.raises(UnsafePathError, match=r"member .*'val2017/../../../sentinel.txt' refused"):
        read_zip_members(storage, stored_zip.rel, ["val2017/../../../sentinel.txt"])
    with pytest.raises(UnsafePathError, match="'/etc/passwd' refused: it is absolute"):
        read_zip_members(storage, stored_zip.rel, ["/etc/passwd"])
    assert (tmp_path / "sentinel.txt").read_bytes() == SENTINEL


def test_a_fetched_file_name_cannot_leave_the_storage_root(tmp_path, storage):
    (tmp_path / "blob").write_bytes(b"payload")
    for name in ("../../../escaped", "/etc/escaped", "a/../../escaped"):
        with pytest.raises(UnsafePathError, match="refused"):
            fetch(str(tmp_path / "blob"), storage, "sources", name)
    with pytest.raises(ValueError, match="not 32 hex digits"):
        fetch(str(tmp_path / "blob"), storage, "sources", "blob", "../../x")
    assert not list(tmp_path.rglob("escaped")) and stored_files(storage) == []


# ---------------------------------------------------------------------------------------------
# 3. limits
# ---------------------------------------------------------------------------------------------


def test_limits_read_the_environment_and_name_the_variable():
    assert Limits.from_env({}) == Limits()
    assert Limits.from_env({"ODBENCH_MAX_MODEL_BYTES": "1_000"}).max_model_bytes == 1000
    with pytest.raises(ValueError, match="ODBENCH_MAX_IMAGE_PIXELS='lots' is not a positive integer"):
        Limits.from_env({"ODBENCH_MAX_IMAGE_PIXELS": "lots"})
    err = LimitExceededError("max_synthetic_images", 50000, 5000, "x")
    assert "synthetic dataset size 50000 images exceeds the limit of 5000 images (ODBENCH_MAX_SYNTHETIC_IMAGES)" \
        in str(err) and "ODBENCH_MAX_SYNTHETIC_IMAGES=50000" in str(err)


def test_dev_zero_as_a_model_fails_at_once_naming_the_limit_and_leaves_no_partial(storage):
    started = time.monotonic()
    with pytest.raises(UnboundedSourceError, match=r"/dev/zero is not a regular file.*ODBENCH_MAX_MODEL_BYTES"):
        fetch("/dev/zero", storage, "models/retinanet_coco", "zero.onnx")
    assert time.monotonic() - started < 2 and stored_files(storage) == []


def test_an_endless_http_model_stops_at_the_limit_and_leaves_no_partial(tmp_path, storage, serve_dir, monkeypatch):
    monkeypatch.setenv("ODBENCH_MAX_MODEL_BYTES", str(1 << 20))
    url = f"{serve_dir(tmp_path, EndlessHandler)}/model.onnx"
    with pytest.raises(LimitExceededError, match=r"model file size \d+ bytes exceeds the limit of 1048576 bytes "
                                                 r"\(ODBENCH_MAX_MODEL_BYTES\)"):
        fetch(url, storage, "models/retinanet_coco", "model.onnx")
    assert stored_files(storage) == []


def test_a_file_declaring_a_size_above_the_limit_is_refused_before_reading(tmp_path, storage, monkeypatch):
    monkeypatch.setenv("ODBENCH_MAX_FETCH_BYTES", "1000")
    with open(tmp_path / "sparse.zip", "wb") as handle:
        handle.truncate(5000)
    with pytest.raises(LimitExceededError, match="fetched file size 5000 bytes exceeds the limit of 1000 bytes"):
        fetch(str(tmp_path / "sparse.zip"), storage, "sources", "sparse.zip")
    assert stored_files(storage) == []


def test_the_cli_with_dev_zero_as_model_fails_naming_the_limit(tmp_path, synthetic_dir):
    storage_dir = tmp_path / "s"
    done = subprocess.run(
        [sys.executable, "-m", "odbench", "--model_name", "retinanet", "--model_url", "/dev/zero",
         "--dataset_url", str(synthetic_dir), "--loadgen_dataset_size", "2", "--storage_url", str(storage_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "ODBENCH_MAX_MODEL_BYTES" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not [p for p in storage_dir.rglob("*") if ".partial-" in p.name or (p.is_file() and "models" in p.parts)]


def test_a_synthetic_set_above_the_limit_fails_before_generating_anything(tmp_path, storage, monkeypatch):
    with pytest.raises(LimitExceededError, match="ODBENCH_MAX_SYNTHETIC_IMAGES"):
        parse_dataset_url("synthetic", 50000)
    with pytest.raises(LimitExceededError, match="synthetic dataset size 50000 images"):
        generate_dataset(tmp_path / "big", 50000)
    monkeypatch.setenv("ODBENCH_MAX_SYNTHETIC_IMAGES", "10")
    with pytest.raises(LimitExceededError, match="synthetic dataset size 20 images exceeds the limit of 10"):
        ingest(SyntheticSource(num_images=20), 5, storage)
    assert [p.name for p in tmp_path.iterdir()] in ([], ["storage"])  # no dataset, no temporary folder
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or ".tmp-" in p.name]


def test_a_20000_by_20000_png_is_refused_from_its_header(tmp_path, synthetic_dir, storage):
    huge = png_of_size(20000, 20000)
    assert len(huge) < 1 << 20 and read_header(huge).pixels == 400_000_000

    def swap(images):
        images[2].update(file_name="huge.png", width=20000, height=20000)

    folder = make_dataset(tmp_path / "data", synthetic_dir, edit=swap)
    (folder / "val2017/huge.png").write_bytes(huge)
    manifest = ingest(FolderSource(str(folder)), 3, storage)
    with pytest.raises(LimitExceededError, match=r"huge.png \(image id \d+\).*\(20000x20000\): image size "
                                                 r"400000000 pixels exceeds the limit of 50000000 pixels "
                                                 r"\(ODBENCH_MAX_IMAGE_PIXELS\)"):
        preprocess(manifest, RES, storage)


def test_an_image_whose_size_differs_from_its_annotation_is_refused(tmp_path, synthetic_dir, storage):
    folder = make_dataset(tmp_path / "data", synthetic_dir,
                          edit=lambda images: images[1].update(width=images[1]["width"] + 1))
    entry = json.loads((folder / ANNOTATIONS_MEMBER).read_text())["images"][1]
    manifest = ingest(FolderSource(str(folder)), 3, storage)
    real = f"{entry['width'] - 1}x{entry['height']}"
    with pytest.raises(ImageSizeMismatchError, match=rf"{entry['file_name']} .* is {real} pixels, but the annotation "
                                                     rf"file says {entry['width']}x{entry['height']}"):
        preprocess(manifest, RES, storage)


# ---------------------------------------------------------------------------------------------
# 4. stored samples verified
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path, synthetic_dir):
    storage = Storage(str(tmp_path / "storage"))
    manifest = ingest(FolderSource(str(synthetic_dir)), 3, storage)
    preprocess(manifest, RES, storage)
    return storage, manifest


def _fresh(image, synthetic_dir) -> np.ndarray:
    return decode_resize((synthetic_dir / "val2017" / image.file_name).read_bytes(), RES)


def test_a_sample_is_data_with_a_header_and_loads_verified(prepared, synthetic_dir):
    storage, manifest = prepared
    image = manifest.images[0]
    data = storage.read_bytes(preprocessed_path(RES, image.md5))
    header = json.loads(data.split(b"\n", 1)[0])
    assert header["jpeg_md5"] == image.md5 and header["resolution"] == RES and header["shape"] == [RES, RES, 3]
    assert np.array_equal(load_sample(storage, image, RES), _fresh(image, synthetic_dir))


def test_a_truncated_sample_is_removed_recomputed_and_named(prepared, synthetic_dir, caplog):
    storage, manifest = prepared
    image = manifest.images[1]
    path = Path(storage.path(preprocessed_path(RES, image.md5)))
    path.write_bytes(path.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, "odbench.preprocess"):
        array = load_sample(storage, image, RES)
    assert np.array_equal(array, _fresh(image, synthetic_dir))
    assert f"{image.md5}.sample" in caplog.text and "truncated" in caplog.text and "recomputing" in caplog.text
    assert np.array_equal(load_sample(storage, image, RES), array)  # the rewritten file is whole


def test_a_swapped_valid_sample_is_detected_and_recomputed(prepared, synthetic_dir, caplog):
    storage, manifest = prepared
    a, b = manifest.images[0], manifest.images[2]
    path_a = Path(storage.path(preprocessed_path(RES, a.md5)))
    path_a.write_bytes(Path(storage.path(preprocessed_path(RES, b.md5))).read_bytes())
    with caplog.at_level(logging.WARNING, "odbench.preprocess"):
        array = load_sample(storage, a, RES)
    assert np.array_equal(array, _fresh(a, synthetic_dir)) and not np.array_equal(array, _fresh(b, synthetic_dir))
    assert f"jpeg_md5 '{b.md5}' (expected '{a.md5}')" in caplog.text


def test_an_altered_pixel_and_a_pickle_are_refused(prepared, synthetic_dir):
    storage, manifest = prepared
    image = manifest.images[0]
    path = Path(storage.path(preprocessed_path(RES, image.md5)))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert np.array_equal(load_sample(storage, image, RES), _fresh(image, synthetic_dir))
    path.write_bytes(b"\x80\x04\x95cos\nsystem\n(S'touch /tmp/pwned'\ntR.")  # a pickle: never unpickled
    assert np.array_equal(load_sample(storage, image, RES), _fresh(image, synthetic_dir))


def test_a_stored_source_that_changed_is_removed_and_named(prepared):
    storage, manifest = prepared
    image = manifest.images[0]
    storage.remove(preprocessed_path(RES, image.md5))
    Path(storage.path(image.rel)).write_bytes(b"\xff\xd8 not the image")
    with pytest.raises(SourceChangedError, match=f"{image.file_name} .*the manifest says {image.md5}"):
        load_sample(storage, image, RES)
    assert not storage.exists(image.rel)


# ---------------------------------------------------------------------------------------------
# temporaries of interrupted steps
# ---------------------------------------------------------------------------------------------


def test_stale_temporaries_are_removed_by_the_next_run_fresh_ones_kept(tmp_path, synthetic_dir):
    storage = Storage(str(tmp_path / "storage"))
    root = Path(storage.root)
    stale = ["sources/.staging/.0a-x.jpg.partial-1", "sources/.staging/0b-y.jpg", "sources/ab/.x.jpg.partial-2",
             "datasets/.d.json.partial-3", "preprocessed/v3/64/.m.sample.partial-4"]
    fresh = ["sources/.staging/.0c-z.jpg.partial-5", "preprocessed/v3/64/.n.sample.partial-6"]
    for rel in stale + fresh:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"half")
    for rel in stale:
        age(root / rel)
    manifest = ingest(FolderSource(str(synthetic_dir)), 2, storage)
    assert not any((root / rel).exists() for rel in stale[:4]) and (root / stale[4]).exists()
    preprocess(manifest, RES, storage)
    assert not (root / stale[4]).exists() and all((root / rel).exists() for rel in fresh)


def test_a_temporary_whose_writer_is_gone_goes_after_minutes_a_live_writers_stays(tmp_path):
    from odbench.storage import HOST

    storage = Storage(str(tmp_path / "storage"))
    folder = Path(storage.path("datasets"))
    folder.mkdir(parents=True)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ten_minutes_ago = time.time() - 600
    gone = exited.stdout.strip()
    names = {"gone": f".d.json.partial-{HOST}~{gone}~abc", "alive": f".e.json.partial-{HOST}~{os.getpid()}~abc",
             "other-host": f".f.json.partial-elsewhere~{gone}~abc"}
    for name in names.values():
        (folder / name).write_bytes(b"half")
        os.utime(folder / name, (ten_minutes_ago, ten_minutes_ago))
    assert storage.remove_stale_temporaries("datasets") == [f"datasets/{names['gone']}"]
    with storage.atomic_writer("datasets/x.json") as handle:  # the writer's own name says who writes it
        handle.write(b"{}")
        assert [p.name for p in folder.glob(f".x.json.partial-{HOST}~{os.getpid()}~*")]


def test_a_stale_synthetic_temporary_folder_is_removed(tmp_path):
    left = tmp_path / ".set.tmp-999999-deadbeef"
    (left / "val2017").mkdir(parents=True)
    for path in (left / "val2017", left):
        age(path)
    generate_dataset(tmp_path / "set", 5)
    assert not left.exists() and (tmp_path / "set/val2017").is_dir()


# ---------------------------------------------------------------------------------------------
# 8. smaller items
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "  ", "file://"])
def test_an_empty_storage_url_is_a_clear_error(url):
    with pytest.raises(ValueError, match="is empty: pass a folder or fsspec URL"):
        Storage(url)


def test_the_cli_refuses_an_empty_storage_url_and_writes_nothing_here(tmp_path):
    here = tmp_path / "cwd"
    here.mkdir()
    done = subprocess.run([sys.executable, "-m", "odbench", "--storage_url", "", "--model_url", "standin",
                           "--dataset_url", "synthetic"], cwd=here, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and "storage_url '' is empty" in done.stderr, done.stderr[-2000:]
    assert list(here.iterdir()) == []


def test_a_zero_byte_image_names_the_file(tmp_path, synthetic_dir, storage):
    folder = make_dataset(tmp_path / "data", synthetic_dir)
    entry = json.loads((folder / ANNOTATIONS_MEMBER).read_text())["images"][2]
    (folder / "val2017" / entry["file_name"]).write_bytes(b"")
    manifest = ingest(FolderSource(str(folder)), 3, storage)
    with pytest.raises(ValueError, match=rf"{entry['file_name']} \(image id {entry['id']}\).*empty \(0 bytes\)"):
        preprocess(manifest, RES, storage)
    with pytest.raises(ImageHeaderError, match="not a JPEG or PNG"):
        read_header(b"GIF89a....")


@pytest.mark.parametrize(("edit", "says"), [
    (lambda doc: doc.update(images={"a": 1}), "images must be a list"),
    (lambda doc: doc["images"][1].pop("width"), r"images\[1\] \(id \d+\) lacks the field\(s\) width"),
    (lambda doc: doc["images"][0].pop("file_name"), r"images\[0\] \(id \d+\) lacks the field\(s\) file_name"),
    (lambda doc: doc["images"][2].pop("id"), r"images\[2\] lacks the field\(s\) id"),
    (lambda doc: doc["images"][1].update(height="480px"), r"images\[1\] \(id \d+\): field height must be a whole "
                                                          r"number >= 1, got '480px'"),
    (lambda doc: doc["images"][0].update(file_name=7), r"images\[0\] \(id \d+\): file_name 7 refused"),
    (lambda doc: doc["images"].append(3), r"images\[3\] is a int, not an object"),
    (lambda doc: doc["images"][2].update(id=doc["images"][0]["id"]), r"images\[2\] repeats id"),
    (lambda doc: doc.update(categories=None), "categories must be a list"),
])
def test_malformed_image_entries_name_the_entry_and_the_field(tmp_path, synthetic_dir, storage, edit, says):
    folder = make_dataset(tmp_path / "data", synthetic_dir)
    document = json.loads((folder / ANNOTATIONS_MEMBER).read_text())
    edit(document)
    (folder / ANNOTATIONS_MEMBER).write_text(json.dumps(document))
    with pytest.raises(AnnotationError, match=says):
        ingest(FolderSource(str(folder)), 3, storage)


def test_an_http_folder_without_change_stamps_warns_and_is_fetched_again(tmp_path, synthetic_dir, serve_dir, caplog):
    folder = make_dataset(tmp_path / "data", synthetic_dir)
    source = FolderSource(serve_dir(folder, NoStampsHandler))
    with caplog.at_level(logging.WARNING, "odbench.dataset"):
        first = dataset.fingerprint(source, 3)
    assert "cannot tell whether they changed" in caplog.text
    assert dataset.fingerprint(source, 3) != first
    stamped = FolderSource(serve_dir(folder))
    assert dataset.fingerprint(stamped, 3) == dataset.fingerprint(stamped, 3)
    assert ingest(source, 3, Storage(str(tmp_path / "s"))).size == 3


def test_credentials_in_a_folder_url_are_not_written(tmp_path, synthetic_dir, serve_dir):
    base = serve_dir(make_dataset(tmp_path / "data", synthetic_dir))
    url = base.replace("http://", "http://user:hunter2@")
    storage = Storage(str(tmp_path / "s"))
    manifest = ingest(FolderSource(url), 3, storage)
    assert "hunter2" not in manifest.source and contains(storage, b"hunter2") == []
    with pytest.raises(OSError) as err:
        ingest(FolderSource(url + "/missing"), 3, storage)
    assert "hunter2" not in str(err.value) and "***@" in str(err.value)

"""Tests for odbench.synthetic: determinism, COCO structure, image content, packing, reuse."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from odbench import synthetic
from odbench.synthetic import (
    ANNOTATIONS_MEMBER,
    COCO_CATEGORIES,
    MARKER_NAME,
    generate_dataset,
    pack_archives,
)

NUM_IMAGES = 24
UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")  # numpy 2 copy=
REAL_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco2017-val-mini"


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) keyed by its relative path."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _md5(path: Path) -> str:
    """Reference md5, computed independently of the module under test."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated dataset shared by the read-only tests."""
    return generate_dataset(tmp_path_factory.mktemp("syn") / "coco", num_images=NUM_IMAGES, seed=7)


@pytest.fixture(scope="module")
def document(dataset: Path) -> dict[str, Any]:
    """The parsed annotation file of the shared dataset."""
    return json.loads((dataset / ANNOTATIONS_MEMBER).read_text())


@pytest.fixture(scope="module")
def coco(dataset: Path) -> COCO:
    """The shared dataset's annotations loaded the way evaluators load them."""
    return COCO(str(dataset / ANNOTATIONS_MEMBER))


def test_same_seed_gives_identical_bytes_and_md5s(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", num_images=10, seed=3)
    second = generate_dataset(tmp_path / "b", num_images=10, seed=3)
    assert _tree_bytes(first) == _tree_bytes(second)
    pack_a, pack_b = pack_archives(first, tmp_path / "za"), pack_archives(second, tmp_path / "zb")
    assert pack_a.images_md5 == pack_b.images_md5
    assert pack_a.annotations_md5 == pack_b.annotations_md5


def test_different_seed_differs(tmp_path: Path) -> None:
    first = _tree_bytes(generate_dataset(tmp_path / "a", num_images=10, seed=3))
    second = _tree_bytes(generate_dataset(tmp_path / "b", num_images=10, seed=4))
    assert first[ANNOTATIONS_MEMBER] != second[ANNOTATIONS_MEMBER]
    assert set(first) != set(second)  # image ids (so file names) differ too


def test_category_table_is_the_real_one() -> None:
    assert [c.id for c in COCO_CATEGORIES] == sorted(set(range(1, 91)) - UNUSED_IDS)
    by_id = {c.id: (c.name, c.supercategory) for c in COCO_CATEGORIES}
    assert by_id[1] == ("person", "person")
    assert by_id[13] == ("stop sign", "outdoor")
    assert by_id[90] == ("toothbrush", "indoor")
    assert len({c.name for c in COCO_CATEGORIES}) == 80


def test_loads_with_pycocotools(coco: COCO, document: dict[str, Any]) -> None:
    assert sorted(coco.getCatIds()) == [c.id for c in COCO_CATEGORIES]
    assert len(coco.getImgIds()) == NUM_IMAGES
    assert set(document) == {"info", "licenses", "images", "annotations", "categories"}
    image_keys = {"id", "file_name", "width", "height", "license", "coco_url", "date_captured"}
    image_keys.add("flickr_url")
    assert all(set(image) == image_keys for image in document["images"])
    used = {a["category_id"] for a in document["annotations"]}
    assert len(used) >= 20 and used <= set(coco.getCatIds())


def test_images_order_is_shuffled(document: dict[str, Any]) -> None:
    ids = [image["id"] for image in document["images"]]
    names = [image["file_name"] for image in document["images"]]
    assert ids != sorted(ids) and names != sorted(names)


def test_files_match_declared_sizes_some_grayscale(dataset: Path, document: dict[str, Any]) -> None:
    channels = []
    for image in document["images"]:
        pixels = cv2.imread(str(dataset / "val2017" / image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels is not None and pixels.shape[:2] == (image["height"], image["width"])
        assert image["width"] != image["height"]
        channels.append(1 if pixels.ndim == 2 else pixels.shape[2])
    assert set(channels) == {1, 3}
    assert len(list((dataset / "val2017").iterdir())) == NUM_IMAGES


def test_boxes_lie_inside_their_images(coco: COCO) -> None:
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]


def test_masks_agree_with_boxes_and_areas(coco: COCO) -> None:
    for ann in coco.dataset["annotations"]:
        ys, xs = np.nonzero(coco.annToMask(ann))
        x, y, w, h = ann["bbox"]
        assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
        assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
        if ann["iscrowd"]:
            assert xs.size == ann["area"]
            assert (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1) == tuple(ann["bbox"])


def test_shapes_are_drawn_where_the_boxes_are(dataset: Path, coco: COCO) -> None:
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        image = coco.imgs[ann["image_id"]]
        pixels = cv2.imread(str(dataset / "val2017" / image["file_name"]), cv2.IMREAD_COLOR)
        pixels = pixels.astype(float)
        inside = coco.annToMask(ann).astype(bool)
        core = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if core.sum() >= 20:  # a filled shape is flat; the noisy background rarely is (~8%)
            values = pixels[core]
            flat = np.abs(values - np.median(values, axis=0)).max(axis=1) <= 10
            assert flat.mean() >= 0.5, (ann["id"], flat.mean())


def test_crowd_regions_and_empty_images_exist(coco: COCO, document: dict[str, Any]) -> None:
    crowds = [a for a in document["annotations"] if a["iscrowd"]]
    assert crowds and all(set(a["segmentation"]) == {"counts", "size"} for a in crowds)
    polygons = [a["segmentation"] for a in document["annotations"] if not a["iscrowd"]]
    assert polygons and all(isinstance(s, list) for s in polygons)
    for ann in crowds:
        image = coco.imgs[ann["image_id"]]
        assert ann["segmentation"]["size"] == [image["height"], image["width"]]
    assert any(not coco.getAnnIds(imgIds=[i]) for i in coco.getImgIds())


def test_pack_has_official_members_and_true_md5s(dataset: Path, tmp_path: Path) -> None:
    pack = pack_archives(dataset, tmp_path / "zips")
    names = sorted(p.name for p in (dataset / "val2017").iterdir())
    with zipfile.ZipFile(pack.images_zip) as archive:
        assert archive.namelist() == [f"val2017/{n}" for n in names]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert archive.read(f"val2017/{names[0]}") == (dataset / "val2017" / names[0]).read_bytes()
    with zipfile.ZipFile(pack.annotations_zip) as archive:
        assert archive.namelist() == [ANNOTATIONS_MEMBER]
        assert archive.read(ANNOTATIONS_MEMBER) == (dataset / ANNOTATIONS_MEMBER).read_bytes()
    assert pack.images_zip.name == "val2017.zip"
    assert pack.annotations_zip.name == "annotations_trainval2017.zip"
    assert pack.images_md5 == _md5(pack.images_zip)
    assert pack.annotations_md5 == _md5(pack.annotations_zip)
    again = pack_archives(dataset, tmp_path / "again")
    assert (again.images_md5, again.annotations_md5) == (pack.images_md5, pack.annotations_md5)


@pytest.mark.skipif(not REAL_MINI.is_dir(), reason=f"real COCO mini set not present at {REAL_MINI}")
def test_pack_real_mini_set(tmp_path: Path) -> None:
    pack = pack_archives(REAL_MINI, tmp_path)
    with zipfile.ZipFile(pack.images_zip) as archive:
        assert len(archive.namelist()) == len(list((REAL_MINI / "val2017").glob("*.jpg")))
        assert all(n.startswith("val2017/") and n.endswith(".jpg") for n in archive.namelist())
    with zipfile.ZipFile(pack.annotations_zip) as archive:
        assert archive.namelist() == [ANNOTATIONS_MEMBER]
    assert pack.images_md5 == _md5(pack.images_zip)


def test_pack_rejects_a_folder_without_coco_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        pack_archives(tmp_path, tmp_path / "zips")


def test_complete_dataset_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = generate_dataset(tmp_path / "coco", num_images=6, seed=1)

    def fail(*_: object) -> None:
        raise AssertionError("a complete dataset must not be regenerated")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert generate_dataset(dest, num_images=6, seed=1) == dest


def test_partial_or_stale_dataset_is_regenerated(tmp_path: Path) -> None:
    reference = _tree_bytes(generate_dataset(tmp_path / "reference", num_images=6, seed=1))
    dest = generate_dataset(tmp_path / "coco", num_images=6, seed=1)
    (dest / MARKER_NAME).unlink()
    next((dest / "val2017").iterdir()).unlink()
    assert _tree_bytes(generate_dataset(dest, num_images=6, seed=1)) == reference
    generate_dataset(dest, num_images=6, seed=2)  # another seed replaces it entirely
    assert json.loads((dest / MARKER_NAME).read_text())["seed"] == 2
    assert len(list((dest / "val2017").iterdir())) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, num_images=2)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_generates_and_packs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path / "coco"), "--num-images", "5", "--seed", "2"]
    args += ["--pack", str(tmp_path / "z")]
    assert synthetic.main(args) == 0
    out = capsys.readouterr().out
    assert "5 images" in out and _md5(tmp_path / "z" / "val2017.zip") in out
    assert _md5(tmp_path / "z" / "annotations_trainval2017.zip") in out

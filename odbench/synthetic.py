"""A deterministic synthetic dataset in the COCO 2017 val layout, to run the benchmark offline.

`generate_dataset` writes `val2017/<12-digit id>.jpg` and `annotations/instances_val2017.json`
with the real COCO structure and the real 80 category ids: varied non-square sizes, some
single-channel (grayscale) JPEGs, crowd regions stored as uncompressed RLE, images without
annotations, and objects drawn as filled shapes so that pixels match boxes. The same seed and
count always give byte-identical files. `pack_archives` turns any COCO-layout folder into the two
official archive layouts (`val2017.zip`, `annotations_trainval2017.zip`) with deterministic bytes.

Usage: python -m odbench.synthetic DEST [--num-images N] [--seed S] [--pack OUTDIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from odbench.coco import COCO_CATEGORIES, CocoCategory
from odbench.limits import Limits
from odbench.storage import STALE_TEMPORARY_S

GENERATOR_VERSION = 1  # bump whenever the output bytes change, so stale datasets are rebuilt
MARKER_NAME = ".synthetic.json"
IMAGES_DIR = "val2017"
ANNOTATIONS_MEMBER = "annotations/instances_val2017.json"
IMAGES_ZIP_NAME = "val2017.zip"
ANNOTATIONS_ZIP_NAME = "annotations_trainval2017.zip"

JPEG_QUALITY = 90
MIN_SIDE, MAX_SIDE = 160, 640
MIN_OBJECT_SIDE = 12.0
NOISE = 40  # background noise amplitude (grey levels, uniform in [-NOISE, NOISE])
MAX_OVERLAP = 0.25  # at most this share of the smaller of two object boxes may be shared
PLACEMENT_ATTEMPTS = 20  # random placements tried per wanted object before giving up on it
MAX_ID = 581929  # image ids are drawn from the real COCO id range
_ZIP_DATE_TIME = (2017, 9, 1, 0, 0, 0)
_CAPTURE_EPOCH = dt.datetime(2013, 11, 14, 0, 0, 0)
_LICENSE = {"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0"}
_INFO = {
    "description": "Synthetic COCO 2017 val-layout dataset (odbench.synthetic)",
    "url": "",
    "version": str(GENERATOR_VERSION),
    "year": 2017,
    "contributor": "odbench.synthetic",
    "date_created": "2017/09/01",
}


_Box = tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass(frozen=True)
class ArchivePack:
    images_zip: Path
    images_md5: str
    annotations_zip: Path
    annotations_md5: str


@dataclass(frozen=True)
class _ImagePlan:
    """What one image will be: identity, size and role (grayscale, empty, with a crowd)."""

    index: int
    image_id: int
    width: int
    height: int
    date_captured: str
    grayscale: bool
    empty: bool
    crowd: bool

    @property
    def file_name(self) -> str:
        return f"{self.image_id:012d}.jpg"


@dataclass(frozen=True)
class _Object:
    """One drawn object, already in COCO annotation terms."""

    category_id: int
    bbox: list[float]
    area: float
    segmentation: list[list[float]] | dict[str, list[int]]
    iscrowd: int


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def generate_dataset(dest: str | Path, num_images: int = 40, seed: int = 0) -> Path:
    """Write (or reuse) the synthetic dataset at dest; atomic, so dest is never half-written.

    `num_images` above `Limits.max_synthetic_images` (ODBENCH_MAX_SYNTHETIC_IMAGES) is refused before
    anything is written; temporary folders of an interrupted earlier call (`.<dest>.tmp-*`,
    `.<dest>.old-*`) untouched for an hour are removed first."""
    dest = Path(dest)
    if num_images < 1 or seed < 0:
        raise ValueError(f"need num_images >= 1 and seed >= 0, got {num_images}, {seed}")
    Limits.from_env().check("max_synthetic_images", num_images, f"synthetic dataset at {dest}")
    if _is_complete(dest, num_images, seed):
        return dest
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(dest)
    tmp = _sibling(dest, "tmp")
    tmp.mkdir()
    try:
        _write_dataset(tmp, num_images, seed)
        _swap_into_place(tmp, dest, num_images, seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _marker(num_images: int, seed: int) -> dict[str, int]:
    """The marker content identifying a complete dataset of this generator, seed and count."""
    return {"generator_version": GENERATOR_VERSION, "num_images": num_images, "seed": seed}


def _is_complete(dest: Path, num_images: int, seed: int) -> bool:
    """Whether dest already holds the finished dataset for this seed and count (marker last)."""
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker == _marker(num_images, seed)
        and (dest / ANNOTATIONS_MEMBER).is_file()
        and sum(1 for _ in (dest / IMAGES_DIR).glob("*.jpg")) == num_images
    )


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace anything but an earlier (possibly partial) synthetic dataset."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a directory")
    foreign = sorted({p.name for p in dest.iterdir()} - {IMAGES_DIR, "annotations", MARKER_NAME})
    if foreign:
        raise FileExistsError(f"{dest} holds {foreign}: not a synthetic dataset, not replacing it")


def _sibling(path: Path, tag: str) -> Path:
    """A unique hidden path next to path, on the same file system so renames are atomic."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_stale_siblings(dest: Path, older_than_s: float = STALE_TEMPORARY_S) -> None:
    """Remove the temporary folders of interrupted generations of dest that nothing has written to
    for `older_than_s` (a live generator adds a file every few milliseconds)."""
    cutoff = time.time() - older_than_s
    for folder in [*dest.parent.glob(f".{dest.name}.tmp-*"), *dest.parent.glob(f".{dest.name}.old-*")]:
        try:
            newest = max(p.stat().st_mtime for p in (folder, folder / IMAGES_DIR, folder / "annotations")
                         if p.exists())
        except (OSError, ValueError):
            continue
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def _swap_into_place(tmp: Path, dest: Path, num_images: int, seed: int) -> None:
    """Rename the finished tmp folder to dest, moving any stale dest aside first."""
    if _is_complete(dest, num_images, seed):
        return  # a concurrent generator finished first; its output is identical
    old = _sibling(dest, "old") if dest.exists() else None
    if old is not None:
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        if not _is_complete(dest, num_images, seed):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_dataset(root: Path, num_images: int, seed: int) -> None:
    """Render every image, then the annotation file, then the marker (last: it means done)."""
    (root / IMAGES_DIR).mkdir()
    (root / "annotations").mkdir()
    plans = _plan_images(num_images, seed)
    annotations: list[dict[str, Any]] = []
    for plan in plans:
        pixels, objects = _render_image(plan, seed)
        _write_jpeg(root / IMAGES_DIR / plan.file_name, pixels)
        annotations.extend(_annotation(len(annotations) + 1, plan.image_id, o) for o in objects)
    order = _unsorted_order([plan.image_id for plan in plans], seed)
    document = {
        "info": _INFO,
        "licenses": [_LICENSE],
        "images": [_image_record(plans[i]) for i in order],
        "annotations": annotations,
        "categories": [_category_record(c) for c in COCO_CATEGORIES],
    }
    (root / ANNOTATIONS_MEMBER).write_text(json.dumps(document, separators=(",", ":")))
    (root / MARKER_NAME).write_text(json.dumps(_marker(num_images, seed), indent=2) + "\n")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per purpose, so changing one part never shifts another."""
    return np.random.default_rng([seed, *stream])


def _plan_images(num_images: int, seed: int) -> list[_ImagePlan]:
    """Draw ids, sizes and capture dates; roles cycle by index so every kind appears (n >= 5)."""
    rng = _rng(seed, 0)
    ids = rng.choice(MAX_ID, size=num_images, replace=False) + 1
    sizes = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=(num_images, 2))
    seconds = rng.integers(0, 30 * 24 * 3600, size=num_images)
    plans = []
    for index in range(num_images):
        width, height = (int(s) for s in sizes[index])
        if width == height:  # keep every image non-square
            height = MIN_SIDE + (height - MIN_SIDE + 37) % (MAX_SIDE - MIN_SIDE + 1)
        captured = _CAPTURE_EPOCH + dt.timedelta(seconds=int(seconds[index]))
        empty = index % 10 == 4
        plans.append(
            _ImagePlan(
                index=index,
                image_id=int(ids[index]),
                width=width,
                height=height,
                date_captured=captured.strftime("%Y-%m-%d %H:%M:%S"),
                grayscale=index % 6 == 1,
                empty=empty,
                crowd=index % 8 == 2 and not empty,
            )
        )
    return plans


def _unsorted_order(ids: Sequence[int], seed: int) -> list[int]:
    """A deterministic shuffle of positions that is never sorted by id (when n > 1)."""
    order = [int(i) for i in _rng(seed, 2).permutation(len(ids))]
    if len(ids) > 1 and all(ids[a] < ids[b] for a, b in zip(order, order[1:])):
        order = order[1:] + order[:1]
    return order


def _render_image(plan: _ImagePlan, seed: int) -> tuple[np.ndarray, list[_Object]]:
    """Paint a noisy background, a crowd region (behind) and filled shapes (in front).

    Grayscale images are painted on one channel from the start (drawing uses the colour's first
    value), so their background noise stays as strong as in colour images.
    """
    rng = _rng(seed, 1, plan.index)
    canvas = _noisy_background(rng, plan.height, plan.width, 1 if plan.grayscale else 3)
    wanted = (1 if plan.crowd else 0) + (0 if plan.empty else int(rng.integers(2, 7)))
    boxes = _place_boxes(rng, plan.width, plan.height, wanted)
    objects = [_draw_crowd(rng, canvas, boxes.pop(0))] if plan.crowd and boxes else []
    objects += [_draw_shape(rng, canvas, box) for box in boxes]
    return canvas, objects


def _place_boxes(rng: np.random.Generator, width: int, height: int, count: int) -> list[_Box]:
    """Up to count boxes that overlap little, so each drawn object stays mostly visible."""
    boxes: list[_Box] = []
    for _ in range(count * PLACEMENT_ATTEMPTS):
        if len(boxes) == count:
            break
        box = _random_box(rng, width, height)
        if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
            boxes.append(box)
    return boxes


def _overlap(a: _Box, b: _Box) -> float:
    """Intersection area over the smaller box's area (1.0: one hides the other entirely)."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0.0) * max(ih, 0.0) / min(a[2] * a[3], b[2] * b[3])


def _noisy_background(
    rng: np.random.Generator, height: int, width: int, channels: int
) -> np.ndarray:
    """A smooth two-colour gradient plus strong per-pixel noise, so the flat shapes stand out."""
    start, end = rng.integers(0, 256, size=(2, channels))
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    gradient = start + (end - start) * ramp + np.zeros((height, 1, 1), np.float32)
    noise = rng.integers(-NOISE, NOISE + 1, size=(height, width, channels), dtype=np.int16)
    canvas = np.clip(gradient.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return canvas.reshape(height, width) if channels == 1 else canvas


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A BGR colour as plain ints (what OpenCV's drawing functions accept)."""
    b, g, r = (int(c) for c in rng.integers(0, 256, size=3))
    return b, g, r


def _random_category(rng: np.random.Generator) -> int:
    """A real COCO category id, uniformly over the 80 categories."""
    return COCO_CATEGORIES[int(rng.integers(len(COCO_CATEGORIES)))].id


def _unit_outline(rng: np.random.Generator) -> np.ndarray:
    """A rectangle, ellipse or star-shaped polygon inside the unit square, as (k, 2) vertices."""
    kind = int(rng.integers(3))
    if kind == 0:
        return np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    if kind == 1:
        angles, radii = np.linspace(0.0, 2 * np.pi, 24, endpoint=False), np.ones(24)
    else:
        count = int(rng.integers(3, 9))
        jitter = rng.uniform(-0.3, 0.3, count)  # under half a step: angles stay ordered, simple
        angles = (np.arange(count) + jitter) * (2 * np.pi / count)
        radii = rng.uniform(0.5, 1.0, count)
    return 0.5 + 0.5 * radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _random_box(rng: np.random.Generator, width: int, height: int) -> _Box:
    """An x, y, w, h box lying inside the image, between ~8% and 40% of each side."""
    bw = max(MIN_OBJECT_SIDE, rng.uniform(0.08, 0.4) * width)
    bh = max(MIN_OBJECT_SIDE, rng.uniform(0.08, 0.4) * height)
    x = rng.uniform(0.0, width - 1 - bw)
    y = rng.uniform(0.0, height - 1 - bh)
    return x, y, bw, bh


def _draw_shape(rng: np.random.Generator, canvas: np.ndarray, box: _Box) -> _Object:
    """Fill a random polygon within box on the canvas and describe it as a polygon annotation."""
    x, y, bw, bh = box
    polygon = np.round(_unit_outline(rng) * [bw, bh] + [x, y], 2)
    fixed_point = np.round(polygon * 16).astype(np.int32)  # shift=4: sub-pixel vertices
    cv2.fillPoly(canvas, [fixed_point], _random_color(rng), lineType=cv2.LINE_AA, shift=4)
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    return _Object(
        category_id=_random_category(rng),
        bbox=_rounded([low[0], low[1], high[0] - low[0], high[1] - low[1]]),
        area=round(_polygon_area(polygon), 2),
        segmentation=[_rounded(polygon.ravel())],
        iscrowd=0,
    )


def _draw_crowd(rng: np.random.Generator, canvas: np.ndarray, box: _Box) -> _Object:
    """Paint a cluster of discs within box; their union becomes an iscrowd=1 RLE annotation."""
    height, width = canvas.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    x, y, bw, bh = box
    for _ in range(int(rng.integers(4, 9))):
        center = (int(x + rng.uniform(0, bw)), int(y + rng.uniform(0, bh)))
        radius = int(max(3.0, rng.uniform(0.2, 0.4) * min(bw, bh)))
        cv2.circle(mask, center, radius, 1, thickness=-1)
        cv2.circle(canvas, center, radius, _random_color(rng), thickness=-1)
    rows, cols = np.nonzero(mask)
    return _Object(
        category_id=_random_category(rng),
        bbox=_rounded([cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]),
        area=float(rows.size),
        segmentation={"counts": _rle_counts(mask), "size": [height, width]},
        iscrowd=1,
    )


def _polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of a simple polygon."""
    xs, ys = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.ravel(order="F") != 0
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def _rounded(values: Iterable[float]) -> list[float]:
    """Plain floats at 0.01 px, as COCO stores coordinates."""
    return [round(float(v), 2) for v in values]


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Encode at a fixed quality (deterministic); 2-D arrays become single-channel JPEGs."""
    if not cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _image_record(plan: _ImagePlan) -> dict[str, Any]:
    """The `images` entry, keys in the order of the real annotation file."""
    return {
        "license": _LICENSE["id"],
        "file_name": plan.file_name,
        "coco_url": f"https://synthetic.invalid/val2017/{plan.file_name}",
        "height": plan.height,
        "width": plan.width,
        "date_captured": plan.date_captured,
        "flickr_url": f"https://synthetic.invalid/flickr/{plan.file_name}",
        "id": plan.image_id,
    }


def _annotation(annotation_id: int, image_id: int, obj: _Object) -> dict[str, Any]:
    """The `annotations` entry, keys in the order of the real annotation file."""
    return {
        "segmentation": obj.segmentation,
        "area": obj.area,
        "iscrowd": obj.iscrowd,
        "image_id": image_id,
        "bbox": obj.bbox,
        "category_id": obj.category_id,
        "id": annotation_id,
    }


def _category_record(category: CocoCategory) -> dict[str, Any]:
    """The `categories` entry, keys in the order of the real annotation file."""
    return {"supercategory": category.supercategory, "id": category.id, "name": category.name}


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


def pack_archives(dataset: str | Path, out_dir: str | Path) -> ArchivePack:
    """Pack a COCO-layout folder into the two official archive layouts, with their md5s."""
    dataset, out_dir = Path(dataset), Path(out_dir)
    images = sorted((dataset / IMAGES_DIR).glob("*.jpg"), key=lambda p: p.name)
    annotations = dataset / ANNOTATIONS_MEMBER
    if not images or not annotations.is_file():
        expected = f"{IMAGES_DIR}/*.jpg and {ANNOTATIONS_MEMBER}"
        raise FileNotFoundError(f"{dataset} is not a COCO-layout folder (needs {expected})")
    out_dir.mkdir(parents=True, exist_ok=True)
    image_members = [(f"{IMAGES_DIR}/{p.name}", p) for p in images]
    images_zip = _write_zip(out_dir / IMAGES_ZIP_NAME, image_members, zipfile.ZIP_STORED)
    annotations_zip = _write_zip(
        out_dir / ANNOTATIONS_ZIP_NAME, [(ANNOTATIONS_MEMBER, annotations)], zipfile.ZIP_DEFLATED
    )
    return ArchivePack(images_zip, md5_file(images_zip), annotations_zip, md5_file(annotations_zip))


def _write_zip(path: Path, members: Sequence[tuple[str, Path]], compression: int) -> Path:
    """Write a zip with fixed metadata (dates, permissions, host) so the bytes are reproducible."""
    tmp = _sibling(path, "tmp")
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name, source in members:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
                info.compress_type = compression
                info.create_system = 3  # Unix, whatever the host
                info.external_attr = 0o644 << 16
                info.file_size = source.stat().st_size  # lets zipfile choose zip64 for huge members
                with source.open("rb") as reader, archive.open(info, "w") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file, read in chunks (archives can be large)."""
    with open(path, "rb") as reader:
        return hashlib.file_digest(reader, "md5").hexdigest()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Generate (and optionally pack) a synthetic dataset; print what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m odbench.synthetic", description="Write a synthetic COCO 2017 val dataset."
    )
    parser.add_argument("dest", type=Path, help="dataset folder to write (val2017/, annotations/)")
    parser.add_argument("--num-images", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pack", type=Path, metavar="OUTDIR", help="also write the official zips")
    args = parser.parse_args(argv)
    dest = generate_dataset(args.dest, num_images=args.num_images, seed=args.seed)
    print(f"dataset: {dest} ({args.num_images} images, seed {args.seed})")
    if args.pack is not None:
        pack = pack_archives(dest, args.pack)
        print(f"images:      {pack.images_zip}  md5 {pack.images_md5}")
        print(f"annotations: {pack.annotations_zip}  md5 {pack.annotations_md5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where COCO comes from (official archives, a COCO-layout folder at any URL, or the synthetic set)
and how its first N images are brought into storage, each verified and addressed by content.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import fsspec

from odbench import coco, synthetic
from odbench.fetch import StoredFile, fetch, info_signature, read_zip_members, store_bytes
from odbench.storage import Storage

ANNOTATIONS_MEMBER = "annotations/instances_val2017.json"
IMAGES_DIR = "val2017"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ArchiveSource:
    """The two official archive layouts at some URL (the COCO server or a mirror), with md5s."""

    images_url: str
    images_md5: str
    annotations_url: str
    annotations_md5: str

    def describe(self) -> str:
        return f"archives {self.images_url} + {self.annotations_url}"


OFFICIAL_COCO_VAL2017 = ArchiveSource(
    images_url="http://images.cocodataset.org/zips/val2017.zip",
    images_md5="442b8da7639aecaf257c1dceb8ba8c80",
    annotations_url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    annotations_md5="f4bbac642086de4f52a3fdda2de5fa2c",
)


@dataclass(frozen=True)
class FolderSource:
    """A COCO-layout folder (`annotations/instances_val2017.json`, `val2017/*.jpg`) at any fsspec URL."""

    url: str

    def describe(self) -> str:
        return f"folder {self.url}"

    def file_url(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"


@dataclass(frozen=True)
class SyntheticSource:
    """The generated COCO-layout dataset (odbench.synthetic), deterministic by seed."""

    num_images: int = 40
    seed: int = 0

    def describe(self) -> str:
        return f"synthetic (seed {self.seed}, {self.num_images} images)"


DatasetSource = ArchiveSource | FolderSource | SyntheticSource


def parse_dataset_url(dataset_url: str | None, dataset_size: int) -> DatasetSource:
    """Unset: the official archives; `synthetic`: the generated set; anything else: a folder URL."""
    if not dataset_url:
        return OFFICIAL_COCO_VAL2017
    if dataset_url == "synthetic":
        return SyntheticSource(num_images=max(SyntheticSource.num_images, dataset_size))
    return FolderSource(dataset_url)


@dataclass(frozen=True)
class DatasetImage:
    index: int  # position in the annotation file: MLPerf's qsl_idx
    id: int
    file_name: str
    width: int
    height: int
    md5: str  # of the JPEG bytes
    rel: str  # where the JPEG lives in storage


@dataclass(frozen=True)
class DatasetManifest:
    """The first N images of a source, as stored: small enough to pass between tasks."""

    source: str
    annotations_rel: str
    annotations_md5: str
    images: tuple[DatasetImage, ...]

    @property
    def digest(self) -> str:
        parts = [self.annotations_md5, *(f"{im.index}:{im.md5}" for im in self.images)]
        return hashlib.md5("\n".join(parts).encode()).hexdigest()

    @property
    def size(self) -> int:
        return len(self.images)

    @property
    def files(self) -> tuple[str, ...]:
        """Every storage path this manifest refers to."""
        return (self.annotations_rel, *(im.rel for im in self.images))

    def to_json(self) -> dict:
        return {**asdict(self), "digest": self.digest}

    @classmethod
    def from_json(cls, data: dict) -> DatasetManifest:
        images = tuple(DatasetImage(**im) for im in data["images"])
        return cls(data["source"], data["annotations_rel"], data["annotations_md5"], images)


def fingerprint(source: DatasetSource, n: int) -> str:
    """A content-derived key for (source, n): md5s for archives, file content and sizes for folders."""
    if isinstance(source, ArchiveSource):
        parts = [source.images_md5, source.annotations_md5]
    elif isinstance(source, SyntheticSource):
        parts = [f"synthetic-v{synthetic.GENERATOR_VERSION}", str(source.seed), str(source.num_images)]
    else:
        parts = _folder_fingerprint(source, n)
    return hashlib.md5("\n".join([*parts, f"n={n}"]).encode()).hexdigest()


def _folder_fingerprint(source: FolderSource, n: int) -> list[str]:
    """The annotation file's md5 and the size and change stamps of each of the first n images (from
    one listing; where the backend cannot list, such as some HTTP servers, the annotation file alone)."""
    data = _read_url(source.file_url(ANNOTATIONS_MEMBER))
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(data)), n)
    fs, root = fsspec.core.url_to_fs(source.url)
    try:
        listing = fs.ls(f"{root.rstrip('/')}/{IMAGES_DIR}", detail=True)
    except (OSError, NotImplementedError, ValueError):
        listing = []
    signatures = {Path(entry["name"]).name: info_signature(entry) for entry in listing}
    return [hashlib.md5(data).hexdigest(), *(f"{im.file_name}:{signatures.get(im.file_name)}" for im in images)]


def _read_url(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{url} not found: a dataset folder must hold {ANNOTATIONS_MEMBER} and {IMAGES_DIR}/*.jpg"
        ) from err


def ingest(source: DatasetSource, n: int, storage: Storage, progress: Progress | None = None) -> DatasetManifest:
    """Bring the annotation file and the first n images of `source` into storage; return the manifest."""
    if isinstance(source, ArchiveSource):
        manifest = _ingest_archives(source, n, storage, progress)
    elif isinstance(source, SyntheticSource):
        manifest = _ingest_synthetic(source, n, storage, progress)
    else:
        manifest = _ingest_folder(source, n, storage, progress)
    storage.write_json(f"datasets/{manifest.digest}.json", manifest.to_json())
    return manifest


def _ingest_archives(source: ArchiveSource, n: int, storage: Storage, progress: Progress | None) -> DatasetManifest:
    ann_zip = fetch(source.annotations_url, storage, "sources", Path(source.annotations_url).name,
                    source.annotations_md5)
    ann_bytes = read_zip_members(storage, ann_zip.rel, [ANNOTATIONS_MEMBER])[ANNOTATIONS_MEMBER]
    ann = store_bytes(ann_bytes, storage, "sources", Path(ANNOTATIONS_MEMBER).name)
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(ann_bytes)), n)
    img_zip = fetch(source.images_url, storage, "sources", Path(source.images_url).name, source.images_md5)
    members = [f"{IMAGES_DIR}/{im.file_name}" for im in images]
    blobs = read_zip_members(storage, img_zip.rel, members)
    stored = []
    for done, (im, member) in enumerate(zip(images, members), 1):
        stored.append(_stored_image(im, store_bytes(blobs[member], storage, "sources", im.file_name)))
        if progress:
            progress(done, n)
    return DatasetManifest(source.describe(), ann.rel, ann.md5, tuple(stored))


def _ingest_folder(source: FolderSource, n: int, storage: Storage, progress: Progress | None) -> DatasetManifest:
    ann = store_bytes(_read_url(source.file_url(ANNOTATIONS_MEMBER)), storage, "sources",
                      Path(ANNOTATIONS_MEMBER).name)
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(storage.read_bytes(ann.rel))), n)
    stored = []
    for done, im in enumerate(images, 1):
        url = source.file_url(f"{IMAGES_DIR}/{im.file_name}")
        stored.append(_stored_image(im, fetch(url, storage, "sources", im.file_name)))
        if progress:
            progress(done, n)
    return DatasetManifest(source.describe(), ann.rel, ann.md5, tuple(stored))


def _ingest_synthetic(source: SyntheticSource, n: int, storage: Storage,
                      progress: Progress | None) -> DatasetManifest:
    """Generate the set locally (inside storage when storage is local), then ingest it as a folder."""
    name = f"synthetic/seed-{source.seed}-n-{source.num_images}"
    local = storage.local_path(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic.generate_dataset(local or Path(tmp) / "set", source.num_images, source.seed)
        manifest = _ingest_folder(FolderSource(str(folder)), n, storage, progress)
    return DatasetManifest(source.describe(), manifest.annotations_rel, manifest.annotations_md5, manifest.images)


def _stored_image(im: coco.ImageRecord, stored: StoredFile) -> DatasetImage:
    return DatasetImage(im.index, im.id, im.file_name, im.width, im.height, stored.md5, stored.rel)


def load_manifest(storage: Storage, digest: str) -> DatasetManifest:
    return DatasetManifest.from_json(json.loads(storage.read_bytes(f"datasets/{digest}.json")))

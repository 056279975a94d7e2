"""Where COCO comes from (official archives, a COCO-layout folder at any URL, or the synthetic set)
and how its first N images are brought into storage, each verified and addressed by content.

Data is untrusted: every `file_name` is a relative path that stays in `val2017/` (checked in
`odbench.coco`; for a local folder also after resolving symbolic links; for HTTP each path segment is
percent-encoded, so a name cannot become `..` on the server), sizes are bounded (`odbench.limits`),
and URLs are redacted wherever they are written (`describe`, messages).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from odbench import coco, remote_zip, synthetic
from odbench.fetch import (
    SourceUnavailableError,
    StoredFile,
    aiohttp_errors,
    as_urls,
    content_path,
    fetch,
    has_change_stamp,
    info_signature,
    read_zip_members,
    store_bytes,
)
from odbench.limits import LimitExceededError, Limits
from odbench.progress import ProgressFactory
from odbench.redact import redact_text, redact_url
from odbench.storage import Storage, UnsafePathError, safe_rel

ANNOTATIONS_MEMBER = "annotations/instances_val2017.json"
IMAGES_DIR = "val2017"
Progress = Callable[[int, int], None]
INFO_WORKERS = 16  # concurrent metadata requests when a folder's listing lacks change stamps
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveSource:
    """The two official archive layouts, each an ordered list of URLs (the COCO server, mirrors) with one md5.

    A URL or a list may be given for each; both are kept as tuples. The md5s are the source's identity
    (its cache key): the same archives from another mirror are the same source."""

    images_urls: tuple[str, ...]
    images_md5: str
    annotations_urls: tuple[str, ...]
    annotations_md5: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "images_urls", as_urls(self.images_urls))
        object.__setattr__(self, "annotations_urls", as_urls(self.annotations_urls))

    def describe(self) -> str:
        more = len(self.images_urls) - 1
        mirrors = f" (+{more} mirror{'s' if more > 1 else ''})" if more else ""
        return f"archives {redact_url(self.images_urls[0])} + {redact_url(self.annotations_urls[0])}{mirrors}"

    def with_mirrors(self, bases: Sequence[str]) -> ArchiveSource:
        """These archives, first from each mirror folder in `bases` (holding both under their official file
        names), then from the URLs they had."""
        images_name, annotations_name = (url_file_name(urls[0], "") for urls in (self.images_urls,
                                                                                  self.annotations_urls))
        images = tuple(f"{base.rstrip('/')}/{images_name}" for base in bases)
        annotations = tuple(f"{base.rstrip('/')}/{annotations_name}" for base in bases)
        return replace(self, images_urls=(*images, *self.images_urls),
                       annotations_urls=(*annotations, *self.annotations_urls))


OFFICIAL_COCO_VAL2017 = ArchiveSource(
    images_urls=("http://images.cocodataset.org/zips/val2017.zip",),
    images_md5="442b8da7639aecaf257c1dceb8ba8c80",
    annotations_urls=("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",),
    annotations_md5="f4bbac642086de4f52a3fdda2de5fa2c",
)


@dataclass(frozen=True)
class FolderSource:
    """A COCO-layout folder (`annotations/instances_val2017.json`, `val2017/*.jpg`) at any fsspec URL."""

    url: str

    def describe(self) -> str:
        return f"folder {redact_url(self.url)}"

    def file_url(self, rel: str) -> str:
        """The URL of a file of the folder; `rel` must stay inside it (over HTTP each segment is
        percent-encoded, so that the server cannot read `%2e%2e` or `..%2f` as a way up)."""
        safe_rel(rel, "dataset file")
        if self.url.lower().startswith(("http://", "https://")):
            rel = "/".join(quote(segment, safe="") for segment in rel.split("/"))
        return f"{self.url.rstrip('/')}/{rel}"

    def check_inside(self, rel: str, what: str) -> None:
        """For a local folder: `rel` after resolving symbolic links must stay in the folder or in its
        images folder (which may itself link elsewhere); else UnsafePathError naming `what`."""
        fs, root = fsspec.core.url_to_fs(self.url)
        if not isinstance(fs, LocalFileSystem):
            return
        real = os.path.realpath(os.path.join(root, rel))
        homes = {os.path.realpath(root), os.path.realpath(os.path.join(root, IMAGES_DIR))}
        if not any(real.startswith(home.rstrip("/") + "/") for home in homes):
            raise UnsafePathError(f"{what}: {rel!r} resolves to {real}, outside the dataset folder {root}: refused")


@dataclass(frozen=True)
class SyntheticSource:
    """The generated COCO-layout dataset (odbench.synthetic), deterministic by seed."""

    num_images: int = 40
    seed: int = 0

    def describe(self) -> str:
        return f"synthetic (seed {self.seed}, {self.num_images} images)"


DatasetSource = ArchiveSource | FolderSource | SyntheticSource


def parse_dataset_url(dataset_url: str | None, dataset_size: int, mirrors: Sequence[str] = (),
                      archives: ArchiveSource = OFFICIAL_COCO_VAL2017) -> DatasetSource:
    """Unset: the official archives (`archives`), first from the `mirrors` folders; `synthetic`: the
    generated set; anything else: a folder URL (which takes no mirrors)."""
    if not dataset_url:
        return archives.with_mirrors(mirrors)
    if mirrors:
        raise ValueError(f"dataset_mirrors are mirrors of the official archives, but dataset_url="
                         f"{redact_url(dataset_url)!r} names another source: leave dataset_url unset to use them, "
                         "or drop dataset_mirrors")
    if dataset_url == "synthetic":
        source = SyntheticSource(num_images=max(SyntheticSource.num_images, dataset_size))
        Limits.from_env().check("max_synthetic_images", source.num_images,
                                f"dataset_url=synthetic with loadgen_dataset_size={dataset_size}")
        return source
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
    """The annotation file's md5 and the size and change stamps of each of the first n images: from
    one listing of the images folder, and for images the listing gives no change stamp (HTTP listings
    give none), from each file's own metadata. Where even that gives none, whether an image changed
    cannot be told: a warning says so, and a fresh nonce in the key makes every run fetch the images
    again rather than reuse what may be old ones (as for models without change stamps)."""
    data = _read_url(source.file_url(ANNOTATIONS_MEMBER))
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(data)), n)
    infos = _listing(source)
    unknown = [im.file_name for im in images if not has_change_stamp(infos.get(im.file_name, {}))]
    with ThreadPoolExecutor(max_workers=INFO_WORKERS) as pool:
        infos.update(zip(unknown, pool.map(lambda name: _file_info(source, name), unknown)))
    parts = [hashlib.md5(data).hexdigest(), *(f"{im.file_name}:{info_signature(infos[im.file_name])}"
                                              for im in images if im.file_name in infos)]
    if unstamped := [im.file_name for im in images if not has_change_stamp(infos.get(im.file_name, {}))]:
        log.warning("%s gives no modification time or ETag for %d of the %d images (e.g. %s), so odbench "
                    "cannot tell whether they changed: they are fetched again on every run", source.describe(),
                    len(unstamped), len(images), unstamped[0])
        parts.append(f"unversioned:{uuid.uuid4().hex}")
    return parts


def _listing(source: FolderSource) -> dict[str, dict]:
    """`info` entries of the images folder by file name (relative to it), from one listing; {} where
    the backend cannot list."""
    fs, root = fsspec.core.url_to_fs(source.url)
    folder = f"{root.rstrip('/')}/{IMAGES_DIR}"
    try:
        listing = fs.ls(folder, detail=True)
    except (OSError, NotImplementedError, ValueError, aiohttp_errors()):
        return {}
    names = {}
    for entry in listing:
        name = str(entry.get("name", "")).rstrip("/")
        rel = name[len(folder) + 1:] if name.startswith(f"{folder}/") else Path(name).name
        names[unquote(rel) if source.url.lower().startswith(("http://", "https://")) else rel] = entry
    return names


def _file_info(source: FolderSource, file_name: str) -> dict:
    """fsspec `info` of one image of the folder, or an error naming its (redacted) URL."""
    url = source.file_url(f"{IMAGES_DIR}/{file_name}")
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.info(path)
    except (OSError, ValueError, NotImplementedError, aiohttp_errors()) as err:
        raise SourceUnavailableError(f"cannot read {redact_url(url)}: {redact_text(str(err))}") from None


def _read_at_most(handle, limit: int) -> bytes:
    """Read to the end or `limit` bytes: a streamed HTTP file (no size) returns short reads."""
    chunks, total = [], 0
    while total < limit and (chunk := handle.read(min(1 << 20, limit - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _read_url(url: str) -> bytes:
    """An annotation file's bytes (at most `Limits.max_annotation_bytes`); errors name the redacted URL."""
    maximum = Limits.from_env().max_annotation_bytes
    try:
        with fsspec.open(url, "rb") as handle:
            data = _read_at_most(handle, maximum + 1)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{redact_url(url)} not found: a dataset folder must hold {ANNOTATIONS_MEMBER} and {IMAGES_DIR}/*.jpg"
        ) from None
    except (OSError, ValueError, aiohttp_errors()) as err:
        raise SourceUnavailableError(f"cannot read {redact_url(url)}: {redact_text(str(err))}") from None
    if len(data) > maximum:
        raise LimitExceededError("max_annotation_bytes", len(data), maximum,
                                 f"{redact_url(url)} (stopped reading there)")
    return data


def ingest(source: DatasetSource, n: int, storage: Storage, progress: Progress | None = None,
           byte_progress: ProgressFactory | None = None) -> DatasetManifest:
    """Bring the annotation file and the first n images of `source` into storage; return the manifest.
    Stale temporaries of interrupted ingests (see `Storage.remove_stale_temporaries`) go first.
    `progress` counts images, `byte_progress` makes the byte counters of whole-file downloads."""
    for folder in ("sources", "datasets"):
        storage.remove_stale_temporaries(folder)
    if isinstance(source, ArchiveSource):
        manifest = _ingest_archives(source, n, storage, progress, byte_progress)
    elif isinstance(source, SyntheticSource):
        manifest = _ingest_synthetic(source, n, storage, progress)
    else:
        manifest = _ingest_folder(source, n, storage, progress)
    storage.write_json(f"datasets/{manifest.digest}.json", manifest.to_json())
    return manifest


def _ingest_archives(source: ArchiveSource, n: int, storage: Storage, progress: Progress | None,
                     byte_progress: ProgressFactory | None) -> DatasetManifest:
    """The annotation member, then the first n image members: read alone where the server allows Range."""
    ann = _archive_members(source.annotations_urls, source.annotations_md5, "annotations.zip",
                           {ANNOTATIONS_MEMBER: Path(ANNOTATIONS_MEMBER).name}, storage, "max_annotation_bytes",
                           None, byte_progress)[ANNOTATIONS_MEMBER]
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(storage.read_bytes(ann.rel))), n)
    members = {f"{IMAGES_DIR}/{im.file_name}": im.file_name for im in images}
    stored = _archive_members(source.images_urls, source.images_md5, "images.zip", members, storage,
                              "max_image_bytes", progress, byte_progress)
    return DatasetManifest(source.describe(), ann.rel, ann.md5,
                           tuple(_stored_image(im, stored[m]) for im, m in zip(images, members)))


def _archive_members(urls: tuple[str, ...], md5: str, fallback: str, members: dict[str, str], storage: Storage,
                     limit: str, progress: Progress | None,
                     byte_progress: ProgressFactory | None) -> dict[str, StoredFile]:
    """`members` of the archive at `urls` (member -> name to store it under) in storage: from the whole
    archive when storage holds it, else each over Range (odbench.remote_zip); where a server ignores Range,
    the whole archive is downloaded once (its md5 checked) and kept for later runs."""
    name = url_file_name(urls[0], fallback)
    whole = content_path("sources", md5, name)
    if not storage.exists(whole):
        try:
            return remote_zip.fetch_members(urls, md5, name, members, storage, limit, progress=progress)
        except remote_zip.RangeNotSupportedError as err:
            log.info("%s: downloading the whole archive once instead (its md5 is checked; later runs reuse it)",
                     err)
            whole = fetch(urls, storage, "sources", name, md5, progress=byte_progress).rel
    blobs = read_zip_members(storage, whole, list(members), limit)
    stored = {}
    for done, (member, file_name) in enumerate(members.items(), 1):
        stored[member] = store_bytes(blobs[member], storage, "sources", file_name)
        if progress:
            progress(done, len(members))
    return stored


def _ingest_folder(source: FolderSource, n: int, storage: Storage, progress: Progress | None) -> DatasetManifest:
    source.check_inside(ANNOTATIONS_MEMBER, "the annotation file")
    ann = store_bytes(_read_url(source.file_url(ANNOTATIONS_MEMBER)), storage, "sources",
                      Path(ANNOTATIONS_MEMBER).name)
    images = coco.first_n(coco.images_in_order(coco.parse_annotations(storage.read_bytes(ann.rel))), n)
    stored = []
    for done, im in enumerate(images, 1):
        rel = f"{IMAGES_DIR}/{im.file_name}"
        source.check_inside(rel, f"annotation images[{im.index}] (id {im.id}): file_name")
        stored.append(_stored_image(im, fetch(source.file_url(rel), storage, "sources", im.file_name,
                                              limit="max_image_bytes")))
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


def url_file_name(url: str, fallback: str) -> str:
    """The last segment of a URL's path (never its query, which may hold a token), if it is a plain
    file name; else `fallback`."""
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) if "://" in url else Path(url).name
    try:
        return safe_rel(name) if "/" not in name else fallback
    except UnsafePathError:
        return fallback


def _stored_image(im: coco.ImageRecord, stored: StoredFile) -> DatasetImage:
    return DatasetImage(im.index, im.id, im.file_name, im.width, im.height, stored.md5, stored.rel)


def load_manifest(storage: Storage, digest: str) -> DatasetManifest:
    return DatasetManifest.from_json(json.loads(storage.read_bytes(f"datasets/{digest}.json")))

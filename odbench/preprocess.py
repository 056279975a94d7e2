"""Decode, resize and store images as uint8 samples that verify themselves, and turn them into model inputs.

Stored: `preprocessed/v<version>/<res>/<jpeg md5>.sample`, uint8 HWC RGB, res x res (cv2.resize
INTER_LINEAR, no crop, aspect ratio not kept: the MLPerf reference). Keyed by the JPEG's content, so
every N and every source holding the same image shares one file. Normalization to the model's float32
NCHW happens when LoadGen loads samples (its untimed step): float32 would take 4x the space.

A sample file is one JSON header line, `{"format", "version", "jpeg_md5", "resolution", "shape",
"dtype", "sha256"}`, then the raw pixel bytes: data only (never a pickle), and checkable on its own.
`load_sample` checks that the header names the image and resolution asked for, the byte count and
the pixels' sha256; a file that fails (truncated, overwritten, another image's sample) is logged,
removed and recomputed from the stored source image, whose md5 is checked against the manifest.

Before any decoder sees an image, its header gives the pixel size (`odbench.image_header`): above
`Limits.max_image_pixels`, or different from the annotation's width and height, it is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from odbench.dataset import DatasetImage, DatasetManifest
from odbench.image_header import read_header
from odbench.limits import Limits
from odbench.models import ModelSpec
from odbench.storage import Storage

log = logging.getLogger(__name__)
PREPROCESS_VERSION = 3  # bump when the stored bytes would change: it is part of every stored path
SAMPLE_FORMAT = "odbench-sample"
MAX_HEADER_BYTES = 4096


class CorruptSampleError(ValueError):
    """A stored sample that is not the verified pixels of the image and resolution asked for."""


class ImageSizeMismatchError(ValueError):
    """An image whose header size differs from the annotation's width and height."""


class SourceChangedError(ValueError):
    """A stored source image whose bytes no longer match the manifest's md5."""


def preprocessed_path(resolution: int, image_md5: str) -> str:
    return f"preprocessed/v{PREPROCESS_VERSION}/{resolution}/{image_md5}.sample"


def preprocessed_files(manifest: DatasetManifest, resolution: int) -> tuple[str, ...]:
    return tuple(preprocessed_path(resolution, im.md5) for im in manifest.images)


@dataclass(frozen=True)
class PreprocessedSet:
    """The preprocessed images of a dataset manifest at one resolution."""

    dataset_digest: str
    resolution: int
    count: int
    created: int  # how many files this call wrote (the rest were already stored)


def decode_resize(jpeg: bytes, resolution: int, expected_size: tuple[int, int] | None = None,
                  name: str = "the image") -> np.ndarray:
    """Image bytes to uint8 RGB res x res; grayscale and CMYK JPEGs become 3-channel RGB.

    The header is read first: an empty or unreadable file, one above the pixel limit, or (given
    `expected_size`, the annotation's (width, height)) one of another size is refused, naming `name`."""
    try:
        header = read_header(jpeg)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    Limits.from_env().check("max_image_pixels", header.pixels, f"{name} ({header.width}x{header.height})")
    if expected_size and tuple(expected_size) not in header.sizes:
        raise ImageSizeMismatchError(
            f"{name} is {header.width}x{header.height} pixels, but the annotation file says "
            f"{expected_size[0]}x{expected_size[1]}: the image or its annotation entry is wrong")
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{name}: not a decodable image (its header reads as a {header.format.upper()})")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_LINEAR)


def encode_sample(array: np.ndarray, jpeg_md5: str, resolution: int) -> bytes:
    """A sample file's bytes: the JSON header line, then the pixels."""
    pixels = np.ascontiguousarray(array, np.uint8).tobytes()
    header = {"format": SAMPLE_FORMAT, "version": PREPROCESS_VERSION, "jpeg_md5": jpeg_md5,
              "resolution": resolution, "shape": list(array.shape), "dtype": "uint8",
              "sha256": hashlib.sha256(pixels).hexdigest()}
    return json.dumps(header, sort_keys=True).encode() + b"\n" + pixels


def decode_sample(data: bytes, jpeg_md5: str, resolution: int) -> np.ndarray:
    """The pixels of a sample file, checked to be the image `jpeg_md5` at `resolution`, whole and
    unaltered; CorruptSampleError says what is wrong."""
    end = data.find(b"\n", 0, MAX_HEADER_BYTES)
    try:
        header = json.loads(data[:end]) if end > 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != SAMPLE_FORMAT:
        raise CorruptSampleError("it has no sample header (not written by this version, or overwritten)")
    shape = [resolution, resolution, 3]
    expected = {"version": PREPROCESS_VERSION, "jpeg_md5": jpeg_md5, "resolution": resolution, "shape": shape,
                "dtype": "uint8"}
    if wrong := [f"{key} {header.get(key)!r} (expected {value!r})" for key, value in expected.items()
                 if header.get(key) != value]:
        raise CorruptSampleError(f"its header does not describe this sample: {', '.join(wrong)}")
    pixels = memoryview(data)[end + 1:]
    if len(pixels) != resolution * resolution * 3:
        raise CorruptSampleError(f"it holds {len(pixels)} pixel bytes, {resolution * resolution * 3} expected "
                                 "(truncated?)")
    if hashlib.sha256(pixels).hexdigest() != header.get("sha256"):
        raise CorruptSampleError("its pixels do not match their sha256 (altered)")
    return np.frombuffer(data, np.uint8, count=len(pixels), offset=end + 1).reshape(shape)


def preprocess(manifest: DatasetManifest, resolution: int, storage: Storage, workers: int = 2,
               progress: Callable[[int, int], None] | None = None) -> PreprocessedSet:
    """Store every image of the manifest at `resolution`, skipping those already stored (each stored
    sample is verified when loaded: `load_sample`). Stale temporaries of an interrupted run go first."""
    storage.remove_stale_temporaries(f"preprocessed/v{PREPROCESS_VERSION}/{resolution}")
    todo = [im for im in manifest.images if not storage.exists(preprocessed_path(resolution, im.md5))]
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for done, _ in enumerate(pool.map(lambda im: compute_sample(storage, im, resolution), todo), 1):
            if progress:
                progress(done, len(todo))
    except BaseException:  # Ctrl-C or a bad image: drop the queued images instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return PreprocessedSet(manifest.digest, resolution, manifest.size, len(todo))


def compute_sample(storage: Storage, image: DatasetImage, resolution: int) -> np.ndarray:
    """Preprocess one stored source image (its md5 checked against the manifest) and store the sample."""
    data = storage.read_bytes(image.rel)
    name = f"{image.file_name} (image id {image.id}) at {storage.uri(image.rel)}"
    if (md5 := hashlib.md5(data).hexdigest()) != image.md5:
        storage.remove(image.rel)
        raise SourceChangedError(f"{name} has md5 {md5}, the manifest says {image.md5}: the stored file was "
                                 "altered, so it was removed; run again to fetch it anew")
    array = decode_resize(data, resolution, (image.width, image.height), name)
    storage.write_bytes(preprocessed_path(resolution, image.md5), encode_sample(array, image.md5, resolution))
    return array


def load_sample(storage: Storage, image: DatasetImage, resolution: int) -> np.ndarray:
    """The verified uint8 RGB sample of `image` at `resolution` (read-only). A stored file that fails
    verification, or is missing, is logged, removed and recomputed from the stored source image."""
    rel = preprocessed_path(resolution, image.md5)
    try:
        return decode_sample(storage.read_bytes(rel), image.md5, resolution)
    except FileNotFoundError:
        log.warning("%s is missing; recomputing it from %s", storage.uri(rel), image.file_name)
    except CorruptSampleError as err:
        log.warning("%s: %s; removing it and recomputing it from %s", storage.uri(rel), err, image.file_name)
        storage.remove(rel)
    return compute_sample(storage, image, resolution)


def load_uint8(storage: Storage, resolution: int, image_md5: str) -> np.ndarray:
    """Deprecated (use load_sample, which also recomputes): the verified sample, or CorruptSampleError
    naming the file, which is removed so that the next preprocessing step writes it again."""
    rel = preprocessed_path(resolution, image_md5)
    try:
        return decode_sample(storage.read_bytes(rel), image_md5, resolution)
    except CorruptSampleError as err:
        storage.remove(rel)
        raise CorruptSampleError(f"{storage.uri(rel)}: {err}; removed it: run again to recompute it") from None


def to_model_input(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 HWC RGB to the model's float32 [1,3,R,R]: /255, then mean/std where the spec says."""
    x = rgb.astype(np.float32) / np.float32(255)
    if spec.mean is not None and spec.std is not None:
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

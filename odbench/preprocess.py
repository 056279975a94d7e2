"""Decode, resize and store images as samples that verify themselves, and turn them into model inputs.

Two closed ways to resize (`ResizeDtype`; docs/preprocessing.md measures them and says why the
default, `DEFAULT_RESIZE_DTYPE`, is float32):
- `float32`: the MLPerf reference's exact steps (`maybe_resize` in MLCommons'
  vision/classification_and_detection/python/dataset.py, the same for SSD-ResNet34 and RetinaNet):
  the decoded image converted to float32 *before* cv2.resize; stored as little-endian float32, the
  resize output bit for bit (4 bytes per value: 4x the space of uint8).
- `uint8`: cv2.resize of the uint8 image, stored as uint8. OpenCV resizes uint8 in fixed point, so a
  value is up to 0.8 grey level from the reference's (not 0.5) and darker by ~0.1 on average.

Stored: `preprocessed/v<version>/<res>/<jpeg md5>.sample` (uint8) and
`preprocessed/v<version>/<res>/float32/<jpeg md5>.sample` (float32): HWC RGB, res x res (INTER_LINEAR,
no crop, aspect ratio not kept), values 0..255. Keyed by the JPEG's content, so every N and every
source holding the same image shares one file; the two dtypes never share one. Normalization to the
model's float32 NCHW (/255, then mean/std in the reference's float32 order) happens when LoadGen loads
samples (its untimed step), for either dtype.

A sample file is one JSON header line, `{"format", "version", "jpeg_md5", "resolution", "shape",
"dtype", "sha256"}`, then the raw pixel bytes: data only (never a pickle), and checkable on its own.
`load_sample` checks that the header names the image, resolution and dtype asked for, the byte count
and the pixels' sha256; a file that fails (truncated, overwritten, another image's sample) is logged,
removed and recomputed from the stored source image, whose md5 is checked against the manifest.

Before any decoder sees an image, its header gives the pixel size (`odbench.image_header`): above
`Limits.max_image_pixels`, or different from the annotation's width and height, it is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence, get_args

import cv2
import numpy as np

from odbench.dataset import DatasetImage, DatasetManifest
from odbench.image_header import read_header
from odbench.limits import Limits
from odbench.machine import usable_cpus
from odbench.models import ModelSpec
from odbench.storage import Storage

log = logging.getLogger(__name__)
PREPROCESS_VERSION = 3  # bump when the stored bytes would change: it is part of every stored path
SAMPLE_FORMAT = "odbench-sample"
MAX_HEADER_BYTES = 4096

ResizeDtype = Literal["uint8", "float32"]
RESIZE_DTYPES: tuple[str, ...] = get_args(ResizeDtype)
# the reference's exact inputs unless asked otherwise; docs/preprocessing.md has the measurement behind it
DEFAULT_RESIZE_DTYPE: ResizeDtype = "float32"
_STORED_DTYPE = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}  # float32: little-endian on every host


class CorruptSampleError(ValueError):
    """A stored sample that is not the verified pixels of the image and resolution asked for."""


class ImageSizeMismatchError(ValueError):
    """An image whose header size differs from the annotation's width and height."""


class SourceChangedError(ValueError):
    """A stored source image whose bytes no longer match the manifest's md5."""


def check_resize_dtype(resize_dtype: str) -> ResizeDtype:
    """`resize_dtype` if it is one of RESIZE_DTYPES; else a ValueError naming the choices."""
    if resize_dtype not in RESIZE_DTYPES:
        raise ValueError(f"resize_dtype={resize_dtype!r} is not a preprocessing resize dtype: use one of "
                         f"{', '.join(RESIZE_DTYPES)} (docs/preprocessing.md)")
    return resize_dtype  # type: ignore[return-value]


def preprocessed_dir(resolution: int, *, resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> str:
    """The folder of one resolution's samples: uint8 keeps the original layout, float32 a subfolder."""
    base = f"preprocessed/v{PREPROCESS_VERSION}/{resolution}"
    return base if check_resize_dtype(resize_dtype) == "uint8" else f"{base}/{resize_dtype}"


def preprocessed_path(resolution: int, image_md5: str, *, resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> str:
    return f"{preprocessed_dir(resolution, resize_dtype=resize_dtype)}/{image_md5}.sample"


def preprocessed_files(manifest: DatasetManifest, resolution: int, *,
                       resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> tuple[str, ...]:
    return tuple(preprocessed_path(resolution, im.md5, resize_dtype=resize_dtype) for im in manifest.images)


@dataclass(frozen=True)
class PreprocessedSet:
    """The preprocessed images of a dataset manifest at one resolution and resize dtype."""

    dataset_digest: str
    resolution: int
    count: int
    created: int  # how many files this call wrote (the rest were already stored)
    resize_dtype: ResizeDtype = "uint8"  # records written before the float32 path existed were uint8


def decode_rgb(jpeg: bytes, expected_size: tuple[int, int] | None = None, name: str = "the image") -> np.ndarray:
    """Image bytes to uint8 RGB at the image's own size; grayscale and CMYK JPEGs become 3-channel RGB.

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
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize(rgb: np.ndarray, resolution: int, resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> np.ndarray:
    """uint8 RGB to res x res with cv2 INTER_LINEAR, in `resize_dtype`: float32 converts first, as the
    reference's `maybe_resize` does (its BGR->RGB swap before or after the cast moves values unchanged)."""
    if check_resize_dtype(resize_dtype) == "float32":
        rgb = rgb.astype(np.float32)
    return cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_LINEAR)


def decode_resize(jpeg: bytes, resolution: int, expected_size: tuple[int, int] | None = None,
                  name: str = "the image", *, resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> np.ndarray:
    """Image bytes to RGB res x res in `resize_dtype` (values 0..255): `decode_rgb`, then `resize`."""
    return resize(decode_rgb(jpeg, expected_size, name), resolution, resize_dtype)


def _sample_dtype(array: np.ndarray) -> ResizeDtype:
    """The resize dtype an array's values are in; a TypeError for any other array."""
    if array.dtype.name not in RESIZE_DTYPES:
        raise TypeError(f"an array of dtype {array.dtype} is not a preprocessed sample: samples are "
                        f"{' or '.join(RESIZE_DTYPES)} (decode_resize gives them)")
    return array.dtype.name  # type: ignore[return-value]


def sample_parts(array: np.ndarray, jpeg_md5: str, resolution: int) -> tuple[bytes, memoryview]:
    """A sample file as its JSON header line and a view of the pixels (uint8, or little-endian float32), written
    one after the other: no copy of the pixels is made (each is one that holds the GIL, docs/performance.md)."""
    resize_dtype = _sample_dtype(array)
    pixels = memoryview(np.ascontiguousarray(array, _STORED_DTYPE[resize_dtype])).cast("B")
    header = {"format": SAMPLE_FORMAT, "version": PREPROCESS_VERSION, "jpeg_md5": jpeg_md5,
              "resolution": resolution, "shape": list(array.shape), "dtype": resize_dtype,
              "sha256": hashlib.sha256(pixels).hexdigest()}
    return json.dumps(header, sort_keys=True).encode() + b"\n", pixels


def decode_sample(data: bytes, jpeg_md5: str, resolution: int, *,
                  resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> np.ndarray:
    """The pixels of a sample file, checked to be the image `jpeg_md5` at `resolution` in `resize_dtype`,
    whole and unaltered; CorruptSampleError says what is wrong."""
    stored = _STORED_DTYPE[check_resize_dtype(resize_dtype)]
    end = data.find(b"\n", 0, MAX_HEADER_BYTES)
    try:
        header = json.loads(data[:end]) if end > 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != SAMPLE_FORMAT:
        raise CorruptSampleError("it has no sample header (not written by this version, or overwritten)")
    shape = [resolution, resolution, 3]
    expected = {"version": PREPROCESS_VERSION, "jpeg_md5": jpeg_md5, "resolution": resolution, "shape": shape,
                "dtype": resize_dtype}
    if wrong := [f"{key} {header.get(key)!r} (expected {value!r})" for key, value in expected.items()
                 if header.get(key) != value]:
        raise CorruptSampleError(f"its header does not describe this sample: {', '.join(wrong)}")
    pixels = memoryview(data)[end + 1:]
    size = resolution * resolution * 3 * stored.itemsize
    if len(pixels) != size:
        raise CorruptSampleError(f"it holds {len(pixels)} pixel bytes, {size} expected (truncated?)")
    if hashlib.sha256(pixels).hexdigest() != header.get("sha256"):
        raise CorruptSampleError("its pixels do not match their sha256 (altered)")
    return np.frombuffer(data, stored, count=resolution * resolution * 3, offset=end + 1).reshape(shape)


_opencv_lock = threading.Lock()
_opencv_users = [0, 0]  # preprocess() calls running now, and OpenCV's thread count before the first of them


@contextlib.contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's own thread count while any caller is inside; the count from before the first is restored after
    the last (calls may overlap, e.g. two flow runs in one worker process)."""
    with _opencv_lock:
        if _opencv_users[0] == 0:
            _opencv_users[1] = cv2.getNumThreads()
        _opencv_users[0] += 1
        cv2.setNumThreads(count)
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users[0] -= 1
            if _opencv_users[0] == 0:
                cv2.setNumThreads(_opencv_users[1])


def missing_samples(images: Sequence[DatasetImage], resolution: int, storage: Storage,
                    resize_dtype: ResizeDtype) -> list[DatasetImage]:
    """The images whose sample at `resolution` in `resize_dtype` storage does not hold yet."""
    return [im for im in images if not storage.exists(preprocessed_path(resolution, im.md5, resize_dtype=resize_dtype))]


def preprocess(manifest: DatasetManifest, resolution: int, storage: Storage, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None, *,
               resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE, opencv: int = 1) -> PreprocessedSet:
    """Store every image of the manifest at `resolution` in `resize_dtype`, skipping those already stored
    (each stored sample is verified when loaded: `load_sample`), on `workers` threads (None: one per CPU; decoding
    and resizing release the GIL). Stale temporaries of an interrupted run of either dtype at this resolution
    (one folder holds both) go first. OpenCV runs `opencv` threads of its own meanwhile (1: the workers are the
    parallelism; else each worker's resize would start one thread per core)."""
    workers = workers or usable_cpus()
    storage.remove_stale_temporaries(preprocessed_dir(resolution, resize_dtype="uint8"))
    todo = missing_samples(manifest.images, resolution, storage, resize_dtype)

    def store(image: DatasetImage) -> None:  # None: finished samples are not held until the map reaches them
        compute_sample(storage, image, resolution, resize_dtype=resize_dtype)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        with opencv_threads(opencv):
            for done, _ in enumerate(pool.map(store, todo), 1):
                if progress:
                    progress(done, len(todo))
    except BaseException:  # Ctrl-C or a bad image: drop the queued images instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return PreprocessedSet(manifest.digest, resolution, manifest.size, len(todo), resize_dtype)


def compute_sample(storage: Storage, image: DatasetImage, resolution: int, *,
                   resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> np.ndarray:
    """Preprocess one stored source image (its md5 checked against the manifest) and store the sample."""
    data = storage.read_bytes(image.rel)
    name = f"{image.file_name} (image id {image.id}) at {storage.uri(image.rel)}"
    if (md5 := hashlib.md5(data).hexdigest()) != image.md5:
        storage.remove(image.rel)
        raise SourceChangedError(f"{name} has md5 {md5}, the manifest says {image.md5}: the stored file was "
                                 "altered, so it was removed; run again to fetch it anew")
    array = decode_resize(data, resolution, (image.width, image.height), name, resize_dtype=resize_dtype)
    storage.write_bytes(preprocessed_path(resolution, image.md5, resize_dtype=resize_dtype),
                        *sample_parts(array, image.md5, resolution))
    return array


def load_sample(storage: Storage, image: DatasetImage, resolution: int, *,
                resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE) -> np.ndarray:
    """The verified RGB sample of `image` at `resolution` in `resize_dtype` (read-only). A stored file that
    fails verification, or is missing, is logged, removed and recomputed from the stored source image."""
    rel = preprocessed_path(resolution, image.md5, resize_dtype=resize_dtype)
    try:
        return decode_sample(storage.read_bytes(rel), image.md5, resolution, resize_dtype=resize_dtype)
    except FileNotFoundError:
        log.warning("%s is missing; recomputing it from %s", storage.uri(rel), image.file_name)
    except CorruptSampleError as err:
        log.warning("%s: %s; removing it and recomputing it from %s", storage.uri(rel), err, image.file_name)
        storage.remove(rel)
    return compute_sample(storage, image, resolution, resize_dtype=resize_dtype)


def to_model_input(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """An HWC RGB array in grey levels (a uint8 or float32 sample) to the model's float32 [1,3,R,R]: /255,
    then (x - mean) / std where the spec says, in float32 and in the reference's order, so a float32
    sample gives the reference's input bit for bit."""
    x = rgb.astype(np.float32) / np.float32(255)
    if spec.mean is not None and spec.std is not None:
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

"""Decode, resize and store images as uint8, and turn stored images into model inputs.

Stored: `preprocessed/v<version>/<res>/<jpeg md5>.npy`, uint8 HWC RGB, res x res (cv2.resize INTER_LINEAR, no
crop, aspect ratio not kept: the MLPerf reference). Keyed by the JPEG's content, so every N and
every source holding the same image shares one file. Normalization to the model's float32 NCHW
happens when LoadGen loads samples (its untimed step): float32 would take 4x the space.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from odbench.dataset import DatasetManifest
from odbench.models import ModelSpec
from odbench.storage import Storage

PREPROCESS_VERSION = 2  # bump when the stored bytes would change: it is part of every stored path


def preprocessed_path(resolution: int, image_md5: str) -> str:
    return f"preprocessed/v{PREPROCESS_VERSION}/{resolution}/{image_md5}.npy"


def preprocessed_files(manifest: DatasetManifest, resolution: int) -> tuple[str, ...]:
    return tuple(preprocessed_path(resolution, im.md5) for im in manifest.images)


@dataclass(frozen=True)
class PreprocessedSet:
    """The preprocessed images of a dataset manifest at one resolution."""

    dataset_digest: str
    resolution: int
    count: int
    created: int  # how many files this call wrote (the rest were already stored)


def decode_resize(jpeg: bytes, resolution: int) -> np.ndarray:
    """JPEG bytes to uint8 RGB res x res; grayscale and CMYK JPEGs become 3-channel RGB."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_LINEAR)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def preprocess(manifest: DatasetManifest, resolution: int, storage: Storage, workers: int = 2,
               progress: Callable[[int, int], None] | None = None) -> PreprocessedSet:
    """Store every image of the manifest at `resolution`, skipping those already stored."""
    todo = [im for im in manifest.images if not storage.exists(preprocessed_path(resolution, im.md5))]

    def one(im) -> None:
        try:
            array = decode_resize(storage.read_bytes(im.rel), resolution)
        except ValueError as err:
            raise ValueError(f"{im.file_name} (image id {im.id}) at {storage.uri(im.rel)}: {err}") from err
        storage.write_bytes(preprocessed_path(resolution, im.md5), _npy_bytes(array))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(one, todo), 1):
            if progress:
                progress(done, len(todo))
    return PreprocessedSet(manifest.digest, resolution, manifest.size, len(todo))


def load_uint8(storage: Storage, resolution: int, image_md5: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(preprocessed_path(resolution, image_md5))), allow_pickle=False)


def to_model_input(rgb: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 HWC RGB to the model's float32 [1,3,R,R]: /255, then mean/std where the spec says."""
    x = rgb.astype(np.float32) / np.float32(255)
    if spec.mean is not None and spec.std is not None:
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

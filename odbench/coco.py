"""COCO annotations: the image list in file order, subsets, and category-id maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np


class DatasetTooSmallError(ValueError):
    pass


@dataclass(frozen=True)
class ImageRecord:
    """One entry of the annotation file's `images` list; `index` is its position there (qsl_idx)."""

    index: int
    id: int
    file_name: str
    width: int
    height: int


def parse_annotations(data: bytes) -> dict[str, Any]:
    """Parse an instances_*.json, with an error that says what is wrong with it."""
    try:
        coco = json.loads(data)
    except json.JSONDecodeError as err:
        raise ValueError(f"the annotation file is not valid JSON: {err}") from err
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise ValueError(f"the annotation file lacks {', '.join(missing)}: is it a COCO instances file?")
    return coco


def images_in_order(coco: dict[str, Any]) -> list[ImageRecord]:
    """All images in annotation-file order: the order MLPerf's qsl_idx refers to."""
    return [
        ImageRecord(i, int(im["id"]), im["file_name"], int(im["width"]), int(im["height"]))
        for i, im in enumerate(coco["images"])
    ]


def first_n(images: list[ImageRecord], n: int) -> list[ImageRecord]:
    """The first n images; asking for more than the dataset holds names both numbers."""
    if n < 1:
        raise ValueError(f"loadgen_dataset_size must be at least 1, got {n}")
    if n > len(images):
        raise DatasetTooSmallError(
            f"loadgen_dataset_size={n} is larger than the dataset, which holds {len(images)} images; "
            f"use loadgen_dataset_size <= {len(images)}"
        )
    return images[:n]


def category_ids(coco: dict[str, Any]) -> list[int]:
    return sorted(int(c["id"]) for c in coco["categories"])


def contiguous_to_coco_ids(coco: dict[str, Any]) -> np.ndarray:
    """Map contiguous labels 1..80 to COCO ids: `[0] + sorted(category ids)` (index 0: background)."""
    return np.asarray([0, *category_ids(coco)], dtype=np.float32)

"""COCO: the 80 categories, annotation files (the image list in file order), subsets, category-id maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str


def _categories(supercategory: str, *entries: tuple[int, str]) -> tuple[CocoCategory, ...]:
    """Build the categories of one supercategory (keeps the table below compact)."""
    return tuple(CocoCategory(cid, name, supercategory) for cid, name in entries)


COCO_CATEGORIES: tuple[CocoCategory, ...] = (
    *_categories("person", (1, "person")),
    *_categories(
        "vehicle", (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
        (7, "train"), (8, "truck"), (9, "boat"),
    ),
    *_categories(
        "outdoor", (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
        (14, "parking meter"), (15, "bench"),
    ),
    *_categories(
        "animal", (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
        (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"),
    ),
    *_categories(
        "accessory", (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
        (33, "suitcase"),
    ),
    *_categories(
        "sports", (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
        (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
        (42, "surfboard"), (43, "tennis racket"),
    ),
    *_categories(
        "kitchen", (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"),
        (50, "spoon"), (51, "bowl"),
    ),
    *_categories(
        "food", (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
        (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    ),
    *_categories(
        "furniture", (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
        (67, "dining table"), (70, "toilet"),
    ),
    *_categories(
        "electronic", (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
        (77, "cell phone"),
    ),
    *_categories(
        "appliance", (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
        (82, "refrigerator"),
    ),
    *_categories(
        "indoor", (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
        (89, "hair drier"), (90, "toothbrush"),
    ),
)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(c.id for c in COCO_CATEGORIES)


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

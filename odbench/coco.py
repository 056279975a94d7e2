"""COCO: the 80 categories, annotation files (the image list in file order), subsets, category-id maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from odbench.storage import UnsafePathError, safe_rel


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


class AnnotationError(ValueError):
    """An annotation file whose structure or an entry is not what a COCO instances file holds."""


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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"the annotation file is not valid JSON: {err}") from err
    if not isinstance(coco, dict):
        raise AnnotationError(f"the annotation file holds a JSON {type(coco).__name__}, not an object: "
                              "is it a COCO instances file?")
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise AnnotationError(f"the annotation file lacks {', '.join(missing)}: is it a COCO instances file?")
    wrong = [key for key in ("images", "annotations", "categories") if not isinstance(coco[key], list)]
    if wrong:
        raise AnnotationError(f"the annotation file's {', '.join(wrong)} must be a list (of objects), got "
                              f"{', '.join(type(coco[key]).__name__ for key in wrong)}")
    return coco


def images_in_order(coco: dict[str, Any]) -> list[ImageRecord]:
    """All images in annotation-file order: the order MLPerf's qsl_idx refers to. Each entry is
    checked (id, file_name, width, height present and well typed; file_name a relative path that stays
    in the images folder; ids unique), and a bad one is an AnnotationError naming it and the field."""
    if not isinstance(coco.get("images"), list):
        raise AnnotationError("the annotation file's images must be a list of objects")
    records = [_image_record(i, entry) for i, entry in enumerate(coco["images"])]
    seen: dict[int, int] = {}
    for record in records:
        if record.id in seen:
            raise AnnotationError(f"annotation images[{record.index}] repeats id {record.id} of "
                                  f"images[{seen[record.id]}]: image ids must be unique")
        seen[record.id] = record.index
    return records


def _image_record(index: int, entry: Any) -> ImageRecord:
    """One `images` entry as an ImageRecord, or an AnnotationError naming the entry and the field."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"annotation images[{index}] is a {type(entry).__name__}, not an object")
    where = f"annotation images[{index}]" + (f" (id {entry['id']!r})" if "id" in entry else "")
    missing = [key for key in ("id", "file_name", "width", "height") if key not in entry]
    if missing:
        raise AnnotationError(f"{where} lacks the field(s) {', '.join(missing)}")
    image_id = _whole_number(entry["id"], where, "id", minimum=0)
    width = _whole_number(entry["width"], where, "width", minimum=1)
    height = _whole_number(entry["height"], where, "height", minimum=1)
    try:
        file_name = safe_rel(entry["file_name"], f"{where}: file_name")
    except UnsafePathError as err:
        raise AnnotationError(str(err)) from None
    return ImageRecord(index, image_id, file_name, width, height)


def _whole_number(value: Any, where: str, key: str, minimum: int) -> int:
    """An int field (a float with no fraction is accepted, as JSON writers emit `640.0`); else an error."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AnnotationError(f"{where}: field {key} must be a whole number >= {minimum}, got {value!r}")
    return value


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
    """The category ids the annotation file lists, sorted; a malformed entry is an AnnotationError."""
    try:
        return sorted(int(c["id"]) for c in coco["categories"])
    except (TypeError, KeyError, ValueError) as err:
        raise AnnotationError(f"the annotation file's categories must be objects with an integer id ({err!r})") \
            from None

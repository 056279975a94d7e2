"""The MLPerf accuracy log: encoding detections into it, decoding it, and scoring it with pycocotools.

Each sample's data is float32 groups of 7 per detection, `[qsl_idx, ymin, xmin, ymax, xmax, score,
label]`, box normalized to 0..1, label the model's own label, as MLPerf's reference harness writes it
(vision/classification_and_detection/python/coco.py, openimages.py). Scoring follows the reference's
tools/accuracy-coco.py: duplicates of a qsl_idx are skipped; with the inverse map (`--use-inv-map`,
the convention for SSD-ResNet34's contiguous labels 1..80) a label k becomes
`([0] + the annotation file's category ids)[k]`, without it the label is the category id (RetinaNet
COCO); boxes become pixel [x, y, w, h] with each image's original size; COCOeval(bbox) runs on the
images seen. docs/design.md ("Accuracy") says which accuracy-coco.py options score which model's logs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odbench.models import ModelSpec
from odbench.output_checks import label_range, passes_unchanged

log = logging.getLogger(__name__)
FIELDS = 7
# bump when encoding or scoring would change a result (2: bad outputs dropped; 3: SSD logs its
# contiguous labels, scored through the inverse map, as MLPerf's reference does)
ENCODING_VERSION = 3
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


def encode_detections(qsl_idx: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      spec: ModelSpec) -> np.ndarray:
    """Model outputs (x1,y1,x2,y2 in the spec's scale, labels in its space) to float32 [K, 7] rows,
    the label written as the model gave it (the reference convention; the scorer maps it).

    The SUT passes only checked outputs (odbench/output_checks.py); a label outside the label space
    is still refused here, since the inverse map would silently turn it into another class."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    lo, hi = label_range(spec)
    if labels.size and (labels.min() < lo or labels.max() > hi):
        raise ValueError(f"{spec.name} label {labels.min() if labels.min() < lo else labels.max()} is outside "
                         f"its label space {lo}..{hi}")
    return _write_rows(qsl_idx, boxes, np.asarray(scores, np.float32).reshape(-1), labels, spec)


def encode_if_clean(qsl_idx: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    spec: ModelSpec) -> np.ndarray | None:
    """`encode_detections(check_outputs(...))`'s rows, bit for bit, for outputs that pass the checks unchanged (the
    usual case), in one pass with no checked copy; None for any other (take the checked path). Right after an
    inference every numpy call is slow (docs/performance.md section 3b), and a one-sample query pays them all."""
    if not passes_unchanged(boxes, scores, labels, spec):
        return None
    return _write_rows(qsl_idx, boxes, scores, labels, spec)


def _write_rows(qsl_idx: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                spec: ModelSpec) -> np.ndarray:
    """float32 [K, 4] boxes, [K] scores and [K] integer labels as accuracy-log rows."""
    rows = np.empty((len(boxes), FIELDS), np.float32)
    rows[:, 0] = qsl_idx
    np.divide(boxes[:, [1, 0, 3, 2]], np.float32(spec.box_scale), out=rows[:, 1:5])
    rows[:, 5] = scores
    rows[:, 6] = labels
    return rows


def decode_accuracy_log(path: str | Path) -> dict[int, np.ndarray]:
    """qsl_idx -> float32 [K, 7], keeping the first entry of each qsl_idx as the MLPerf script does."""
    decoded: dict[int, np.ndarray] = {}
    for entry in json.loads(Path(path).read_text()):
        idx = int(entry["qsl_idx"])
        if idx not in decoded:
            decoded[idx] = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, FIELDS)
    return decoded


@dataclass(frozen=True)
class AccuracyResult:
    mAP: float  # percent, rounded as the MLPerf script prints it
    stats: dict[str, float]  # the 12 COCO statistics, as fractions
    images: int
    detections: int


def inverse_map(annotations: dict) -> list[int]:
    """`[0] + the annotation file's category ids` in the file's order: what accuracy-coco.py
    --use-inv-map builds (`[0] + cocoGt.getCatIds()`); with COCO's instances_val2017.json, label k of
    1..80 is the k-th COCO category."""
    return [0, *(int(c["id"]) for c in annotations["categories"])]


def _coco_detections(decoded: dict[int, np.ndarray], coco_images: list[dict],
                     inv_map: list[int] | None) -> list[dict]:
    """Decoded rows to pycocotools result dicts in pixels of each original image (float32
    arithmetic, as MLPerf's script does it), labels through `inv_map` when given."""
    results = []
    for idx, rows in decoded.items():
        image = coco_images[idx]
        w, h = np.float32(image["width"]), np.float32(image["height"])
        for _, ymin, xmin, ymax, xmax, score, label in rows:
            category = int(label)
            if inv_map is not None:
                if not 0 <= category < len(inv_map):
                    raise ValueError(f"label {category} has no entry in the inverse map: the annotation file "
                                     f"lists {len(inv_map) - 1} categories (COCO's instances file lists 80)")
                category = inv_map[category]
            results.append({
                "image_id": image["id"],
                "category_id": category,
                "bbox": [float(xmin * w), float(ymin * h), float((xmax - xmin) * w), float((ymax - ymin) * h)],
                "score": float(score),
            })
    return results


def evaluate(decoded: dict[int, np.ndarray], annotations: dict, use_inv_map: bool) -> AccuracyResult:
    """COCO bbox evaluation of decoded detections over the images they cover; `use_inv_map` as
    accuracy-coco.py's option of that name (a model spec's `uses_inverse_map` says which applies)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = [annotations["images"][idx]["id"] for idx in decoded]
    detections = _coco_detections(decoded, annotations["images"],
                                 inverse_map(annotations) if use_inv_map else None)
    if not detections:
        log.warning("no detections at all: mAP is 0")
        return AccuracyResult(0.0, dict.fromkeys(COCO_STAT_NAMES, 0.0), len(image_ids), 0)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = COCO()
        gt.dataset = annotations
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.info("COCO evaluation:\n%s", printed.getvalue())
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    return AccuracyResult(round(100.0 * stats["AP"], 3), stats, len(image_ids), len(detections))

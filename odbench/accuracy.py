"""The MLPerf accuracy log: encoding detections into it, decoding it, and scoring it with pycocotools.

Each sample's data is float32 groups of 7 per detection, `[qsl_idx, ymin, xmin, ymax, xmax, score,
label]`, box normalized to 0..1, label a COCO category id: exactly what MLPerf's accuracy-coco.py
reads. Scoring follows that script: duplicates of a qsl_idx are skipped, boxes become pixel
[x, y, w, h] with each image's original size, COCOeval(bbox) runs on the images seen.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odbench.coco import COCO_CATEGORY_IDS
from odbench.models import LabelSpace, ModelSpec

log = logging.getLogger(__name__)
FIELDS = 7
ENCODING_VERSION = 2  # bump when encoding or scoring would change a result (2: bad outputs dropped)
# SSD-ResNet34's contiguous labels 1..80 as COCO ids: the model's label space, whatever the dataset lists
CONTIGUOUS_TO_COCO = np.asarray([0, *COCO_CATEGORY_IDS], np.float32)
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


def encode_detections(qsl_idx: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      spec: ModelSpec) -> np.ndarray:
    """Model outputs (x1,y1,x2,y2 in the spec's scale, labels in its space) to float32 [K, 7] rows.

    The SUT passes only checked outputs (odbench/output_checks.py); a contiguous label outside 1..80
    is still refused here, since indexing the id table with it would silently pick another class."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32(spec.box_scale)
    labels = np.asarray(labels).reshape(-1)
    if spec.label_space is LabelSpace.COCO_CONTIGUOUS:
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 1 or labels.max() >= len(CONTIGUOUS_TO_COCO)):
            raise ValueError(f"{spec.name} label {labels.min() if labels.min() < 1 else labels.max()} is outside "
                             f"its label space 1..{len(CONTIGUOUS_TO_COCO) - 1}")
        labels = CONTIGUOUS_TO_COCO[labels]
    rows = np.empty((len(boxes), FIELDS), np.float32)
    rows[:, 0] = qsl_idx
    rows[:, 1:5] = boxes[:, [1, 0, 3, 2]]
    rows[:, 5] = np.asarray(scores, np.float32).reshape(-1)
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


def _coco_detections(decoded: dict[int, np.ndarray], coco_images: list[dict]) -> list[dict]:
    """Decoded rows to pycocotools result dicts in pixels of each original image (float32
    arithmetic, as MLPerf's script does it)."""
    results = []
    for idx, rows in decoded.items():
        image = coco_images[idx]
        w, h = np.float32(image["width"]), np.float32(image["height"])
        for _, ymin, xmin, ymax, xmax, score, label in rows:
            results.append({
                "image_id": image["id"],
                "category_id": int(label),
                "bbox": [float(xmin * w), float(ymin * h), float((xmax - xmin) * w), float((ymax - ymin) * h)],
                "score": float(score),
            })
    return results


def evaluate(decoded: dict[int, np.ndarray], annotations: dict) -> AccuracyResult:
    """COCO bbox evaluation of decoded detections over the images they cover."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = [annotations["images"][idx]["id"] for idx in decoded]
    detections = _coco_detections(decoded, annotations["images"])
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

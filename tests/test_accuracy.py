"""Accuracy end to end: known detections through real LoadGen, the SUT's encoding, the MLPerf
accuracy log and pycocotools give the mAP that theory predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from odbench import coco
from odbench.accuracy import decode_accuracy_log, evaluate
from odbench.harness import run_loadgen
from odbench.loadgen_settings import LoadGenConfig
from odbench.models import LabelSpace, ModelSpec, get_spec
from odbench.sut import DetectionSUT, SampleLibrary

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


class GroundTruthBackend:
    """Answers each sample with its ground-truth boxes in the model's own output convention,
    optionally shrunk about their centres so that every box has IoU `iou` with its original."""

    providers = ["ground-truth"]

    def __init__(self, annotations: dict, spec: ModelSpec, iou: float = 1.0):
        self.spec, self.shrink = spec, float(np.sqrt(iou))
        self.images = annotations["images"]
        self.contiguous = {cat: i + 1 for i, cat in enumerate(coco.category_ids(annotations))}
        self.by_image: dict[int, list[dict]] = {}
        for ann in annotations["annotations"]:
            if not ann["iscrowd"]:
                self.by_image.setdefault(ann["image_id"], []).append(ann)

    def _label(self, category_id: int) -> int:
        return self.contiguous[category_id] if self.spec.label_space is LabelSpace.COCO_CONTIGUOUS else category_id

    def infer(self, x: np.ndarray):
        image = self.images[int(x[0])]
        anns = self.by_image.get(image["id"], [])
        boxes = np.zeros((len(anns), 4), np.float64)
        for row, ann in zip(boxes, anns):
            bx, by, bw, bh = ann["bbox"]
            cx, cy, hw, hh = bx + bw / 2, by + bh / 2, bw * self.shrink / 2, bh * self.shrink / 2
            row[:] = [(cx - hw) / image["width"], (cy - hh) / image["height"],
                      (cx + hw) / image["width"], (cy + hh) / image["height"]]
        labels = np.asarray([self._label(a["category_id"]) for a in anns], np.int64)
        return (boxes * self.spec.box_scale).astype(np.float32), np.ones(len(anns), np.float32), labels


def _loadgen_map(tmp_path, annotations: dict, spec: ModelSpec, n: int, iou: float = 1.0,
                 scenario: str = "Offline") -> float:
    library = SampleLibrary(n, lambda idx: np.asarray([idx]))
    sut = DetectionSUT(GroundTruthBackend(annotations, spec, iou), library, spec)
    run = run_loadgen(sut, LoadGenConfig(scenario, "AccuracyOnly"), spec.loadgen_model, tmp_path / "logs")
    decoded = decode_accuracy_log(run.log_dir / "mlperf_log_accuracy.json")
    assert sorted(decoded) == list(range(n))
    backend = GroundTruthBackend(annotations, spec)
    for idx, rows in decoded.items():  # the log holds the model's own labels (MLPerf's reference convention)
        assert rows[:, 6].tolist() == backend.infer(np.asarray([idx]))[2].tolist()
    return evaluate(decoded, annotations, use_inv_map=spec.uses_inverse_map).mAP


def _annotations(folder) -> dict:
    return json.loads((folder / "annotations/instances_val2017.json").read_text())


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco"])
def test_ground_truth_through_the_sut_scores_100(tmp_path, coco_dir, model_name):
    annotations = _annotations(coco_dir)
    assert _loadgen_map(tmp_path, annotations, get_spec(model_name), len(annotations["images"])) == 100.0


@pytest.mark.parametrize("iou", [0.72, 0.87])
def test_shrunk_boxes_score_what_the_iou_thresholds_predict(tmp_path, synthetic_dir, iou):
    """Every detection has IoU `iou` with its object: it is a true positive exactly at the COCO
    thresholds t <= iou and a false positive above, so AP is 1 or 0 per threshold."""
    predicted = round(100.0 * float(np.mean(COCO_IOU_THRESHOLDS <= iou)), 3)
    measured = _loadgen_map(tmp_path, _annotations(synthetic_dir), get_spec("retinanet_coco"), 40, iou, "SingleStream")
    assert measured == predicted


def test_decoder_keeps_the_first_entry_of_a_repeated_sample(tmp_path):
    first = np.asarray([[3, 0.1, 0.1, 0.5, 0.5, 0.9, 1]], np.float32)
    second = np.asarray([[3, 0.2, 0.2, 0.6, 0.6, 0.8, 2]], np.float32)
    log = [{"seq_id": i, "qsl_idx": 3, "data": rows.tobytes().hex().upper()} for i, rows in enumerate((first, second))]
    (tmp_path / "acc.json").write_text(json.dumps(log))
    decoded = decode_accuracy_log(tmp_path / "acc.json")
    assert list(decoded) == [3] and np.array_equal(decoded[3], first)

"""A test model that replays ground truth: accuracy regressions of the pipeline show as mAP below 100.

`build_replay_model` returns an ONNX model with exactly a spec's I/O contract. Inside the graph it
average-pools the model input to a GRID x GRID x 3 fingerprint, finds the nearest of the first N
images' fingerprints (computed here with the project's own decode, resize and normalization, so they
match what the harness feeds) and outputs that image's non-crowd ground-truth boxes in the model's
convention (x1, y1, x2, y2 normalized, times `box_scale`), score 1.0, labels in the model's label
space. `shift` moves every box by that fraction of its width and height (not clipped), so each box
has IoU (1 - s)^2 / (2 - (1 - s)^2) with its object: 0.1 gives 0.68 (mAP 40), 0.5 gives 0.14 (mAP ~0).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from odbench import coco
from odbench.models import LabelSpace, ModelSpec, get_spec
from odbench.preprocess import decode_resize, to_model_input
from odbench.standin import IR_VERSION, OPSET, _Graph, _value_info

GRID = 8  # fingerprint cells per image side
ANNOTATIONS = "annotations/instances_val2017.json"
IMAGES = "val2017"
MIN_DISTANCE = 1e-4  # squared fingerprint distance below which two images count as the same


def _label(category_id: int, spec: ModelSpec) -> int:
    """A COCO category id in the spec's label space."""
    if spec.label_space is LabelSpace.COCO_IDS:
        return category_id
    return coco.COCO_CATEGORY_IDS.index(category_id) + 1  # COCO_CONTIGUOUS


def _detections(image: coco.ImageRecord, anns: list[dict], spec: ModelSpec,
                shift: float) -> tuple[np.ndarray, np.ndarray]:
    """One image's ground truth as model outputs: boxes [K, 4] in the spec's scale, labels [K]."""
    boxes = np.zeros((len(anns), 4), np.float64)
    for row, ann in zip(boxes, anns):
        x, y, w, h = ann["bbox"]
        x, y = x + shift * w, y + shift * h
        row[:] = [x / image.width, y / image.height, (x + w) / image.width, (y + h) / image.height]
    labels = np.asarray([_label(int(a["category_id"]), spec) for a in anns], np.int64)
    return boxes * spec.box_scale, labels


def _ground_truth(annotations: dict, images: list[coco.ImageRecord], spec: ModelSpec,
                  shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded tables for the images: boxes [N, K, 4], labels [N, K] and real row counts [N]."""
    by_image: dict[int, list[dict]] = {}
    for ann in annotations["annotations"]:
        if not ann.get("iscrowd"):
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
    rows = [_detections(im, by_image.get(im.id, [])[:spec.max_detections], spec, shift) for im in images]
    width = max(1, *(len(labels) for _, labels in rows))
    boxes = np.zeros((len(rows), width, 4), np.float32)
    labels = np.zeros((len(rows), width), np.int64)
    for i, (b, lab) in enumerate(rows):
        boxes[i, :len(lab)], labels[i, :len(lab)] = b, lab
    return boxes, labels, np.asarray([len(lab) for _, lab in rows], np.int64)


def _cell_means(rgb: np.ndarray) -> np.ndarray:
    """The GRID x GRID block means of a uint8 RGB res x res image: float64 [GRID, GRID, 3]."""
    side = rgb.shape[0] // GRID
    rows = rgb[:side * GRID, :side * GRID].reshape(GRID, side, -1).sum(axis=1, dtype=np.float64)
    return rows.reshape(GRID, GRID, side, 3).sum(axis=2) / (side * side)


def _fingerprint(jpeg: bytes, spec: ModelSpec) -> np.ndarray:
    """What the graph computes from the harness's input: normalization is affine, so it commutes with the mean."""
    return to_model_input(_cell_means(decode_resize(jpeg, spec.resolution)), spec).reshape(-1)


def _fingerprints(dataset_dir: Path, images: list[coco.ImageRecord], spec: ModelSpec) -> np.ndarray:
    """Every image's fingerprint [N, 3 * GRID^2], through the project's decode, resize and normalization."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda im: _fingerprint((dataset_dir / IMAGES / im.file_name).read_bytes(),
                                                                     spec), images)))


def _check_distinct(table: np.ndarray, images: list[coco.ImageRecord]) -> None:
    """Refuse a table in which two images could not be told apart."""
    squared = (table ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * table.astype(np.float64) @ table.T
    np.fill_diagonal(distances, np.inf)
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    if distances[i, j] < MIN_DISTANCE:
        raise ValueError(f"images {images[i].file_name} and {images[j].file_name} share a fingerprint")


def _graph(g: _Graph, spec: ModelSpec, table: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
           counts: np.ndarray) -> None:
    """Fingerprint the input, pick the nearest image, emit its rows under the spec's output names."""
    cell = spec.resolution // GRID
    pooled = g.op("AveragePool", spec.input.name, kernel_shape=[cell, cell], strides=[cell, cell])
    flat = g.op("Reshape", pooled, g.const([1, -1], np.int64))
    diff = g.op("Sub", g.const(table), flat)
    distance = g.op("ReduceSum", g.op("Mul", diff, diff), g.const([1], np.int64), keepdims=0)
    index = g.op("ArgMin", distance, axis=0, keepdims=1)  # [1]
    count = g.op("Gather", g.const(counts, np.int64), index)

    def rows(table_name: str) -> str:
        picked = g.op("Squeeze", g.op("Gather", table_name, index), g.const([0], np.int64))
        return g.op("Slice", picked, g.const([0], np.int64), count, g.const([0], np.int64))

    box_rows, label_rows = rows(g.const(boxes)), rows(g.const(labels, np.int64))
    scores = g.op("ConstantOfShape", count, value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    for value, tensor, trailing in ((box_rows, spec.boxes, 2), (scores, spec.scores, 1),
                                    (label_rows, spec.labels, 1)):
        lead = len(tensor.shape) - trailing
        if lead:
            value = g.op("Unsqueeze", value, g.const(list(range(lead)), np.int64))
        g.op("Identity", value, name=tensor.name)


def build_replay_model(dataset_dir: Path, model_name: str = "retinanet_coco", num_images: int | None = None,
                       shift: float = 0.0) -> bytes:
    """A serialized model with `model_name`'s contract answering each of the first N images with its ground truth."""
    spec, dataset_dir = get_spec(model_name), Path(dataset_dir)
    if spec.label_space is LabelSpace.OPENIMAGES:
        raise ValueError(f"{spec.name}: a COCO replay model needs COCO labels, not {spec.label_space.value}")
    annotations = coco.parse_annotations((dataset_dir / ANNOTATIONS).read_bytes())
    all_images = coco.images_in_order(annotations)
    images = coco.first_n(all_images, len(all_images) if num_images is None else num_images)
    boxes, labels, counts = _ground_truth(annotations, images, spec, shift)
    table = _fingerprints(dataset_dir, images, spec)
    _check_distinct(table, images)
    g = _Graph()
    _graph(g, spec, table, boxes, labels, counts)
    by_name = {t.name: t for t in (spec.boxes, spec.scores, spec.labels)}
    graph = helper.make_graph(g.nodes, f"{spec.name}_replay", [_value_info(spec.input)],
                              [_value_info(by_name[n]) for n in spec.output_order], initializer=g.initializers)
    model = helper.make_model(graph, producer_name="tests.replay_model", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              doc_string=f"replays the ground truth of {len(images)} images, shift {shift}")
    return model.SerializeToString()


def expected_outputs(dataset_dir: Path, model_name: str, index: int, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Image `index`'s boxes, scores and labels as the replay model should answer them (flat)."""
    spec = get_spec(model_name)
    annotations = json.loads((Path(dataset_dir) / ANNOTATIONS).read_text())
    images = coco.images_in_order(annotations)[:index + 1]
    boxes, labels, counts = _ground_truth(annotations, images, spec, shift)
    k = int(counts[index])
    return boxes[index, :k], np.ones(k, np.float32), labels[index, :k]

"""A stand-in detector: a tiny random-weight ONNX network with a real model's exact I/O contract.

It exists so the whole pipeline (preprocessing, SUT, LoadGen, accuracy script) can run without the
real model download. Its weights are seeded random numbers, so its accuracy means nothing; only its
interface is faithful: input name/dtype/shape, output names/dtypes/ranks/order, box convention
(x1, y1, x2, y2 divided by `box_scale` gives 0..1), label space and the in-graph post-processing
(score threshold, NMS, top-`max_detections`).

The network: average-pool the image to a ~20x20 grid, instance-normalize (so detections follow the
image's content whatever its value range), two 3x3 convs, a 1x1 head predicting, per cell and
anchor, an objectness logit, four box deltas and class logits. Each anchor keeps its best class;
boxes are decoded around the anchor and clipped to the image, then NMS and TopK select the output.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odbench.coco import COCO_CATEGORY_IDS
from odbench.models import LabelSpace, ModelSpec, TensorSpec

IR_VERSION = 10  # onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 rejects
OPSET = 17
GRID_TARGET = 20  # cells per image side, before rounding to an integer pooling kernel
HIDDEN = 16  # conv channels
ANCHORS = ((2.0, 1.0), (3.0, 0.5), (3.0, 2.0))  # (side in cells, width/height aspect)
SCORE_THRESHOLD = 0.05
IOU_THRESHOLD = 0.5
OBJECTNESS_BIAS = -4.0  # ~30% of anchors pass the 0.05 threshold; low scores dominate
OBJECTNESS_GAIN = 2.0
DELTA_GAIN = 0.5
DETECTIONS_DIM = "num_detections"
_ONNX_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}

def label_table(spec: ModelSpec) -> np.ndarray:
    """The label each head class emits, in the spec's label space (int64)."""
    if spec.label_space is LabelSpace.COCO_IDS:
        return np.array(COCO_CATEGORY_IDS, dtype=np.int64)
    first = 1 if spec.label_space is LabelSpace.COCO_CONTIGUOUS else 0
    return np.arange(first, first + spec.num_classes, dtype=np.int64)


def _grid(resolution: int) -> tuple[int, int]:
    """The pooling kernel (= stride) and the resulting grid side for an input resolution."""
    kernel = max(1, resolution // GRID_TARGET)
    return kernel, resolution // kernel


def _anchors(grid: int) -> np.ndarray:
    """Anchor centres and sizes (cx, cy, w, h), normalized, ordered cell-major then anchor."""
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = np.stack([(cols.ravel() + 0.5) / grid, (rows.ravel() + 0.5) / grid], axis=1)
    sizes = np.array([[s * np.sqrt(a), s / np.sqrt(a)] for s, a in ANCHORS]) / grid
    per_cell = [np.concatenate([centres, np.broadcast_to(size, centres.shape)], axis=1)
                for size in sizes]
    return np.stack(per_cell, axis=1).reshape(-1, 4).astype(np.float32)


def _conv_weights(rng: np.random.Generator, out_ch: int, in_ch: int, k: int) -> np.ndarray:
    """He-initialized conv weights, so activations keep roughly unit scale."""
    std = np.sqrt(2.0 / (in_ch * k * k))
    return (rng.standard_normal((out_ch, in_ch, k, k)) * std).astype(np.float32)


def _head_weights(rng: np.random.Generator, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """1x1 head weights and bias laid out per anchor as [objectness, 4 deltas, class logits]."""
    per_anchor = 5 + classes
    gain = np.ones(per_anchor, dtype=np.float32)
    gain[0], gain[1:5] = OBJECTNESS_GAIN, DELTA_GAIN
    bias = np.zeros(per_anchor, dtype=np.float32)
    bias[0] = OBJECTNESS_BIAS
    w = rng.standard_normal((len(ANCHORS), per_anchor, HIDDEN)) / np.sqrt(HIDDEN) * gain[:, None]
    weight = w.reshape(-1, HIDDEN, 1, 1).astype(np.float32)
    return weight, np.tile(bias, len(ANCHORS))


def _value_info(tensor: TensorSpec) -> onnx.ValueInfoProto:
    """A graph input/output declaration matching a TensorSpec (dynamic dims get a shared name)."""
    shape = [DETECTIONS_DIM if d is None else d for d in tensor.shape]
    return helper.make_tensor_value_info(tensor.name, _ONNX_DTYPES[tensor.dtype], shape)


class _Graph:
    """Accumulates nodes and initializers, handing out unique tensor names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def const(self, value: np.ndarray | list | float | int, dtype: type = np.float32) -> str:
        """Add an initializer and return its name."""
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ops(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None,
            **attrs: object) -> list[str]:
        """Add a node and return its output names (`name` names a single output)."""
        self._count += 1
        outs = [name] if name else [f"{op_type.lower()}{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        """Add a single-output node and return its output name."""
        return self.ops(op_type, *inputs, name=name, **attrs)[0]


def _features(g: _Graph, image: str, kernel: int, rng: np.random.Generator) -> str:
    """Pool the image by `kernel` to the grid, normalize and convolve: [1, HIDDEN, grid, grid]."""
    x = g.op("AveragePool", image, kernel_shape=[kernel, kernel], strides=[kernel, kernel])
    x = g.op("InstanceNormalization", x, g.const(np.ones(3)), g.const(np.zeros(3)))
    channels = 3
    for _ in range(2):
        w = g.const(_conv_weights(rng, HIDDEN, channels, 3))
        b = g.const(rng.standard_normal(HIDDEN) * 0.1)
        x = g.op("Relu", g.op("Conv", x, w, b, pads=[1, 1, 1, 1]))
        channels = HIDDEN
    return g.op("InstanceNormalization", x, g.const(np.ones(HIDDEN)), g.const(np.zeros(HIDDEN)))


def _head(g: _Graph, features: str, classes: int, rng: np.random.Generator) -> str:
    """Per-anchor predictions [num_anchors, 5 + classes], rows ordered as `_anchors`."""
    weight, bias = _head_weights(rng, classes)
    x = g.op("Conv", features, g.const(weight), g.const(bias))
    x = g.op("Reshape", x, g.const([len(ANCHORS), 5 + classes, -1], np.int64))
    x = g.op("Transpose", x, perm=[2, 0, 1])
    return g.op("Reshape", x, g.const([-1, 5 + classes], np.int64))


def _columns(g: _Graph, preds: str, start: int, end: int) -> str:
    """Columns start..end of the prediction matrix."""
    return g.op("Slice", preds, g.const([start], np.int64), g.const([end], np.int64),
                g.const([1], np.int64))


def _decode(g: _Graph, deltas: str, grid: int) -> str:
    """Boxes x1, y1, x2, y2 (normalized, inside 0..1, x1 < x2, y1 < y2) from anchor deltas."""
    anchors = _anchors(grid)
    centre_a, size_a = g.const(anchors[:, :2]), g.const(anchors[:, 2:])
    shift = g.op("Tanh", _columns(g, deltas, 0, 2))
    centre = g.op("Add", centre_a, g.op("Mul", g.op("Mul", shift, size_a), g.const(0.5)))
    centre = g.op("Clip", centre, g.const(0.0), g.const(1.0))
    scale = g.op("Exp", g.op("Clip", _columns(g, deltas, 2, 4), g.const(-1.0), g.const(1.0)))
    half = g.op("Mul", g.op("Mul", scale, size_a), g.const(0.5))
    low = g.op("Max", g.op("Sub", centre, half), g.const(0.0))
    high = g.op("Min", g.op("Add", centre, half), g.const(1.0))
    return g.op("Concat", low, high, axis=1)


def _select(g: _Graph, boxes: str, scores: str, max_detections: int) -> str:
    """Indices of the kept anchors: threshold, NMS, then the top max_detections by score."""
    kept = g.op("NonMaxSuppression",
                g.op("Unsqueeze", boxes, g.const([0], np.int64)),
                g.op("Unsqueeze", scores, g.const([0, 1], np.int64)),
                g.const([2**31 - 1], np.int64), g.const([IOU_THRESHOLD]),
                g.const([SCORE_THRESHOLD]))
    kept = g.op("Gather", kept, g.const(2, np.int64), axis=1)  # [batch, class, box] -> box
    kept_scores = g.op("Gather", scores, kept)
    count = g.op("Shape", kept)
    k = g.op("Min", count, g.const([max_detections], np.int64))
    _, order = g.ops("TopK", kept_scores, k, outputs=2, axis=0, largest=1, sorted=1)
    return g.op("Gather", kept, order)


def _emit(g: _Graph, value: str, tensor: TensorSpec, trailing: int) -> None:
    """Write an output, adding the spec's leading batch dims (rank = leading + trailing)."""
    lead = len(tensor.shape) - trailing
    if lead:
        value = g.op("Unsqueeze", value, g.const(list(range(lead)), np.int64))
    g.op("Identity", value, name=tensor.name)


def _detections(g: _Graph, spec: ModelSpec, rng: np.random.Generator) -> None:
    """Add the network and post-processing, ending in the spec's three named outputs."""
    table = label_table(spec)
    kernel, grid = _grid(spec.resolution)
    preds = _head(g, _features(g, spec.input.name, kernel, rng), len(table), rng)
    objectness = g.op("Squeeze", _columns(g, preds, 0, 1), g.const([1], np.int64))
    scores = g.op("Sigmoid", objectness)
    boxes = _decode(g, _columns(g, preds, 1, 5), grid)
    classes = g.op("ArgMax", _columns(g, preds, 5, 5 + len(table)), axis=1, keepdims=0)
    keep = _select(g, boxes, scores, spec.max_detections)
    labels = g.op("Gather", g.const(table, np.int64), g.op("Gather", classes, keep))
    _emit(g, g.op("Mul", g.op("Gather", boxes, keep), g.const(spec.box_scale)), spec.boxes, 2)
    _emit(g, g.op("Gather", scores, keep), spec.scores, 1)
    _emit(g, labels, spec.labels, 1)


def build_standin(spec: ModelSpec, seed: int = 0) -> bytes:
    """A serialized stand-in ONNX model with `spec`'s exact I/O contract; same seed, same bytes."""
    g = _Graph()
    # each model gets its own weights, so two stand-ins never answer identically
    _detections(g, spec, np.random.default_rng([seed, zlib.crc32(spec.name.encode())]))
    return _serialize(g, spec, "standin", f"stand-in for {spec.name}, seed {seed}: random weights")


def constant_standin(spec: ModelSpec, boxes, scores, labels) -> bytes:
    """A model with exactly `spec`'s input/output contract that answers every image with these detections
    (boxes [K, 4] in the spec's scale, scores [K], labels [K]) and computes nothing: for tests of what the
    harness does with given outputs, and for measuring the harness alone. Checked against the contract."""
    from odbench.validation import validate_model

    g = _Graph()
    values = {spec.boxes.name: np.asarray(boxes, np.float32).reshape(-1, 4),
              spec.scores.name: np.asarray(scores, np.float32).reshape(-1),
              spec.labels.name: np.asarray(labels, np.int64).reshape(-1)}
    for tensor in (spec.boxes, spec.scores, spec.labels):
        value = values[tensor.name]
        lead = len(tensor.shape) - value.ndim  # SSD's outputs have a batch dimension
        g.op("Identity", g.const(value.reshape((1,) * lead + value.shape), value.dtype.type), name=tensor.name)
    data = _serialize(g, spec, "constant", f"constant answers with {spec.name}'s contract")
    validate_model(data, spec)
    return data


def _serialize(g: _Graph, spec: ModelSpec, kind: str, doc: str) -> bytes:
    """The graph as a model file: `spec`'s input, its outputs in the spec's order."""
    by_name = {t.name: t for t in (spec.boxes, spec.scores, spec.labels)}
    graph = helper.make_graph(g.nodes, f"{spec.name}_{kind}", [_value_info(spec.input)],
                              [_value_info(by_name[n]) for n in spec.output_order],
                              initializer=g.initializers)
    model = helper.make_model(graph, producer_name="odbench.standin", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)], doc_string=doc)
    return model.SerializeToString()

"""How closely a model's detections agree with the FP32 model's on the same inputs (an fp16 conversion,
odbench/fp16.py): the dense tensors the trunk hands to post-processing compared element by element, and the share
of the reference's detections the test model reproduces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from odbench.backend import Detections, requested_providers  # imported first: it sets onnxruntime's telemetry off
from odbench.models import ModelSpec
from odbench.onnx_graph import conv_trunk, elem_types

MATCH_IOU = 0.9  # a reference detection is reproduced by a test detection of the same label at this IoU or more
AGREEMENT_LIMITS: dict[str, float] = {"fp16": 1e-2}  # largest pre-NMS ||test - ref|| / ||ref|| per precision


class NoNmsError(ValueError):
    pass


# -- pre-NMS tensors -------------------------------------------------------------------------------------------


def nms_inputs(model: bytes) -> list[str]:
    """The boxes and scores inputs of each NonMaxSuppression node, in graph order."""
    graph = onnx.load_model_from_string(model).graph
    names = [name for node in graph.node if node.op_type == "NonMaxSuppression" for name in node.input[:2]]
    if not names:
        raise NoNmsError(f"graph {graph.name!r} has no NonMaxSuppression node: no pre-NMS tensors to compare")
    return list(dict.fromkeys(names))


def head_outputs(model: bytes) -> list[str]:
    """The float tensors the Conv trunk hands to the post-processing (the head maps): a detector's dense pre-NMS
    outputs, before any TopK, threshold or NMS, so two precisions' tensors line up element by element."""
    proto = onnx.load_model_from_string(model)
    graph, types = proto.graph, elem_types(proto)
    trunk = conv_trunk(graph.node)
    read_outside = {n for i, node in enumerate(graph.node) if i not in trunk for n in node.input}
    read_outside |= {o.name for o in graph.output}
    return [out for i in sorted(trunk) for out in graph.node[i].output
            if out in read_outside and types.get(out) == TensorProto.FLOAT]


def expose_tensors(model: bytes, names: Iterable[str]) -> bytes:
    """The model with these intermediate tensors added as graph outputs (type and shape left to inference)."""
    proto = onnx.load_model_from_string(model)
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return proto.SerializeToString()


def expose_pre_nms(model: bytes) -> tuple[bytes, list[str]]:
    """The model with its NMS inputs (boxes, scores) as extra outputs, and their names. Where TopK or a score
    threshold precede the NMS (RetinaNet, SSD) these are selected candidates, whose order and number move with
    tiny score changes: compare precisions on `head_outputs` instead."""
    names = nms_inputs(model)
    return expose_tensors(model, names), names


# -- agreement with the reference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How a test model (e.g. fp16) agrees with the reference (fp32) on the same inputs."""

    inputs: int
    pre_nms_relative_error: float  # max over inputs and head outputs (dense, pre-NMS) of ||test - ref|| / ||ref||
    detections_reference: int
    detections_test: int
    detections_reproduced: int  # reference detections matched one-to-one by a same-label test box at IoU >= 0.9
    share_reproduced: float  # detections_reproduced / detections_reference (1.0 when the reference has none)

    def within(self, precision: str) -> bool:
        """Whether the pre-NMS error is inside AGREEMENT_LIMITS for this precision."""
        return self.pre_nms_relative_error <= AGREEMENT_LIMITS[precision]

    def to_json(self) -> dict[str, int | float]:
        """The fields for result.json."""
        return asdict(self)


def relative_error(reference: np.ndarray, test: np.ndarray) -> float:
    """||test - ref|| / ||ref|| (0 for two zero tensors)."""
    if reference.shape != test.shape:
        raise ValueError(f"cannot compare tensors of shapes {reference.shape} and {test.shape}")
    ref, diff = np.linalg.norm(reference.astype(np.float64)), np.linalg.norm(test.astype(np.float64) - reference)
    return float(diff / ref) if ref else (0.0 if diff == 0 else float("inf"))


def _area(boxes: np.ndarray) -> np.ndarray:
    """Areas of x1, y1, x2, y2 boxes (0 for degenerate ones)."""
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [len(a), len(b)] of x1, y1, x2, y2 boxes."""
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)




def reproduced(reference: Detections, test: Detections, min_iou: float = MATCH_IOU) -> int:
    """How many reference detections a distinct test detection of the same label overlaps at `min_iou` or more,
    matching greedily from the highest reference score."""
    (ref_boxes, ref_scores, ref_labels), (boxes, _, labels) = reference, test
    iou = np.where(ref_labels[:, None] == labels[None, :], box_iou(ref_boxes, boxes), 0.0)
    taken = np.zeros(len(labels), bool)
    count = 0
    for row in np.argsort(-ref_scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[row])
        best = int(np.argmax(candidates)) if len(candidates) else -1
        if best >= 0 and candidates[best] >= min_iou:
            taken[best], count = True, count + 1
    return count


class _Runner:
    """A session over a model with some intermediate tensors exposed: detections and those tensors per input."""

    def __init__(self, model: bytes, spec: ModelSpec, exposed: Sequence[str], providers: list[str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(expose_tensors(model, exposed), sess_options=options,
                                            providers=providers)
        self.outputs = [spec.boxes.name, spec.scores.name, spec.labels.name, *exposed]
        self.spec = spec

    def run(self, x: np.ndarray) -> tuple[Detections, list[np.ndarray]]:
        """Detections shaped as OnnxBackend.infer returns them, and the exposed tensors."""
        boxes, scores, labels, *exposed = self.session.run(self.outputs, {self.spec.input.name: x})
        return (boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)), exposed


def agreement(reference: bytes, test: bytes, inputs: Sequence[np.ndarray], spec: ModelSpec,
              execution_device: str = "cpu", test_inputs: Sequence[np.ndarray] | None = None) -> Agreement:
    """Run the reference (fp32) and test models on the same float32 inputs and compare their pre-NMS head outputs
    (named as in the reference; `to_fp16` and the normalization prefix keep those names) and their detections.
    `test_inputs`: the same images as the test model takes them (e.g. uint8 samples for a normalization prefix)."""
    heads = head_outputs(reference)
    if not heads:
        raise ValueError("the reference graph has no Conv trunk whose outputs could be compared")
    providers = requested_providers(execution_device)
    ref_runner, test_runner = (_Runner(model, spec, heads, providers) for model in (reference, test))
    error, counts = 0.0, np.zeros(3, np.int64)
    for x, y in zip(inputs, inputs if test_inputs is None else test_inputs, strict=True):
        (ref_dets, ref_heads), (test_dets, test_heads) = ref_runner.run(x), test_runner.run(y)
        error = max([error, *(relative_error(a, b) for a, b in zip(ref_heads, test_heads))])
        counts += (len(ref_dets[0]), len(test_dets[0]), reproduced(ref_dets, test_dets))
    ref_count, test_count, matched = (int(c) for c in counts)
    return Agreement(len(inputs), error, ref_count, test_count, matched, matched / ref_count if ref_count else 1.0)

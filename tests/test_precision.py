"""FP16 conversion and FP16-vs-FP32 agreement, on real onnxruntime sessions: the small stand-ins, the full-size
RetinaNet stand-in (torchvision's graph shape; ~20 s) and a hand-built graph that breaks onnxruntime's float16.py."""

from __future__ import annotations

import functools
import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from odbench.fp16 import to_fp16
from odbench.models import MODELS, ModelSpec
from odbench.onnx_graph import CONV_OPS, conv_trunk, elem_types
from odbench.precision import (
    AGREEMENT_LIMITS,
    Agreement,
    NoNmsError,
    agreement,
    expose_pre_nms,
    head_outputs,
    relative_error,
    reproduced,
)
from odbench.standin import build_standin
from odbench.standin_full import build_full_standin, probe_input

SPECS = list(MODELS.values())
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
POST_PROCESSING = {"NonMaxSuppression", "TopK", "Sigmoid", "Softmax", "Exp", "Tanh", "Clip", "Gather", "Concat"}
MIN_SHARE_SMALL = 0.98  # measured 0.996-1.0 on the small stand-ins (probe and real images)
MIN_SHARE_FULL = 0.85  # measured 0.91 on the full RetinaNet's probe scene (its random heads leave many near-ties)


def _session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def _toy(output_trunk: bool = False) -> onnx.ModelProto:
    """x -> Conv -> y read by two fp32 nodes (Sigmoid, Relu) -> z; x also read twice by a fp32 Mul -> q.
    With `output_trunk`, the Conv's output y is a graph output too."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["y"], ["s"], name="sigmoid"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Add", ["s", "r"], ["z"], name="add"),
             helper.make_node("Mul", ["x", "x"], ["xx"], name="square"),
             helper.make_node("ReduceSum", ["xx"], ["q"], name="sum", keepdims=0)]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]),
               helper.make_tensor_value_info("q", TensorProto.FLOAT, [])]
    if output_trunk:
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, initializer=[numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _toy_input() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)}


def _check_structure(original: bytes, converted: bytes) -> None:
    """Valid, same I/O, unique node names, one producer per tensor; the trunk in fp16, the rest in fp32."""
    before, after = onnx.load_model_from_string(original), onnx.load_model_from_string(converted)
    onnx.checker.check_model(after, full_check=True)
    io = lambda m: [(v.name, v.type.SerializeToString()) for v in (*m.graph.input, *m.graph.output)]  # noqa: E731
    assert io(after) == io(before)
    names = [n.name for n in after.graph.node if n.name]
    assert len(names) == len(set(names))
    produced = Counter(o for n in after.graph.node for o in n.output) + Counter(t.name for t in after.graph.initializer)
    assert max(produced.values()) == 1
    types, trunk = elem_types(after), conv_trunk(after.graph.node)
    for i, node in enumerate(after.graph.node):
        float_types = {types[n] for n in (*node.input, *node.output) if types.get(n) in FLOATS}
        if node.op_type in CONV_OPS:
            assert float_types == {TensorProto.FLOAT16}, node
        elif node.op_type in POST_PROCESSING and i not in trunk:
            assert float_types <= {TensorProto.FLOAT}, node
    _session(converted)


@functools.cache
def _small(name: str) -> tuple[bytes, bytes]:
    model = build_standin(MODELS[name])
    return model, to_fp16(model)


@functools.cache
def _full_retinanet() -> tuple[bytes, bytes]:
    model = build_full_standin(MODELS["retinanet_coco"])
    return model, to_fp16(model)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_small_standin_fp16_structure(spec: ModelSpec) -> None:
    model, half = _small(spec.name)
    ops = Counter(n.op_type for n in onnx.load_model_from_string(model).graph.node)
    assert ops["Conv"] and ops["NonMaxSuppression"]  # a real detector graph: a conv trunk, then NMS
    _check_structure(model, half)
    assert to_fp16(model) == half  # same model, same bytes: cacheable like any model


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_small_standin_agrees_with_fp32(spec: ModelSpec) -> None:
    model, half = _small(spec.name)
    inputs = [probe_input(spec), np.random.default_rng(3).random(spec.input.shape, dtype=np.float32)]
    result = agreement(model, half, inputs, spec)
    assert 0 < result.pre_nms_relative_error <= AGREEMENT_LIMITS["fp16"] and result.within("fp16")
    assert result.detections_reference > 100 and result.share_reproduced >= MIN_SHARE_SMALL
    assert Agreement(**json.loads(json.dumps(result.to_json()))) == result


def test_full_retinanet_fp16_agrees_with_fp32() -> None:
    """torchvision's RetinaNet structure at full size: in-graph normalization and Resize, grouped convs, FPN,
    shared heads, per-level TopK, decoding and class-aware NMS."""
    spec = MODELS["retinanet_coco"]
    model, half = _full_retinanet()
    _check_structure(model, half)
    assert len(head_outputs(model)) == 10  # class and box maps of P3..P7
    result = agreement(model, half, [probe_input(spec)], spec)
    assert result.pre_nms_relative_error <= AGREEMENT_LIMITS["fp16"]
    assert result.detections_reference > 100 and result.share_reproduced >= MIN_SHARE_FULL


def test_float16_py_breaks_where_to_fp16_does_not() -> None:
    """onnxruntime's converter, blocking the non-trunk nodes, casts a tensor per reader: `y` (two fp32 readers)
    and the graph input (read twice by Mul) each get two same-named Casts, which onnxruntime refuses. Removing
    the duplicates loads, but the blocked fp32 path then reads an fp16-rounded input."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _toy()
    blocked = [n.name for i, n in enumerate(model.graph.node) if i not in conv_trunk(model.graph.node)]
    broken = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    duplicates = [name for name, n in Counter(n.name for n in broken.graph.node).items() if n > 1]
    assert sorted(duplicates) == ["graph_input_cast_0_cast_to_fp32_node", "y_cast_to_fp32_node"]
    with pytest.raises(Exception, match="two nodes with same node name"):
        _session(broken.SerializeToString())
    deduplicated = list({n.name: n for n in reversed(broken.graph.node)}.values())[::-1]
    del broken.graph.node[:]
    broken.graph.node.extend(deduplicated)
    reference = _session(model.SerializeToString()).run(["q"], _toy_input())[0]
    assert relative_error(reference, _session(broken.SerializeToString()).run(["q"], _toy_input())[0]) > 1e-5

    half = to_fp16(model.SerializeToString())
    _check_structure(model.SerializeToString(), half)
    (z, q), (z16, q16) = (_session(m).run(["z", "q"], _toy_input()) for m in (model.SerializeToString(), half))
    assert np.array_equal(q, q16)  # the fp32 path is untouched
    assert relative_error(z, z16) <= AGREEMENT_LIMITS["fp16"]


def test_trunk_tensor_that_is_a_graph_output() -> None:
    model = _toy(output_trunk=True).SerializeToString()
    half = to_fp16(model)
    _check_structure(model, half)
    (y, z), (y16, z16) = (_session(m).run(["y", "z"], _toy_input()) for m in (model, half))
    assert y16.dtype == np.float32 and 0 < relative_error(y, y16) <= AGREEMENT_LIMITS["fp16"]


def test_expose_pre_nms() -> None:
    spec = MODELS["retinanet_coco"]
    model, half = _small(spec.name)
    for data in (model, half):
        exposed, names = expose_pre_nms(data)
        assert len(names) == 2
        outputs = _session(exposed).run(names, {spec.input.name: probe_input(spec)})
        assert [o.dtype for o in outputs] == [np.float32, np.float32]  # NMS stays fp32 in the fp16 model
        assert outputs[0].shape[-1] == 4 and outputs[0].shape[-2] == outputs[1].shape[-1]


def test_graph_without_nms_is_refused() -> None:
    with pytest.raises(NoNmsError, match="no NonMaxSuppression"):
        expose_pre_nms(_toy().SerializeToString())


def test_graph_without_conv_is_refused() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "no_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="no Conv"):
        to_fp16(model.SerializeToString())


def test_reproduced_matches_one_to_one_by_label_and_iou() -> None:
    ref = (np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
           np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 1, 2]))
    test = (np.array([[0, 0, 10, 10.4], [20, 20, 30, 30]], np.float32), np.array([0.9, 0.7], np.float32),
            np.array([1, 3]))
    assert reproduced(ref, test) == 1  # the second box 1 has no partner left; box 3's label differs
    assert reproduced(ref, test, min_iou=0.97) == 0  # IoU 10 / 10.4
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert reproduced(ref, empty) == 0 and reproduced(empty, test) == 0


def _graph_with_an_if() -> bytes:
    """x -> Conv -> c; If(cond) then c * K else c, where the branch reads c and the initializer K from outside."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W")
    k = numpy_helper.from_array(np.float32(2.0), "K")
    shape = [1, 4, 8, 8]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    then = helper.make_graph([helper.make_node("Mul", ["c", "K"], ["t"])], "then", [], [
        helper.make_tensor_value_info("t", TensorProto.FLOAT, shape)])
    other = helper.make_graph([helper.make_node("Identity", ["c"], ["e"])], "else", [], [
        helper.make_tensor_value_info("e", TensorProto.FLOAT, shape)])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "with_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                    helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out], [weight, k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_a_subgraph_reading_the_trunk_and_a_weight_from_outside_keeps_working() -> None:
    """An If branch that reads a trunk tensor and an initializer of the outer graph: the converted model loads,
    the branch reads fp32 (a Cast of the fp16 trunk output) and keeps its weight, and answers as fp32 does."""
    model = _graph_with_an_if()
    converted = to_fp16(model)
    onnx.checker.check_model(onnx.load_model_from_string(converted))
    x = np.random.default_rng(4).normal(size=(1, 3, 8, 8)).astype(np.float32)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        (ref,), (half,) = (ort.InferenceSession(m).run(None, feed) for m in (model, converted))
        assert relative_error(ref, half) <= 1e-2

"""Normalization on the accelerator: a prefix that makes the model take the stored sample as it is.

`to_model_input` (odbench/preprocess.py) turns a stored HWC sample (uint8, or float32 grey levels) into the
model's float32 [1,3,R,R] on the host, and the whole float32 tensor crosses to the accelerator. With the prefix,
the sample crosses as stored, [1,R,R,3] in its own dtype (uint8: a quarter of the bytes), and the graph applies
the same steps in the same order (Cast, /255, -mean, /std, then HWC->CHW), so the model sees the same input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from odbench.models import ModelSpec
from odbench.onnx_graph import rename_reads

PREFIX = "odbench_normalize"  # names of the prefix's nodes and tensors start with this
_ONNX_DTYPES = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT}


def device_input(sample: np.ndarray) -> np.ndarray:
    """A stored HWC sample as the prefixed model takes it: [1,R,R,3], contiguous, its dtype unchanged."""
    return np.ascontiguousarray(sample[None])


def with_normalization(model: bytes | str, spec: ModelSpec, sample_dtype: str) -> bytes:
    """The model with a prefix taking `sample_dtype` [B,R,R,3] under the model's own input name (B: the model's
    batch dimension, 1 for the official files)."""
    if sample_dtype not in _ONNX_DTYPES:
        raise ValueError(f"normalization on the device takes uint8 or float32 samples, not {sample_dtype}")
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    graph = proto.graph
    name = spec.input.name
    inner = f"{PREFIX}/model_input"
    rename_reads(graph, name, inner)  # the original graph (its subgraphs too) now reads the prefix's output
    original = next(i for i in graph.input if i.name == name)
    graph.input.remove(original)
    side = spec.resolution
    first = original.type.tensor_type.shape.dim[0]  # 1, or a batched model's symbolic batch (odbench/batching.py)
    batch = first.dim_param or first.dim_value or 1
    graph.input.insert(0, helper.make_tensor_value_info(name, _ONNX_DTYPES[sample_dtype], [batch, side, side, 3]))
    nodes, constants = _prefix_nodes(name, inner, spec)
    graph.initializer.extend(constants)
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    return proto.SerializeToString()


def _prefix_nodes(name: str, output: str, spec: ModelSpec) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Cast to float32, /255, then (x - mean) / std where the spec says, then HWC -> CHW: to_model_input's order."""
    def const(label: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, np.float32), f"{PREFIX}/{label}")

    constants = [const("scale", np.float32(255))]
    steps = [("Cast", [name], {"to": onnx.TensorProto.FLOAT}), ("Div", [constants[0].name], {})]
    if spec.mean is not None and spec.std is not None:
        constants += [const("mean", spec.mean), const("std", spec.std)]
        steps += [("Sub", [constants[1].name], {}), ("Div", [constants[2].name], {})]
    steps.append(("Transpose", [], {"perm": [0, 3, 1, 2]}))
    nodes, current = [], name
    for i, (op, extra, attrs) in enumerate(steps):
        out = output if i == len(steps) - 1 else f"{PREFIX}/{i}"
        inputs = extra if op == "Cast" else [current, *extra]
        nodes.append(helper.make_node(op, inputs, [out], name=f"{PREFIX}/{op}{i}", **attrs))
        current = out
    return nodes, constants

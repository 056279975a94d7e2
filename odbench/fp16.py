"""FP16 models for the benchmark (how closely they agree with FP32: odbench/precision.py).

`to_fp16` runs a detector's convolutional trunk in float16 and keeps everything after it in float32. The rule is
structural, so it holds for any detector graph: a node runs in fp16 when it is a Conv or an ancestor of one (the
backbone, FPN, heads and whatever feeds them, input normalization included) and its operator schema lets its float
tensors be float16; every other node (reshapes of the head maps, sigmoid/softmax, TopK, box decoding, NMS, gathers)
stays float32. Graph inputs and outputs keep their types.

Why a converter of our own rather than `onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True,
node_block_list=<the non-trunk nodes>)`: that converter types every float tensor float16, then, for each blocked
(fp32) node, casts each fp16-typed input to fp32 under a name derived from the tensor alone
(`<tensor>_cast_to_fp32_node` writing `<tensor>_cast_to_fp32`) and casts each output back to fp16. A tensor read by
two blocked nodes (a head map reshaped for both scores and boxes, a graph input read twice) therefore gets two Casts
of the same name writing the same tensor, and onnxruntime refuses the model ("two nodes with same node name"); on the
full-size RetinaNet stand-in 34 tensors are written twice. Deleting the duplicates makes it load but leaves the
"fp32" post-processing round-tripping through fp16 at every edge (156 such Casts there), so it is not FP32 NMS and
decoding; on the real torchvision graph the issue also reports a Cast-less input left behind. Repairing that output
would mean undoing most of what it did, so this module rewires the graph itself: each boundary tensor gets one Cast
(or, for a weight, one float16 copy) per precision, shared by all its readers, under a name checked against every
name in the graph, and the fp32 part is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odbench.onnx_graph import CONV_OPS, conv_trunk, elem_types, node_reads, outer_reads, rename_reads, subgraphs

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
HALF_TYPE = "tensor(float16)"


def _half_positions(node: onnx.NodeProto, opset: int, types: dict[str, int]) -> tuple[set[int], set[int]] | None:
    """The (input, output) positions of a node's float tensors that may become float16 together, or None when the
    node cannot run in fp16 (no schema, subgraphs, a tensor of unknown type, or a float output whose type no
    converted input decides)."""
    if node.domain not in ("", "ai.onnx") or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
        return None
    if any(name and not types.get(name) for name in (*node.input, *node.output)):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def params(names: Sequence[str], formals: Sequence) -> list[tuple[int, str]]:
        return [(i, formals[min(i, len(formals) - 1)].type_str) for i, name in enumerate(names)
                if name and types.get(name) == FLOAT]

    inputs, outputs = params(node.input, schema.inputs), params(node.output, schema.outputs)
    half_params = {p for _, p in inputs if HALF_TYPE in allowed.get(p, ())}
    if any(p not in half_params for _, p in outputs):
        return None
    return {i for i, p in inputs if p in half_params}, {i for i, _ in outputs}


class _Rewriter:
    """Rewires a graph so that each reader gets a tensor in the precision it runs in: one Cast node (or, for a
    weight, one converted initializer) per tensor and precision, shared by all readers."""

    def __init__(self, graph: onnx.GraphProto, half_outputs: set[str]):
        self.graph = graph
        inputs = {i.name for i in graph.input}  # an initializer that is also an input can be overridden: cast it
        self.initializers = {t.name: t for t in graph.initializer if t.name not in inputs}
        self.names = {n for node in graph.node for n in (*node.input, *node.output, node.name)}
        self.names |= {v.name for v in (*graph.input, *graph.output)} | set(self.initializers)
        self.half_outputs = half_outputs  # tensors written in fp16 by the trunk
        self.views: dict[tuple[str, int], str] = {}
        self.casts: list[onnx.NodeProto] = []

    def unique(self, base: str) -> str:
        """A name no tensor or node of the graph has, and reserve it."""
        name, n = base, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def precision(self, name: str) -> int:
        """The element type `name` now holds: FLOAT16 for the trunk's float outputs, else FLOAT."""
        return HALF if name in self.half_outputs else FLOAT

    def view(self, name: str, to: int) -> str:
        """The name holding tensor `name` in precision `to`, adding its Cast or converted weight once."""
        if self.precision(name) == to:
            return name
        if (name, to) not in self.views:
            suffix = "fp16" if to == HALF else "fp32"
            out = self.unique(f"{name}_{suffix}")
            if name in self.initializers:
                self.graph.initializer.append(_half_initializer(self.initializers[name], out))
            else:
                self.casts.append(helper.make_node("Cast", [name], [out], name=self.unique(f"Cast_{out}"), to=to))
            self.views[name, to] = out
        return self.views[name, to]


def _half_initializer(tensor: TensorProto, name: str) -> TensorProto:
    """A float32 initializer as float16 under a new name, finite values clipped to float16's range."""
    values = numpy_helper.to_array(tensor)
    limit = float(np.finfo(np.float16).max)
    values = np.where(np.isfinite(values), np.clip(values, -limit, limit), values)
    return numpy_helper.from_array(values.astype(np.float16), name)


def _rewire(graph: onnx.GraphProto, plan: dict[int, tuple[set[int], set[int]]], types: dict[str, int]) -> None:
    """Switch the planned nodes' float tensors to fp16 and put a Cast on every precision boundary."""
    half_outputs = {graph.node[i].output[j] for i, (_, outs) in plan.items() for j in outs}
    rw = _Rewriter(graph, half_outputs)
    for out in graph.output:  # a graph output the trunk writes: the trunk writes a renamed copy, cast back
        if out.name in half_outputs:
            renamed = rw.unique(f"{out.name}_fp16")
            for node in graph.node:
                node.input[:] = [renamed if n == out.name else n for n in node.input]
                node.output[:] = [renamed if n == out.name else n for n in node.output]
            half_outputs.symmetric_difference_update({out.name, renamed})
            types[renamed] = FLOAT
            rw.casts.append(helper.make_node("Cast", [renamed], [out.name], name=rw.unique(f"Cast_{out.name}"),
                                             to=FLOAT))
            rw.views[renamed, FLOAT] = out.name
    for i, node in enumerate(graph.node):
        half_inputs = plan[i][0] if i in plan else set()
        for j, name in enumerate(node.input):
            if name and types.get(name) == FLOAT:
                node.input[j] = rw.view(name, HALF if j in half_inputs else FLOAT)
        for sub in subgraphs(node):  # a node with subgraphs runs in fp32 (_half_positions): so do their reads
            for name in outer_reads(sub):
                if types.get(name) == FLOAT and (view := rw.view(name, FLOAT)) != name:
                    rename_reads(sub, name, view)
    _place_casts(graph, rw.casts)
    inputs = {i.name for i in graph.input}
    used = {n for node in graph.node for n in node_reads(node)} | inputs
    kept = [t for t in graph.initializer if t.name in used]  # weights now read only as fp16 copies are dropped
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _place_casts(graph: onnx.GraphProto, casts: list[onnx.NodeProto]) -> None:
    """Insert each Cast right after the node writing its input (first, for graph inputs): keeps the order
    topological."""
    after: dict[str, list[onnx.NodeProto]] = {}
    for cast in casts:
        after.setdefault(cast.input[0], []).append(cast)
    produced = {out for node in graph.node for out in node.output}
    ordered = [cast for name, group in after.items() if name not in produced for cast in group]
    for node in graph.node:
        ordered += [node, *(cast for out in node.output for cast in after.get(out, ()))]
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(model: bytes) -> bytes:
    """The model with its convolutional trunk in float16 and its post-processing (decoding, TopK, NMS) in float32,
    its inputs and outputs unchanged: for FP16 benchmark runs that keep FP32's detection logic."""
    proto = onnx.load_model_from_string(model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    types = elem_types(proto)
    plan = {i: pos for i in conv_trunk(graph.node)
            if (pos := _half_positions(graph.node[i], opset, types)) is not None}
    if not any(graph.node[i].op_type in CONV_OPS for i in plan):
        raise ValueError("the graph has no Conv that can run in float16: nothing to convert")
    _rewire(graph, plan, types)
    del graph.value_info[:]  # stale float32 annotations of tensors now float16; onnxruntime infers its own
    onnx.checker.check_model(proto)
    return proto.SerializeToString()

"""Reading and rewiring ONNX graphs with their subgraphs (If, Loop, Scan bodies) in view.

A subgraph may read a tensor of the graph around it by name; code that renames, converts or prunes tensors must
follow those reads too, or the model stops loading (or computes with the wrong tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import onnx

CONV_OPS = frozenset({"Conv", "ConvTranspose"})


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node's attributes hold (If's branches, Loop's and Scan's bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph's nodes, at any depth, read from the scopes around it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {out for node in graph.node for out in node.output}
    reads = {name for node in graph.node for name in node.input if name}
    reads |= {name for node in graph.node for sub in subgraphs(node) for name in outer_reads(sub)}
    return reads - defined


def node_reads(node: onnx.NodeProto) -> set[str]:
    """A node's inputs and what its subgraphs read from outside them."""
    return {n for n in node.input if n} | {n for sub in subgraphs(node) for n in outer_reads(sub)}


def rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every read of `old` in `graph` and its subgraphs becomes a read of `new` (a subgraph that defines its own
    `old` keeps it)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for sub in subgraphs(node):
            if old in outer_reads(sub):
                rename_reads(sub, old, new)


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The inputs', outputs' and intermediate tensors' types (element type, shape where known), from shape
    inference."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {info.name: info.type for info in (*graph.input, *graph.output, *graph.value_info)}


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type, from shape inference (0 where unknown)."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    types.update((name, kind.tensor_type.elem_type) for name, kind in tensor_types(model).items())
    return types


def conv_trunk(nodes: Sequence[onnx.NodeProto]) -> set[int]:
    """Indices of the Conv nodes and of every node they depend on: a detector's backbone, neck and heads (with
    whatever feeds them), as opposed to the post-processing after the last convolutions."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    todo = [i for i, node in enumerate(nodes) if node.op_type in CONV_OPS]
    trunk: set[int] = set()
    while todo:
        i = todo.pop()
        if i not in trunk:
            trunk.add(i)
            todo.extend(producer[name] for name in nodes[i].input if name in producer)
    return trunk


SHAPE_OPS = frozenset({"Shape", "Size"})


class GraphCutError(ValueError):
    """A graph that cannot be cut where its convolutions end (for batching or for post-processing on the CPU)."""


@dataclass(frozen=True)
class Partition:
    """A detector graph cut where its convolutions end: the trunk (every Conv and what it depends on), the
    post-processing (every other node), and what crosses the cut: tensors computed from the input's values, whose
    first dimension is the batch (`per_image`: sliced per image), and tensors that do not depend on the input at
    all (`shared`: the same for every image)."""

    trunk: list[onnx.NodeProto]  # in graph order
    post: list[onnx.NodeProto]  # in graph order
    per_image: list[str]  # in the post-processing's read order; the model input itself if the post-processing reads it
    shared: list[str]

    @property
    def handed_over(self) -> list[str]:
        return self.per_image + self.shared


def partition(graph: onnx.GraphProto, input_name: str) -> Partition:
    """`graph` cut after its convolutions (`conv_trunk`); reads inside the post-processing's subgraphs count. A
    crossing tensor computed from the input's shape (a Shape of it, and what follows) would be wrong for a single
    image of a batch, so it is refused (GraphCutError), naming the tensor."""
    trunk = conv_trunk(graph.node)
    post = [node for i, node in enumerate(graph.node) if i not in trunk]
    made = {out for i in trunk for out in graph.node[i].output} | {input_name}
    reads = [name for node in post for name in sorted(node_reads(node))]
    crossing = [name for name in dict.fromkeys(reads) if name in made]
    kinds = _kinds(graph, input_name)
    if shaped := [name for name in crossing if kinds[name] == "shape"]:
        raise GraphCutError(f"{shaped[0]!r} crosses from the convolutions to the post-processing and is computed from "
                            "the input's shape, not per image: this graph cannot be cut (batch_size > 1, "
                            "postprocess_on_cpu); run it whole")
    return Partition([node for i, node in enumerate(graph.node) if i in trunk], post,
                     [n for n in crossing if kinds[n] == "data"], [n for n in crossing if kinds[n] == "const"])


def _kinds(graph: onnx.GraphProto, input_name: str) -> dict[str, str]:
    """Each tensor as "data" (computed from the input's values), "shape" (from its shape only) or "const"."""
    kinds = {input_name: "data"}
    for node in graph.node:  # ONNX graphs are topologically sorted
        found = {kinds.get(name, "const") for name in node_reads(node)}
        kind = "shape" if node.op_type in SHAPE_OPS and found != {"const"} else next(
            (k for k in ("data", "shape") if k in found), "const")
        kinds.update((out, kind) for out in node.output)
    return kinds

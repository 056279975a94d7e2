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


@dataclass(frozen=True)
class Partition:
    """A detector graph cut where its convolutions end: the trunk (every Conv and what it depends on), the
    post-processing (every other node), and what crosses the cut."""

    trunk: list[onnx.NodeProto]  # in graph order
    post: list[onnx.NodeProto]  # in graph order
    handed_over: list[str]  # tensors the post-processing reads from the trunk or the graph input, in read order


def partition(graph: onnx.GraphProto, input_name: str) -> Partition:
    """`graph` cut after its convolutions (`conv_trunk`); reads inside the post-processing's subgraphs count."""
    trunk = conv_trunk(graph.node)
    post = [node for i, node in enumerate(graph.node) if i not in trunk]
    made = {out for i in trunk for out in graph.node[i].output} | {input_name}
    reads = [name for node in post for name in sorted(node_reads(node))]
    return Partition([node for i, node in enumerate(graph.node) if i in trunk], post,
                     [name for name in dict.fromkeys(reads) if name in made])

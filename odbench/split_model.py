"""Post-processing on the CPU: a detector cut where its convolutions end, into two models.

The trunk (every Conv and what it depends on: `onnx_graph.partition`) runs on the accelerator and hands over its
head maps; the post-processing (decoding, softmax, TopK, NMS) runs on the CPU. On onnxruntime's CUDA provider
the post-processing is a chain of small kernels with host synchronizations (its NMS copies each (batch, class)
pair's count to the host: SSD-ResNet34's 80 classes make 80 round trips per image), so it leaves the GPU idle; on
the CPU it runs while the GPU computes the next samples' trunks (loadgen_concurrency > 1 overlaps them). With
batches, the trunk takes the whole batch and the post-processing runs per image on its slice of the head maps,
so the model needs no batched post-processing at all. Both models are the original nodes, unchanged: per image,
the answer is the whole model's (tests/test_split_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from odbench.batching import batch_input
from odbench.models import ModelSpec
from odbench.onnx_graph import node_reads, partition, tensor_types


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class SplitModel:
    """The two halves of a detector: trunk (model input -> `handed_over`) and post (`handed_over` -> outputs)."""

    trunk: bytes
    post: bytes
    per_image: tuple[str, ...]  # trunk outputs whose first dimension is the batch: each image gets its slice
    shared: tuple[str, ...]  # trunk outputs that do not depend on the input: every image gets them whole
    reads_input: bool  # whether the post-processing also reads the model input itself (its slice)

    @property
    def handed_over(self) -> tuple[str, ...]:
        """The trunk's outputs, in the order its sessions give them."""
        return self.per_image + self.shared


def split(model: bytes | str, spec: ModelSpec, any_batch: bool = False) -> SplitModel:
    """`model` cut after its convolutions; `any_batch`: the trunk's batch dimension becomes symbolic."""
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    cut = partition(proto.graph, spec.input.name)
    if not cut.trunk or not cut.post:
        raise SplitError(f"graph {proto.graph.name!r} has no convolutions followed by post-processing: nothing "
                         "to split; drop postprocess_on_cpu")
    types = tensor_types(proto)
    per_image = [name for name in cut.per_image if name != spec.input.name]
    crossing = per_image + cut.shared
    model_input = next(i for i in proto.graph.input if i.name == spec.input.name)
    trunk = _subgraph(proto, cut.trunk, [model_input], [_declare(n, types) for n in crossing], "trunk")
    if any_batch:
        batch_input(trunk.graph, spec.input.name)
    reads_input = spec.input.name in cut.handed_over
    post_inputs = [_declare(n, types) for n in crossing] + ([model_input] if reads_input else [])
    post = _subgraph(proto, cut.post, post_inputs, list(proto.graph.output), "post")
    return SplitModel(trunk.SerializeToString(), post.SerializeToString(), tuple(per_image), tuple(cut.shared),
                      reads_input)


def _declare(name: str, types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto:
    """A tensor crossing the cut: its element type and rank, its dimensions left open (they vary with the batch)."""
    tensor = types[name].tensor_type if name in types else None
    if tensor is None or not tensor.elem_type:
        raise SplitError(f"the type of {name!r}, which crosses from the convolutions to the post-processing, "
                         "cannot be inferred: this graph cannot be split")
    rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
    return helper.make_tensor_value_info(name, tensor.elem_type, None if rank is None else [None] * rank)


def _subgraph(proto: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], part: str) -> onnx.ModelProto:
    """A model of `nodes` with the initializers they (or their subgraphs) read, and the original's opsets."""
    read = {name for node in nodes for name in node_reads(node)}
    weights = [t for t in proto.graph.initializer if t.name in read]
    graph = helper.make_graph(nodes, f"{proto.graph.name}_{part}", inputs, outputs, initializer=weights)
    return helper.make_model(graph, ir_version=proto.ir_version, opset_imports=proto.opset_import,
                             producer_name=f"odbench.split_model ({part})")

"""Batches for the stand-ins: a batch-1 detector graph rewritten to take [B, ...] and answer [B, D, ...].

The convolutional trunk (every Conv and what it depends on: `onnx_graph.partition`) is left as it is and runs on
the whole batch: that is where the FLOPs are. The post-processing (decoding, TopK, NMS) has data-dependent shapes
and is written for one image, so it moves, unchanged, into the body of a Loop over the batch: iteration i slices
image i out of every tensor the trunk hands over and runs the original nodes on it. Each image's detections are
padded to the model's `max_detections` (D) so the Loop can stack them: outputs are boxes [B, D, 4], scores [B, D]
and labels [B, D]; padding rows have label PAD_LABEL, score 0 and box 0, and `unbatch` drops them. Per image the
answer is the batch-1 graph's (tests/test_batching.py compares them).

This works for graphs whose trunk ignores the batch size, as the stand-ins' do. The official files were exported
with batch 1, so the benchmark refuses batch_size > 1 for them (odbench/params.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from odbench.models import ModelSpec, TensorSpec
from odbench.onnx_graph import partition, rename_reads

PAD_LABEL = -1  # the label of a padding row (no detection)
BATCH_DIM = "batch"
PREFIX = "odbench_batch"  # names of the nodes and tensors this module adds start with this
MIN_OPSET = 15  # Shape with start/end
_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


class BatchingError(ValueError):
    pass


COUNTS = f"{PREFIX}_counts"  # the extra output: [B, 3] int64, each image's boxes, scores and labels before padding


def batched(model: bytes | str, spec: ModelSpec) -> bytes:
    """`model` (a batch-1 graph with `spec`'s contract) taking a batch of any size: see the module docstring."""
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0) < MIN_OPSET:
        raise BatchingError(f"batching writes opset {MIN_OPSET} nodes; this graph's opset is older")
    graph = proto.graph
    cut = partition(graph, spec.input.name)
    if not cut.trunk:
        raise BatchingError(f"graph {graph.name!r} has no convolutions: nothing to batch")
    outputs = [spec.boxes.name, spec.scores.name, spec.labels.name]
    if extra := {o.name for o in graph.output} - set(outputs):
        raise BatchingError(f"graph output {sorted(extra)[0]!r} is not one of the spec's detections: cannot batch it")
    constants: list[onnx.TensorProto] = []
    body = _loop_body(cut.post, cut.per_image, spec, constants)
    count = f"{PREFIX}/count"
    first = _const(constants, "zero", np.array(0, np.int64))
    loop_nodes = [
        helper.make_node("Shape", [spec.input.name], [f"{PREFIX}/input_shape"], name=f"{PREFIX}/Shape"),
        helper.make_node("Gather", [f"{PREFIX}/input_shape", first], [count], name=f"{PREFIX}/Gather", axis=0),
        helper.make_node("Loop", [count, ""], [*outputs, COUNTS], name=f"{PREFIX}/Loop", body=body),
    ]
    del graph.node[:]
    graph.node.extend(cut.trunk + loop_nodes)
    del graph.value_info[:]  # shapes inferred for batch 1, some now inside the loop
    graph.initializer.extend(constants)
    del graph.output[:]
    graph.output.extend([*(_declare(t, spec, batch=True) for t in (spec.boxes, spec.scores, spec.labels)),
                         helper.make_tensor_value_info(COUNTS, onnx.TensorProto.INT64, [BATCH_DIM, 3])])
    batch_input(graph, spec.input.name)
    return proto.SerializeToString()


def _loop_body(post: list[onnx.NodeProto], per_image: list[str], spec: ModelSpec,
               constants: list[onnx.TensorProto]) -> onnx.GraphProto:
    """The Loop body: slice image i of each per-image tensor, run the post-processing, pad its detections."""
    index, cond = f"{PREFIX}/i", f"{PREFIX}/cond"
    body = helper.make_graph(list(post), f"{PREFIX}/per_image",
                             [helper.make_tensor_value_info(index, onnx.TensorProto.INT64, []),
                              helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, [])], [])
    axis0 = _const(constants, "axis0", np.array([0], np.int64))
    start, stop = f"{PREFIX}/start", f"{PREFIX}/stop"
    head = [helper.make_node("Unsqueeze", [index, axis0], [start], name=f"{PREFIX}/Unsqueeze"),
            helper.make_node("Add", [start, _const(constants, "one", np.array([1], np.int64))], [stop],
                             name=f"{PREFIX}/Add")]
    for n, name in enumerate(per_image):
        image = f"{PREFIX}/image{n}"
        rename_reads(body, name, image)
        head.append(helper.make_node("Slice", [name, start, stop, axis0], [image], name=f"{PREFIX}/Slice{n}"))
    for position, node in enumerate(head):
        body.node.insert(position, node)
    body.node.append(helper.make_node("Identity", [cond], [f"{PREFIX}/cond_out"], name=f"{PREFIX}/cond_out"))
    body.output.append(helper.make_tensor_value_info(f"{PREFIX}/cond_out", onnx.TensorProto.BOOL, []))
    tensors = (spec.boxes, spec.scores, spec.labels)
    for tensor in tensors:
        body.node.extend(_padded(tensor, [4] if tensor is spec.boxes else [], spec.max_detections, constants))
        body.output.append(_declare(tensor, spec, batch=False, name=f"{PREFIX}/padded/{tensor.name}"))
    counts = f"{PREFIX}/counts"
    body.node.append(helper.make_node("Concat", [f"{PREFIX}/{t.name}/count" for t in tensors], [counts],
                                      name=counts, axis=0))
    body.output.append(helper.make_tensor_value_info(counts, onnx.TensorProto.INT64, [3]))
    return body


def _padded(tensor: TensorSpec, trailing: list[int], rows: int,
            constants: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Nodes reshaping one image's output to [K, *trailing], padding it to at least `rows` rows (PAD_LABEL, or 0)
    and keeping the first `rows`; `<prefix>/<name>/count` is K."""
    base = f"{PREFIX}/{tensor.name}"
    dtype = np.int64 if tensor.dtype == "int64" else np.float32
    fill = _const(constants, f"fill/{tensor.name}", np.array(PAD_LABEL if dtype is np.int64 else 0, dtype))
    shape = _const(constants, f"rows/{tensor.name}", np.array([-1, *trailing], np.int64))
    wanted = _const(constants, "rows", np.array([rows], np.int64))
    begins = _const(constants, f"zeros{len(trailing) + 1}", np.zeros(len(trailing) + 1, np.int64))
    ends = _const(constants, f"zeros{len(trailing)}", np.zeros(len(trailing), np.int64))
    zero = _const(constants, "axis0", np.array([0], np.int64))  # [0]: an axis, a start, the least pad
    nodes = [("Reshape", [tensor.name, shape], "flat", {}),
             ("Shape", ["flat"], "count", {"start": 0, "end": 1}),
             ("Sub", [wanted, "count"], "short", {}),
             ("Max", ["short", zero], "missing", {}),  # no negative pad: Pad would crop
             ("Concat", [begins, "missing", ends], "pads", {"axis": 0}),  # [begins..., ends...]
             ("Pad", ["flat", "pads", fill], "padded", {}),
             ("Slice", ["padded", zero, wanted, zero], "kept", {})]
    local = {label: f"{base}/{label}" for _, _, label, _ in nodes}
    local["kept"] = f"{PREFIX}/padded/{tensor.name}"
    return [helper.make_node(op, [local.get(i, i) for i in inputs], [local[out]], name=local[out], **attrs)
            for op, inputs, out, attrs in nodes]


def _declare(tensor: TensorSpec, spec: ModelSpec, batch: bool, name: str | None = None) -> onnx.ValueInfoProto:
    """An output's declaration: [D, 4] or [D] per image; with `batch`, [batch, D, ...]."""
    trailing = [4] if tensor is spec.boxes else []
    dims = ([BATCH_DIM] if batch else []) + [spec.max_detections, *trailing]
    return helper.make_tensor_value_info(name or tensor.name, _ONNX_TYPES[tensor.dtype], dims)


def batch_input(graph: onnx.GraphProto, name: str) -> None:
    """The model input's first dimension becomes the symbolic batch dimension."""
    dim = next(i for i in graph.input if i.name == name).type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = BATCH_DIM


def _const(constants: list[onnx.TensorProto], label: str, value: np.ndarray) -> str:
    """A named constant (one per label), kept in the outer graph and read by the loop body."""
    name = f"{PREFIX}/{label}"
    if all(c.name != name for c in constants):
        constants.append(numpy_helper.from_array(value, name))
    return name


def unbatch(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, counts: np.ndarray,
            images: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A batched model's outputs as the first `images` images' (boxes [K, 4], scores [K], labels [K]), each cut to
    its own counts; an image with more rows than the graph carries (max_detections) is an error."""
    answers = []
    for i in range(images):
        if int(counts[i].max()) > boxes.shape[1]:
            raise ValueError(f"image {i} of a batch has {int(counts[i].max())} detections, more than the "
                             f"{boxes.shape[1]} its batched graph carries (max_detections); run it with batch_size=1 "
                             "to have the output checks count them")
        answers.append((boxes[i][:counts[i][0]], scores[i][:counts[i][1]], labels[i][:counts[i][2]]))
    return answers

"""Check that an ONNX model file has the exact input/output contract its `ModelSpec` describes.

Run before a benchmark so a wrong or corrupt file fails with one precise message instead of an
obscure runtime error mid-run. Matching rules:

- the graph must have exactly one real input (graph inputs that are initializers are weights);
- each of the spec's boxes/scores/labels outputs must exist by name (extra outputs are allowed), with
  the spec's dtype and rank; their order in the graph does not matter, since the backend asks
  onnxruntime for its outputs by name (`spec.output_order` is only the official files' order);
- a dimension matches when the spec's dim is None (dynamic), the model's dim is symbolic or
  unknown (it cannot be checked statically), or both are the same integer;
- a tensor whose model shape is absent altogether (unknown rank) matches any spec shape.
"""

from __future__ import annotations

import os

import onnx
from onnx import helper

from odbench.models import Dim, ModelSpec, TensorSpec

Shape = tuple[Dim, ...] | None  # None: the model declares no shape (unknown rank)


class ModelContractError(ValueError):
    """The model file is not an ONNX model, or its inputs/outputs differ from the spec."""


def _load(model: bytes | str | os.PathLike, model_name: str) -> onnx.ModelProto:
    """Parse the model (without external weights); anything not an ONNX model is an error."""
    what = "model bytes" if isinstance(model, bytes) else f"model file {os.fspath(model)}"
    prefix = f"cannot check the {model_name} contract: {what} is not an ONNX model"
    try:
        proto = (onnx.load_model_from_string(model) if isinstance(model, bytes)
                 else onnx.load_model(model, load_external_data=False))
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise ModelContractError(f"{prefix} ({exc})") from exc
    if not proto.ir_version or not proto.HasField("graph"):
        raise ModelContractError(f"{prefix} (no IR version or graph)")
    return proto


def _dtype(type_proto: onnx.TypeProto) -> str:
    """The numpy dtype name of a tensor type ('non-tensor' / 'undefined' otherwise)."""
    if type_proto.WhichOneof("value") != "tensor_type":
        return "non-tensor"
    elem = type_proto.tensor_type.elem_type
    if elem == onnx.TensorProto.UNDEFINED:
        return "undefined"
    return helper.tensor_dtype_to_np_dtype(elem).name


def _shape(type_proto: onnx.TypeProto) -> Shape:
    """The declared dims (None for symbolic/unknown), or None when no shape is declared."""
    tensor = type_proto.tensor_type
    if type_proto.WhichOneof("value") != "tensor_type" or not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _describe(info: onnx.ValueInfoProto) -> str:
    """A model tensor in TensorSpec's notation, e.g. 'images' float32[1,3,800,800]."""
    shape = _shape(info.type)
    if shape is None:
        return f"'{info.name}' {_dtype(info.type)}[unknown rank]"
    return TensorSpec(info.name, _dtype(info.type), shape).describe()


def _shape_matches(expected: tuple[Dim, ...], got: Shape) -> bool:
    """Whether a model shape satisfies a spec shape (None dims on either side match anything)."""
    if got is None:
        return True
    return len(got) == len(expected) and all(
        e is None or g is None or e == g for e, g in zip(expected, got))


def _matches(expected: TensorSpec, info: onnx.ValueInfoProto) -> bool:
    """Whether a model tensor has the spec's name, dtype and shape."""
    return (info.name == expected.name and _dtype(info.type) == expected.dtype
            and _shape_matches(expected.shape, _shape(info.type)))


def _mismatch(kind: str, expected: TensorSpec, info: onnx.ValueInfoProto) -> str:
    """One problem line: what the spec wants and what the model has."""
    wanted = expected.describe().split(" ", 1)[1]
    return f"{kind} '{expected.name}' expected {wanted}, got {_describe(info)}"


def _input_problems(graph: onnx.GraphProto, expected: TensorSpec) -> list[str]:
    """Problems with the graph's single real input."""
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        got = ", ".join(_describe(i) for i in inputs) or "none"
        return [f"expected 1 input {expected.describe()}, got {len(inputs)}: {got}"]
    return [] if _matches(expected, inputs[0]) else [_mismatch("input", expected, inputs[0])]


def _output_problems(graph: onnx.GraphProto, spec: ModelSpec) -> list[str]:
    """Problems with the boxes/scores/labels outputs, matched by name in any order: missing, or a
    wrong dtype/shape."""
    outputs = {o.name: o for o in graph.output}
    by_name = {t.name: t for t in (spec.boxes, spec.scores, spec.labels)}
    problems = []
    for expected in (by_name[name] for name in spec.output_order):  # problems listed in the official order
        if expected.name not in outputs:
            problems.append(f"output '{expected.name}' missing (outputs: {', '.join(outputs) or 'none'})")
        elif not _matches(expected, outputs[expected.name]):
            problems.append(_mismatch("output", expected, outputs[expected.name]))
    return problems


def validate_model(model: bytes | str | os.PathLike, spec: ModelSpec) -> None:
    """Raise ModelContractError listing every way the model's I/O differs from `spec`."""
    graph = _load(model, spec.name).graph
    problems = _input_problems(graph, spec.input) + _output_problems(graph, spec)
    if problems:
        raise ModelContractError(
            f"model file does not match the {spec.name} contract: {'; '.join(problems)}")

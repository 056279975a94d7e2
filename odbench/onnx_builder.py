"""Small helpers to write convolutional detectors as ONNX graphs with `onnx.helper` and numpy weights,
and to measure them.

The full-size stand-ins (odbench/standin_full.py) are built from these parts, without PyTorch:
convolutions whose batch normalization is already folded into weights and bias (as in the exported
real models), ReLU, grouped convolutions (ResNeXt's cardinality), one parameterised residual block
for ResNet's basic and bottleneck blocks, an FPN top-down path and shared per-level heads.

Weights are seeded random numbers, He-scaled so that activations keep roughly unit scale through a
deep stack: the last convolution of each residual branch is scaled down (`RESIDUAL_GAIN`) so the sum of
a dozen residual blocks grows gently instead of doubling per block. Prediction heads are zero-DC and
calibrated on one probe image (`calibrate`), so random scores have a chosen spread for any seed.

`count_flops` counts a graph's FLOPs (2 per multiply-accumulate) from ONNX shape inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RELU_GAIN = math.sqrt(2.0)  # He initialization: keeps the second moment through conv + ReLU
RESIDUAL_GAIN = 0.4  # the last conv of a residual branch, relative to RELU_GAIN
ONNX_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


@dataclass(frozen=True)
class ConvWeights:
    """The initializer names of one convolution, plus what applying it needs."""

    weight: str
    bias: str
    kernel: int
    groups: int


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of a residual branch: output channels, kernel side, stride, groups."""

    out_ch: int
    kernel: int
    stride: int = 1
    groups: int = 1


@dataclass(frozen=True)
class Calibration:
    """A conv whose weights are rescaled after the build so that its outputs' spread about each channel's
    mean, measured on a probe image, is `target_std` (one weight may feed several outputs: shared heads)."""

    weight: str
    outputs: tuple[str, ...]
    target_std: float


class GraphBuilder:
    """Accumulates nodes and initializers, hands out unique tensor names and counts parameters."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.parameters = 0  # learned weights only (convolution weights and biases), not constants
        self.calibrations: list[Calibration] = []

    def const(self, value: np.ndarray | list | float | int, dtype: type = np.float32) -> str:
        """Add a constant initializer (anchors, shapes, thresholds) and return its name."""
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def param(self, value: np.ndarray, name: str) -> str:
        """Add a learned-weight initializer (counted in `parameters`) and return its name."""
        self.parameters += value.size
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def ops(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None,
            **attrs: object) -> list[str]:
        """Add a node and return its output names (`name` names a single output)."""
        index = len(self.nodes)
        outs = [name] if name else [f"{op_type.lower()}{index}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{index}", **attrs))
        return outs

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        """Add a single-output node and return its output name."""
        return self.ops(op_type, *inputs, name=name, **attrs)[0]

    def conv_weights(self, name: str, in_ch: int, out_ch: int, kernel: int, groups: int = 1,
                     gain: float = RELU_GAIN, bias: np.ndarray | float = 0.0, zero_dc: bool = False) -> ConvWeights:
        """He-scaled seeded weights [out, in/groups, k, k] and a bias (a BN folded into the conv).

        `zero_dc` makes each filter's k x k taps sum to zero per input channel (same variance): the conv
        then ignores the large per-channel offsets of ReLU features and answers only to spatial structure,
        which is what makes a random prediction head's scores follow the image (see standin_full)."""
        fan_in = in_ch // groups * kernel * kernel
        shape = (out_ch, in_ch // groups, kernel, kernel)
        weight = self.rng.standard_normal(shape, dtype=np.float32)
        if zero_dc and kernel > 1:
            weight -= weight.mean(axis=(2, 3), keepdims=True)
            weight *= np.float32(kernel / math.sqrt(kernel * kernel - 1))
        weight *= np.float32(gain / math.sqrt(fan_in))
        bias_values = np.broadcast_to(np.asarray(bias, np.float32), (out_ch,))
        return ConvWeights(self.param(weight, f"{name}.weight"), self.param(bias_values, f"{name}.bias"),
                           kernel, groups)

    def apply_conv(self, x: str, w: ConvWeights, stride: int = 1, pad: int | None = None) -> str:
        """Convolve with existing weights ("same" padding k//2 unless `pad` says otherwise)."""
        p = w.kernel // 2 if pad is None else pad
        return self.op("Conv", x, w.weight, w.bias, kernel_shape=[w.kernel, w.kernel], strides=[stride, stride],
                       pads=[p, p, p, p], group=w.groups)

    def conv(self, name: str, x: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
             pad: int | None = None, groups: int = 1, relu: bool = True, gain: float = RELU_GAIN) -> str:
        """A new convolution (BN folded in), optionally followed by ReLU."""
        y = self.apply_conv(x, self.conv_weights(name, in_ch, out_ch, kernel, groups, gain), stride, pad)
        return self.op("Relu", y) if relu else y

    def calibrate(self, w: ConvWeights, outputs: Sequence[str], target_std: float) -> None:
        """Mark a conv for `calibrate` (its outputs' spread on a probe image becomes `target_std`)."""
        self.calibrations.append(Calibration(w.weight, tuple(outputs), target_std))

    def columns(self, x: str, start: int, end: int, axis: int = -1) -> str:
        """Elements start..end of `x` along `axis`."""
        return self.op("Slice", x, self.const([start], np.int64), self.const([end], np.int64),
                       self.const([axis], np.int64))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(list(shape), np.int64))


BranchFactory = Callable[[int], list[ConvSpec]]  # stride -> the convs of one residual branch


def residual_block(g: GraphBuilder, name: str, x: str, in_ch: int, branch: Sequence[ConvSpec]) -> str:
    """ResNet v1 block: relu(branch(x) + shortcut(x)). The branch's convs are ReLU-separated; the shortcut
    is the identity, or a 1x1 projection (strided like the branch) when channels or resolution change.
    One function for ResNet's basic block ([3x3, 3x3]) and its (grouped) bottleneck ([1x1, 3x3/g, 1x1])."""
    y, ch = x, in_ch
    for i, spec in enumerate(branch):
        last = i == len(branch) - 1
        y = g.conv(f"{name}.conv{i + 1}", y, ch, spec.out_ch, spec.kernel, spec.stride, groups=spec.groups,
                   relu=not last, gain=RELU_GAIN * RESIDUAL_GAIN if last else RELU_GAIN)
        ch = spec.out_ch
    stride = math.prod(spec.stride for spec in branch)
    shortcut = x
    if stride != 1 or ch != in_ch:
        shortcut = g.conv(f"{name}.downsample", x, in_ch, ch, 1, stride, relu=False, gain=1.0)
    return g.op("Relu", g.op("Add", y, shortcut))


def basic_branch(out_ch: int, stride: int) -> list[ConvSpec]:
    """ResNet18/34's basic block: two 3x3 convs, the first strided."""
    return [ConvSpec(out_ch, 3, stride), ConvSpec(out_ch, 3)]


def bottleneck_branch(width: int, out_ch: int, stride: int, groups: int = 1) -> list[ConvSpec]:
    """ResNet50 / ResNeXt's bottleneck (torchvision v1.5: the stride on the 3x3, which is grouped)."""
    return [ConvSpec(width, 1), ConvSpec(width, 3, stride, groups), ConvSpec(out_ch, 1)]


def res_stage(g: GraphBuilder, name: str, x: str, in_ch: int, blocks: int,
              branch: BranchFactory, stride: int) -> tuple[str, int]:
    """A stage of `blocks` residual blocks, the first with `stride`; returns (output, channels)."""
    for i in range(blocks):
        specs = branch(stride if i == 0 else 1)
        x = residual_block(g, f"{name}.{i}", x, in_ch, specs)
        in_ch = specs[-1].out_ch
    return x, in_ch


def resnet_stem(g: GraphBuilder, x: str, out_ch: int = 64) -> str:
    """ResNet's stem: 7x7/2 conv (BN folded) + ReLU, then 3x3/2 max pooling: a quarter of the resolution."""
    x = g.conv("conv1", x, 3, out_ch, 7, 2)
    return g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


def fpn(g: GraphBuilder, features: Sequence[tuple[str, int]], out_ch: int) -> list[str]:
    """Feature pyramid (torchvision FeaturePyramidNetwork): 1x1 laterals, nearest-upsampled top-down sum,
    3x3 output convs; `features` are (tensor, channels) from fine to coarse, outputs likewise."""
    outputs: list[str] = []
    top = ""
    for i, (x, ch) in reversed(list(enumerate(features))):
        lateral = g.conv(f"fpn.inner{i}", x, ch, out_ch, 1, relu=False, gain=1.0)
        if top:
            up = g.op("Resize", top, "", "", g.op("Shape", lateral), mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            lateral = g.op("Add", lateral, up)
        top = lateral
        outputs.insert(0, g.conv(f"fpn.layer{i}", top, out_ch, out_ch, 3, relu=False, gain=1.0))
    return outputs


def shared_head(g: GraphBuilder, name: str, features: Sequence[str], ch: int, num_convs: int,
                out_ch: int, out_std: float, out_bias: np.ndarray | float) -> list[str]:
    """RetinaNet's head: `num_convs` 3x3 conv + ReLU then a 3x3 conv to `out_ch`, the same weights applied
    to every pyramid level; returns the raw [1, out_ch, H, W] map of each level. The output conv is zero-DC
    (`GraphBuilder.conv_weights`), so random scores follow the image's structure, and calibrated to a
    spread of `out_std` over all levels."""
    tower = [g.conv_weights(f"{name}.conv{i}", ch, ch, 3) for i in range(num_convs)]
    final = g.conv_weights(f"{name}.out", ch, out_ch, 3, gain=1.0, bias=out_bias, zero_dc=True)
    outputs = []
    for x in features:
        for w in tower:
            x = g.op("Relu", g.apply_conv(x, w))
        outputs.append(g.apply_conv(x, final))
    g.calibrate(final, outputs, out_std)
    return outputs


CALIBRATION_STEPS_PER_OCTAVE = 32  # scales are rounded to 2^(n/32): the same bytes whatever CPU measured them


def calibrate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], calibrations: Sequence[Calibration],
              threads: int = 2) -> dict[str, float]:
    """Run the model once on `feeds` (onnxruntime, CPU) and rescale each calibrated conv's weights in place
    so its outputs' spread about their channel means is its target; returns the scale of each weight.

    Random weights make a deep network's gain wander by tens of percent from seed to seed; one measured
    pass pins the heads' output spread, and so the number and scores of detections, for any seed."""
    import onnxruntime as ort

    extra = sorted({name for c in calibrations for name in c.outputs})
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    finally:
        del model.graph.output[len(model.graph.output) - len(extra):]
    measured = dict(zip(extra, session.run(extra, feeds)))
    by_name = {t.name: t for t in model.graph.initializer}
    scales = {}
    for c in calibrations:
        spread = _spread([measured[name] for name in c.outputs])
        steps = round(math.log2(c.target_std / spread) * CALIBRATION_STEPS_PER_OCTAVE)
        scales[c.weight] = 2.0 ** (steps / CALIBRATION_STEPS_PER_OCTAVE)
        tensor = by_name[c.weight]
        scaled = numpy_helper.to_array(tensor) * np.float32(scales[c.weight])
        tensor.CopyFrom(numpy_helper.from_array(scaled, c.weight))
    return scales


def _spread(maps: Sequence[np.ndarray]) -> float:
    """The standard deviation of [1, C, H, W] maps about each map's per-channel spatial mean, pooled."""
    squares = sum(float(((m - m.mean(axis=(2, 3), keepdims=True)) ** 2).sum()) for m in maps)
    return math.sqrt(squares / sum(m.size for m in maps))


def value_info(name: str, dtype: str, shape: Sequence[int | None], dynamic: str) -> onnx.ValueInfoProto:
    """A graph input/output declaration; None dims become the symbolic dimension `dynamic`."""
    dims = [dynamic if d is None else d for d in shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], dims)




# -- measuring a graph: FLOPs from shape inference -------------------------------------------------------------

FLOPS_PER_MAC = 2  # one multiply-accumulate = two floating-point operations (the MLPerf paper's convention)
_SMALL_CONSTANT = 64  # initializers up to this many elements keep their values for shape inference (shapes, axes)


def count_flops(model: bytes | onnx.ModelProto, input_shape: Sequence[int] | None = None) -> int:
    """FLOPs of one inference: 2 x the multiply-accumulates of every Conv, ConvTranspose, Gemm and MatMul,
    with shapes from ONNX shape inference (`input_shape` overrides the single real input's declared shape).
    Element-wise ops, pooling, softmax and the NMS are not counted: under 1% in a CNN detector."""
    return FLOPS_PER_MAC * count_macs(model, input_shape)


def count_macs(model: bytes | onnx.ModelProto, input_shape: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of one inference (see `count_flops`)."""
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else model
    shapes = _inferred_shapes(proto, input_shape)
    return sum(_node_macs(node, shapes) for node in proto.graph.node)


def _inferred_shapes(model: onnx.ModelProto, input_shape: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """Every tensor's static shape, from shape inference on a weightless copy of the graph (large weights
    become typed inputs, so inference neither copies nor reads hundreds of megabytes)."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    small = [t for t in weights.values() if math.prod(t.dims) <= _SMALL_CONSTANT]
    typed = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in weights.values() if math.prod(t.dims) > _SMALL_CONSTANT]
    inputs = [_with_shape(i, input_shape) for i in graph.input if i.name not in weights]
    if input_shape is not None and len(inputs) != 1:
        raise ValueError(f"input_shape given, but the graph has {len(inputs)} real inputs")
    stripped = helper.make_model(helper.make_graph(graph.node, graph.name, inputs + typed, graph.output, small),
                                 ir_version=model.ir_version, opset_imports=model.opset_import)
    inferred = onnx.shape_inference.infer_shapes(stripped, data_prop=True).graph
    shapes = {t.name: tuple(t.dims) for t in weights.values()}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


def _with_shape(info: onnx.ValueInfoProto, shape: Sequence[int] | None) -> onnx.ValueInfoProto:
    """The input declaration, with `shape` in place of its declared dims when given."""
    if shape is None:
        return info
    return helper.make_tensor_value_info(info.name, info.type.tensor_type.elem_type, list(shape))


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node (0 for uncounted op types)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    needed = [node.input[0], node.input[1], node.output[0]]
    missing = [name for name in needed if name not in shapes]
    if missing:
        raise ValueError(f"cannot count {node.op_type} node {node.name!r}: no static shape for {missing}")
    a, b, out = (shapes[name] for name in needed)
    if node.op_type == "Conv":  # each output element: in_ch/groups x kernel taps
        return math.prod(out) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":  # each input element: out_ch/groups x kernel taps
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[1])
    return math.prod(out) * a[-1]  # MatMul

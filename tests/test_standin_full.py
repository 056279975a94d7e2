"""Full-size stand-ins: the real architectures' size and FLOPs, the exact I/O contract, sane detections.

Each model is built once (a few seconds: weights plus one calibration pass) and run once on a real-ish
image on one CPU thread; the whole file takes about a minute on two cores.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from odbench.coco import COCO_CATEGORY_IDS
from odbench.models import MODELS, LabelSpace, ModelSpec
from odbench.onnx_builder import count_flops, count_macs
from odbench.output_checks import check_outputs
from odbench.preprocess import decode_resize, to_model_input
from odbench.standin_full import ARCHITECTURES, build_full_standin, describe, probe_input
from odbench.validation import validate_model

SPECS = [MODELS[name] for name in ARCHITECTURES]
# Published or independently derived figures, FLOPs = 2 x multiply-accumulates (docs/standins.md):
# SSD-ResNet34: 433 GFLOPs, MLPerf Inference paper. RetinaNet: detectron2's RetinaNet R50-FPN at 800x800,
# 146 G multiply-accumulates (80 classes), plus the class head's extra classes (256 x 3 x 3 inputs,
# 9 anchors, 13,343 positions over P3-P7).
_CLASS_TERM = 2 * 256 * 9 * 9 * 13_343
REFERENCE_FLOPS = {
    "ssd_resnet34": 433e9,
    "retinanet_coco": 2 * 146e9 + (91 - 80) * _CLASS_TERM,
    "retinanet_openimages": 2 * 146e9 + (264 - 80) * _CLASS_TERM,
}
# torchvision retinanet_resnet50_fpn (91 classes): 34,014,999 parameters; ResNeXt50-32x4d has ~0.5 M fewer
# than ResNet50; OpenImages adds 173 classes x 9 anchors of 256 x 3 x 3 weights (+ bias).
REFERENCE_PARAMS = {
    "ssd_resnet34": 19.9e6,  # ssd_r34.py's layers: ResNet34 to layer3 8.2 M, extras 3.6 M, heads 8.2 M
    "retinanet_coco": 34_014_999 - 0.53e6,
    "retinanet_openimages": 34_014_999 - 0.53e6 + 173 * 9 * (256 * 9 + 1),
}
TOLERANCE = 0.15


@functools.cache
def _built(name: str, seed: int = 0) -> bytes:
    """Build once per model and seed: several tests share it."""
    return build_full_standin(MODELS[name], seed)


@pytest.fixture(scope="module")
def real_image(request) -> bytes | None:
    """The first JPEG of the real mini COCO set; None where it is absent. (Not the synthetic set: its small,
    flat, upscaled images are too smooth for random RetinaNet heads to score anything; docs/standins.md.)"""
    try:
        mini = request.getfixturevalue("mini_dir")
    except pytest.skip.Exception:
        return None
    return sorted((mini / "val2017").glob("*.jpg"))[0].read_bytes()


def _label_space(spec: ModelSpec) -> set[int]:
    """Labels the spec allows, written out independently of the builder."""
    if spec.label_space is LabelSpace.COCO_IDS:
        return set(COCO_CATEGORY_IDS)
    if spec.label_space is LabelSpace.COCO_CONTIGUOUS:
        return set(range(1, 81))
    return set(range(spec.num_classes))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_standin_honours_the_contract(spec: ModelSpec) -> None:
    data = _built(spec.name)
    model = onnx.load_model_from_string(data)
    onnx.checker.check_model(model)
    validate_model(data, spec)
    assert model.ir_version == 10
    assert [o.name for o in model.graph.output] == list(spec.output_order)
    assert 70e6 < len(data) < 160e6  # full-size float32 weights


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_standin_has_the_real_size_and_flops(spec: ModelSpec) -> None:
    model = onnx.load_model_from_string(_built(spec.name))
    info = describe(model)
    flops = count_flops(model)
    print(f"{spec.name}: {info['parameters'] / 1e6:.2f} M parameters, {flops / 1e9:.1f} GFLOPs "
          f"(reference {REFERENCE_FLOPS[spec.name] / 1e9:.1f})")
    assert flops == info["flops_per_image"]
    assert abs(flops / REFERENCE_FLOPS[spec.name] - 1) <= TOLERANCE
    assert abs(info["parameters"] / REFERENCE_PARAMS[spec.name] - 1) <= 0.05


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_standin_detects_sanely_on_a_real_image(spec: ModelSpec, real_image: bytes | None) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine is shared
    session = ort.InferenceSession(_built(spec.name), options, providers=["CPUExecutionProvider"])
    x = probe_input(spec) if real_image is None else to_model_input(decode_resize(real_image, spec.resolution), spec)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {spec.input.name: x})))
    boxes, scores, labels = out[spec.boxes.name], out[spec.scores.name], out[spec.labels.name]
    for tensor, value in ((spec.boxes, boxes), (spec.scores, scores), (spec.labels, labels)):
        assert value.dtype == np.dtype(tensor.dtype)
        assert len(value.shape) == len(tensor.shape)
        assert all(d is None or d == v for d, v in zip(tensor.shape, value.shape))
    checked = check_outputs(boxes, scores, labels, spec)
    assert checked.problems == {}
    assert 10 <= len(checked.scores) <= spec.max_detections
    assert set(checked.labels.tolist()) <= _label_space(spec)
    assert len(set(checked.labels.tolist())) >= 5  # scores follow the image, not one dominant class
    assert np.all(np.diff(checked.scores) <= 0) and checked.scores.min() > 0.05
    assert np.all(checked.boxes[:, 2:] >= checked.boxes[:, :2])


def test_full_standin_is_deterministic_for_a_seed() -> None:
    spec = MODELS["retinanet_coco"]
    assert build_full_standin(spec, 0) == _built(spec.name, 0)
    assert build_full_standin(spec, 1) != _built(spec.name, 0)


def test_unknown_model_is_refused() -> None:
    spec = MODELS["ssd_resnet34"]
    with pytest.raises(ValueError, match="no full-size stand-in"):
        build_full_standin(dataclasses.replace(spec, name="yolo"))


def test_count_flops_counts_conv_gemm_and_matmul() -> None:
    """2 x multiply-accumulates, with shapes inferred and the input shape overridable."""
    weights = [numpy_helper.from_array(np.zeros(shape, np.float32), name) for name, shape in
               (("w", (8, 2, 3, 3)), ("g", (8 * 4 * 4, 10)), ("m", (10, 6)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], group=2),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"]),
             helper.make_node("MatMul", ["y", "m"], ["z"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    conv, gemm, matmul = 8 * 4 * 4 * (2 * 9), 128 * 10, 10 * 6
    assert count_macs(model) == conv + gemm + matmul
    assert count_flops(model.SerializeToString()) == 2 * (conv + gemm + matmul)
    conv_out = helper.make_tensor_value_info("c", TensorProto.FLOAT, None)
    conv_only = helper.make_model(helper.make_graph(nodes[:1], "c", list(graph.input), [conv_out], weights[:1]),
                                  ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    assert count_macs(conv_only, (1, 4, 16, 16)) == 8 * 8 * 8 * (2 * 9)  # the input shape overridden


def test_model_url_standin_full_runs_the_benchmark_labelled_a_stand_in(synthetic_dir, tmp_path) -> None:
    """`model_url=standin-full` is built on demand, stored like any model under its own name and cache key,
    and every result from it says it is a stand-in."""
    from odbench.benchmark import run_benchmark
    from odbench.model_store import fingerprint
    from odbench.params import BenchmarkParams
    from odbench.storage import Storage

    params = BenchmarkParams(model_name="retinanet", model_url="standin-full", dataset_url=str(synthetic_dir),
                             loadgen_dataset_size=1, execution_device="cpu")
    result = run_benchmark(params, Storage(str(tmp_path)))
    assert result.stand_in and result.model_source == "standin-full" and result.mAP is not None
    assert list(tmp_path.glob("models/retinanet_coco/*/retinanet_coco-standin-full.onnx"))
    assert fingerprint(params.spec, "standin-full", None) != fingerprint(params.spec, "standin", None)

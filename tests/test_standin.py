"""Stand-in models honour their specs' contracts; the validator catches models that don't."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from odbench import standin
from odbench.models import MODELS, LabelSpace, ModelSpec
from odbench.standin import build_standin
from odbench.validation import ModelContractError, validate_model

SPECS = list(MODELS.values())
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


@functools.cache
def _standin(name: str, seed: int = 0) -> bytes:
    """Build once per model and seed: several tests share it."""
    return build_standin(MODELS[name], seed)


def _run(model: bytes, spec: ModelSpec, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run a model on CPU and return its outputs by name."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {spec.input.name: image})
    return dict(zip([o.name for o in session.get_outputs()], outputs))


def _image(spec: ModelSpec, seed: int) -> np.ndarray:
    """A random input of the spec's shape."""
    return np.random.default_rng(seed).random(spec.input.shape, dtype=np.float32)


def _allowed_labels(spec: ModelSpec) -> set[int]:
    """Every label the spec's label space permits, written out independently of standin.py."""
    if spec.label_space is LabelSpace.COCO_IDS:
        return set(range(1, 91)) - COCO_UNUSED_IDS
    if spec.label_space is LabelSpace.COCO_CONTIGUOUS:
        return set(range(1, 81))
    return set(range(264))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_standin_validates_against_its_spec(spec: ModelSpec, tmp_path: Path) -> None:
    model = _standin(spec.name)
    onnx.checker.check_model(onnx.load_model_from_string(model), full_check=True)
    validate_model(model, spec)
    path = tmp_path / spec.file_name
    path.write_bytes(model)
    validate_model(path, spec)
    validate_model(str(path), spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_standin_outputs_follow_the_contract(spec: ModelSpec) -> None:
    out = _run(_standin(spec.name), spec, _image(spec, 1))
    assert list(out) == list(spec.output_order)
    for tensor in (spec.boxes, spec.scores, spec.labels):
        assert out[tensor.name].dtype == np.dtype(tensor.dtype)
        assert out[tensor.name].ndim == len(tensor.shape)
        assert all(d is None or d == n for d, n in zip(tensor.shape, out[tensor.name].shape))
    boxes = out[spec.boxes.name].reshape(-1, 4)
    scores = out[spec.scores.name].ravel()
    labels = out[spec.labels.name].ravel()
    assert 0 < len(boxes) == len(scores) == len(labels) <= spec.max_detections
    assert ((boxes >= 0) & (boxes <= spec.box_scale)).all()
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert ((scores >= standin.SCORE_THRESHOLD) & (scores <= 1)).all()
    assert (np.diff(scores) <= 0).all(), "detections come best first"
    assert len(np.unique(scores)) > len(scores) // 2, "scores are spread out"
    assert set(labels.tolist()) <= _allowed_labels(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_standin_detections_depend_on_the_image(spec: ModelSpec) -> None:
    first = _run(_standin(spec.name), spec, _image(spec, 1))[spec.boxes.name]
    second = _run(_standin(spec.name), spec, _image(spec, 2))[spec.boxes.name]
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_standin_handles_zero_detections(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MODELS["ssd_resnet34"]
    monkeypatch.setattr(standin, "OBJECTNESS_BIAS", -50.0)  # every score below the threshold
    out = _run(build_standin(spec), spec, _image(spec, 1))
    assert out[spec.boxes.name].shape == (1, 0, 4)
    assert out[spec.scores.name].shape == out[spec.labels.name].shape == (1, 0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_standin_build_is_deterministic_per_seed(spec: ModelSpec) -> None:
    assert build_standin(spec, seed=0) == _standin(spec.name, 0)
    assert build_standin(spec, seed=1) != _standin(spec.name, 0)


def test_validation_names_the_input_mismatch() -> None:
    with pytest.raises(ModelContractError) as err:
        validate_model(_standin("ssd_resnet34"), MODELS["retinanet_coco"])
    message = str(err.value)
    assert "retinanet_coco contract" in message
    assert "input 'images' expected float32[1,3,800,800], got 'image' float32[1,3,1200,1200]" \
        in message
    assert "output 'boxes' missing (outputs: bboxes, labels, scores)" in message


@pytest.mark.parametrize("garbage", [b"", b"not an onnx model at all", bytes(range(256))])
def test_validation_rejects_non_onnx_bytes(garbage: bytes) -> None:
    with pytest.raises(ModelContractError, match="is not an ONNX model"):
        validate_model(garbage, MODELS["ssd_resnet34"])


def _retinanet_like(labels_dtype: int, order: tuple[str, ...]) -> bytes:
    """A tiny graph with RetinaNet's I/O names; labels' dtype and the output order are chosen."""
    dtypes = {"boxes": TensorProto.FLOAT, "scores": TensorProto.FLOAT, "labels": labels_dtype}
    shapes = {"boxes": ["n", 4], "scores": ["n"], "labels": ["n"]}
    nodes = [helper.make_node("ConstantOfShape", ["shape_" + n], [n],
                              value=helper.make_tensor("v", dtypes[n], [1], [0]))
             for n in order]
    inits = [helper.make_tensor("shape_" + n, TensorProto.INT64, [len(shapes[n])],
                                [0 if d == "n" else d for d in shapes[n]]) for n in order]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 800, 800])
    outputs = [helper.make_tensor_value_info(n, dtypes[n], shapes[n]) for n in order]
    graph = helper.make_graph(nodes, "tiny", [image], outputs, initializer=inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_validation_names_a_wrong_output_dtype() -> None:
    spec = MODELS["retinanet_coco"]
    validate_model(_retinanet_like(TensorProto.INT64, spec.output_order), spec)
    with pytest.raises(ModelContractError) as err:
        validate_model(_retinanet_like(TensorProto.FLOAT, spec.output_order), spec)
    assert str(err.value) == ("model file does not match the retinanet_coco contract: "
                              "output 'labels' expected int64[?], got 'labels' float32[?]")


def test_outputs_are_matched_by_name_in_any_order() -> None:
    spec = MODELS["retinanet_coco"]
    for order in (("labels", "boxes", "scores"), ("scores", "labels", "boxes")):
        validate_model(_retinanet_like(TensorProto.INT64, order), spec)
    with pytest.raises(ModelContractError) as err:  # by name, still with each output's dtype
        validate_model(_retinanet_like(TensorProto.FLOAT, ("labels", "boxes", "scores")), spec)
    assert str(err.value).endswith("output 'labels' expected int64[?], got 'labels' float32[?]")


def _permuted(model: bytes, order: tuple[str, ...]) -> bytes:
    """The same model with its graph outputs listed in `order`."""
    proto = onnx.load_model_from_string(model)
    by_name = {o.name: o for o in proto.graph.output}
    outputs = [onnx.ValueInfoProto.FromString(by_name[n].SerializeToString()) for n in order]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


@pytest.mark.parametrize("model_name, order", [
    ("retinanet_coco", ("labels", "boxes", "scores")),
    ("ssd_resnet34", ("scores", "bboxes", "labels")),
])
def test_a_model_with_reordered_outputs_runs_and_logs_the_same_rows(model_name, order, tmp_path, synthetic_dir):
    """Through the real core: the permuted file validates, runs, and its accuracy log equals the original's."""
    import json

    from odbench.benchmark import run_benchmark
    from odbench.params import BenchmarkParams
    from odbench.storage import Storage

    spec = MODELS[model_name]
    original = _standin(model_name)
    permuted = _permuted(original, order)
    session = ort.InferenceSession(permuted, providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == order != spec.output_order
    validate_model(permuted, spec)
    storage = Storage(str(tmp_path / "store"))
    rows, maps = [], []
    for name, model in (("original.onnx", original), ("permuted.onnx", permuted)):
        (tmp_path / name).write_bytes(model)
        result = run_benchmark(BenchmarkParams(model_name=model_name, model_url=str(tmp_path / name),
                                               dataset_url=str(synthetic_dir), loadgen_dataset_size=6,
                                               execution_device="cpu"), storage)
        log = json.loads(Path(storage.path(f"runs/{result.run_id}/mlperf_log_accuracy.json")).read_text())
        rows.append(sorted((e["qsl_idx"], e["data"]) for e in log))
        maps.append(result.mAP)
    assert len(rows[0]) == 6 and any(data for _, data in rows[0])
    assert rows[0] == rows[1] and maps[0] == maps[1]

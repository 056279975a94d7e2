"""postprocess_on_cpu: a detector split where its convolutions end answers as the whole model does, alone, in
batches, after fp16 conversion and behind the normalization prefix, on real onnxruntime sessions and LoadGen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from odbench.accuracy import decode_accuracy_log
from odbench.backend import OnnxBackend
from odbench.batching import batched
from odbench.benchmark import run_benchmark
from odbench.fp16 import to_fp16
from odbench.input_prefix import device_input, with_normalization
from odbench.models import MODELS, ModelSpec, get_spec
from odbench.onnx_graph import GraphCutError
from odbench.params import BenchmarkParams
from odbench.precision import reproduced
from odbench.preprocess import to_model_input
from odbench.split_model import SplitError, split
from odbench.standin import build_standin
from odbench.standin_full import build_full_standin, probe_image
from odbench.storage import Storage

N = 5
MIN_FP16_SHARE = 0.9  # as tests/test_batching.py


def _inputs(spec: ModelSpec, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    side = spec.resolution
    return [to_model_input(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), spec) for _ in range(count)]


def _same(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("spec", list(MODELS.values()), ids=list(MODELS))
def test_the_two_halves_answer_as_the_whole_model_alone_and_in_batches(spec: ModelSpec) -> None:
    """Trunk then post-processing (a CPU session) give every image the whole model's detections bit for bit,
    one at a time and as a batch of 3 through the trunk; the post-processing needs no convolution."""
    model = build_standin(spec)
    parts = split(model, spec)
    assert not any(n.op_type == "Conv" for n in onnx.load_model_from_string(parts.post).graph.node)
    assert all(n.op_type != "NonMaxSuppression" for n in onnx.load_model_from_string(parts.trunk).graph.node)
    xs = _inputs(spec, 3)
    whole = OnnxBackend(model, spec, "cpu")
    expected = [whole.infer(x) for x in xs]
    assert all(_same(OnnxBackend(parts, spec, "cpu").infer(x), want) for x, want in zip(xs, expected))
    grouped = OnnxBackend(split(model, spec, any_batch=True), spec, "cpu", batch_size=3)
    assert all(_same(got, want) for got, want in zip(grouped.infer_batch(xs), expected))
    assert all(len(want[1]) > 10 for want in expected)


def test_the_full_size_ssd_splits_with_identical_detections() -> None:
    """The full-size SSD-ResNet34 stand-in (its per-class NMS is what the split moves to the CPU): same
    detections from the halves as from the whole graph, fp32, on the CPU."""
    spec = get_spec("ssd_resnet34")
    model = build_full_standin(spec)
    x = to_model_input(probe_image(spec, 3), spec)
    want = OnnxBackend(model, spec, "cpu").infer(x)
    assert len(want[1]) > 20 and _same(OnnxBackend(split(model, spec), spec, "cpu").infer(x), want)


def test_the_split_composes_with_fp16_and_the_normalization_prefix() -> None:
    """An fp16 model split (its fp16 head maps cross to the CPU, where the post-processing casts them) behind
    the uint8 prefix agrees with the whole fp16 model behind the same prefix as fp16 agrees with fp32 (onnxruntime's
    CPU provider computes the whole model's fp16 convolutions in float32 and rounds only what crosses the cut)."""
    spec = get_spec("retinanet_coco")
    fp16 = to_fp16(build_standin(spec))
    parts = split(fp16, spec)
    halves = OnnxBackend(replace(parts, trunk=with_normalization(parts.trunk, spec, "uint8")), spec, "cpu")
    whole = OnnxBackend(with_normalization(fp16, spec, "uint8"), spec, "cpu")
    rng = np.random.default_rng(9)
    sample = device_input(rng.integers(0, 256, (spec.resolution, spec.resolution, 3), dtype=np.uint8))
    want = whole.infer(sample)
    assert len(want[1]) > 10 and reproduced(want, halves.infer(sample)) >= MIN_FP16_SHARE * len(want[1])


def test_a_graph_without_post_processing_cannot_be_split() -> None:
    """A graph that ends in its convolutions has nothing to move to the CPU: a clear error, not an empty model."""
    spec = get_spec("retinanet_coco")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["boxes"])], "convs_only",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    ort.InferenceSession(model.SerializeToString())  # a valid model
    with pytest.raises(SplitError, match="nothing to split; drop postprocess_on_cpu"):
        split(model.SerializeToString(), spec)


def _crossing_graph(shared: str) -> bytes:
    """A tiny detector whose convolution side computes a tensor the post-processing also reads: the input's
    `Shape` (batch-dependent: the cut must refuse it) or a sum of two constants (the same for every image)."""
    nodes = [helper.make_node("Shape", ["images"], ["s"]) if shared == "shape"
             else helper.make_node("Add", ["one", "one"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["images", "sf"], ["x"]) if shared == "const"
             else helper.make_node("Reshape", ["images", "s"], ["x"]),
             helper.make_node("Conv", ["x", "w"], ["f"]),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["flat"]),
             helper.make_node("ReduceMax", ["sf"], ["m"], keepdims=1),
             helper.make_node("Mul", ["flat", "m"], ["boxes"]),
             helper.make_node("ReduceMax", ["flat"], ["scores"], axes=[1], keepdims=0),
             helper.make_node("ArgMax", ["flat"], ["labels"], axis=1, keepdims=0)]
    weights = {"w": np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1) / 10, "rows": np.array([-1, 4], np.int64),
               "one": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes, "crossing", [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, None)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_shape_crossing_the_cut_is_refused_and_a_constant_is_shared() -> None:
    """A tensor made from the input's shape on the convolution side and read after it would be the batch's shape
    in a batch, or one image's in a slice: the cut refuses it by name, for the split and for batching alike. A
    tensor of constants crossing the cut reaches every image whole, and each answers as the whole model does."""
    spec = get_spec("retinanet_coco")
    with pytest.raises(GraphCutError, match="'s' crosses from the convolutions .* computed from the input's shape"):
        split(_crossing_graph("shape"), spec)
    with pytest.raises(GraphCutError, match="'s' crosses"):
        batched(_crossing_graph("shape"), spec)
    model = _crossing_graph("const")
    parts = split(model, spec, any_batch=True)
    assert parts.shared == ("sf",) and len(parts.per_image) == 1
    xs = [np.random.default_rng(i).random((1, 3, 4, 4), np.float32) for i in range(3)]
    whole = OnnxBackend(model, spec, "cpu")
    expected = [whole.infer(x) for x in xs]
    assert all(_same(g, w) for g, w in zip(OnnxBackend(parts, spec, "cpu", batch_size=3).infer_batch(xs), expected))
    looped = OnnxBackend(batched(model, spec), spec, "cpu", batch_size=3)
    assert all(_same(g, w) for g, w in zip(looped.infer_batch(xs), expected))


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "ssd_resnet34", "loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                              "preprocess_resize_dtype": "uint8", "loadgen_concurrency": 2, **overrides})


def test_a_run_with_postprocessing_on_the_cpu_logs_the_same_detections(synthetic_dir, tmp_path) -> None:
    """AccuracyOnly under real LoadGen, whole model vs split (alone, and batched by 2 with the uint8 prefix):
    every sample's logged detections are identical, and the result records the option."""
    storage = Storage(str(tmp_path / "store"))
    runs = [run_benchmark(_params(synthetic_dir, **options), storage)
            for options in ({}, {"postprocess_on_cpu": True},
                            {"postprocess_on_cpu": True, "batch_size": 2, "normalize_on_device": True})]
    logs = [decode_accuracy_log(Path(storage.root) / "runs" / r.run_id / "mlperf_log_accuracy.json") for r in runs]
    assert all(sorted(log) == list(range(N)) for log in logs) and sum(len(v) for v in logs[0].values()) > N
    assert all(np.array_equal(logs[0][i], log[i]) for log in logs[1:] for i in range(N))
    assert [r.postprocess_on_cpu for r in runs] == [False, True, True] and runs[2].batch_size == 2

"""Batching (batch_size > 1): the batched stand-in graphs answer each image as the batch-1 graphs do, the SUT and
the calibration run whole batches through real LoadGen and onnxruntime, and the official files are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from odbench.accuracy import decode_accuracy_log
from odbench.backend import OnnxBackend
from odbench.batching import COUNTS, PAD_LABEL, batched, unbatch
from odbench.benchmark import run_benchmark
from odbench.bounds import ParameterRangeError
from odbench.fp16 import to_fp16
from odbench.input_prefix import device_input, with_normalization
from odbench.models import MODELS, ModelSpec, get_spec
from odbench.params import BenchmarkParams
from odbench.precision import reproduced
from odbench.preprocess import to_model_input
from odbench.standin import build_standin
from odbench.standin_full import build_full_standin, probe_image
from odbench.storage import Storage
from odbench.sut import _Work

N = 7  # images in the LoadGen runs: batches of 3 leave a partial one
MIN_FP16_SHARE = 0.9  # of the unbatched fp16 model's detections reproduced (tests/test_precision.py: 0.98 vs fp32)


def _inputs(spec: ModelSpec, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    side = spec.resolution
    return [to_model_input(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), spec) for _ in range(count)]


def _one_by_one(model: bytes, spec: ModelSpec, xs: list[np.ndarray]) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [spec.boxes.name, spec.scores.name, spec.labels.name]
    return [[a.reshape(-1, 4) if i == 0 else a.reshape(-1) for i, a in enumerate(session.run(names, {
        spec.input.name: x}))] for x in xs]


@pytest.mark.parametrize("spec", list(MODELS.values()), ids=list(MODELS))
def test_a_batched_stand_in_answers_each_image_as_the_batch_1_graph_does(spec: ModelSpec) -> None:
    """Batches of 1 and 3 through the Loop graph give every image the batch-1 graph's detections, bit for bit on
    the CPU; outputs are [batch, max_detections, ...] with padding rows that `unbatch` drops."""
    model = build_standin(spec)
    graph = onnx.load_model_from_string(batched(model, spec)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    xs = _inputs(spec, 3)
    expected = _one_by_one(model, spec, xs)
    session = ort.InferenceSession(batched(model, spec), providers=["CPUExecutionProvider"])
    names = [spec.boxes.name, spec.scores.name, spec.labels.name, COUNTS]
    for group in ([xs[0]], xs):
        boxes, scores, labels, counts = session.run(names, {spec.input.name: np.concatenate(group)})
        assert boxes.shape == (len(group), spec.max_detections, 4) and labels.shape == (len(group),
                                                                                       spec.max_detections)
        assert counts.tolist() == [[len(want[1])] * 3 for want in expected[:len(group)]]
        for got, want in zip(unbatch(boxes, scores, labels, counts, len(group)), expected):
            assert len(want[1]) > 10 and all(np.array_equal(g, w) for g, w in zip(got, want))
        padding = np.arange(spec.max_detections)[None] >= counts[:, :1]
        assert np.all(labels[padding] == PAD_LABEL) and np.all(scores[padding] == 0) and np.all(boxes[padding] == 0)


def test_the_full_size_retinanet_batches_with_the_same_detections() -> None:
    """The full-size RetinaNet stand-in (its in-graph resize keeps the batch) batched by 2: the same labels per
    image and scores within float rounding of the batch-1 graph (the convolutions sum in another order)."""
    spec = get_spec("retinanet_coco")
    model = build_full_standin(spec)
    xs = [to_model_input(probe_image(spec, seed), spec) for seed in (1, 2)]
    expected = _one_by_one(model, spec, xs)
    backend = OnnxBackend(batched(model, spec), spec, "cpu", batch_size=2)
    for got, want in zip(backend.infer_batch(xs), expected):
        assert len(want[2]) > 50 and np.array_equal(got[2], want[2])
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)
        np.testing.assert_allclose(got[0], want[0], atol=1e-2)  # pixels of 800


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_batching_composes_with_fp16_and_the_normalization_prefix(precision: str) -> None:
    """Conversion, then batching, then the uint8 prefix (as model_variants orders them): the prefix takes
    [batch, R, R, 3]; in fp32 each image gets the unbatched prefixed model's answer bit for bit, in fp16 (whose
    head maps onnxruntime's CPU provider rounds where they cross into the loop) within fp16's agreement."""
    spec = get_spec("ssd_resnet34")
    model = build_standin(spec) if precision == "fp32" else to_fp16(build_standin(spec))
    single = with_normalization(model, spec, "uint8")
    both = with_normalization(batched(model, spec), spec, "uint8")
    assert [d.dim_param or d.dim_value for d in onnx.load_model_from_string(both).graph.input[0].type.tensor_type
            .shape.dim] == ["batch", spec.resolution, spec.resolution, 3]
    rng = np.random.default_rng(3)
    samples = [device_input(rng.integers(0, 256, (spec.resolution,) * 2 + (3,), dtype=np.uint8)) for _ in range(2)]
    expected = _one_by_one(single, spec, samples)
    got = OnnxBackend(both, spec, "cpu", batch_size=2).infer_batch(samples)
    for g, w in zip(got, expected):
        if precision == "fp32":
            assert all(np.array_equal(a, b) for a, b in zip(g, w))
        else:
            assert reproduced(tuple(w), g) >= MIN_FP16_SHARE * len(w[1])


class _ShapeRecorder(OnnxBackend):
    """A real backend that records the batch dimension of every inference it runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def _run(self, session, x):
        self.batches.append(len(x))
        return super()._run(session, x)


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "retinanet", "loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                              "preprocess_resize_dtype": "uint8", **overrides})


def test_an_accuracy_run_in_batches_logs_the_batch_1_detections(synthetic_dir, tmp_path, monkeypatch) -> None:
    """AccuracyOnly under real LoadGen with batch_size=3 and 2 workers: every sample's logged detections are the
    batch-1 run's, byte for byte, and the model only ever saw batches of 3 and 1 (a partial batch of 2 runs padded,
    a lone sample alone)."""
    import odbench.benchmark as benchmark

    recorders: list[_ShapeRecorder] = []
    monkeypatch.setattr(benchmark, "OnnxBackend", lambda *a, **k: recorders.append(_ShapeRecorder(*a, **k))
                        or recorders[-1])
    storage = Storage(str(tmp_path / "store"))
    plain = run_benchmark(_params(synthetic_dir), storage)
    grouped = run_benchmark(_params(synthetic_dir, batch_size=3, loadgen_concurrency=2), storage)
    logs = [decode_accuracy_log(Path(storage.root) / "runs" / r.run_id / "mlperf_log_accuracy.json")
            for r in (plain, grouped)]  # entries come in completion order: compare them per sample
    assert sorted(logs[0]) == sorted(logs[1]) == list(range(N)) and sum(len(rows) for rows in logs[0].values()) > N
    assert all(np.array_equal(logs[0][i], logs[1][i]) for i in range(N))
    assert (plain.batch_size, grouped.batch_size) == (1, 3)
    assert set(recorders[0].batches) == {1} and 3 in recorders[1].batches and set(recorders[1].batches) <= {1, 3}
    assert sum(recorders[1].batches) >= N and len(recorders[1].batches) < N


def test_a_timed_run_calibrates_and_warms_up_on_whole_batches(synthetic_dir, tmp_path) -> None:
    """Offline PerformanceOnly with batch_size=4: the calibration measures batches of 4 (its basis says so) and
    the warm-up runs whole batches (6 asked: two batches of 4)."""
    result = run_benchmark(_params(synthetic_dir, batch_size=4, loadgen_mode="PerformanceOnly",
                                   loadgen_profile="quick", loadgen_warmup_samples=6), Storage(str(tmp_path / "s")))
    assert "inferences of 4 samples" in result.calibration["basis"]
    assert result.warmup["samples"] == 8 and result.samples_per_second > 0 and result.batch_size == 4


def test_unbatching_cuts_each_image_to_its_own_counts() -> None:
    """Padding goes by each image's counts, not by label: a real label -1 and unequal lengths reach the output
    checks as at batch 1; an image with more rows than the graph carries fails the sample, saying why."""
    boxes, scores = np.ones((2, 3, 4), np.float32), np.full((2, 3), 0.5, np.float32)
    labels = np.array([[-1, 7, PAD_LABEL], [3, PAD_LABEL, PAD_LABEL]])
    first, second = unbatch(boxes, scores, labels, np.array([[2, 3, 2], [1, 1, 1]]), 2)
    assert first[2].tolist() == [-1, 7] and len(first[1]) == 3 and second[2].tolist() == [3]
    with pytest.raises(ValueError, match="4 detections, more than the 3 its batched graph carries"):
        unbatch(boxes, scores, labels, np.array([[4, 4, 4], [1, 1, 1]]), 2)


def test_a_query_is_handed_out_in_whole_batches_each_sample_once() -> None:
    """A query's queue hands out consecutive groups of the batch size (the last may be partial), and `rest` takes
    whatever is left, so every sample goes to exactly one worker."""
    work = _Work([(i, i) for i in range(10)], 4)
    assert [len(work.take()) for _ in range(2)] == [4, 4] and not work.empty()
    assert work.rest() == [(8, 8), (9, 9)] and work.empty() and work.take() == []


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batch_size": 2}, "exported with batch 1"),
    ({"batch_size": 2, "model_url": "standin", "samples_on_device": True}, "drop one of them"),
    ({"batch_size": 65, "model_url": "standin"}, "batch_size"),
    ({"batch_size": 0, "model_url": "standin"}, "batch_size"),
])
def test_batch_sizes_the_model_cannot_take_are_refused_before_any_work(overrides, message) -> None:
    with pytest.raises((ValueError, ParameterRangeError), match=message):
        BenchmarkParams(model_name="ssd_resnet34", **overrides)

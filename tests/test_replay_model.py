"""The replay model: the real contract, each image recognised from its pixels, and the mAP it must score
through the real benchmark core (100 for ground truth, the IoU-threshold share for shifted boxes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from replay_model import build_replay_model, expected_outputs

from odbench import coco
from odbench.benchmark import run_benchmark
from odbench.models import get_spec
from odbench.params import BenchmarkParams
from odbench.preprocess import decode_resize, to_model_input
from odbench.storage import Storage
from odbench.validation import validate_model

DATASETS = ["synthetic_dir", "mini_dir"]
# shift s gives every box IoU (1-s)^2 / (2-(1-s)^2) with its object: 1.0, 0.68 (passes 4 of COCO's 10 IoU
# thresholds), 0.14 (a shifted box may still meet a neighbouring object of its class in a real crowded image)
EXPECTED_MAP = {0.0: (100.0, 100.0), 0.1: (40.0, 40.0), 0.5: (0.0, 1.0)}
# RetinaNet in full; SSD (1200-pixel inputs: slow on CPU) on the synthetic set, where 40.0 needs every box and label
CONTRACT_CASES = [("retinanet_coco", "synthetic_dir"), ("retinanet_coco", "mini_dir"), ("ssd_resnet34", "synthetic_dir")]
BENCHMARK_CASES = [*(("retinanet", d, s) for d in DATASETS for s in EXPECTED_MAP), ("ssd_resnet34", "synthetic_dir", 0.1)]


def _images(dataset_dir: Path) -> list[coco.ImageRecord]:
    return coco.images_in_order(json.loads((dataset_dir / "annotations/instances_val2017.json").read_text()))


@pytest.fixture(scope="module")
def bench_storage(tmp_path_factory) -> Storage:
    """One storage per module, so the shifts share each dataset's preprocessing."""
    return Storage(str(tmp_path_factory.mktemp("replay-storage")))


@pytest.mark.parametrize("model_name, dataset", CONTRACT_CASES)
def test_replay_model_keeps_the_contract_and_answers_each_image_with_its_own_boxes(request, dataset, model_name):
    dataset_dir, spec = request.getfixturevalue(dataset), get_spec(model_name)
    images = _images(dataset_dir)
    model = build_replay_model(dataset_dir, model_name, len(images))
    validate_model(model, spec)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    answers = []
    for index, image in enumerate(images):
        x = to_model_input(decode_resize((dataset_dir / "val2017" / image.file_name).read_bytes(), spec.resolution),
                           spec)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {spec.input.name: x})))
        boxes, scores, labels = expected_outputs(dataset_dir, model_name, index)
        assert np.array_equal(got[spec.boxes.name].reshape(-1, 4), boxes), image.file_name
        assert np.array_equal(got[spec.scores.name].reshape(-1), scores), image.file_name
        assert np.array_equal(got[spec.labels.name].reshape(-1), labels), image.file_name
        answers.append(boxes.tobytes())
    assert len(set(answers)) > len(images) // 2  # images differ, not one row for all


@pytest.mark.parametrize("model_name, dataset, shift", BENCHMARK_CASES)
def test_benchmark_scores_the_replayed_ground_truth(request, tmp_path, bench_storage, dataset, model_name, shift):
    dataset_dir = request.getfixturevalue(dataset)
    n = len(_images(dataset_dir))
    model = tmp_path / "model.onnx"
    model.write_bytes(build_replay_model(dataset_dir, model_name, n, shift))
    params = BenchmarkParams(model_name=model_name, model_url=str(model), dataset_url=str(dataset_dir),
                             loadgen_dataset_size=n, loadgen_mode="AccuracyOnly", execution_device="cpu")
    result = run_benchmark(params, bench_storage)
    assert not result.stand_in and result.dataset_size == n
    low, high = EXPECTED_MAP[shift]
    assert low <= result.mAP <= high


def test_a_subset_replays_only_its_images(synthetic_dir):
    spec = get_spec("retinanet")
    model = build_replay_model(synthetic_dir, "retinanet", 5)
    validate_model(model, spec)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    image = _images(synthetic_dir)[3]
    x = to_model_input(decode_resize((synthetic_dir / "val2017" / image.file_name).read_bytes(), 800), spec)
    boxes, _, _ = session.run(None, {spec.input.name: x})
    assert np.array_equal(boxes, expected_outputs(synthetic_dir, "retinanet", 3)[0])


def test_openimages_labels_are_refused(synthetic_dir):
    with pytest.raises(ValueError, match="needs COCO labels"):
        build_replay_model(synthetic_dir, "retinanet_openimages", 5)

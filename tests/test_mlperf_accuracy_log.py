"""The accuracy logs of real runs, scored the way MLCommons' own tool scores them.

`mlperf_map` is written from the reference convention (mlcommons/inference,
vision/classification_and_detection/tools/accuracy-coco.py), independently of odbench: the log's
float32 rows of 7 `[qsl_idx, ymin, xmin, ymax, xmax, score, label]`, the first entry of each qsl_idx,
an empty entry still counting its image, the label through `[0] + cocoGt.getCatIds()` with
`--use-inv-map`, boxes scaled by each image's width and height, COCOeval(bbox) over the logged images,
`100 * stats[0]` to three decimals. SSD-ResNet34's logs are scored with the inverse map, RetinaNet
COCO's without it (docs/design.md, "Accuracy"), and both give the project's own mAP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from replay_model import build_replay_model

from odbench.benchmark import run_benchmark
from odbench.models import get_spec
from odbench.params import BenchmarkParams
from odbench.storage import Storage

ANNOTATIONS = "annotations/instances_val2017.json"
N = 10
USE_INV_MAP = {"ssd_resnet34": True, "retinanet_coco": False}  # the reference's options per model


def mlperf_map(accuracy_log: Path, annotation_file: Path, use_inv_map: bool, scratch: Path) -> float:
    """accuracy-coco.py's computation, option `--use-inv-map` as given."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    inv_map = [0] + gt.getCatIds()
    image_map = gt.dataset["images"]
    detections, image_ids, seen = [], set(), set()
    for entry in json.loads(accuracy_log.read_text()):
        idx = entry["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        image = image_map[idx]
        data = np.frombuffer(bytes.fromhex(entry["data"]), np.float32)
        if len(data) < 7:
            image_ids.add(image["id"])
            continue
        for i in range(0, len(data), 7):
            image_idx, ymin, xmin, ymax, xmax, score, label = data[i:i + 7]
            assert int(image_idx) == idx
            height, width = image["height"], image["width"]
            ymin, xmin, ymax, xmax = ymin * height, xmin * width, ymax * height, xmax * width
            label = int(label)
            if use_inv_map:
                label = inv_map[label]
            detections.append({"image_id": image["id"], "category_id": label, "score": float(score),
                               "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)]})
            image_ids.add(image["id"])
    results = scratch / "coco-results.json"
    results.write_text(json.dumps(detections))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(str(results)), iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(f"{100.0 * evaluator.stats[0]:.3f}")


@pytest.fixture(scope="module")
def bench_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("mlperf-log-storage")))


def _run(model_name: str, model_url: str, dataset_dir: Path, storage: Storage):
    params = BenchmarkParams(model_name=model_name, model_url=model_url, dataset_url=str(dataset_dir),
                             loadgen_dataset_size=N, loadgen_mode="AccuracyOnly", execution_device="cpu")
    result = run_benchmark(params, storage)
    log = Path(storage.path(f"runs/{result.run_id}")) / "mlperf_log_accuracy.json"
    rows = [np.frombuffer(bytes.fromhex(e["data"]), np.float32).reshape(-1, 7) for e in json.loads(log.read_text())]
    assert len(rows) == N and sum(len(r) for r in rows) > 0, "an empty log would prove nothing"
    return result, log, np.concatenate(rows)


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco"])
def test_a_stand_in_runs_log_scores_the_projects_map_with_the_references_options(
        tmp_path, synthetic_dir, bench_storage, model_name):
    result, log, rows = _run(model_name, "standin", synthetic_dir, bench_storage)
    labels = rows[:, 6]
    if USE_INV_MAP[model_name]:  # the model's contiguous labels, as the reference's PostProcessCocoOnnx logs them
        assert labels.min() >= 1 and labels.max() <= 80
    else:  # COCO category ids
        categories = json.loads((synthetic_dir / ANNOTATIONS).read_text())["categories"]
        assert set(labels.astype(int).tolist()) <= {c["id"] for c in categories}
    assert mlperf_map(log, synthetic_dir / ANNOTATIONS, USE_INV_MAP[model_name], tmp_path) == result.mAP


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco"])
def test_the_replayed_ground_truth_scores_100_under_the_references_options_only(
        tmp_path, synthetic_dir, bench_storage, model_name):
    model = tmp_path / "replay.onnx"
    model.write_bytes(build_replay_model(synthetic_dir, model_name, N))
    result, log, _ = _run(model_name, str(model), synthetic_dir, bench_storage)
    assert result.mAP == 100.0
    annotation_file = synthetic_dir / ANNOTATIONS
    assert mlperf_map(log, annotation_file, USE_INV_MAP[model_name], tmp_path) == 100.0
    if USE_INV_MAP[model_name]:  # the convention matters: SSD's labels read as COCO ids score less
        assert mlperf_map(log, annotation_file, False, tmp_path) < result.mAP
    else:  # and RetinaNet's COCO ids put through the inverse map are other classes, or past its end
        try:
            assert mlperf_map(log, annotation_file, True, tmp_path) < result.mAP
        except IndexError:
            pass


def test_the_specs_say_which_option_scores_their_logs():
    assert {name: get_spec(name).uses_inverse_map for name in USE_INV_MAP} == USE_INV_MAP

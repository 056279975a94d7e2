"""The `detect` flow under a real Prefect API: the command line, caching, artifacts, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from live_prefect import new_prefect_home
from replay_model import build_replay_model

from tasks.report import slug


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.detect", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _independent_map(accuracy_log: Path, annotation_file: Path, use_inv_map: bool) -> float:
    """MLPerf's accuracy-coco.py, written out again here: decode, skip repeats, the label through
    `[0] + cocoGt.getCatIds()` with --use-inv-map (SSD's convention), pixels, COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(annotation_file))
    inv_map = [0, *gt.getCatIds()]
    images = gt.dataset["images"]
    seen, detections, image_ids = set(), [], []
    for entry in json.loads(accuracy_log.read_text()):
        if entry["qsl_idx"] in seen:
            continue
        seen.add(entry["qsl_idx"])
        image = images[entry["qsl_idx"]]
        image_ids.append(image["id"])
        data = np.frombuffer(bytes.fromhex(entry["data"]), np.float32)
        for i in range(0, len(data), 7):
            idx, ymin, xmin, ymax, xmax, score, label = (float(v) for v in data[i:i + 7])
            assert int(idx) == entry["qsl_idx"]
            w, h = image["width"], image["height"]
            detections.append({"image_id": image["id"], "score": score,
                               "category_id": inv_map[int(label)] if use_inv_map else int(label),
                               "bbox": [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]})
    evaluator = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return round(100.0 * evaluator.stats[0], 3), image_ids


def _assert_log_is_the_models_output(accuracy_log: Path, model_file: Path, coco_dir: Path, images: list[dict]):
    """Preprocess each image and encode the model's outputs as MLPerf's reference does for
    ssd-resnet34 (PostProcessCocoOnnx: the model's own labels 1..80 as floats), independently of
    odbench, and compare with the accuracy log's rows."""
    import cv2
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    logged = {e["qsl_idx"]: np.frombuffer(bytes.fromhex(e["data"]), np.float32).reshape(-1, 7)
              for e in json.loads(accuracy_log.read_text())}
    answered = 0
    for idx, image in enumerate(images):
        rgb = cv2.cvtColor(cv2.imread(str(coco_dir / "val2017" / image["file_name"])), cv2.COLOR_BGR2RGB)
        x = cv2.resize(rgb.astype(np.float32), (1200, 1200), interpolation=cv2.INTER_LINEAR) / 255  # the reference
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        bboxes, labels, scores = session.run(["bboxes", "labels", "scores"], {"image": x.transpose(2, 0, 1)[None]})
        assert ((labels[0] >= 1) & (labels[0] <= 80)).all()  # contiguous: what --use-inv-map expects
        expected = np.column_stack([np.full(len(scores[0]), idx), bboxes[0][:, [1, 0, 3, 2]], scores[0],
                                    labels[0].astype(np.float32)])
        assert logged[idx].shape == expected.shape  # an image without objects is answered with none
        np.testing.assert_allclose(logged[idx], expected, atol=1e-4)
        answered += len(expected)
    assert answered > 0  # detections to compare, not a log of empty answers


def test_cli_json_matches_an_independent_scoring_and_repeats_cached(tmp_path, coco_dir, prefect_db_template):
    """`--json` prints a result whose mAP an independent scoring of the accuracy log repeats, the log rows
    are the model's own outputs, and the same command again is served from the cache. The model answers each
    image with its ground truth shifted by a tenth of each box, so the mAP is neither 0 nor 100."""
    home = new_prefect_home(tmp_path / "prefect", prefect_db_template)
    env = {**os.environ, "PREFECT_HOME": str(home), "ODBENCH_STORAGE_URL": str(tmp_path / "store")}
    model = tmp_path / "shifted.onnx"
    model.write_bytes(build_replay_model(coco_dir, "ssd_resnet34", 20, shift=0.1))
    args = ["--model_name", "ssd_resnet34", "--loadgen_dataset_size", "20", "--model_url", str(model),
            "--dataset_url", str(coco_dir), "--json"]
    first = _cli(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert {"model_name", "stand_in", "scenario", "mode", "dataset_size", "mAP", "samples_per_second",
            "providers", "run_dir"} <= set(result)
    assert result["stand_in"] is False and result["dataset_size"] == 20 and 5 < result["mAP"] < 95
    run_dir = Path(result["run_dir"].removeprefix("file://"))
    annotation_file = coco_dir / "annotations/instances_val2017.json"
    independent, image_ids = _independent_map(run_dir / "mlperf_log_accuracy.json", annotation_file,
                                             use_inv_map=True)  # ssd_resnet34
    assert independent == result["mAP"]
    first_20 = json.loads(annotation_file.read_text())["images"][:20]
    assert sorted(image_ids) == sorted(im["id"] for im in first_20)
    store = tmp_path / "store"
    model_file = next((store / "models" / "ssd_resnet34" / result["model_md5"]).iterdir())
    _assert_log_is_the_models_output(run_dir / "mlperf_log_accuracy.json", model_file, coco_dir, first_20)

    again = _cli(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    repeated = json.loads(again.stdout.strip().splitlines()[-1])
    states = repeated["task_states"]
    assert states["download"] == states["preprocess"] == states["fetch-model"] == "Cached"
    assert states["inference"] == "Cached" and repeated["run_id"] == result["run_id"]  # AccuracyOnly
    assert "Error encountered when computing cache key" not in again.stderr + first.stderr


def test_cli_failure_exits_nonzero_with_the_reason(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "ODBENCH_STORAGE_URL": str(tmp_path / "store")}
    done = _cli(["--model_name", "nope", "--json"], env)
    assert done.returncode != 0 and "invalid choice: 'nope'" in done.stderr and "retinanet_coco" in done.stderr
    assert not (tmp_path / "store").exists()


def test_flow_publishes_artifacts_and_caches_by_content(prefect_api, tmp_path, synthetic_dir):
    from prefect.artifacts import Artifact

    from flows.detect import detect

    common = dict(model_name="retinanet", loadgen_dataset_size=8, model_url="standin",
                  dataset_url=str(synthetic_dir), storage_url=str(tmp_path / "store"))
    out = detect(**common)
    assert set(out["task_states"].values()) == {"Completed"}
    summary = Artifact.get(slug("detect-retinanet_coco-offline-accuracyonly-standin-summary"))
    table = Artifact.get(slug("detect-retinanet_coco-offline-accuracyonly-standin-metrics"))
    assert summary.type == "markdown" and f"{out['mAP']:.3f}" in summary.data
    assert f"{out['samples_per_second']:.3f}" in summary.data and "STAND-IN" in summary.data
    assert table.type == "table" and "samples_per_second" in table.data

    bigger = detect(**{**common, "loadgen_dataset_size": 10})
    assert bigger["task_states"]["download"] == "Completed"  # a new N is new content
    assert bigger["task_states"]["fetch-model"] == "Cached"
    for _ in range(2):  # a timing is a measurement: never served from the cache
        perf = detect(**{**common, "loadgen_mode": "PerformanceOnly", "loadgen_count_override": 16})
        assert perf["task_states"]["inference"] == "Completed" and perf["mAP"] is None


def test_a_replaced_model_file_is_a_new_model(prefect_api, tmp_path, synthetic_dir):
    from flows.detect import detect
    from odbench.models import get_spec
    from odbench.standin import build_standin

    path = tmp_path / "my-retinanet.onnx"
    common = dict(model_name="retinanet", loadgen_dataset_size=4, model_url=str(path),
                  dataset_url=str(synthetic_dir), storage_url=str(tmp_path / "store"))
    path.write_bytes(build_standin(get_spec("retinanet"), seed=0))
    first = detect(**common)
    path.write_bytes(build_standin(get_spec("retinanet"), seed=1))
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))  # as a later copy would have
    second = detect(**common)
    assert second["task_states"]["fetch-model"] == second["task_states"]["inference"] == "Completed"
    assert second["model_md5"] != first["model_md5"] and second["stand_in"] is False


def test_flow_rejects_unknown_model_before_any_download(prefect_api, tmp_path):
    from flows.detect import detect

    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="retinanet_openimages"):  # the Literal type lists them
        detect(model_name="yolo", storage_url=str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_saved_storage_block_decides_where_everything_lives(prefect_api, tmp_path, synthetic_dir):
    from blocks.storage import BenchmarkStorage
    from flows.detect import detect

    BenchmarkStorage(url=str(tmp_path / "block-root")).save("flow-test", overwrite=True)
    out = detect(model_name="ssd_resnet34", loadgen_dataset_size=4, model_url="standin",
                 dataset_url=str(synthetic_dir), storage_block="flow-test")
    root = tmp_path / "block-root"
    assert out["run_dir"] == f"file://{root}/runs/{out['run_id']}"
    assert {"sources", "preprocessed", "models", "datasets", "runs", "prefect-results"} <= {p.name for p in root.iterdir()}
    assert any((root / "prefect-results").iterdir())


def test_a_cached_result_whose_files_are_gone_is_recomputed(prefect_api, tmp_path, synthetic_dir):
    import shutil

    from flows.detect import detect

    common = dict(model_name="retinanet", loadgen_dataset_size=6, model_url="standin",
                  dataset_url=str(synthetic_dir), storage_url=str(tmp_path / "store"))
    first = detect(**common)
    shutil.rmtree(tmp_path / "store" / "preprocessed")
    shutil.rmtree(tmp_path / "store" / "runs")
    again = detect(**common)
    states = again["task_states"]
    assert states["download"] == states["fetch-model"] == "Cached"
    assert states["preprocess"] == states["inference"] == "Completed"
    assert again["mAP"] == first["mAP"] and again["run_id"] != first["run_id"]


def test_flow_takes_the_axs_aliases_and_rejects_a_contradiction(prefect_api, tmp_path, synthetic_dir):
    from flows.detect import detect

    common = dict(model_name="retinanet", loadgen_dataset_size=4, model_url="standin", dataset_url=str(synthetic_dir),
                  storage_url=str(tmp_path / "store"), loadgen_scenario="SingleStream", loadgen_mode="PerformanceOnly",
                  loadgen_target_latency=10.0)  # a given target: two calibrations would differ
    by_alias = detect(**common, loadgen_query_count=8)
    by_ours = detect(**common, loadgen_count_override=8)
    assert by_alias["effective_settings"] == by_ours["effective_settings"]
    assert by_alias["effective_settings"]["max_query_count"] == 8
    separate = detect(**common, loadgen_min_query_count=6, loadgen_max_query_count=9, loadgen_duration_s=0)
    settings = separate["effective_settings"]
    assert (settings["min_query_count"], settings["max_query_count"], settings["min_duration_ms"]) == (6, 9, 0)
    with pytest.raises(ValueError, match="loadgen_duration_s=1.0 and loadgen_min_duration_s=2.0 differ"):
        detect(**common, loadgen_duration_s=1.0, loadgen_min_duration_s=2.0)
    described = detect.parameters.properties
    for alias, ours in (("loadgen_query_count", "loadgen_count_override"),
                        ("loadgen_duration_s", "loadgen_min_duration_s")):
        assert ours in described[alias]["description"]
    for name in ("loadgen_min_query_count", "loadgen_max_query_count"):
        assert "LoadGen's " + name.removeprefix("loadgen_") in described[name]["description"]


def test_every_benchmark_parameter_is_a_described_flow_parameter_with_the_same_default():
    """The detect flow builds BenchmarkParams from its own arguments by name: each field must be a flow parameter
    (else a run fails at its start), with the field's default and an `Args:` description (the UI form's text)."""
    from dataclasses import MISSING, fields

    from flows.detect import detect

    from odbench.params import BenchmarkParams

    described = detect.parameters.properties
    defaults = BenchmarkParams()
    for field in fields(BenchmarkParams):
        assert field.name in described, f"{field.name} is not a parameter of the detect flow"
        assert described[field.name].get("description"), f"{field.name} has no Args: description"
        if field.default is not MISSING:
            assert described[field.name].get("default") == getattr(defaults, field.name), field.name

"""loadgen_mode=Submission: an AccuracyOnly pass, then a PerformanceOnly pass, reported as one result with both
mAP and performance, and each pass's logs in MLPerf's submission layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odbench.benchmark import run_benchmark
from odbench.loadgen_log import read_detail_log
from odbench.params import BenchmarkParams
from odbench.storage import Storage

N = 8


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "retinanet", "loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                              "loadgen_profile": "quick", **overrides})


@pytest.fixture(scope="module")
def submission_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("submission-storage")))


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_a_submission_run_reports_map_and_performance(synthetic_dir, submission_storage, scenario):
    result = run_benchmark(_params(synthetic_dir, loadgen_mode="Submission", loadgen_scenario=scenario),
                           submission_storage)
    accuracy_only = run_benchmark(_params(synthetic_dir, loadgen_scenario=scenario), submission_storage)
    assert result.mode == "Submission" and result.scenario == scenario
    assert result.mAP == accuracy_only.mAP and result.coco_stats == accuracy_only.coco_stats
    assert result.performance is not None and result.performance > 0
    assert result.validity in ("VALID", "INVALID") and result.samples_per_second_source == "loadgen"
    assert result.warmup["samples"] > 0 and result.calibration is not None
    run_dir = Path(submission_storage.path(f"runs/{result.run_id}"))
    for name in ("accuracy/mlperf_log_accuracy.json", "accuracy/mlperf_log_detail.txt",
                 "performance/run_1/mlperf_log_summary.txt", "performance/run_1/mlperf_log_detail.txt"):
        assert name in result.log_files and (run_dir / name).is_file()
    assert f"runs/{result.run_id}/performance/run_1/mlperf_log_summary.txt" in result.files
    assert read_detail_log(run_dir / "accuracy/mlperf_log_detail.txt")["effective_test_mode"] == "AccuracyOnly"
    assert read_detail_log(run_dir / "performance/run_1/mlperf_log_detail.txt")["effective_test_mode"] == \
        "PerformanceOnly"
    stored = json.loads((run_dir / "result.json").read_text())
    assert stored["mAP"] == result.mAP and stored["performance"] == result.performance


def test_a_single_test_keeps_its_logs_in_the_run_folder(synthetic_dir, submission_storage):
    result = run_benchmark(_params(synthetic_dir), submission_storage)
    assert {"mlperf_log_accuracy.json", "mlperf_log_summary.txt", "mlperf_log_detail.txt",
            "user.conf"} <= set(result.log_files)
    assert not any("/" in name for name in result.log_files)


@pytest.mark.parametrize("test, references", [("TEST01", ("accuracy", "performance/run_1")),
                                              ("TEST04", ("performance/run_1",))])
def test_a_compliance_test_runs_its_reference_passes_and_reports_a_verdict(synthetic_dir, submission_storage, test,
                                                                           references):
    result = run_benchmark(_params(synthetic_dir, loadgen_mode="PerformanceOnly", loadgen_compliance_test=test),
                           submission_storage)
    verdict = result.compliance
    assert verdict["test"] == test and isinstance(verdict["passed"], bool)
    assert verdict["audit_config_problems"] == []  # LoadGen applied the audit.config
    assert verdict["performance"]["reference_score"] > 0 and verdict["performance"]["audit_score"] > 0
    run_dir = Path(submission_storage.path(f"runs/{result.run_id}"))
    audit = f"audit/{test}"
    for folder in (*references, f"{audit}/performance/run_1"):
        assert f"{folder}/mlperf_log_detail.txt" in result.log_files
    assert "TEST PASS" in (run_dir / audit / "verify_performance.txt").read_text() or not verdict["passed"]
    assert (run_dir / audit / "audit.config").is_file() and not verdict["audit_dir"].startswith("/")
    if test == "TEST01":  # the honest SUT's sampled responses equal its accuracy run's: deterministic
        assert verdict["accuracy"]["passed"] and verdict["accuracy"]["num_perf_log_data_mismatch"] == 0
        assert "TEST PASS" in (run_dir / audit / "verify_accuracy.txt").read_text()
        assert (run_dir / audit / "accuracy/accuracy.txt").read_text().startswith("mAP=")  # the script's line
        assert result.mAP is not None  # the accuracy pass TEST01 compares against is scored too
    assert result.performance is not None and result.validity is not None

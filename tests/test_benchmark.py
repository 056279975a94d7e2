"""The Prefect-free benchmark on the stand-ins: every scenario x mode, providers, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, stored_files

from odbench.backend import OnnxBackend, ProviderUnavailableError
from odbench.benchmark import run_benchmark
from odbench.coco import DatasetTooSmallError
from odbench.fetch import ChecksumMismatchError
from odbench.loadgen_log import summarize
from odbench.models import UnknownModelError, get_spec
from odbench.params import BenchmarkParams
from odbench.standin import build_standin
from odbench.storage import Storage
from odbench.validation import ModelContractError

N = 12


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu", **overrides})


@pytest.fixture(scope="module")
def shared_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("bench-storage")))


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet"])
@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
@pytest.mark.parametrize("mode", ["AccuracyOnly", "PerformanceOnly"])
def test_every_scenario_and_mode_on_both_standins(synthetic_dir, shared_storage, model_name, scenario, mode):
    params = _params(synthetic_dir, model_name=model_name, loadgen_scenario=scenario, loadgen_mode=mode,
                     loadgen_count_override=24 if mode == "PerformanceOnly" else None)
    result = run_benchmark(params, shared_storage)
    run_dir = Path(shared_storage.path(f"runs/{result.run_id}"))
    assert {"mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "user.conf",
            "result.json"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "result.json").read_text())["run_id"] == result.run_id
    assert result.stand_in and result.providers == ["CPUExecutionProvider"]
    assert result.scenario == scenario and result.mode == mode and result.dataset_size == N
    accuracy_entries = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    if mode == "AccuracyOnly":
        assert 0.0 <= result.mAP <= 100.0 and len(result.coco_stats) == 12
        assert sorted(e["qsl_idx"] for e in accuracy_entries) == list(range(N))
        assert result.validity is None and result.performance is None and result.samples_per_second > 0
        assert result.samples_per_second_source.startswith("accuracy pass")
    else:
        summary = summarize(run_dir / "mlperf_log_detail.txt", scenario, mode)
        assert result.mAP is None and accuracy_entries == []
        assert result.validity in ("VALID", "INVALID") and result.samples_per_second > 0
        assert result.samples_per_second_source == "loadgen"
        assert summary.effective_settings["performance_sample_count"] == N  # official: 64, at most the dataset
        assert summary.query_count == (1 if scenario == "Offline" else 24)
        assert {"p50", "p90", "p99"} <= set(result.latency_ns)


def test_user_conf_is_written_under_the_official_key(synthetic_dir, shared_storage):
    params = _params(synthetic_dir, model_name="retinanet", loadgen_mode="PerformanceOnly",
                     loadgen_target_qps=50, loadgen_count_override=16, loadgen_buffer_size=4)
    result = run_benchmark(params, shared_storage)
    conf = Path(shared_storage.path(f"runs/{result.run_id}/user.conf")).read_text()
    assert "retinanet.Offline.target_qps = 50" in conf and "retinanet.Offline.max_query_count = 16" in conf
    assert result.effective_settings["target_qps"] == 50 and result.effective_settings["performance_sample_count"] == 4


def test_auto_device_says_which_provider_ran_and_cuda_fails_clearly():
    spec = get_spec("retinanet")
    model = build_standin(spec)
    assert OnnxBackend(model, spec, "").providers[-1] == "CPUExecutionProvider"
    gpu = Path("/proc/driver/nvidia").exists()
    if gpu:
        pytest.skip("this machine has a GPU: the CUDA-absent error cannot be shown here")
    with pytest.raises(ProviderUnavailableError,
                       match="CUDAExecutionProvider could not load.*CUDA and cuDNN.*execution_device=auto or cpu"):
        OnnxBackend(model, spec, "cuda")


def test_unknown_model_fails_before_any_download(storage):
    with pytest.raises(UnknownModelError, match="retinanet, retinanet_coco, retinanet_openimages, ssd_resnet34"):
        run_benchmark(BenchmarkParams(model_name="yolo", dataset_url="http://127.0.0.1:9/none"), storage)
    assert stored_files(storage) == []


@pytest.mark.parametrize("bad, says", [
    (dict(loadgen_scenario="Server2"), "valid: Offline, SingleStream"),
    (dict(loadgen_mode="Fast"), "valid: AccuracyOnly, PerformanceOnly"),
    (dict(loadgen_target_qps=0), "must be positive"),
    (dict(loadgen_scenario="Server", loadgen_target_qps=-5), "loadgen_target_qps=-5 is out of range"),
    (dict(loadgen_scenario="SingleStream", loadgen_target_latency=0), "loadgen_target_latency=0 is out of range"),
    (dict(loadgen_min_duration_s=-1), "must be 0 or more"),
    (dict(loadgen_min_duration_s=20, loadgen_max_duration_s=10), "above loadgen_max_duration_s"),
    (dict(execution_device="tpu"), "use one of: auto, cpu"),
    (dict(framework="tflite"), "runs onnx models"),
    (dict(batch_size=8), "use batch_size=1"),
    (dict(loadgen_multistreamness=8), "MultiStream"),
    (dict(loadgen_compliance_test="TEST09"), "TEST01, TEST04"),
    (dict(loadgen_compliance_test="TEST04", loadgen_mode="PerformanceOnly", loadgen_dataset_size=3),
     "at least 4 loaded samples"),
])
def test_bad_settings_fail_before_any_work(bad, says):
    with pytest.raises(ValueError, match=says):
        BenchmarkParams(**bad)


def test_official_settings_apply_on_every_run_in_a_process(synthetic_dir, shared_storage):
    """LoadGen's mlperf.conf values for `retinanet` Offline, read back from its own detail log, twice."""
    for _ in range(2):
        result = run_benchmark(_params(synthetic_dir, model_name="retinanet", loadgen_dataset_size=4), shared_storage)
        assert result.effective_settings["min_duration_ms"] == 600000
        assert result.effective_settings["min_sample_count"] == 24576
        assert result.loadgen_errors == []


def test_ssd_logs_its_contiguous_labels_and_the_inverse_map_makes_them_cocos_ids(synthetic_dir):
    from odbench.accuracy import encode_detections, inverse_map

    rows = encode_detections(7, np.asarray([[0.1, 0.2, 0.3, 0.4]] * 3), np.asarray([0.9, 0.8, 0.7]),
                             np.asarray([1, 12, 80]), get_spec("ssd_resnet34"))
    assert rows[:, 6].tolist() == [1, 12, 80]  # the model's labels, as MLPerf's reference logs them
    assert rows[0, :6].tolist() == pytest.approx([7, 0.2, 0.1, 0.4, 0.3, 0.9])
    annotations = json.loads((synthetic_dir / "annotations/instances_val2017.json").read_text())
    inv_map = inverse_map(annotations)  # accuracy-coco.py --use-inv-map: [0] + cocoGt.getCatIds()
    assert [inv_map[int(label)] for label in rows[:, 6]] == [1, 13, 90]  # person, stop sign (12 unused), toothbrush
    assert get_spec("ssd_resnet34").uses_inverse_map and not get_spec("retinanet_coco").uses_inverse_map


def test_dataset_too_small_names_both_numbers(synthetic_dir, storage):
    with pytest.raises(DatasetTooSmallError, match="loadgen_dataset_size=500.*40 images"):
        run_benchmark(_params(synthetic_dir, loadgen_dataset_size=500), storage)


def test_model_file_breaking_the_contract_fails_naming_the_mismatch(tmp_path, synthetic_dir, storage):
    wrong = tmp_path / "retinanet-as-ssd.onnx"
    wrong.write_bytes(build_standin(get_spec("retinanet")))
    with pytest.raises(ModelContractError, match="input 'image' expected float32\\[1,3,1200,1200\\], got 'images'"):
        run_benchmark(_params(synthetic_dir, model_name="ssd_resnet34", model_url=str(wrong)), storage)
    assert not [f for f in stored_files(storage) if f.startswith("models/")]


def test_core_runs_with_prefect_absent(synthetic_dir, tmp_path):
    """Import every core module and run a benchmark in a process where importing prefect fails."""
    script = f"""
import importlib, pkgutil, sys
sys.modules["prefect"] = None  # any `import prefect` now raises ImportError
import odbench
for module in pkgutil.iter_modules(odbench.__path__):
    if module.name != "__main__":
        importlib.import_module(f"odbench.{{module.name}}")
assert not any(name.startswith("prefect") and sys.modules[name] is not None for name in sys.modules)
from odbench.cli import main
sys.exit(main(["--model_name", "retinanet", "--model_url", "standin", "--dataset_url", {str(synthetic_dir)!r},
               "--loadgen_dataset_size", "5", "--storage_url", {str(tmp_path / "s")!r}, "--json"]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model_name"] == "retinanet_coco" and result["stand_in"] and result["mAP"] is not None


def test_model_md5_mismatch_names_url_and_sums_and_stores_nothing(tmp_path, synthetic_dir, storage):
    model = tmp_path / "model.onnx"
    model.write_bytes(build_standin(get_spec("retinanet")))
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ChecksumMismatchError, match=f"{model}: expected {wrong}, got [0-9a-f]{{32}}"):
        run_benchmark(_params(synthetic_dir, model_name="retinanet", model_url=str(model), model_md5=wrong), storage)
    assert not [f for f in stored_files(storage) if f.startswith("models/")]


def test_a_sample_that_fails_to_load_fails_the_run_without_killing_the_process(tmp_path):
    from odbench.harness import run_loadgen
    from odbench.loadgen_settings import LoadGenConfig
    from odbench.sut import DetectionSUT, SampleLibrary

    spec = get_spec("retinanet")

    def load(idx: int) -> np.ndarray:
        if idx == 2:
            raise FileNotFoundError("preprocessed sample 2 is gone")
        return np.zeros((1, 3, 800, 800), np.float32)

    sut = DetectionSUT(OnnxBackend(build_standin(spec), spec, "cpu"), SampleLibrary(4, load), spec)
    with pytest.raises(RuntimeError, match="1 sample\\(s\\) failed to load; first: preprocessed sample 2 is gone"):
        run_loadgen(sut, LoadGenConfig("Offline", "AccuracyOnly"), spec.loadgen_model, tmp_path / "logs")


# the axs names: each gives LoadGen the same settings as the parameter it aliases
ALIAS_CASES = [
    (dict(loadgen_query_count=8), dict(loadgen_count_override=8)),
    (dict(loadgen_duration_s=0.1, loadgen_max_query_count=8),
     dict(loadgen_min_duration_s=0.1, loadgen_max_query_count=8)),
    # LoadGen's min and max query count, given separately: together they say what loadgen_count_override says
    (dict(loadgen_min_query_count=8, loadgen_max_query_count=8, loadgen_duration_s=0), dict(loadgen_count_override=8)),
]


@pytest.mark.parametrize("alias, ours", ALIAS_CASES, ids=["query_count", "duration_s", "min_max_query_count"])
def test_axs_aliases_give_the_same_effective_settings(synthetic_dir, shared_storage, alias, ours):
    # a target given, so no calibration measures one (it would differ between the two runs)
    common = dict(model_name="retinanet", loadgen_scenario="SingleStream", loadgen_mode="PerformanceOnly",
                  loadgen_dataset_size=4, loadgen_target_latency=1)
    by_alias = run_benchmark(_params(synthetic_dir, **common, **alias), shared_storage)
    by_ours = run_benchmark(_params(synthetic_dir, **common, **ours), shared_storage)
    assert by_alias.effective_settings == by_ours.effective_settings
    settings = by_alias.effective_settings
    assert settings["max_query_count"] == 8 and summarize(
        Path(shared_storage.path(f"runs/{by_alias.run_id}/mlperf_log_detail.txt")), "SingleStream",
        "PerformanceOnly").query_count == 8
    if "loadgen_duration_s" in alias and alias["loadgen_duration_s"]:
        assert settings["min_duration_ms"] == 100
    else:
        assert settings["min_query_count"] == 8 and settings["min_duration_ms"] == 0


def test_min_and_max_query_count_reach_loadgen_separately(synthetic_dir, shared_storage):
    result = run_benchmark(_params(synthetic_dir, model_name="retinanet", loadgen_scenario="SingleStream",
                                   loadgen_mode="PerformanceOnly", loadgen_dataset_size=4, loadgen_duration_s=0,
                                   loadgen_min_query_count=6, loadgen_max_query_count=9), shared_storage)
    conf = Path(shared_storage.path(f"runs/{result.run_id}/user.conf")).read_text()
    assert "retinanet.SingleStream.min_query_count = 6" in conf and "retinanet.SingleStream.max_query_count = 9" in conf
    assert result.effective_settings["min_query_count"] == 6 and result.effective_settings["max_query_count"] == 9


@pytest.mark.parametrize("given, says", [
    (dict(loadgen_query_count=8, loadgen_count_override=16),
     "loadgen_query_count=8 and loadgen_count_override=16 differ: loadgen_query_count is another name for "
     "loadgen_count_override"),
    (dict(loadgen_duration_s=5, loadgen_min_duration_s=10),
     "loadgen_duration_s=5 and loadgen_min_duration_s=10 differ: loadgen_duration_s is another name for "
     "loadgen_min_duration_s"),
    (dict(loadgen_min_query_count=10, loadgen_max_query_count=5), "loadgen_min_query_count (10) is above "
                                                                  "loadgen_max_query_count (5)"),
    (dict(loadgen_query_count=8, loadgen_max_query_count=9),
     "loadgen_max_query_count=9 contradicts loadgen_count_override=8 (or its alias loadgen_query_count)"),
    (dict(loadgen_query_count=0), "loadgen_query_count=0 is out of range"),
    (dict(loadgen_duration_s=-1), "loadgen_duration_s=-1 is out of range"),
])
def test_an_alias_contradicting_its_parameter_is_an_error_naming_both(given, says):
    import re

    with pytest.raises(ValueError, match=re.escape(says)):
        BenchmarkParams(**given)


def test_the_same_value_under_both_names_is_accepted_and_the_command_line_has_the_aliases():
    import argparse

    from odbench.cli import add_param_arguments, params_from_args

    same = BenchmarkParams(loadgen_query_count=8, loadgen_count_override=8, loadgen_duration_s=2,
                           loadgen_min_duration_s=2.0)
    assert same.loadgen_config == BenchmarkParams(loadgen_count_override=8, loadgen_min_duration_s=2).loadgen_config
    parser = argparse.ArgumentParser()
    add_param_arguments(parser)
    args = parser.parse_args(["--loadgen_query_count", "12", "--loadgen_duration_s", "1.5",
                              "--loadgen_min_query_count", "12", "--loadgen_max_query_count", "12"])
    config = BenchmarkParams(**params_from_args(args)).loadgen_config
    assert (config.count_override, config.min_duration_s, config.min_query_count, config.max_query_count) == (
        12, 1.5, 12, 12)

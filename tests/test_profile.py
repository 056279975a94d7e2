"""loadgen_profile: `official` (mlperf.conf plus the published values current LoadGen lacks for ssd-resnet34)
and `quick` (a PerformanceOnly test of seconds); either way the result records what LoadGen used."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from conftest import ROOT

from odbench.benchmark import run_benchmark
from odbench.cli import add_param_arguments
from odbench.loadgen_settings import (
    PUBLISHED_VALUES,
    QUICK_MIN_DURATION_S,
    QUICK_MIN_QUERY_COUNT,
    QUICK_MULTI_STREAM_LATENCY_MS,
    QUICK_SERVER_QPS,
    QUICK_SINGLE_STREAM_LATENCY_MS,
    LoadGenConfig,
)
from odbench.params import BenchmarkParams
from odbench.storage import Storage

N = 8


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu", **overrides})


@pytest.fixture(scope="module")
def profile_storage(tmp_path_factory) -> Storage:
    return Storage(str(tmp_path_factory.mktemp("profile-storage")))


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet"])
@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_official_effective_settings_in_seconds(synthetic_dir, profile_storage, model_name, scenario):
    """The dry step: an AccuracyOnly run ignores durations, yet LoadGen's detail log has the settings it would
    time with (mlperf.conf, then user.conf), so the official values show without a 10-minute run."""
    t0 = time.perf_counter()
    result = run_benchmark(_params(synthetic_dir, model_name=model_name, loadgen_scenario=scenario),
                           profile_storage)
    assert time.perf_counter() - t0 < 60
    effective = result.effective_settings
    assert result.loadgen_profile == "official" and result.loadgen_errors == []
    assert effective["min_duration_ms"] == 600000
    if scenario == "Offline":  # retinanet's from LoadGen's mlperf.conf; ssd-resnet34's from PUBLISHED_VALUES
        assert effective["min_sample_count"] == 24576  # LoadGen's Offline min_query_count, counted in samples
    else:
        assert effective["target_qps"] == 100  # LoadGen logs *.SingleStream.target_latency = 10 (ms) as 1/latency


def test_official_user_conf_has_the_published_ssd_resnet34_values_and_user_options_win():
    conf = LoadGenConfig(scenario="Offline", buffer_size=8).user_conf("ssd-resnet34", 100)
    assert "ssd-resnet34.*.performance_sample_count_override = 64\n" in conf
    assert "ssd-resnet34.Offline.min_query_count = 24576\n" in conf
    assert "ssd-resnet34.Server.target_latency = 100\n" in conf
    assert "ssd-resnet34.MultiStream.target_latency = 528\n" in conf
    assert "ssd-resnet34.Offline.performance_sample_count_override = 8\n" in conf  # the exact key wins in LoadGen
    user = LoadGenConfig(scenario="Offline", min_query_count=50).user_conf("ssd-resnet34", 100)
    assert "ssd-resnet34.Offline.min_query_count = 50\n" in user and "24576" not in user  # one line per key
    assert LoadGenConfig().user_conf("retinanet", 100) == "retinanet.Offline.performance_sample_count_override = 64\n"
    assert "performance_sample_count_override = 8\n" in LoadGenConfig(profile="quick").user_conf("retinanet", 100)
    assert "64" not in LoadGenConfig(profile="quick").user_conf("ssd-resnet34", 100)  # quick: none of them
    assert set(PUBLISHED_VALUES) == {"ssd-resnet34"}


def test_official_ssd_resnet34_min_query_count_is_read_back_from_loadgen(synthetic_dir, profile_storage):
    """The user's option still overrides the published value, as LoadGen reports it."""
    result = run_benchmark(_params(synthetic_dir, model_name="ssd_resnet34", loadgen_min_query_count=1000),
                           profile_storage)
    assert result.effective_settings["min_sample_count"] == 1000  # above 1.1 x 600 s x 1 qps
    assert result.effective_settings["performance_sample_count"] == 8


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet"])
@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_quick_performance_run_takes_seconds(synthetic_dir, profile_storage, model_name, scenario):
    t0 = time.perf_counter()
    result = run_benchmark(_params(synthetic_dir, model_name=model_name, loadgen_scenario=scenario,
                                   loadgen_mode="PerformanceOnly", loadgen_profile="quick"), profile_storage)
    assert time.perf_counter() - t0 < 60
    effective = result.effective_settings
    assert result.loadgen_profile == "quick" and result.loadgen_errors == []
    assert effective["min_duration_ms"] == QUICK_MIN_DURATION_S * 1000
    # the target the user left unset is measured (odbench/calibration.py), not the quick profile's constant
    calibrated = result.calibration
    if scenario == "Offline":  # one query of max(min_query_count, 1.1 x duration x target) samples
        assert calibrated["setting"] == "loadgen_target_qps" and effective["target_qps"] == calibrated["value"]
        assert effective["min_sample_count"] == max(QUICK_MIN_QUERY_COUNT,
                                                    int(1.1 * QUICK_MIN_DURATION_S * calibrated["value"]))
    else:
        assert effective["min_query_count"] == QUICK_MIN_QUERY_COUNT
        assert calibrated["setting"] == "loadgen_target_latency"
        assert effective["target_qps"] == pytest.approx(1000 / calibrated["value"], rel=1e-4)  # LoadGen logs 6 digits
    assert result.validity in ("VALID", "INVALID") and result.performance is not None
    assert result.samples_per_second > 0


def test_quick_leaves_what_the_user_set():
    conf = LoadGenConfig(mode="PerformanceOnly", profile="quick", min_duration_s=5).user_conf("retinanet", 100)
    assert "retinanet.Offline.min_duration = 5000\n" in conf
    assert f"retinanet.Offline.min_query_count = {QUICK_MIN_QUERY_COUNT}\n" in conf
    capped = LoadGenConfig(profile="quick", max_duration_s=1, max_query_count=4).user_conf("retinanet", 100)
    assert "min_duration = 1000\n" in capped and "min_query_count = 4\n" in capped
    counted = LoadGenConfig(profile="quick", count_override=10).user_conf("retinanet", 100)
    assert "min_query_count = 10\n" in counted and "min_duration = 0\n" in counted
    # the quick profile plans few samples: no memory-bound error for a SingleStream run without a latency
    assert LoadGenConfig(scenario="SingleStream", mode="PerformanceOnly", profile="quick").planned_samples()[0] == 8000
    # without calibration (a LoadGenConfig used directly), the quick targets size each scenario's test
    single = LoadGenConfig(scenario="SingleStream", profile="quick").user_conf("retinanet", 100)
    assert f"retinanet.SingleStream.target_latency = {QUICK_SINGLE_STREAM_LATENCY_MS}\n" in single
    multi = LoadGenConfig(scenario="MultiStream", mode="PerformanceOnly", profile="quick")
    assert f"MultiStream.target_latency = {QUICK_MULTI_STREAM_LATENCY_MS}\n" in multi.user_conf("retinanet", 8)
    assert multi.planned_samples()[0] == 2 * QUICK_MIN_DURATION_S * 1000 / QUICK_MULTI_STREAM_LATENCY_MS * 8
    server = LoadGenConfig(scenario="Server", mode="PerformanceOnly", profile="quick")
    assert f"retinanet.Server.target_qps = {QUICK_SERVER_QPS}\n" in server.user_conf("retinanet", 8)
    assert server.planned_samples()[0] == QUICK_SERVER_QPS * QUICK_MIN_DURATION_S


def test_an_unknown_profile_lists_the_valid_ones(capsys):
    with pytest.raises(ValueError, match="unknown loadgen_profile 'fast'; valid: official, quick"):
        BenchmarkParams(loadgen_profile="fast")
    with pytest.raises(SystemExit):
        parser = argparse.ArgumentParser()
        add_param_arguments(parser)
        parser.parse_args(["--loadgen_profile", "fast"])
    assert "choose from 'official', 'quick'" in capsys.readouterr().err


def test_the_flow_takes_the_profile_with_an_args_line():
    text = (ROOT / "flows" / "detect.py").read_text()
    assert "loadgen_profile: Profile = D.loadgen_profile," in text and "        loadgen_profile: official" in text

"""Run history, baselines and trends: real storage, real processes, real PNG decoding; no mocks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pytest

from odbench.benchmark import ACCURACY_PASS_THROUGHPUT, BenchmarkResult, environment
from odbench.history import HistoryRecord, HistoryStore, Metrics, entry_key
from odbench.machine import hardware_class
from odbench.regression import Thresholds, compare
from odbench.storage import Storage
from odbench.trend import CHART_WIDTH, chart_markdown, trend_chart_png, trend_markdown

PARAMS = {"model_name": "retinanet", "loadgen_scenario": "Offline", "loadgen_mode": "PerformanceOnly",
          "loadgen_dataset_size": 64, "model_url": "standin", "dataset_url": "synthetic", "verbosity": 2}
ENV = {"python": "3.11.7", "onnxruntime-gpu": "1.20.0", "gpu_driver": "570.1", "accelerator": "NVIDIA H200"}
T0 = dt.datetime(2026, 11, 1, 22, 15, tzinfo=dt.UTC)


def _record(day: int, *, run_id: str | None = None, mAP: float | None = 35.0, sps: float | None = 100.0,
            p90: float | None = 20.0, hardware: str = "NVIDIA H200", md5: str = "1234abcd" * 4,
            env: dict[str, str] | None = None, label: str = "retinanet_coco Offline PerformanceOnly [STAND-IN]",
            flow_run_url: str | None = None, entry: str | None = None) -> HistoryRecord:
    return HistoryRecord(
        recorded=(T0 + dt.timedelta(days=day)).isoformat(timespec="microseconds"), entry=entry or entry_key(PARAMS),
        entry_label=label, hardware=hardware, parameters=dict(PARAMS), run_id=run_id or f"run-{day:02d}",
        run_dir=f"file:///storage/runs/run-{day:02d}", model_md5=md5, dataset_digest="d" * 32, stand_in=True,
        metrics=Metrics(mAP=mAP, samples_per_second=sps, latency_p90_ms=p90, latency_p99_ms=None),
        validity="VALID", flow_run_id=f"flow-{day}", flow_run_url=flow_run_url, environment=dict(env or ENV))


def _result(**overrides) -> BenchmarkResult:
    result = BenchmarkResult(
        run_id="r1", run_dir="file:///s/runs/r1", model_name="retinanet_coco", stand_in=True, model_md5="m" * 32,
        model_source="standin", dataset="synthetic", dataset_size=64, dataset_digest="d" * 32, scenario="Offline",
        mode="PerformanceOnly", providers=["CPUExecutionProvider"], mAP=None, coco_stats=None,
        samples_per_second=812.5, samples_per_second_source="loadgen", validity="VALID",
        latency_ns={"p50": 1e6, "p90": 2.5e6, "p99": 4e6}, performance_metric="samples per second",
        performance=812.5, environment=dict(ENV))
    return dataclasses.replace(result, **overrides)


# history: storage round trip, concurrency, file format, robustness


def test_append_and_records_round_trip(storage):
    history = HistoryStore(storage)
    records = [_record(day) for day in (3, 1, 2)]
    paths = [history.append(r) for r in records]
    assert paths[1] == f"history/{entry_key(PARAMS)}/20261102T221500.000000Z-run-01.jsonl"
    assert history.records() == sorted(records, key=lambda r: r.recorded)
    assert history.records(entry_key(PARAMS)) == history.records() and history.entries() == [entry_key(PARAMS)]
    assert history.records("0" * 16) == [] and HistoryStore(Storage(storage.url + "-empty")).entries() == []
    history.append(records[0])  # the same record again (a retried task) replaces its own file
    assert len(history.records()) == 3


def test_the_same_history_on_an_fsspec_object_store():
    """memory:// is fsspec's in-process object store: no rename, no append, as on a bucket."""
    import uuid

    store = Storage(f"memory://odbench-history-{uuid.uuid4().hex}")
    history = HistoryStore(store)
    records = [_record(day) for day in (2, 1)]
    for record in records:
        history.append(record)
    assert history.records() == sorted(records, key=lambda r: r.recorded)
    assert compare(_record(3), history.records(), Thresholds()).status == "pass"
    store.remove("")


def test_from_result_builds_a_record_that_survives_json(storage):
    record = HistoryRecord.from_result(_result(), {**PARAMS, "storage_url": "/x"}, flow_run_id="f1",
                                       flow_run_url="http://127.0.0.1:4200/runs/flow-run/f1")
    assert record.entry == entry_key(PARAMS) and record.hardware == "NVIDIA H200"
    assert record.entry_label == "retinanet_coco Offline PerformanceOnly [STAND-IN]"
    assert record.metrics == Metrics(mAP=None, samples_per_second=812.5, latency_p90_ms=2.5, latency_p99_ms=4.0)
    assert HistoryRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def _append_many(url: str, worker: int, count: int) -> None:
    history = HistoryStore(Storage(url))
    for i in range(count):
        history.append(_record(i % 28, run_id=f"w{worker}-{i:02d}"))


def test_two_processes_appending_at_once_lose_nothing(storage):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(storage.url, w, 20)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    records = HistoryStore(storage).records()
    assert len(records) == 40 and len({r.run_id for r in records}) == 40


def test_each_file_is_one_plain_json_line(storage):
    HistoryStore(storage).append(_record(1))
    files = list(Path(storage.root, "history").glob("*/*.jsonl"))
    assert len(files) == 1
    lines = files[0].read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["run_id"] == "run-01"
    assert json.loads(lines[0])["metrics"]["samples_per_second"] == 100.0


def test_a_corrupt_or_foreign_file_is_skipped_with_a_warning(storage, caplog):
    history = HistoryStore(storage)
    history.append(_record(1))
    folder = f"history/{entry_key(PARAMS)}"
    storage.write_bytes(f"{folder}/20261103T000000.000000Z-broken.jsonl", b'{"run_id": "half')
    storage.write_bytes(f"{folder}/20261104T000000.000000Z-foreign.jsonl", b'{"run_id": "x", "metrics": {}}\n')
    storage.write_bytes(f"{folder}/.partial-in-progress.jsonl", b"not json")
    with caplog.at_level(logging.WARNING, logger="odbench.history"):
        records = history.records()
    assert [r.run_id for r in records] == ["run-01"]
    assert "broken.jsonl" in caplog.text and "foreign.jsonl" in caplog.text and "partial" not in caplog.text


def test_from_json_ignores_unknown_keys_and_names_missing_ones():
    obj = {**_record(1).to_json(), "added_later": {"x": 1}}
    assert HistoryRecord.from_json(obj) == _record(1)
    del obj["run_dir"], obj["model_md5"]
    with pytest.raises(ValueError, match="run_dir, model_md5"):
        HistoryRecord.from_json(obj)
    with pytest.raises(TypeError, match="metrics"):
        HistoryRecord.from_json({**_record(1).to_json(), "metrics": "fast"})


def test_entry_key_ignores_logging_and_storage_but_not_what_is_measured():
    key = entry_key(PARAMS)
    assert entry_key({**PARAMS, "verbosity": 0, "storage_block": "prod", "storage_url": "s3://b/x"}) == key
    assert entry_key({**PARAMS, "loadgen_target_qps": None}) == key  # unset is unset
    assert entry_key({**PARAMS, "loadgen_scenario": "SingleStream"}) != key
    assert entry_key({**PARAMS, "loadgen_dataset_size": 65}) != key
    assert entry_key({**PARAMS, "loadgen_target_qps": 100}) == entry_key({**PARAMS, "loadgen_target_qps": 100.0})
    assert len(key) == 16 and int(key, 16) >= 0


def test_metrics_keep_only_loadgen_throughput():
    accuracy = _result(mode="AccuracyOnly", mAP=41.5, samples_per_second=250.0, validity=None, latency_ns={},
                       samples_per_second_source=ACCURACY_PASS_THROUGHPUT)
    assert Metrics.from_result(accuracy) == Metrics(mAP=41.5)
    assert Metrics.from_result(_result()).samples_per_second == 812.5


# regression: baselines, thresholds, messages


def test_first_run_has_no_baseline_and_passes():
    comparison = compare(_record(1), [_record(1)], Thresholds())
    assert comparison.status == "no-baseline" and comparison.findings == []
    assert "no comparable run yet" in comparison.message() and "NVIDIA H200" in comparison.message()
    assert "passes" in comparison.message()


def test_small_changes_pass():
    history = [_record(d) for d in range(1, 4)]
    comparison = compare(_record(4, mAP=34.7, sps=93.0, p90=22.0), history, Thresholds())
    assert comparison.status == "pass" and len(comparison.findings) == 3
    assert not any(f.crossed for f in comparison.findings) and comparison.message().count("\n") == 0
    assert comparison.baseline_run_ids == ["run-01", "run-02", "run-03"]


@pytest.mark.parametrize(("metric", "overrides", "shown"), [
    ("mAP", {"mAP": 34.0}, ["mAP 34.000%", "baseline 35.000%", "drop over 0.5 points", "-1.000 points"]),
    ("samples_per_second", {"sps": 75.0}, ["samples/s 75.000", "baseline 100.000", "drop over 20 %", "-25.000 %"]),
    ("latency_p90_ms", {"p90": 28.0}, ["p90 latency 28.000 ms", "baseline 20.000 ms", "rise over 35 %"]),
])
def test_each_metric_can_regress(metric, overrides, shown):
    history = [_record(d) for d in range(1, 4)]
    comparison = compare(_record(4, **overrides), history, Thresholds())
    assert comparison.status == "regressed"
    assert [f.metric for f in comparison.findings if f.crossed] == [metric]
    message = comparison.message()
    assert all(text in message for text in shown), message
    assert "median of last 3" in message and "run-04" in message and "file:///storage/runs/run-04" in message


def test_baseline_is_the_median_of_the_last_k():
    history = [_record(d, sps=v) for d, v in enumerate([5.0, 100.0, 100.0, 10.0, 100.0], start=1)]
    comparison = compare(_record(9, sps=95.0), history, Thresholds(), last_k=4)
    finding = next(f for f in comparison.findings if f.metric == "samples_per_second")
    assert finding.baseline == 100.0 and not finding.crossed and finding.baseline_run_ids[0] == "run-02"
    assert compare(_record(9, sps=None), history, Thresholds()).findings[1].metric == "latency_p90_ms"


def test_a_pinned_run_is_the_baseline():
    history = [_record(1, sps=200.0), _record(2), _record(3)]
    comparison = compare(_record(4), history, Thresholds(), pinned_run_id="run-01")
    assert comparison.status == "regressed" and comparison.baseline_run_ids == ["run-01"]
    assert "pinned run run-01" in comparison.message()
    with pytest.raises(ValueError, match="run-77.*retinanet_coco"):
        compare(_record(4), history, Thresholds(), pinned_run_id="run-77")
    with pytest.raises(ValueError, match="run-05"):  # later runs are not a baseline
        compare(_record(4), [*history, _record(5)], Thresholds(), pinned_run_id="run-05")


def test_other_hardware_and_other_entries_are_not_comparable():
    history = [_record(1, hardware="NVIDIA A100", sps=1000.0), _record(2, entry="f" * 16, sps=1000.0)]
    assert compare(_record(3), history, Thresholds()).status == "no-baseline"


def test_changes_name_the_model_and_package_versions():
    env = {**ENV, "onnxruntime-gpu": "1.21.0", "gpu_driver": "580.2"}
    comparison = compare(_record(3, md5="5678ef01" * 4, env=env, sps=50.0), [_record(1), _record(2)], Thresholds())
    assert comparison.changes == ["model md5 1234abcd → 5678ef01", "gpu_driver 570.1 → 580.2",
                                  "onnxruntime-gpu 1.20.0 → 1.21.0"]
    assert "model md5 1234abcd → 5678ef01" in comparison.message()


def test_thresholds_must_be_finite_and_not_negative():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="map_drop_points"):
            Thresholds(map_drop_points=bad)


# trend views


def test_trend_markdown_is_newest_first_and_escapes_data():
    evil = "evil | [x](javascript:alert(1)) `code` <b>\nnext"
    records = [_record(1), _record(2, label=evil, hardware=evil, flow_run_url="http://127.0.0.1:4200/runs/flow-run/f2")]
    text = trend_markdown(records)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and "run-02" in table[2] and "run-01" in table[3]
    assert all(line.count("|") - line.count("\\|") == 10 for line in table)
    assert "](javascript" not in text and "<b>" not in text and "\\[x\\]" in text and "`code`" not in text
    assert "(<http://127.0.0.1:4200/runs/flow-run/f2>)" in text
    assert "](" not in trend_markdown([_record(1, flow_run_url="javascript:alert(1)")])  # shown, not linked


def _decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_trend_chart_is_a_png_with_gaps_one_point_and_constants():
    records = [_record(d, mAP=None if d == 3 else 30.0 + d, sps=None if d % 4 == 0 else 100.0) for d in range(12)]
    image = _decode(trend_chart_png(records))
    assert image.shape[1] == CHART_WIDTH and 400 < image.shape[0] < 700 and (image < 128).any()
    assert _decode(trend_chart_png([_record(1)])).shape[1] == CHART_WIDTH
    assert _decode(trend_chart_png([_record(1, mAP=None, sps=None)])).shape[1] == CHART_WIDTH
    assert _decode(trend_chart_png([])).shape[1] == CHART_WIDTH
    markdown = chart_markdown(trend_chart_png(records), "trend [x]")
    assert markdown.startswith("![trend \\[x\\]](data:image/png;base64,iVBOR")


# machine facts in a result's environment


def test_environment_records_the_machine_and_its_hardware_class():
    env = environment()
    assert {"hostname", "cpu_model", "cpu_count", "accelerator", "gpu_driver", "hardware_class"} <= set(env)
    assert all(isinstance(v, str) for v in env.values()) and env["hardware_class"] == hardware_class(env)
    assert hardware_class({"accelerator": "none", "cpu_model": "AMD EPYC", "cpu_count": "2"}) == "cpu: AMD EPYC x2"
    assert hardware_class({"accelerator": "NVIDIA H200", "cpu_model": "x", "cpu_count": "8"}) == "NVIDIA H200"


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _record(1).run_id = "other"  # type: ignore[misc]


def test_parameters_added_later_keep_old_entries_at_their_old_behaviour() -> None:
    """Runs recorded before model_precision & co. existed stay in their entry when those are at their defaults;
    a run that uses one of them is another entry."""
    defaults = {"model_precision": "fp32", "normalize_on_device": False, "samples_on_device": False,
                "prefer_nhwc": False, "pinned_host_samples": False}
    assert entry_key({**PARAMS, **defaults}) == entry_key(PARAMS)
    assert entry_key({**PARAMS, **defaults, "model_precision": "fp16"}) != entry_key(PARAMS)
    assert entry_key({**PARAMS, "samples_on_device": True}) != entry_key(PARAMS)
    assert entry_key({**PARAMS, "pinned_host_samples": True}) != entry_key(PARAMS)

"""The regression flow in-process on the Prefect test harness: matrix checks, a saved matrix block,
a throughput regression against the history, a pinned baseline, and the entry's artifacts."""

from __future__ import annotations

import dataclasses

import pytest

STANDIN_PERF = {"model_name": "retinanet", "model_url": "standin", "dataset_url": "synthetic",
                "loadgen_dataset_size": 8, "loadgen_mode": "PerformanceOnly", "loadgen_count_override": 64}


def test_a_matrix_entry_with_an_unknown_key_fails_before_anything_runs(prefect_api, tmp_path):
    from flows.regression import regression

    state = regression(matrix=[{"model_name": "retinanet", "loadgen_dataset_sise": 8}],
                       storage_url=str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and "loadgen_dataset_sise" in state.message
    assert not (tmp_path / "store").exists()


def test_throughput_regression_from_a_saved_matrix_and_a_pinned_baseline(prefect_api, tmp_path):
    from prefect.artifacts import Artifact

    from blocks.matrix import RegressionMatrix
    from flows.regression import regression
    from odbench.history import HistoryStore
    from odbench.storage import Storage

    store = str(tmp_path / "store")
    RegressionMatrix(entries=[STANDIN_PERF]).save("test-perf-matrix", overwrite=True)
    first = regression(matrix_block="test-perf-matrix", storage_url=store, return_state=True)
    assert first.is_completed() and "no-baseline" in first.message

    history = HistoryStore(Storage(store))
    [measured] = history.records()
    assert measured.metrics.samples_per_second > 0 and measured.metrics.mAP is None
    fast = dataclasses.replace(measured.metrics, samples_per_second=measured.metrics.samples_per_second * 100)
    faster = dataclasses.replace(measured, run_id="fast-night", recorded="2000-01-01T00:00:00+00:00", metrics=fast)
    history.append(faster)  # a night that was 100x faster on the same hardware

    pinned = regression(matrix_block="test-perf-matrix", storage_url=store, baseline_run_id="fast-night",
                        latency_rise_percent=1e9, return_state=True)
    assert pinned.is_failed(), pinned.message
    assert "samples/s" in pinned.message and "pinned run fast-night" in pinned.message
    assert "drop over 20 %" in pinned.message

    trend = Artifact.get(f"regression-retinanet-coco-offline-performanceonly-standin-{measured.entry[:8]}-trend")
    assert trend is not None and "data:image/png;base64," in trend.data and "fast-night" in trend.data

    with pytest.raises(ValueError, match="not a comparable run"):
        regression(matrix=[STANDIN_PERF], storage_url=store, baseline_run_id="no-such-run")

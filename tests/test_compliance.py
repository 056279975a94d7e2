"""MLPerf compliance tests end to end: real LoadGen, the RetinaNet stand-in on onnxruntime, synthetic COCO
images, an honest SUT and two cheating ones, judged as MLCommons' TEST01 and TEST04 scripts judge.

Each case runs what the benchmark runs: the test's reference passes (compliance.reference_modes), then the
audit pass with compliance.write_audit_config's file, then compliance.verify. Runs are Offline tests of
COUNT samples (about 1.2 s each). The backend is paced to at least PACE_S per inference, so that the honest
SUT's speed is set here, not by other work on this shared machine: MLCommons' 10% band then holds for it,
and the cheats are judged by what they skip, not by noise. (SingleStream's early-stopping estimate, a high
order statistic of ~100 latencies, moved by 20% between two such runs here: too noisy for a 1 s test.)
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from odbench import compliance
from odbench.backend import Detections, OnnxBackend
from odbench.harness import run_loadgen
from odbench.loadgen_log import read_detail_log
from odbench.loadgen_settings import LoadGenConfig
from odbench.models import get_spec
from odbench.preprocess import decode_resize, to_model_input
from odbench.standin import build_standin
from odbench.sut import DetectionSUT, SampleLibrary

SPEC = get_spec("retinanet")
MODEL_KEY = SPEC.loadgen_model
SAMPLES = 12  # the accuracy run's samples; the performance set is BUFFER of them
BUFFER = 8
PACE_S = 0.020  # the stand-in itself takes ~3 ms on one idle core, ~10 ms with both cores busy elsewhere
COUNT = 60  # samples per performance run: an exact count (no minimum duration), so a cheat's run stays VALID
# Offline: one query of COUNT samples. LoadGen expects COUNT samples and so logs every response in TEST01
# (256 / COUNT > 1); TEST04's audit run repeats one sample COUNT times.
CONFIG = LoadGenConfig("Offline", "PerformanceOnly", buffer_size=BUFFER, target_qps=1 / PACE_S, count_override=COUNT,
                       profile="quick")
MLCOMMONS_TEST01 = {  # mlcommons/inference v5.1 compliance/nvidia/TEST01/retinanet/audit.config (and v2.0 ssd-resnet34)
    "*.*.mode": "2",
    "*.*.accuracy_log_rng_seed": "720381539243781796",
    "*.*.accuracy_log_sampling_target": "256",
}
MLCOMMONS_TEST04 = {  # mlcommons/inference v5.1 compliance/nvidia/TEST04/audit.config
    **{f"*.{s}.{k}": v for s in ("MultiStream", "Offline", "SingleStream", "Server")
       for k, v in (("mode", "2"), ("performance_issue_unique", "0"), ("performance_issue_same", "1"),
                    ("performance_issue_same_index", "3"))},
    "stable-diffusion-xl.Offline.min_query_count": "500",
}


class PacedBackend:
    """The stand-in on onnxruntime, each inference taking at least PACE_S (it sleeps the rest)."""

    def __init__(self, backend: OnnxBackend):
        self.backend, self.providers = backend, backend.providers

    def infer(self, x: np.ndarray):
        start = time.perf_counter()
        outputs = self.backend.infer(x)
        time.sleep(max(0.0, PACE_S - (time.perf_counter() - start)))
        return outputs


class TopOnlyOnRepeatsSUT(DetectionSUT):
    """TEST01's cheat: a sample asked for again since the run began gets only its top detection. LoadGen
    asks for each sample once in accuracy mode and repeats samples only in performance mode, so the
    accuracy run is honest and the performance run is not; it infers every time, so it is not faster."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: set[int] = set()  # not `answered`: the SUT counts its answers under that name

    def _rows(self, qsl_idx: int, found: Detections) -> np.ndarray:
        rows = super()._rows(qsl_idx, found)
        repeat = qsl_idx in self.seen
        self.seen.add(qsl_idx)
        return rows[:1] if repeat else rows


class ReusesLastAnswerSUT(DetectionSUT):
    """TEST04's cheat: a one-entry cache per sample index; the same sample again in a row is answered from
    it, without inferring. In a normal run (BUFFER samples in random order) about 1 in BUFFER queries hits
    it, which leaves the 90th percentile latency alone; in TEST04 every query after the first does.
    (A cache of every sample would make the normal run just as fast: TEST04 compares the two runs, so it
    cannot see that one; MLCommons' rules forbid caching outright.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last: tuple[int, Detections] | None = None
        self.hits = 0

    def _infer_group(self, qsl_idxs: list[int]) -> list[Detections]:
        (qsl_idx,) = qsl_idxs  # batch_size 1: one sample per inference
        if self.last is not None and self.last[0] == qsl_idx:
            self.hits += 1
            return [self.last[1]]
        found = super()._infer_group(qsl_idxs)
        self.last = (qsl_idx, found[0])
        return found


@pytest.fixture(scope="module")
def inputs(synthetic_dir) -> list[np.ndarray]:
    """The first SAMPLES synthetic images, preprocessed for the model as the benchmark does."""
    annotations = json.loads((synthetic_dir / "annotations/instances_val2017.json").read_text())
    files = [synthetic_dir / "val2017" / im["file_name"] for im in annotations["images"][:SAMPLES]]
    return [to_model_input(decode_resize(f.read_bytes(), SPEC.resolution), SPEC) for f in files]


@pytest.fixture(scope="module")
def backend() -> PacedBackend:
    return PacedBackend(OnnxBackend(build_standin(SPEC), SPEC, "cpu", cpu_threads=1))


def _run_compliance(run_dir: Path, test: str, sut_class: type[DetectionSUT], backend, inputs,
                    config: LoadGenConfig) -> compliance.ComplianceVerdict:
    """The reference passes, the audit pass and the verdict, as the benchmark runs them."""
    def sut() -> DetectionSUT:
        return sut_class(backend, SampleLibrary(SAMPLES, inputs.__getitem__), SPEC)

    references = {}
    for mode in compliance.reference_modes(test):
        references[mode] = run_dir / mode
        run_loadgen(sut(), replace(config, mode=mode), MODEL_KEY, references[mode])
    directory = compliance.audit_dir(run_dir, test)
    audit_config = compliance.write_audit_config(directory, test, MODEL_KEY)
    run_loadgen(sut(), config, MODEL_KEY, compliance.audit_performance_dir(run_dir, test), audit_config)
    return compliance.verify(test, references, directory, config.scenario)


def _run_within_band(run_dir: Path, test: str, sut_class: type[DetectionSUT], backend, inputs,
                     attempts: int = 3) -> tuple[Path, compliance.ComplianceVerdict]:
    """_run_compliance for a SUT whose speed is honest, run again (up to `attempts`, each in its own folder)
    while only the performance band fails: with both cores of this shared machine busy elsewhere, the
    pace no longer dominates and two 1 s runs measured here differed by up to ~12%, against MLCommons' 10%."""
    for attempt in range(attempts):
        folder = run_dir / f"attempt{attempt}"
        verdict = _run_compliance(folder, test, sut_class, backend, inputs, CONFIG)
        if verdict.performance.failure != "TEST FAIL: Test score invalid":
            break
    return folder, verdict


def _verdict_line(report: Path) -> str:
    """The last line of a verify_*.txt (the scripts print a blank line after it)."""
    return report.read_text().rstrip("\n").splitlines()[-1]


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def honest01(tmp_path_factory, backend, inputs):
    return _run_within_band(tmp_path_factory.mktemp("honest01"), "TEST01", DetectionSUT, backend, inputs)


@pytest.fixture(scope="module")
def honest04(tmp_path_factory, backend, inputs):
    return _run_within_band(tmp_path_factory.mktemp("honest04"), "TEST04", DetectionSUT, backend, inputs)


def test_audit_configs_are_mlcommons_files():
    for model_key in ("retinanet", "ssd-resnet34"):
        text = compliance.audit_config("TEST01", model_key)
        assert compliance.audit_settings(text) == MLCOMMONS_TEST01
        assert compliance.audit_settings(compliance.audit_config("TEST04", model_key)) == MLCOMMONS_TEST04
    first = compliance.audit_config("TEST01", "retinanet").splitlines()[0]
    assert "v5.1" in first and "compliance/nvidia/TEST01/retinanet/audit.config" in first
    assert "v2.0" in compliance.audit_config("TEST01", "ssd-resnet34").splitlines()[0]
    assert compliance.reference_modes("TEST01") == ("AccuracyOnly", "PerformanceOnly")
    assert compliance.reference_modes("TEST04") == ("PerformanceOnly",)
    with pytest.raises(ValueError, match="retired TEST05"):
        compliance.audit_config("TEST05", "retinanet")
    with pytest.raises(ValueError, match="no TEST01 audit.config for the LoadGen model 'resnet'"):
        compliance.audit_config("TEST01", "resnet")


def test_test01_passes_on_an_honest_sut(honest01):
    _, verdict = honest01
    accuracy, performance = verdict.accuracy, verdict.performance
    assert verdict.passed, verdict.to_json()
    # every sampled response had its match in the accuracy run, and LoadGen sampled most of the ~100 queries
    assert accuracy.num_perf_log_entries >= 50 and accuracy.num_perf_log_qsl_idx_match == accuracy.num_perf_log_entries
    assert accuracy.num_acc_log_entries == SAMPLES and accuracy.num_perf_log_data_mismatch == 0
    assert performance.threshold == 0.10 and performance.lower_bound < performance.audit_score < performance.upper_bound
    assert performance.reference_score < 1 / PACE_S  # Offline's score: samples per second


def test_test01_fails_when_performance_mode_answers_differently(tmp_path, backend, inputs):
    run_dir, verdict = _run_within_band(tmp_path, "TEST01", TopOnlyOnRepeatsSUT, backend, inputs)
    accuracy = verdict.accuracy
    assert not verdict.passed and not accuracy.passed
    assert verdict.performance.passed  # it infers every time: only the accuracy check can catch it
    # the first answer per sample is honest; the repeats (all but BUFFER of the logged queries) are not
    assert accuracy.num_perf_log_data_mismatch >= accuracy.num_perf_log_entries - BUFFER > 0
    directory = compliance.audit_dir(run_dir, "TEST01")
    assert _verdict_line(directory / "verify_accuracy.txt") == "TEST FAIL"
    baseline = json.loads((directory / "accuracy" / compliance.BASELINE_LOG).read_text())
    logged = json.loads((directory / "accuracy" / compliance.ACCURACY_LOG).read_text())
    assert sorted(e["qsl_idx"] for e in baseline) == sorted({e["qsl_idx"] for e in logged})


def test_test04_passes_on_an_honest_sut(honest04):
    _, verdict = honest04
    performance = verdict.performance
    assert verdict.passed, verdict.to_json()
    assert verdict.accuracy is None and performance.lower_bound is None
    assert performance.threshold == 0.10 and performance.audit_score < performance.upper_bound


def test_test04_fails_on_a_sut_that_reuses_its_answer(tmp_path, backend, inputs):
    verdict = _run_compliance(tmp_path, "TEST04", ReusesLastAnswerSUT, backend, inputs, CONFIG)
    performance = verdict.performance
    assert not verdict.passed and not performance.passed
    assert performance.failure == "TEST FAIL: Test score invalid"
    assert performance.audit_score > 5 * performance.reference_score  # unmistakably faster, not noise
    report = (compliance.audit_dir(tmp_path, "TEST04") / "verify_performance.txt").read_text()
    assert "TEST FAIL: Test score invalid" in report and "TEST PASS" not in report


def test_loadgen_applied_the_audit_config_from_its_path(honest01, honest04):
    """StartTestWithLogSettings got the file's path (the working folder holds none): the detail logs show
    LoadGen found it and that its values are in effect; a run without it shows the problems."""
    assert not Path("audit.config").exists()
    for (run_dir, verdict), test in ((honest01, "TEST01"), (honest04, "TEST04")):
        assert verdict.audit_config_problems == ()
        events = read_detail_log(compliance.audit_performance_dir(run_dir, test) / compliance.DETAIL_LOG)
        assert events["effective_test_mode"] == "PerformanceOnly"
        if test == "TEST01":
            assert events["requested_accuracy_log_sampling_target"] == 256
            assert events["effective_accuracy_log_sampling_target"] == 256
            assert events["effective_accuracy_log_rng_seed"] == 720381539243781796
        else:
            assert events["effective_performance_issue_same"] is True
            assert events["effective_performance_issue_same_index"] == 3
            assert events["effective_performance_issue_unique"] is False
    run_dir, _ = honest04
    unaudited = run_dir / "PerformanceOnly" / compliance.DETAIL_LOG
    problems = compliance.audit_config_problems(compliance.audit_dir(run_dir, "TEST04") / "audit.config", unaudited,
                                                "Offline")
    assert any("Found Audit Config file" in p for p in problems)
    assert any(p.startswith("*.Offline.performance_issue_same = 1 not in effect") for p in problems)


def test_files_land_in_the_submission_layout(honest01, honest04):
    run_dir, verdict = honest01
    loadgen = {"performance/run_1/mlperf_log_summary.txt", "performance/run_1/mlperf_log_detail.txt"}
    common = {"audit.config", "user.conf", "verify_performance.txt"}
    optional = {"performance/run_1/mlperf_log_trace.json"}  # MLCommons' checker allows it
    directory = run_dir / "audit" / "TEST01"
    assert verdict.audit_dir == str(directory)
    accuracy = {"verify_accuracy.txt", "accuracy/mlperf_log_accuracy.json"}
    assert _files(directory) - optional == loadgen | common | accuracy
    assert _verdict_line(directory / "verify_accuracy.txt") == _verdict_line(directory / "verify_performance.txt") \
        == "TEST PASS"
    run_dir, verdict = honest04
    directory = run_dir / "audit" / "TEST04"
    # TEST04's run_1 keeps LoadGen's (empty) accuracy log: MLCommons' checker lists it as optional there
    assert _files(directory) - optional == loadgen | common | {"performance/run_1/mlperf_log_accuracy.json"}
    assert json.loads(json.dumps(verdict.to_json()))["performance"]["threshold"] == 0.10


def test_verify_accuracy_counts_as_the_mlcommons_script(tmp_path):
    """A qsl_idx the reference lacks counts as missing but does not fail; a reference duplicate is counted;
    every audit entry is compared with the reference's first response for its qsl_idx; any difference fails."""
    def log(name: str, entries: list[tuple[int, str]]) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps([{"seq_id": i, "qsl_idx": q, "data": d} for i, (q, d) in enumerate(entries)]))
        return path

    reference = log("ref.json", [(0, "0A"), (1, "0B"), (1, "0C"), (2, "")])
    check = compliance.verify_accuracy(reference, log("ok.json", [(0, "0A"), (2, ""), (5, "FF"), (0, "0a")]))
    assert (check.num_acc_log_duplicate_keys, check.num_acc_log_data_mismatch) == (1, 1)
    assert (check.num_perf_log_qsl_idx_match, check.num_missing_qsl_idxs, check.passed) == (3, 1, True)
    check = compliance.verify_accuracy(reference, log("bad.json", [(0, "0A"), (1, "0C"), (2, "00"), (1, "0C")]))
    assert (check.num_perf_log_data_mismatch, check.mismatched_qsl_idxs, check.passed) == (3, (1, 2, 1), False)
    assert not compliance.verify_accuracy(reference, log("none.json", [(7, "0A")])).passed  # no match at all


def test_verify_names_a_missing_reference(tmp_path):
    with pytest.raises(ValueError, match="missing: AccuracyOnly: run them first"):
        compliance.verify("TEST01", {"PerformanceOnly": tmp_path}, tmp_path, "Offline")


def _detail_log(path: Path, scenario: str, value: float, validity: str = "VALID") -> Path:
    """A LoadGen detail log holding only what verify_performance reads."""
    events = {"effective_scenario": scenario, "result_validity": validity, compliance.RESULT_FIELD[scenario]: value,
              "effective_target_latency_ns": 100_000_000}
    path.write_text("".join(f':::MLLOG {json.dumps({"key": k, "value": v})}\n' for k, v in events.items()))
    return path


@pytest.mark.parametrize("scenario, reference, audit, test01, test04", [
    # Offline samples/s: TEST01 is two-sided within 10%; TEST04 fails only when the audit is >= 10% faster
    ("Offline", 100.0, 80.0, False, True),
    ("Offline", 100.0, 109.0, True, True),
    ("Offline", 100.0, 111.0, False, False),
    # SingleStream p90 latency in ns, 10 ms: TEST01 compares latencies within 10%; TEST04 compares 1e9/latency
    # within 20% (its script's relaxed band applies from 5 us up), so a 15% lower latency passes TEST04 only
    ("SingleStream", 10e6, 8.5e6, False, True),
    ("SingleStream", 10e6, 8.0e6, False, False),
    ("SingleStream", 10e6, 12e6, False, True),
    # SingleStream at 150 us: TEST01's relaxed 20% band (latencies up to 200 us)
    ("SingleStream", 150e3, 170e3, True, True),
])
def test_performance_rules_follow_the_mlcommons_scripts(tmp_path, scenario, reference, audit, test01, test04):
    ref = _detail_log(tmp_path / "ref.txt", scenario, reference)
    aud = _detail_log(tmp_path / "audit.txt", scenario, audit)
    assert compliance.verify_performance("TEST01", ref, aud, scenario).passed is test01
    assert compliance.verify_performance("TEST04", ref, aud, scenario).passed is test04


def test_an_invalid_run_fails_performance_as_the_scripts_say(tmp_path):
    ref = _detail_log(tmp_path / "ref.txt", "Offline", 100.0)
    aud = _detail_log(tmp_path / "audit.txt", "Offline", 100.0, "INVALID")
    failures = {test: compliance.verify_performance(test, ref, aud, "Offline").failure for test in ("TEST01", "TEST04")}
    assert failures == {"TEST01": f"TEST FAIL: Invalid results in {aud}",
                        "TEST04": "TEST FAIL: Test results are invalid"}
    other = _detail_log(tmp_path / "ss.txt", "SingleStream", 1e6)
    assert compliance.verify_performance("TEST01", ref, other, "Offline").failure == (
        "TEST FAIL: Test and reference scenarios do not match!")

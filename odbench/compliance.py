"""MLPerf compliance tests (TEST01, TEST04): the audit.config LoadGen reads, and the verdicts.

A compliance test is one extra LoadGen PerformanceOnly run, the *audit run*, with MLCommons' audit.config
applied over every other setting, compared with the submission's own *reference* runs:

- TEST01 (accuracy in performance mode): LoadGen logs a random sample of the audit run's responses; each
  must equal the reference AccuracyOnly run's response for the same qsl_idx, and the audit run's
  performance must be within a tolerance of the reference PerformanceOnly run's.
- TEST04 (no caching of repeated samples): LoadGen issues one sample over and over; the audit run must
  not be meaningfully faster than the reference PerformanceOnly run.

The verdicts follow MLCommons' scripts (mlcommons/inference, compliance/nvidia/TEST01 and TEST04 at tag
v5.1, unchanged in logic at v6.0.0pre under compliance/): verify_accuracy.py's counters and PASS rule,
verify_performance.py's score, tolerance and direction per scenario; docs/compliance.md says where this
module departs from them and why. Files land in MLCommons' submission layout (run_verification.py):
`audit/<TEST>/performance/run_1/` (the audit run's LoadGen logs), `audit/<TEST>/accuracy/` (TEST01's
sampled accuracy log), `audit/<TEST>/verify_accuracy.txt` and `verify_performance.txt`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

from odbench.loadgen_log import read_detail_log

ComplianceTest = Literal["TEST01", "TEST04"]  # MLCommons retired TEST05
COMPLIANCE_TESTS: tuple[str, ...] = get_args(ComplianceTest)

ACCURACY_LOG = "mlperf_log_accuracy.json"
DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
BASELINE_LOG = "mlperf_log_accuracy_baseline.json"  # create_accuracy_baseline.sh's output name
PERFORMANCE_RUN = Path("performance", "run_1")
ACCURACY_DIR = "accuracy"
AUDIT_FOUND = "Found Audit Config file"  # LoadGen's detail-log warning when it applies an audit.config
MISMATCHES_LISTED = 20  # qsl_idx values of differing responses kept in a verdict

# MLCommons' audit.config files, verbatim. TEST01's is per model (accuracy_log_sampling_target is chosen per
# benchmark); TEST04's is one file for every model (its only model-specific line, stable-diffusion-xl's, is
# ignored by LoadGen, which reads an audit.config under the model "*").
_AUDIT_HEADER = """\
# The format of this config file is 'key = value'.
# The key has the format 'model.scenario.key'. Value is mostly int64_t.
# Model maybe '*' as wildcard. In that case the value applies to all models.
# All times are in milli seconds
"""
_TEST01_BODY = _AUDIT_HEADER + """
# mode dictionary (0 = submission, 1 = accuracy, 2 = performance, 3 = find peak perf)
*.*.mode = 2
*.*.accuracy_log_rng_seed = 720381539243781796
*.*.accuracy_log_sampling_target = 256
"""
TEST04_SAME_INDEX = 3  # the loaded sample TEST04 issues repeatedly (MultiStream: from it, samples_per_query of them)
TEST04_MIN_LOADED_SAMPLES = TEST04_SAME_INDEX + 1  # LoadGen does not check: fewer reads outside its sample array
_TEST04_BODY = _AUDIT_HEADER + "".join(
    f"*.{scenario}.mode = 2\n*.{scenario}.performance_issue_unique = 0\n*.{scenario}.performance_issue_same = 1\n"
    f"*.{scenario}.performance_issue_same_index = {TEST04_SAME_INDEX}\n"
    for scenario in ("MultiStream", "Offline", "SingleStream", "Server")) + """\
stable-diffusion-xl.Offline.min_query_count = 500
# You can optionally set the target qps to match the expected query count 
# in the min duration with the min_query_count. But take into account you
# system expected qps, the min duration for this test is 10 minutes
# stable-diffusion-xl.Offline.target_qps = 0.75
"""


@dataclass(frozen=True)
class AuditConfigSource:
    """Where an audit.config comes from: mlcommons/inference at `tag`, file `path`, content `text`."""

    tag: str
    path: str
    text: str


# (test, LoadGen model key) -> source; "*": any model. ssd-resnet34's TEST01 file is the last one MLCommons
# shipped (v2.0; v2.1 replaced the benchmark by retinanet); its TEST04 is the current model-agnostic file
# (v2.0 still had the two-run TEST04-A/TEST04-B).
AUDIT_CONFIGS: dict[tuple[str, str], AuditConfigSource] = {
    ("TEST01", "retinanet"): AuditConfigSource("v5.1", "compliance/nvidia/TEST01/retinanet/audit.config",
                                               _TEST01_BODY),
    ("TEST01", "ssd-resnet34"): AuditConfigSource("v2.0", "compliance/nvidia/TEST01/ssd-resnet34/audit.config",
                                                  _TEST01_BODY),
    ("TEST04", "*"): AuditConfigSource("v5.1", "compliance/nvidia/TEST04/audit.config", _TEST04_BODY),
}
# The reference runs a test's audit run is compared with (LoadGen modes)
REFERENCE_MODES: dict[str, tuple[str, ...]] = {
    "TEST01": ("AccuracyOnly", "PerformanceOnly"),
    "TEST04": ("PerformanceOnly",),
}
# verify_performance.py's score per scenario: the detail-log key (TEST01's script reads these keys; TEST04's
# reads the same numbers from the summary, as 1e9 / latency for SingleStream and MultiStream)
RESULT_FIELD = {
    "Offline": "result_samples_per_second",
    "SingleStream": "early_stopping_latency_ss",
    "MultiStream": "early_stopping_latency_ms",
    "Server": "result_completed_samples_per_sec",
}
LOADGEN_MODE_NUMBERS = {0: "SubmissionRun", 1: "AccuracyOnly", 2: "PerformanceOnly", 3: "FindPeakPerformance"}


def _check_test(test: str) -> str:
    if test not in COMPLIANCE_TESTS:
        raise ValueError(f"unknown compliance test {test!r}; valid: {', '.join(COMPLIANCE_TESTS)} "
                         "(MLCommons retired TEST05)")
    return test


def audit_source(test: str, model_key: str) -> AuditConfigSource:
    """MLCommons' audit.config for `test` and a LoadGen model key (ModelSpec.loadgen_model)."""
    source = AUDIT_CONFIGS.get((_check_test(test), model_key)) or AUDIT_CONFIGS.get((test, "*"))
    if source is None:
        known = ", ".join(m for t, m in AUDIT_CONFIGS if t == test)
        raise ValueError(f"MLCommons ships no {test} audit.config for the LoadGen model {model_key!r} "
                         f"(this project has: {known}); use a model with one")
    return source


def audit_config(test: str, model_key: str) -> str:
    """The audit.config text MLCommons ships for `test` and the model, verbatim, after one comment line
    that names the source file and tag."""
    source = audit_source(test, model_key)
    return f"# odbench: mlcommons/inference {source.tag} {source.path}, verbatim:\n{source.text}"


def reference_modes(test: str) -> tuple[str, ...]:
    """The reference runs (LoadGen modes) the audit run of `test` is compared with."""
    return REFERENCE_MODES[_check_test(test)]


def audit_dir(run_dir: str | Path, test: str) -> Path:
    """The compliance test's folder in a run's folder: `audit/<TEST>` (MLCommons' `compliance/.../<TEST>`)."""
    return Path(run_dir) / "audit" / _check_test(test)


def audit_performance_dir(run_dir: str | Path, test: str) -> Path:
    """Where LoadGen writes the audit run's logs: `audit/<TEST>/performance/run_1`."""
    return audit_dir(run_dir, test) / PERFORMANCE_RUN


def write_audit_config(directory: str | Path, test: str, model_key: str) -> Path:
    """Write `audit_config(test, model_key)` to directory/audit.config (created) and return its path, which
    run_loadgen passes to LoadGen (StartTestWithLogSettings reads it from that path: no chdir needed)."""
    path = Path(directory) / "audit.config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(audit_config(test, model_key))
    return path


def audit_settings(text: str) -> dict[str, str]:
    """The `key = value` lines of an audit.config (comments and blank lines dropped)."""
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


# ---- the checks ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyCheck:
    """TEST01's verify_accuracy.py: the audit run's sampled responses against the reference accuracy run's,
    by qsl_idx; counters named as the script prints them. PASS: no mismatch and at least one match."""

    reference_log: str
    audit_log: str
    num_acc_log_entries: int
    num_acc_log_duplicate_keys: int
    num_acc_log_data_mismatch: int
    num_perf_log_entries: int
    num_perf_log_qsl_idx_match: int
    num_perf_log_data_mismatch: int
    num_missing_qsl_idxs: int
    mismatched_qsl_idxs: tuple[int, ...]  # the first MISMATCHES_LISTED
    passed: bool


@dataclass(frozen=True)
class PerformanceCheck:
    """verify_performance.py: the audit run's score against the reference run's. Scores are the detail
    log's RESULT_FIELD; TEST04 turns SingleStream/MultiStream latencies into 1e9 / latency, as its script
    does. TEST01 passes within [lower_bound, upper_bound]; TEST04 below upper_bound (no lower bound)."""

    scenario: str | None
    metric: str
    reference_log: str
    audit_log: str
    reference_score: float | None
    audit_score: float | None
    threshold: float | None
    lower_bound: float | None
    upper_bound: float | None
    passed: bool
    failure: str | None  # the script's TEST FAIL line, or why no score could be compared


@dataclass(frozen=True)
class ComplianceVerdict:
    """One compliance test's outcome: passed only when LoadGen applied the audit.config and every check passed."""

    test: str
    passed: bool
    audit_dir: str
    audit_config_problems: tuple[str, ...]  # empty when the audit run's detail log shows the audit applied
    accuracy: AccuracyCheck | None  # TEST01 only
    performance: PerformanceCheck

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no accuracy log at {path}: the run that should have written it did not finish")
    return json.loads(path.read_text())


def _data(entry: dict[str, Any]) -> bytes:
    return bytes.fromhex(entry["data"])


def verify_accuracy(reference_log: str | Path, audit_log: str | Path) -> AccuracyCheck:
    """TEST01's comparison with verify_accuracy.py's counters and PASS rule (no data mismatch, at least one
    qsl_idx match): the reference log's first entry per qsl_idx is kept (later ones are counted as duplicates,
    and as data mismatches when they differ), each audit entry is compared with it, and an audit qsl_idx
    absent from the reference is counted as missing. As in the script's --unixmode and the README's rule,
    every audit entry is compared with the accuracy run's response, whole (every byte of `data`); the
    default mode compares only the first element, which in a detection log is the qsl_idx itself, and
    compares a repeated qsl_idx with the audit's previous entry for it (docs/compliance.md)."""
    reference, audit = _entries(Path(reference_log)), _entries(Path(audit_log))
    seen: dict[int, bytes] = {}
    duplicates = reference_mismatch = 0
    for entry in reference:
        idx = int(entry["qsl_idx"])
        if idx in seen:
            duplicates += 1
            reference_mismatch += seen[idx] != _data(entry)
        else:
            seen[idx] = _data(entry)
    matched, missing, mismatched = 0, 0, []
    for entry in audit:
        idx, data = int(entry["qsl_idx"]), _data(entry)
        if idx in seen:
            matched += 1
            if seen[idx] != data:
                mismatched.append(idx)
        else:
            missing += 1
    return AccuracyCheck(str(reference_log), str(audit_log), len(reference), duplicates, reference_mismatch,
                         len(audit), matched, len(mismatched), missing, tuple(mismatched[:MISMATCHES_LISTED]),
                         passed=not mismatched and matched > 0)


@dataclass(frozen=True)
class _Score:
    """One run's score as verify_performance.py reads it."""

    path: str
    scenario: str | None
    valid: bool
    score: float | None
    target_latency_ns: Any


def _read_score(test: str, detail_log: Path) -> _Score:
    if not detail_log.exists():
        raise FileNotFoundError(f"no LoadGen detail log at {detail_log}: the run that should have written it "
                                "did not finish")
    events = read_detail_log(detail_log)
    scenario = events.get("effective_scenario")
    value = events.get(RESULT_FIELD.get(scenario, ""))
    score = None if value is None else float(value)
    if score and test == "TEST04" and scenario in ("SingleStream", "MultiStream"):
        score = 1e9 / score  # TEST04's script: a rate, so that higher is faster in every scenario
    return _Score(str(detail_log), scenario, events.get("result_validity") == "VALID", score,
                  events.get("effective_target_latency_ns"))


def _threshold(scenario: str, reference_score: float) -> float:
    """verify_performance.py's tolerance: 10%, or 20% for SingleStream at a score <= 200,000 and MultiStream
    at <= 1,600,000. Both scripts write the same condition on their own scores: for TEST01 (latency in ns)
    it relaxes latencies up to 200 us / 1.6 ms; for TEST04 (1e9 / latency) latencies from 5 us / 625 ns."""
    short = (scenario == "SingleStream" and reference_score <= 200_000) or (
        scenario == "MultiStream" and reference_score <= 1_600_000)
    return 0.20 if short else 0.10


def _score_failure(test: str, ref: _Score, audit: _Score, scenario: str) -> str | None:
    """The scripts' reasons to fail before comparing scores, in their order (plus the expected scenario)."""
    for run, which in ((ref, "Reference"), (audit, "Test")):
        if not run.valid:
            return (f"TEST FAIL: Invalid results in {run.path}" if test == "TEST01"
                    else f"TEST FAIL: {which} results are invalid")
    if ref.scenario != audit.scenario:
        return "TEST FAIL: Test and reference scenarios do not match!"
    if audit.scenario != scenario:
        return f"TEST FAIL: the runs are {audit.scenario}, not the expected {scenario}"
    if scenario == "Server" and ref.target_latency_ns != audit.target_latency_ns:
        return "TEST FAIL: Server target latency mismatch"
    for run in (ref, audit):
        if not run.score:
            return f"TEST FAIL: no {RESULT_FIELD.get(scenario)} in {run.path}"
    return None


def verify_performance(test: str, reference_detail: str | Path, audit_detail: str | Path,
                       scenario: str) -> PerformanceCheck:
    """verify_performance.py of TEST01 (audit within ±threshold of the reference) or TEST04 (audit not
    faster than reference × (1 + threshold)), on the two runs' LoadGen detail logs."""
    ref, audit = _read_score(test, Path(reference_detail)), _read_score(_check_test(test), Path(audit_detail))
    metric = RESULT_FIELD.get(scenario, "?") + (" as 1e9/latency" if test == "TEST04" and "Stream" in scenario
                                                else "")
    failure = _score_failure(test, ref, audit, scenario)
    if failure:
        return PerformanceCheck(audit.scenario, metric, ref.path, audit.path, ref.score, audit.score,
                                None, None, None, False, failure)
    threshold = _threshold(scenario, ref.score)
    upper = ref.score * (1 + threshold)
    lower = ref.score * (1 - threshold) if test == "TEST01" else None
    passed = (lower <= audit.score <= upper) if lower is not None else audit.score < upper
    return PerformanceCheck(scenario, metric, ref.path, audit.path, ref.score, audit.score, threshold, lower,
                            upper, passed, None if passed else "TEST FAIL: Test score invalid")


def audit_config_problems(audit_config_path: str | Path, detail_log: str | Path, scenario: str) -> tuple[str, ...]:
    """What shows LoadGen did not apply an audit.config to the audit run (MLCommons' READMEs: check that
    LoadGen found audit.config in mlperf_log_detail.txt): its warning missing, or a `*` key of the file that
    applies to the scenario not matching the detail log's effective_* value (mode: effective_test_mode)."""
    path = Path(detail_log)
    problems = [] if AUDIT_FOUND in path.read_text() else [f"LoadGen did not report '{AUDIT_FOUND}' in {path}"]
    events = read_detail_log(path)
    for key, value in audit_settings(Path(audit_config_path).read_text()).items():
        model, scope, name = key.split(".", 2)
        if model != "*" or scope not in ("*", scenario):
            continue  # LoadGen reads an audit.config under the model "*" only
        expected: Any = LOADGEN_MODE_NUMBERS[int(value)] if name == "mode" else int(value)
        logged = events.get("effective_test_mode" if name == "mode" else f"effective_{name}")
        if logged is None or (logged != expected if name == "mode" else int(logged) != expected):
            problems.append(f"{key} = {value} not in effect: the detail log has {logged!r}")
    return tuple(problems)


# ---- the files ---------------------------------------------------------------------------------------------

def _file_audit_logs(directory: Path, test: str) -> None:
    """Put the audit run's files where MLCommons' layout has them: TEST01's sampled accuracy log into
    accuracy/, and the user.conf the harness wrote up into the test's folder (a compliance performance/run_1
    holds only LoadGen's logs). Idempotent: a second call finds them moved."""
    run = directory / PERFORMANCE_RUN
    if test == "TEST01" and (run / ACCURACY_LOG).exists():
        (directory / ACCURACY_DIR).mkdir(exist_ok=True)
        shutil.move(run / ACCURACY_LOG, directory / ACCURACY_DIR / ACCURACY_LOG)
    if (run / "user.conf").exists():
        shutil.move(run / "user.conf", directory / "user.conf")


def _accuracy_report(check: AccuracyCheck) -> str:
    """verify_accuracy.py's printout."""
    counters = {k: v for k, v in asdict(check).items() if k.startswith("num_")}
    lines = ["Verifying accuracy. This might take a while...", "Reading accuracy mode results...",
             "Reading performance mode results...", *(f"{k} = {v}" for k, v in counters.items())]
    if check.mismatched_qsl_idxs:
        lines.append("mismatched qsl_idx (first): " + ", ".join(map(str, check.mismatched_qsl_idxs)))
    return "\n".join([*lines, "TEST PASS" if check.passed else "TEST FAIL", "", ""])


def _performance_report(test: str, check: PerformanceCheck) -> str:
    """verify_performance.py's printout (TEST01's capitalizes 'Reference score', TEST04's does not)."""
    lines = ["Verifying performance."]
    if check.threshold is not None:
        ref, tst = ("Reference score", "Test score") if test == "TEST01" else ("reference score", "test score")
        lines += [f"{ref} = {check.reference_score}", f"{tst} = {check.audit_score}"]
    return "\n".join([*lines, check.failure or "TEST PASS", ""])


def write_baseline_log(reference_log: str | Path, audit_log: str | Path, out: str | Path) -> Path:
    """create_accuracy_baseline.sh: the reference accuracy run's entries for the qsl_idx values the audit
    run logged, for scoring both logs when responses differ (non-determinism may be allowed: MLCommons then
    asks for baseline_accuracy.txt and compliance_accuracy.txt, the accuracy script's output on each)."""
    wanted = {int(e["qsl_idx"]) for e in _entries(Path(audit_log))}
    baseline = [e for e in _entries(Path(reference_log)) if int(e["qsl_idx"]) in wanted]
    Path(out).write_text(json.dumps(baseline, indent=0))
    return Path(out)


def _reference_files(test: str, reference: Mapping[str, str | Path]) -> dict[str, Path]:
    missing = [m for m in reference_modes(test) if m not in reference]
    if missing:
        raise ValueError(f"{test} compares with the reference run(s) {', '.join(reference_modes(test))}; "
                         f"missing: {', '.join(missing)}: run them first (reference_modes) and pass their log folders")
    files = {"PerformanceOnly": Path(reference["PerformanceOnly"]) / DETAIL_LOG}
    if test == "TEST01":
        files["AccuracyOnly"] = Path(reference["AccuracyOnly"]) / ACCURACY_LOG
    return files


def verify(test: str, reference: Mapping[str, str | Path], directory: str | Path,
           scenario: str) -> ComplianceVerdict:
    """Judge a finished audit run: `reference` maps each of reference_modes(test) to that run's LoadGen log
    folder, `directory` is audit_dir(run_dir, test) with the audit run's logs in performance/run_1, and
    `scenario` the scenario all runs used. Files the audit logs into the submission layout, writes
    verify_accuracy.txt (TEST01) and verify_performance.txt there (each with a TEST PASS / TEST FAIL line),
    and on a TEST01 mismatch accuracy/mlperf_log_accuracy_baseline.json. Raises FileNotFoundError when a
    run's logs or the folder's audit.config (write_audit_config) are missing, ValueError for an unknown test
    or a missing reference."""
    directory = Path(directory)
    refs = _reference_files(_check_test(test), reference)
    if not (directory / "audit.config").exists():
        raise FileNotFoundError(f"no audit.config in {directory}: write it with write_audit_config before the "
                                "audit run, and pass that folder")
    _file_audit_logs(directory, test)
    audit_detail = directory / PERFORMANCE_RUN / DETAIL_LOG
    performance = verify_performance(test, refs["PerformanceOnly"], audit_detail, scenario)
    problems = audit_config_problems(directory / "audit.config", audit_detail, scenario)
    if problems and performance.passed:
        performance = replace(performance, passed=False, failure=f"TEST FAIL: audit.config not applied: {problems[0]}")
    (directory / "verify_performance.txt").write_text(_performance_report(test, performance))
    accuracy = None
    if test == "TEST01":
        audit_log = directory / ACCURACY_DIR / ACCURACY_LOG
        accuracy = verify_accuracy(refs["AccuracyOnly"], audit_log)
        (directory / "verify_accuracy.txt").write_text(_accuracy_report(accuracy))
        if accuracy.num_perf_log_data_mismatch:
            write_baseline_log(refs["AccuracyOnly"], audit_log, directory / ACCURACY_DIR / BASELINE_LOG)
    passed = performance.passed and not problems and (accuracy is None or accuracy.passed)
    return ComplianceVerdict(test, passed, str(directory), problems, accuracy, performance)

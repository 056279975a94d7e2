"""The hot-path options (normalize_on_device, samples_on_device, pinned_host_samples, model_precision) against the
plain path, on real onnxruntime sessions and real LoadGen runs: the same detections, the options recorded, bad
values refused, every placed sample released."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ROOT

from odbench import benchmark
from odbench.accuracy import decode_accuracy_log
from odbench.backend import OnnxBackend
from odbench.benchmark import run_benchmark
from odbench.energy import EnergyMeter
from odbench.input_prefix import device_input, with_normalization
from odbench.models import get_spec
from odbench.page_lock import PageLocker, PageLockError
from odbench.params import BenchmarkParams
from odbench.preprocess import to_model_input
from odbench.standin import build_standin
from odbench.storage import Storage
from odbench.sut import SampleLibrary

N = 6


def _image(side: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8).astype(dtype)


@pytest.mark.parametrize("model_name", ["ssd_resnet34", "retinanet_coco"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_normalizing_on_the_device_gives_the_host_input_bit_for_bit(model_name: str, dtype: str) -> None:
    """The prefixed model takes the stored sample ([1,R,R,3] in its dtype) and answers exactly as the plain model
    does on to_model_input's float32 tensor (ssd_resnet34 has mean/std, retinanet only /255)."""
    spec = get_spec(model_name)
    model = build_standin(spec)
    prefixed = ort.InferenceSession(with_normalization(model, spec, dtype))
    (fed,) = prefixed.get_inputs()
    assert (fed.name, fed.type, fed.shape) == (spec.input.name, f"tensor({dtype.replace('32', '')})",
                                               [1, spec.resolution, spec.resolution, 3])
    sample = _image(spec.resolution, dtype)
    host = ort.InferenceSession(model).run(None, {spec.input.name: to_model_input(sample, spec)})
    device = prefixed.run(None, {spec.input.name: device_input(sample)})
    assert all(np.array_equal(a, b) for a, b in zip(host, device))


def test_samples_placed_on_the_device_run_through_io_binding() -> None:
    """With samples_on_device a placed sample is an onnxruntime value (CPU memory on a CPU-only machine), and
    inference through IO binding answers as session.run does on the array."""
    spec = get_spec("retinanet_coco")
    model = build_standin(spec)
    x = to_model_input(_image(spec.resolution, "uint8"), spec)
    bound = OnnxBackend(model, spec, "cpu", 1, samples_on_device=True)
    placed = bound.place(x)
    assert isinstance(placed, ort.OrtValue) and placed.device_name() == "cpu"
    plain = OnnxBackend(model, spec, "cpu", 1)
    assert plain.place(x) is x
    assert all(np.array_equal(a, b) for a, b in zip(bound.infer(placed), plain.infer(x)))


def _params(synthetic_dir: Path, **overrides) -> BenchmarkParams:
    return BenchmarkParams(**{"model_name": "retinanet", "loadgen_dataset_size": N, "model_url": "standin",
                              "dataset_url": str(synthetic_dir), "execution_device": "cpu",
                              "preprocess_resize_dtype": "uint8", **overrides})


def test_the_options_leave_every_detection_unchanged_and_are_recorded(synthetic_dir, tmp_path) -> None:
    """An AccuracyOnly run with uint8 samples normalized by the model and placed through IO binding logs
    byte-identical detections to the plain run, and its result says which options ran."""
    storage = Storage(str(tmp_path / "store"))
    plain = run_benchmark(_params(synthetic_dir), storage)
    fast = run_benchmark(_params(synthetic_dir, normalize_on_device=True, samples_on_device=True), storage)
    logs = [(Path(storage.root) / "runs" / r.run_id / "mlperf_log_accuracy.json").read_bytes() for r in (plain, fast)]
    assert logs[0] == logs[1] and len(logs[0]) > 100
    assert (plain.normalize_on_device, plain.samples_on_device) == (False, False)
    # samples_on_device is recorded as it ran: on the CPU provider the samples stay in host memory
    assert (fast.normalize_on_device, fast.samples_on_device, fast.model_precision) == (True, False, "fp32")
    assert fast.mAP == plain.mAP
    pinned = run_benchmark(_params(synthetic_dir, pinned_host_samples=True), storage)
    assert (Path(storage.root) / "runs" / pinned.run_id / "mlperf_log_accuracy.json").read_bytes() == logs[0]
    assert pinned.pinned_host_samples is False  # the CPU provider copies nothing to a GPU: nothing to pin


def test_page_locking_needs_the_cuda_runtime_in_the_process() -> None:
    """Without onnxruntime's CUDA provider loaded there is nothing to register memory with: a clear error naming
    the way out, not a crash. In a fresh process: a test that asked for CUDA may have loaded the runtime here."""
    probe = ("import pathlib, onnxruntime\n"
             "from odbench.page_lock import PageLocker, PageLockError\n"
             "if 'libcudart.so' in pathlib.Path('/proc/self/maps').read_text(): raise SystemExit('loaded')\n"
             "try:\n    PageLocker()\nexcept PageLockError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if "loaded" in done.stderr:
        pytest.skip("onnxruntime loads a CUDA runtime at import on this machine: page-locking can work here")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search("no usable CUDA runtime .* set pinned_host_samples=false", done.stdout), done.stdout


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream", "Server"])
def test_every_placed_sample_is_released_once(synthetic_dir, tmp_path, monkeypatch, scenario) -> None:
    """Whatever places a sample (LoadGen's loads of a buffer smaller than the set, the warm-up, the calibration
    pass: Server's runs even with a query count) releases it exactly once, so a page-locked sample is unregistered
    before its memory can go."""
    placed: list = []  # every placed input, kept alive so that no two share an id
    released: dict[int, int] = {}  # id of a placed input -> times released

    class Tracking(OnnxBackend):
        def place(self, x):
            y = super().place(x)
            placed.append(y)
            released[id(y)] = 0
            return y

        def release(self, x):
            released[id(x)] += 1
            super().release(x)

    monkeypatch.setattr(benchmark, "OnnxBackend", Tracking)
    result = run_benchmark(_params(synthetic_dir, loadgen_mode="Submission", loadgen_scenario=scenario,
                                   loadgen_profile="quick", loadgen_count_override=8, loadgen_buffer_size=2),
                           Storage(str(tmp_path / "store")))
    assert (result.calibration is not None) == (scenario == "Server")
    assert len(placed) > N  # the accuracy pass's N loads, and the warm-up's, calibration's and timed test's
    assert sorted(released.values()) == [1] * len(placed)


def test_a_timed_run_without_an_nvidia_gpu_reports_no_energy(synthetic_dir, tmp_path) -> None:
    """Energy is read through NVML: where there is none (this CPU machine), a timed run's energy is null, not 0."""
    if EnergyMeter().available:
        pytest.skip("this machine has an NVIDIA GPU and NVML: the energy is measured (benchmarks/gpu_hot_path.py)")
    result = run_benchmark(_params(synthetic_dir, loadgen_mode="PerformanceOnly", loadgen_profile="quick",
                                   loadgen_target_qps=100.0, loadgen_count_override=8, samples_on_device=True),
                           Storage(str(tmp_path / "store")))
    assert result.performance and result.performance > 0
    assert result.energy is None


@pytest.mark.parametrize(("override", "message"), [
    ({"model_precision": "fp8"}, "unknown model_precision 'fp8'; use one of: fp32, fp16"),
    ({"normalize_on_device": "yes"}, "normalize_on_device='yes' is not a boolean"),
    ({"samples_on_device": 1}, "samples_on_device=1 is not a boolean"),
    ({"pinned_host_samples": "yes"}, "pinned_host_samples='yes' is not a boolean"),
    ({"pinned_host_samples": True, "samples_on_device": True}, "pinned_host_samples with samples_on_device"),
    ({"pinned_host_samples": True, "batch_size": 2}, "pinned_host_samples with batch_size=2"),
])
def test_bad_option_values_fail_before_any_work(synthetic_dir, override, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _params(synthetic_dir, **override)


def test_an_fp16_run_converts_once_reports_agreement_and_never_trusts_a_damaged_conversion(
        synthetic_dir, tmp_path, caplog) -> None:
    """model_precision=fp16: the conversion is stored beside the model with a record of its md5, the result
    carries fp16's agreement with fp32 on the run's first samples, a second run reuses the stored conversion,
    and a conversion whose bytes were altered is converted again, not run."""
    storage = Storage(str(tmp_path / "store"))
    first = run_benchmark(_params(synthetic_dir, model_precision="fp16"), storage)
    assert first.model_precision == "fp16" and first.mAP is not None
    assert first.converted_model_md5 not in (None, first.model_md5)
    found = first.precision_agreement
    assert found["inputs"] == 2 and found["pre_nms_relative_error"] <= 1e-2
    assert found["detections_reference"] > 0 and found["share_reproduced"] >= 0.9
    records = sorted(Path(storage.root).glob(f"models/retinanet_coco/{first.model_md5}/fp16-*.json"))
    assert len(records) == 1
    converted = next(Path(storage.root).glob("models/retinanet_coco/*/retinanet_coco-fp16.onnx"))
    caplog.clear()
    with caplog.at_level("INFO", logger="odbench"):
        run_benchmark(_params(synthetic_dir, model_precision="fp16"), storage)
    assert "converted before" in caplog.text and "converting" not in caplog.text.replace("converted before", "")
    converted.write_bytes(converted.read_bytes()[:-10] + b"0123456789")
    caplog.clear()
    with caplog.at_level("INFO", logger="odbench"):
        again = run_benchmark(_params(synthetic_dir, model_precision="fp16"), storage)
    assert "converting again" in caplog.text and again.mAP == first.mAP


def test_several_sessions_give_each_worker_its_own_and_the_same_detections(synthetic_dir, tmp_path) -> None:
    """onnx_sessions=2: two threads inferring take different sessions (each keeps its own), and an AccuracyOnly
    run logs the same detections as with one session."""
    import threading

    spec = get_spec("retinanet_coco")
    backend = OnnxBackend(build_standin(spec), spec, "cpu", 1, sessions=2)
    taken: list[int] = []

    def infer_twice() -> None:
        backend.infer(to_model_input(_image(spec.resolution, "uint8"), spec))
        first = id(backend._thread_session())
        backend.infer(to_model_input(_image(spec.resolution, "uint8"), spec))
        assert id(backend._thread_session()) == first
        taken.append(first)

    threads = [threading.Thread(target=infer_twice) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(taken)) == 2
    storage = Storage(str(tmp_path / "store"))
    one = run_benchmark(_params(synthetic_dir), storage)
    two = run_benchmark(_params(synthetic_dir, onnx_sessions=2, loadgen_concurrency=2), storage)
    rows = [decode_accuracy_log(Path(storage.root) / "runs" / r.run_id / "mlperf_log_accuracy.json")
            for r in (one, two)]  # two workers answer in their own order: compared per sample
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == N
    assert all(np.array_equal(rows[0][i], rows[1][i]) for i in rows[0]) and two.onnx_sessions == 2


def test_the_sample_library_releases_what_it_drops() -> None:
    """A reload of a loaded index releases the sample it replaces; `close` (after an aborted test, which LoadGen
    may not unload) releases every sample still loaded; a failing release is recorded, not raised."""
    released: list[int] = []

    def release(x: np.ndarray) -> None:
        if int(x[0]) == 99:
            raise RuntimeError("cudaHostUnregister failed")
        released.append(int(x[0]))

    calls = iter(range(100))
    library = SampleLibrary(4, lambda i: np.array([next(calls)]), workers=1, release=release)
    library.load_samples([0, 1, 2])
    library.load_samples([1])  # replaces the sample loaded as 1
    library.unload_samples([0])
    assert released == [1, 0]
    library.close()
    assert sorted(released) == [0, 1, 2, 3] and not library.errors
    failing = SampleLibrary(1, lambda i: np.array([99]), release=release)
    failing.load_samples([0])
    failing.close()
    assert len(failing.errors) == 1


def test_samples_that_would_not_fit_in_gpu_memory_fail_the_run_before_any_is_loaded(synthetic_dir, tmp_path,
                                                                                    monkeypatch) -> None:
    """The run asks NVML for the GPU's free memory once the model is loaded, and refuses a buffer that would not
    fit before LoadGen loads a sample. No GPU here: the backend claims CUDA placement and NVML says 10 MB free."""
    placed: list[int] = []

    class OnCuda(OnnxBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.input_device = "cuda"

        def place(self, x):
            placed.append(1)
            return super().place(x)

    monkeypatch.setattr(benchmark, "OnnxBackend", OnCuda)
    monkeypatch.setattr(benchmark, "free_device_memory", lambda: 10 * 10**6)
    with pytest.raises(ValueError, match=r"samples_on_device with loadgen_buffer_size=4 keeps 4 samples .* "
                                         r"the 10 MB free there: use loadgen_buffer_size=1 or less"):
        run_benchmark(_params(synthetic_dir, samples_on_device=True, loadgen_buffer_size=4),
                      Storage(str(tmp_path / "store")))
    assert placed == []


class _FakeRuntime:
    """The two CUDA runtime calls PageLocker makes, on a table of registered ranges (no GPU here): overlapping
    registrations fail as the runtime's do (error 712), unregistering an unknown address fails (error 1)."""

    def __init__(self) -> None:
        self.ranges: dict[int, int] = {}
        self.calls = 0

    def cudaHostRegister(self, ptr, size, flags) -> int:
        start, end = ptr.value, ptr.value + size.value
        self.calls += 1
        if any(start < s + n and s < end for s, n in self.ranges.items()):
            return 712
        self.ranges[start] = size.value
        return 0

    def cudaHostUnregister(self, ptr) -> int:
        return 0 if self.ranges.pop(ptr.value, None) is not None else 1

    def cudaGetLastError(self) -> int:
        return 0

    def cudaGetErrorString(self, status: int) -> bytes:
        return {712: b"part or all of the requested memory range is already mapped"}.get(status, b"other")


def test_a_page_lock_is_undone_once_for_the_array_it_was_given_to() -> None:
    """register/unregister pair up per array (not per address: a view of a registered array unlocks nothing), a
    non-contiguous sample is registered as the contiguous copy it returns, threads share one locker, and what is
    still held when the locker goes is unregistered first."""
    runtime = _FakeRuntime()
    locker = PageLocker(runtime)
    a = locker.register(np.zeros((1, 3, 8, 8), np.float32))
    locker.unregister(a[0])  # a view with the same address: not the array registered
    assert len(locker) == 1 and len(runtime.ranges) == 1
    with pytest.raises(PageLockError, match="already mapped .*CUDA error 712.*page-locked already"):
        locker.register(a)
    locker.unregister(a)
    locker.unregister(a)  # the second time: nothing held, nothing called
    assert len(locker) == 0 and runtime.ranges == {}
    strided = np.zeros((8, 8), np.float32)[:, ::2]
    copy = locker.register(strided)
    assert copy is not strided and copy.flags.c_contiguous
    locker.unregister(strided)  # the caller must give back what register returned
    assert len(locker) == 1
    arrays = [np.full(1000, i, np.float32) for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        registered = list(pool.map(locker.register, arrays))
        list(pool.map(locker.unregister, registered[:32]))
    assert len(locker) == 1 + 32 and len(runtime.ranges) == 33
    del locker
    assert runtime.ranges == {}  # unregistered before the arrays it held could be freed


def test_an_unregister_the_runtime_refuses_is_an_error_the_sample_library_records() -> None:
    runtime = _FakeRuntime()
    locker = PageLocker(runtime)
    x = locker.register(np.zeros(16, np.float32))
    runtime.ranges.clear()  # the runtime forgot it (a reset device): unregistering fails
    library = SampleLibrary(1, lambda i: x, workers=1, release=locker.unregister)
    library.load_samples([0])
    library.close()
    assert len(library.errors) == 1 and "cudaHostUnregister failed" in str(library.errors[0])

"""onnxruntime sessions: choosing the execution provider honestly and running one model input.

onnxruntime (1.2x+) writes a persistent telemetry device id under ~/.cache when its library loads, unless
ORT_DISABLE_TELEMETRY is set by then; a run writes nothing outside storage and temporary folders, so this module
(which every part of the project that runs onnxruntime imports first) sets it, and imports onnxruntime lazily.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, get_args

import numpy as np

from odbench import bounds
from odbench.batching import COUNTS, unbatch
from odbench.models import ModelSpec
from odbench.page_lock import PageLocker
from odbench.split_model import SplitModel

log = logging.getLogger(__name__)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # one image's boxes [K, 4], scores [K], labels [K]
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read when the library loads: see the module docstring

DEVICE_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
ExecutionDevice = Literal["", "auto", "cpu", "cuda", "gpu", "tensorrt", "trt"]
DEVICES: tuple[str, ...] = get_args(ExecutionDevice)  # "" and "auto" choose CUDA when present
PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "the NVIDIA driver, CUDA and cuDNN",
    "TensorrtExecutionProvider": "TensorRT (libnvinfer), CUDA and cuDNN",
}


class ProviderUnavailableError(RuntimeError):
    pass


class Backend(Protocol):
    """What the SUT needs of an inference engine: one preprocessed input in, raw detections out."""

    providers: list[str]

    def place(self, x: np.ndarray) -> Any:
        """A model input where `infer` reads it (the array itself, page-locked, or a copy in accelerator memory)."""
        ...

    def release(self, x: Any) -> None:
        """Undo what `place` did that outlives the input (a page lock), once it is no longer used. (An engine that
        places nothing may leave it out: `placed_samples` then releases nothing.)"""
        ...

    def infer(self, x: Any) -> Detections:
        """Model outputs as (boxes [K,4], scores [K], labels [K]) in the model's own convention; `x` is a
        model input as `place` returned it."""
        ...

    def infer_batch(self, xs: Sequence[Any]) -> list[Detections]:
        """`infer`'s answer for each input, from one inference of them all (needed only with batch_size > 1)."""
        ...


def _gpu_present() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def requested_providers(execution_device: str) -> list[str]:
    """The provider list to ask onnxruntime for, for an execution_device value."""
    import onnxruntime as ort

    device = execution_device.lower()
    if device not in DEVICES:
        raise ValueError(f"unknown execution_device {execution_device!r}; use one of: auto, "
                         + ", ".join(DEVICE_PROVIDERS))
    available = ort.get_available_providers()
    if device in ("", "auto"):
        gpu = "CUDAExecutionProvider" in available and _gpu_present()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    wanted = DEVICE_PROVIDERS[device]
    if wanted not in available:
        raise ProviderUnavailableError(
            f"execution_device={execution_device} needs {wanted}, which this onnxruntime build lacks "
            f"(it has {', '.join(available)}); use execution_device=auto or cpu")
    return [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]


@contextlib.contextmanager
def placed_samples(backend: Backend, load: Callable[[int], Any], count: int) -> Iterator[list[Any]]:
    """The first `count` samples as `load` gives them (placed for inference: `Backend.place`), released on exit:
    the untimed warm-up's and the calibration pass's inputs."""
    inputs: list[Any] = []
    release = getattr(backend, "release", None)  # an engine that places nothing (a test's) has nothing to undo
    try:
        for i in range(count):
            inputs.append(load(i))  # one at a time: a failed load still releases those placed before it
        yield inputs
    finally:
        for x in inputs if release else ():
            release(x)


def infer_cycled(backend: Backend, inputs: Sequence[Any], start: int, size: int) -> None:
    """One inference of `size` inputs taken in turn from `inputs` (cycled) from `start`: through `infer` for one,
    `infer_batch` for several (the warm-up, the calibration pass and the benchmarks' bare loop)."""
    group = [inputs[(start + i) % len(inputs)] for i in range(size)]
    if size == 1:
        backend.infer(group[0])
    else:
        backend.infer_batch(group)


def _with_options(providers: list[str], prefer_nhwc: bool) -> list:
    """The provider list with the CUDA provider's options: prefer_nhwc runs convolutions in NHWC layout (faster
    cuDNN kernels on tensor cores; docs/performance.md); other providers take none."""
    cuda = {"prefer_nhwc": "1"} if prefer_nhwc else {}
    return [(p, cuda) if p == "CUDAExecutionProvider" and cuda else p for p in providers]


class OnnxBackend:
    """onnxruntime sessions of one model (one by default; `sessions` > 1: each its own CUDA stream, each thread
    that infers keeps one, taken in turn); reports the providers that actually run. With `batch_size` > 1 the
    model is a batched one (odbench/batching.py): it takes up to that many inputs at once; a partial batch of
    more than one runs padded to the full size (repeating its last input), so the accelerator only ever sees
    batches of 1 and of batch_size, both primed before timing. A `SplitModel` (odbench/split_model.py) runs its
    trunk in these sessions and its post-processing in one CPU session, per image, on the calling thread.
    Samples that stay in host memory on a CUDA provider are page-locked with `pinned_host_samples`
    (odbench/page_lock.py) from `place` until `release`."""

    def __init__(self, model: bytes | str | SplitModel, spec: ModelSpec, execution_device: str = "",
                 cpu_threads: int = 0, samples_on_device: bool = False, prefer_nhwc: bool = False, sessions: int = 1,
                 batch_size: int = 1, pinned_host_samples: bool = False):
        import onnxruntime as ort

        bounds.check("cpu_threads", cpu_threads)  # onnxruntime would start every thread asked for
        wanted = requested_providers(execution_device)
        if "CUDAExecutionProvider" in wanted and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads
        options.log_severity_level = 3
        bounds.check("onnx_sessions", sessions)
        self._split = model if isinstance(model, SplitModel) else None
        graph = self._split.trunk if self._split else model
        self._sessions = [ort.InferenceSession(graph, sess_options=options,
                                               providers=_with_options(wanted, prefer_nhwc)) for _ in range(sessions)]
        self._post = _cpu_session(self._split.post) if self._split else None
        self.session = self._sessions[0]
        self._local = threading.local()
        self._turns = itertools.count()  # next() is atomic: threads take the sessions in turn
        self.providers = self.session.get_providers()
        self._check_provider(execution_device, wanted)
        self.spec = spec
        # outputs are asked for by name: a graph that lists them in another order answers the same
        self._detections = [spec.boxes.name, spec.scores.name, spec.labels.name]
        # what the sessions give: a split model's trunk outputs; a batched model's detections and their counts
        self._outputs = (list(self._split.handed_over) if self._split
                         else self._detections + ([COUNTS] if batch_size > 1 else []))
        # where `place` keeps model inputs: the device of the first provider that runs (CPU memory on CPU)
        self.on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.input_device = "cuda" if samples_on_device and self.on_gpu else "cpu"
        self.samples_on_device = samples_on_device
        pin = pinned_host_samples and self.on_gpu and self.input_device == "cpu"
        if pinned_host_samples and not pin:
            log.warning("pinned_host_samples: ignored, %s", "samples_on_device keeps the samples on the GPU"
                        if samples_on_device else f"{self.providers[0]} copies nothing to a GPU")
        self._page_locker = PageLocker() if pin else None
        self.batch_size = batch_size

    def _check_provider(self, execution_device: str, wanted: list[str]) -> None:
        """An explicit device that could not load is an error; auto's fallback is logged."""
        if wanted[0] in self.providers:
            log.info("onnxruntime providers: %s", ", ".join(self.providers))
            return
        if execution_device.lower() in ("", "auto"):
            log.warning("%s could not load; running on %s", wanted[0], ", ".join(self.providers))
            return
        raise ProviderUnavailableError(
            f"execution_device={execution_device}: {wanted[0]} could not load on this machine "
            f"(onnxruntime fell back to {', '.join(self.providers)}; its log above names the missing library); "
            f"install {PROVIDER_LIBRARIES[wanted[0]]}, or use execution_device=auto or cpu")

    @property
    def pinned_host_samples(self) -> bool:
        """Whether `place` page-locks samples (asked for, on a CUDA provider, samples in host memory)."""
        return self._page_locker is not None

    def place(self, x: np.ndarray) -> Any:
        """A model input where inference reads it: with samples_on_device, an onnxruntime value in the
        accelerator's memory (copied once, in LoadGen's untimed load step); with pinned_host_samples, `x`
        page-locked until `release`; else `x` itself."""
        if self._page_locker is not None:
            return self._page_locker.register(x)
        if not self.samples_on_device:
            return x
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(x, self.input_device, 0)

    def release(self, x: Any) -> None:
        """Undo what `place` did that outlives the sample (a page lock), before its memory can be freed."""
        if self._page_locker is not None:
            self._page_locker.unregister(x)

    def _thread_session(self) -> Any:
        """The session of the calling thread: taken in turn at its first inference, then kept."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._sessions[next(self._turns) % len(self._sessions)]
        return session

    def prime(self, x: Any) -> None:
        """One inference on every session at each batch size it will see (cuDNN autotunes each shape at its
        first), for the warm-up."""
        for session in self._sessions:
            self._run(session, x)
            if self.batch_size > 1:
                self._run(session, np.concatenate([x] * self.batch_size))

    def infer(self, x: Any) -> Detections:
        if self.batch_size > 1:
            return self.infer_batch([x])[0]
        outputs = self._run(self._thread_session(), x)
        return _flat(self._post_process(outputs, x, 0) if self._split else outputs)

    def infer_batch(self, xs: Sequence[Any]) -> list[Detections]:
        """Each input's detections, from one inference over up to batch_size inputs ([1, ...] host arrays)."""
        if not 0 < len(xs) <= self.batch_size:
            raise ValueError(f"a batch of {len(xs)} inputs: this model takes 1 to {self.batch_size}")
        if self.batch_size == 1:
            return [self.infer(xs[0])]
        batch = xs[0] if len(xs) == 1 else np.concatenate([*xs, *[xs[-1]] * (self.batch_size - len(xs))])
        outputs = self._run(self._thread_session(), batch)
        if self._split:
            return [_flat(self._post_process(outputs, batch, i)) for i in range(len(xs))]
        return unbatch(*outputs, len(xs))

    def _post_process(self, maps: list[np.ndarray], x: Any, i: int) -> list[np.ndarray]:
        """The split model's post-processing of image i of the trunk's outputs, on the CPU."""
        per_image = len(self._split.per_image)
        feeds = {name: m[i:i + 1] if n < per_image else m for n, (name, m) in enumerate(zip(self._outputs, maps))}
        if self._split.reads_input:
            feeds[self.spec.input.name] = (x if isinstance(x, np.ndarray) else x.numpy())[i:i + 1]
        return self._post.run(self._detections, feeds)

    def _run(self, session: Any, x: Any) -> list[np.ndarray]:
        """The outputs in self._outputs' order, for an array or a placed input (bound where it lies)."""
        if isinstance(x, np.ndarray):
            return session.run(self._outputs, {self.spec.input.name: x})
        binding = session.io_binding()
        binding.bind_ortvalue_input(self.spec.input.name, x)
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _flat(outputs: list[np.ndarray]) -> Detections:
    """One image's (boxes, scores, labels) as [K, 4], [K], [K], whatever leading dims the model gives them."""
    boxes, scores, labels = outputs
    return boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)


def _cpu_session(model: bytes) -> Any:
    """A CPU session of one thread per run: the SUT's workers run several at once (loadgen_concurrency)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

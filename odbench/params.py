"""The benchmark's parameters, with the axs workflow's names and defaults, checked before any work.

Every numeric parameter has a range (odbench/bounds.py, one table); an error names the parameter,
its value and the allowed range, before anything is downloaded or LoadGen starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

from odbench import bounds, compliance
from odbench.backend import DEVICES, ExecutionDevice
from odbench.compliance import COMPLIANCE_TESTS, ComplianceTest
from odbench.loadgen_settings import OFFICIAL_SAMPLES_PER_QUERY, LoadGenConfig, Mode, Profile, Scenario
from odbench.model_store import STANDINS
from odbench.models import ModelName, ModelSpec, get_spec
from odbench.preprocess import DEFAULT_RESIZE_DTYPE, ResizeDtype, check_resize_dtype

MAX_MIRRORS = 16  # URLs per mirror list
BUFFER_RAM_SHARE = 0.5  # the samples LoadGen keeps loaded may take at most this share of physical memory
DEVICE_BUFFER_SHARE = 0.8  # with samples_on_device, this share of the GPU memory free once the model is loaded
Precision = Literal["fp32", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# the names the current axs workflow uses -> the parameter each is another name for
ALIASES = {"loadgen_query_count": "loadgen_count_override", "loadgen_duration_s": "loadgen_min_duration_s"}


@dataclass(frozen=True)
class BenchmarkParams:
    model_name: ModelName = "ssd_resnet34"
    framework: Literal["onnx"] = "onnx"
    batch_size: int = 1  # samples per inference: >1 only on the stand-ins (odbench/batching.py)
    verbosity: int = 2  # 0: warnings only, 1-2: progress, 3: debug
    loadgen_dataset_size: int = 20
    loadgen_buffer_size: int | None = None  # None: the profile's (official 64, quick 8)
    loadgen_scenario: Scenario = "Offline"
    loadgen_mode: Mode = "AccuracyOnly"
    loadgen_profile: Profile = "official"  # official: mlperf.conf + published per-model values; quick: seconds
    loadgen_target_qps: float | None = None
    loadgen_target_latency: float | None = None  # ms
    loadgen_count_override: int | None = None
    loadgen_min_duration_s: float | None = None
    loadgen_max_duration_s: float | None = None
    loadgen_query_count: int | None = None  # axs's name of loadgen_count_override (exactly this many queries)
    loadgen_min_query_count: int | None = None  # LoadGen's min_query_count
    loadgen_max_query_count: int | None = None  # LoadGen's max_query_count (0: no maximum)
    loadgen_duration_s: float | None = None  # axs's name of loadgen_min_duration_s
    loadgen_multistreamness: int | None = None  # MultiStream samples per query (LoadGen's default: 8)
    loadgen_compliance_test: ComplianceTest | None = None  # TEST01, TEST04: with PerformanceOnly or Submission
    loadgen_concurrency: int = 1  # inferences in flight at once (SUT worker threads)
    preprocess_resize_dtype: ResizeDtype = DEFAULT_RESIZE_DTYPE  # float32: the reference's resize, exactly
    loadgen_warmup_samples: int = 8  # untimed inferences before a timed test (0: none)
    model_precision: Precision = "fp32"  # fp16: the convolutions in float16, post-processing in float32
    normalize_on_device: bool = False  # the stored sample crosses as is (uint8: 1/4 of the bytes); the graph normalizes
    samples_on_device: bool = False  # LoadGen's untimed load puts samples in accelerator memory (IO binding)
    pinned_host_samples: bool = False  # CUDA, samples in host memory: page-locked at load, copied by direct DMA
    prefer_nhwc: bool = False  # CUDA: convolutions in NHWC layout (onnxruntime's prefer_nhwc)
    onnx_sessions: int = 1  # onnxruntime sessions of the model (each its own CUDA stream), shared by the workers
    postprocess_on_cpu: bool = False  # the convolutions on the accelerator, the rest (decode, TopK, NMS) on the CPU
    execution_device: ExecutionDevice = ""  # "" or auto, cpu, cuda/gpu, tensorrt/trt
    cpu_threads: int = 0  # 0: onnxruntime's default; at most the CPUs this process may use
    dataset_url: str | None = None  # None: official archives; "synthetic"; or a COCO-layout folder URL
    model_url: str | None = None  # None: the registry's URL; "standin", "standin-full"; or any model file URL/path
    model_md5: str | None = None
    tolerate_bad_outputs: bool = False  # True: drop and count bad detections instead of failing the run
    dataset_mirrors: tuple[str, ...] | None = None  # folders holding the official COCO archives, tried first
    model_mirrors: tuple[str, ...] | None = None  # URLs of the same model file (same md5), tried first

    def __post_init__(self) -> None:
        """Fail on bad values before anything is downloaded."""
        self.spec  # unknown model names list the known ones
        table = bounds.bounds()
        for name in ("verbosity", "loadgen_dataset_size", "cpu_threads", "loadgen_warmup_samples",
                     "loadgen_concurrency", "onnx_sessions", "batch_size", *ALIASES):
            bounds.check(name, getattr(self, name), table[name])
        self._check_aliases()
        self.loadgen_config  # scenario, mode, targets, counts and durations
        self._check_unsupported()
        self._check_compliance()
        check_resize_dtype(self.preprocess_resize_dtype)
        if self.execution_device.lower() not in DEVICES:
            raise ValueError(f"unknown execution_device {self.execution_device!r}; use one of: "
                             + ", ".join(d for d in DEVICES if d))
        for name in ("tolerate_bad_outputs", "normalize_on_device", "samples_on_device", "pinned_host_samples",
                     "prefer_nhwc", "postprocess_on_cpu"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} is not a boolean: use true or false")
        if self.model_precision not in PRECISIONS:
            raise ValueError(f"unknown model_precision {self.model_precision!r}; use one of: {', '.join(PRECISIONS)}")
        self._check_buffer_memory()
        self._check_mirrors()

    def _check_mirrors(self) -> None:
        """Mirror lists: at most MAX_MIRRORS non-empty URL strings each, kept as tuples; dataset mirrors
        only for the official archives (dataset_url unset), model mirrors not for the stand-in."""
        for name in ("dataset_mirrors", "model_mirrors"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(u, str) and u.strip() for u in value):
                raise ValueError(f"{name}={value!r} must be a list of URLs (e.g. --{name} URL1 URL2)")
            if len(value) > MAX_MIRRORS:
                raise ValueError(f"{name} lists {len(value)} URLs, more than {MAX_MIRRORS}: keep the nearest few")
            object.__setattr__(self, name, tuple(u.strip() for u in value))
        if self.dataset_mirrors and self.dataset_url:
            raise ValueError("dataset_mirrors are mirrors of the official COCO archives: leave dataset_url unset to "
                             f"use them, or drop them to read dataset_url={self.dataset_url!r}")
        if self.model_mirrors and self.model_url in STANDINS:
            raise ValueError(f"model_mirrors with model_url={self.model_url}: the stand-in is built, not fetched; "
                             "drop one")

    def _check_aliases(self) -> None:
        """An alias and the parameter it aliases may both be given only with the same value."""
        for alias, ours in ALIASES.items():
            given, other = getattr(self, alias), getattr(self, ours)
            if given is not None and other is not None and given != other:
                raise ValueError(f"{alias}={given!r} and {ours}={other!r} differ: {alias} is another name for "
                                 f"{ours}; give one of them")

    def _aliased(self, ours: str) -> object:
        """The value of one of our parameters, given under its own name or its axs alias."""
        value = getattr(self, ours)
        if value is None:
            value = next(getattr(self, a) for a, o in ALIASES.items() if o == ours)
        return value

    def _check_unsupported(self) -> None:
        """axs parameters whose other values this version cannot honour yet: say so, never ignore them."""
        if self.framework != "onnx":
            raise ValueError(f"framework={self.framework!r} is not supported: this benchmark runs onnx models")
        if self.batch_size > 1 and self.model_url not in STANDINS:
            raise ValueError(f"batch_size={self.batch_size} needs a model that takes batches: the official "
                             f"{self.spec.name} file was exported with batch 1 (input {self.spec.input.describe()}); "
                             "use batch_size=1, or measure batching on a stand-in (model_url=standin or standin-full)")
        if self.batch_size > 1 and self.samples_on_device:
            raise ValueError(f"batch_size={self.batch_size} with samples_on_device: batches are assembled in host "
                             "memory, so samples cannot stay on the device; drop one of them")
        if self.pinned_host_samples and (self.samples_on_device or self.batch_size > 1):
            other = "samples_on_device (samples in accelerator memory are not copied at all)" \
                if self.samples_on_device else f"batch_size={self.batch_size} (a batch is copied from new memory)"
            raise ValueError(f"pinned_host_samples with {other}: the page-locked samples would never be copied; "
                             "drop one of them")

    def _check_compliance(self) -> None:
        """A compliance test compares against a timed run: it needs PerformanceOnly or Submission."""
        test = self.loadgen_compliance_test
        if test is None:
            return
        if test not in COMPLIANCE_TESTS:
            raise ValueError(f"unknown loadgen_compliance_test {test!r}; valid: {', '.join(COMPLIANCE_TESTS)}")
        if self.loadgen_mode not in ("PerformanceOnly", "Submission"):
            raise ValueError(f"loadgen_compliance_test={test} compares against a timed run: use "
                             f"loadgen_mode=PerformanceOnly or Submission, not {self.loadgen_mode}")
        loaded = self.loadgen_config.performance_count(self.loadgen_dataset_size)
        multi = self.loadgen_scenario == "MultiStream"
        per_query = (self.loadgen_multistreamness or OFFICIAL_SAMPLES_PER_QUERY) if multi else 1
        needed = compliance.TEST04_MIN_LOADED_SAMPLES + per_query - 1
        if test == "TEST04" and loaded < needed:
            raise ValueError(f"TEST04 issues loaded sample {compliance.TEST04_SAME_INDEX} repeatedly: it needs at "
                             f"least {needed} loaded samples, this run loads {loaded}; raise loadgen_dataset_size "
                             "and loadgen_buffer_size")

    def _check_buffer_memory(self) -> None:
        """The samples LoadGen keeps loaded (float32 model inputs; stored uint8 samples with normalize_on_device)
        must fit in part of the machine's RAM."""
        ram = physical_memory()
        count, sample = self._loaded_count(), self._sample_bytes()
        allowed = int(ram * BUFFER_RAM_SHARE) // sample if ram else count
        if count > allowed:
            raise bounds.ParameterRangeError(
                f"{self._buffer_setting()} keeps {count} samples of {sample / 1e6:.1f} MB "
                f"({_size(count * sample)}) loaded, more than {BUFFER_RAM_SHARE:.0%} of this machine's "
                f"{_size(ram)} of memory: use loadgen_buffer_size={max(1, allowed)} or less")

    def check_device_buffer(self, free_bytes: int) -> None:
        """With samples_on_device, the loaded samples live in GPU memory: they must fit in part of what is free
        there once the model is loaded (`free_bytes`), or loading fails midway with the allocator's error."""
        count, sample = self._loaded_count(), self._sample_bytes()
        allowed = int(free_bytes * DEVICE_BUFFER_SHARE) // sample
        if count > allowed:
            fix = f"use loadgen_buffer_size={allowed} or less, or " if allowed else ""
            raise bounds.ParameterRangeError(
                f"samples_on_device with {self._buffer_setting()} keeps {count} samples of {sample / 1e6:.1f} MB "
                f"({_size(count * sample)}) in GPU memory, more than {DEVICE_BUFFER_SHARE:.0%} of the "
                f"{_size(free_bytes)} free there: {fix}set samples_on_device=false (pinned_host_samples=true keeps "
                "them in host memory, page-locked)")

    def _loaded_count(self) -> int:
        return self.loadgen_config.performance_count(self.loadgen_dataset_size)

    def _sample_bytes(self) -> int:
        """One loaded sample: a float32 model input, or a stored uint8 sample with normalize_on_device."""
        side = self.spec.resolution
        return 3 * side * side * (1 if self.normalize_on_device and self.preprocess_resize_dtype == "uint8" else 4)

    def _buffer_setting(self) -> str:
        return f"loadgen_buffer_size={self.loadgen_buffer_size or f'unset ({self.loadgen_profile})'}"

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model_name)

    @property
    def loadgen_config(self) -> LoadGenConfig:
        return LoadGenConfig(
            scenario=self.loadgen_scenario,
            mode=self.loadgen_mode,
            buffer_size=self.loadgen_buffer_size,
            target_qps=self.loadgen_target_qps,
            target_latency_ms=self.loadgen_target_latency,
            count_override=self._aliased("loadgen_count_override"),
            min_duration_s=self._aliased("loadgen_min_duration_s"),
            max_duration_s=self.loadgen_max_duration_s,
            min_query_count=self.loadgen_min_query_count,
            max_query_count=self.loadgen_max_query_count,
            profile=self.loadgen_profile,
            samples_per_query=self.loadgen_multistreamness,
        )


def physical_memory() -> int:
    """This machine's physical memory in bytes; 0 where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(n: int) -> str:
    """Bytes for a message: GB from 1 GB, else MB."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"

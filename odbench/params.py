"""The benchmark's parameters, with the axs workflow's names and defaults, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass

from odbench.backend import DEVICES
from odbench.harness import LoadGenConfig
from odbench.models import ModelSpec, get_spec


@dataclass(frozen=True)
class BenchmarkParams:
    model_name: str = "ssd_resnet34"
    loadgen_dataset_size: int = 20
    loadgen_buffer_size: int = 8
    loadgen_scenario: str = "Offline"
    loadgen_mode: str = "AccuracyOnly"
    loadgen_target_qps: float | None = None
    loadgen_target_latency: float | None = None  # ms
    loadgen_count_override: int | None = None
    loadgen_min_duration_s: float | None = None
    loadgen_max_duration_s: float | None = None
    execution_device: str = ""  # "" or auto, cpu, cuda/gpu, tensorrt/trt
    cpu_threads: int = 0  # 0: onnxruntime's default
    dataset_url: str | None = None  # None: official archives; "synthetic"; or a COCO-layout folder URL
    model_url: str | None = None  # None: the registry's URL; "standin"; or any model file URL/path
    model_md5: str | None = None

    def __post_init__(self) -> None:
        """Fail on bad values before anything is downloaded."""
        self.spec  # unknown model names list the known ones
        self.loadgen_config  # scenario, mode and targets
        if self.loadgen_dataset_size < 1:
            raise ValueError(f"loadgen_dataset_size must be at least 1, got {self.loadgen_dataset_size}")
        if self.execution_device.lower() not in DEVICES:
            raise ValueError(f"unknown execution_device {self.execution_device!r}; use one of: "
                             + ", ".join(d for d in DEVICES if d))

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
            count_override=self.loadgen_count_override,
            min_duration_s=self.loadgen_min_duration_s,
            max_duration_s=self.loadgen_max_duration_s,
        )

"""NVIDIA's management library (nvidia-ml-py) for the board onnxruntime's CUDA device 0 runs on: its energy
(odbench/energy.py) and its free memory. Machines without an NVIDIA driver or nvidia-ml-py get None."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def open_nvml() -> Any | None:
    """The initialised pynvml module (the caller shuts it down), or None where there is no driver or nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 — ImportError, or NVMLError for a missing library or driver
        log.debug("NVML unavailable: %s", err)
        return None
    return pynvml


def cuda_device_index(nvml: Any) -> int | None:
    """The NVML index of the board onnxruntime's CUDA device 0 runs on: 0 without CUDA_VISIBLE_DEVICES, else its
    first entry (an index, in PCI order as NVML counts, or a GPU UUID); None when that names no board NVML has."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return 0
    first = visible.split(",")[0].strip()
    if first.isdigit() and int(first) < nvml.nvmlDeviceGetCount():
        return int(first)
    if first.startswith("GPU-"):
        for index in range(nvml.nvmlDeviceGetCount()):
            if str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))).startswith(first):
                return index
    return None


def free_device_memory() -> int | None:
    """Bytes free now on the board onnxruntime's CUDA device 0 runs on; None where NVML cannot say."""
    nvml = open_nvml()
    if nvml is None:
        return None
    try:
        index = cuda_device_index(nvml)
        return None if index is None else int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).free)
    except nvml.NVMLError as err:
        log.debug("free GPU memory unknown: %s", err)
        return None
    finally:
        nvml.nvmlShutdown()

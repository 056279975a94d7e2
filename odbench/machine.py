"""Machine facts a result depends on (GPU, driver, CPU), and the hardware class that makes two runs comparable."""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NVIDIA_SMI_TIMEOUT_S = 10.0
NO_ACCELERATOR = "none"


@dataclass(frozen=True)
class Accelerator:
    """The NVIDIA GPUs this process may use (CUDA_VISIBLE_DEVICES honoured) and the driver version."""

    names: tuple[str, ...]
    driver: str

    @property
    def name(self) -> str:
        """The GPU model, e.g. "NVIDIA H200"; a machine with mixed models lists each once, in device order."""
        return " + ".join(dict.fromkeys(self.names))


def accelerator() -> Accelerator | None:
    """The visible NVIDIA GPUs from nvidia-smi; None when it is absent, fails, or no GPU is visible."""
    rows = _nvidia_smi_rows()
    rows = _visible(rows, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not rows:
        return None
    return Accelerator(names=tuple(name for name, _ in rows), driver=rows[0][1])


def _nvidia_smi_rows() -> list[tuple[str, str]]:
    """(name, driver) per GPU in nvidia-smi's index order; empty when nvidia-smi cannot tell."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [tuple(part.strip() for part in line.rsplit(",", 1)) for line in out.splitlines() if "," in line]
    return [(name, driver) for name, driver in rows if name and driver]


def _visible(rows: list[tuple[str, str]], cuda_visible: str | None) -> list[tuple[str, str]]:
    """Only the GPUs CUDA_VISIBLE_DEVICES names, when it is set to integer indices (UUIDs: all are reported)."""
    if cuda_visible is None:
        return rows
    items = [item.strip() for item in cuda_visible.split(",") if item.strip()]
    if not all(item.lstrip("-").isdigit() for item in items):
        return rows
    return [rows[int(item)] for item in items if 0 <= int(item) < len(rows)]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """Logical CPUs of the machine (0 when unknown)."""
    return os.cpu_count() or 0


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may keep busy: its affinity (a cpuset's CPUs, not the host's count), lowered to its
    cgroup's CPU quota rounded up (docker --cpus, a Kubernetes CPU limit), so a 2-CPU container on a 64-core host
    starts 2 workers, not 64."""
    try:
        cpus = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`), the tightest from its own cgroup up to the root; None where none is set or readable."""
    try:
        lines = membership.read_text().splitlines()
    except (OSError, ValueError):  # ValueError: not UTF-8
        return None
    quotas = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            quotas += [_v2_quota(folder) for folder in _up_to(root, path)]
        elif "cpu" in controllers.split(","):
            quotas += [_v1_quota(folder) for folder in _up_to(_v1_mount(root, controllers), path)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _v1_mount(root: Path, controllers: str) -> Path:
    """The v1 cpu controller's folder: named as the line lists its controllers, or as distributions mount it
    (`cpu,cpuacct` for a line's `cpuacct,cpu`, or the `cpu` link)."""
    names = (controllers, ",".join(sorted(controllers.split(","), key=lambda c: c != "cpu")), "cpu")
    return next((root / name for name in names if (root / name).is_dir()), root / controllers)


def _up_to(root: Path, path: str) -> list[Path]:
    """The cgroup folder of `path` under `root` and each parent up to `root` itself (never above it); none for a
    path with `..` (a cgroup outside this namespace's root: its parents here are not its ancestors)."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        return []
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    """`cpu.max` ("<quota> <period>", or "max <period>": none) as CPUs."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    """`cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`, as CPUs."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def machine_facts() -> dict[str, str]:
    """Host, CPU and GPU facts as strings, for a result's environment."""
    gpu = accelerator()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": str(cpu_count()),
        "accelerator": gpu.name if gpu else NO_ACCELERATOR,
        "gpu_driver": gpu.driver if gpu else NO_ACCELERATOR,
    }


def hardware_class(environment: Mapping[str, str]) -> str:
    """The "same kind of hardware" key: the GPU model when there is one, else "cpu: <model> x<cores>"."""
    gpu = environment.get("accelerator", NO_ACCELERATOR)
    if gpu and gpu != NO_ACCELERATOR:
        return gpu
    return f"cpu: {environment.get('cpu_model', 'unknown')} x{environment.get('cpu_count', '?')}"

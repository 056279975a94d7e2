"""Page-locked ("pinned") host memory for samples that stay in host memory on a CUDA run (`pinned_host_samples`).

A sample registered with the CUDA runtime (`cudaHostRegister`) is copied to the GPU by direct DMA, without the
driver's copy through its own staging buffer; on the H200 that took 1.4-3.0 ms off SingleStream's p90 with fp32
inputs and gave 10-24 % more Offline throughput at one inference in flight (docs/performance.md section 3b).
The registration is done in LoadGen's untimed load step and undone when LoadGen unloads the sample, before its
memory can be freed. The runtime is the one onnxruntime's CUDA provider loaded into this process.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np


class PageLockError(RuntimeError):
    pass


def _cudart() -> ctypes.CDLL:
    """The CUDA runtime library onnxruntime's CUDA provider loaded (found in this process's mapped files)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcudart.so" in line})
    except OSError:
        paths = []
    if not paths:
        raise PageLockError("pinned_host_samples: no CUDA runtime (libcudart) in this process, so host memory "
                            "cannot be page-locked; run on the CUDA provider, or set pinned_host_samples=false")
    return ctypes.CDLL(paths[0])


class PageLocker:
    """Registers arrays with the CUDA runtime and keeps each alive until it is unregistered (thread-safe)."""

    def __init__(self) -> None:
        self._cudart = _cudart()
        self._held: dict[int, np.ndarray] = {}  # data address -> the registered array
        self._lock = threading.Lock()

    def lock(self, x: np.ndarray) -> np.ndarray:
        """`x` (made contiguous) with its pages locked; the same array goes to `unlock` when it is dropped."""
        x = np.ascontiguousarray(x)
        address = x.ctypes.data
        status = self._cudart.cudaHostRegister(ctypes.c_void_p(address), ctypes.c_size_t(x.nbytes), 0)
        if status != 0:
            raise PageLockError(f"cudaHostRegister failed (CUDA error {status}) for a {x.nbytes / 1e6:.1f} MB "
                                "sample: too much pinned memory? lower loadgen_buffer_size, or set "
                                "pinned_host_samples=false")
        with self._lock:
            self._held[address] = x
        return x

    def unlock(self, x: np.ndarray) -> None:
        """Undo `lock` for this array (nothing for one it never locked)."""
        with self._lock:
            held = self._held.pop(x.ctypes.data, None) if isinstance(x, np.ndarray) else None
        if held is not None:
            self._cudart.cudaHostUnregister(ctypes.c_void_p(held.ctypes.data))

    def unlock_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for x in held:
            self._cudart.cudaHostUnregister(ctypes.c_void_p(x.ctypes.data))

    def __del__(self) -> None:
        """Unregister whatever is still held before the arrays can be freed: a freed range the runtime still counts
        as registered makes later copies from memory reusing it fail ("invalid argument")."""
        try:
            self.unlock_all()
        except Exception:  # noqa: BLE001 — at interpreter exit the runtime may already be gone
            pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

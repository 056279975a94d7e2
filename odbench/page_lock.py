"""Page-locked ("pinned") host memory for samples that stay in host memory on a GPU run (`pinned_host_samples`).

A sample registered with the CUDA runtime (`cudaHostRegister`) is copied to the GPU by direct DMA, without the
driver's copy through its own staging buffer; on the H200 that took 1.4-1.9 ms off SingleStream's p90 with fp32
inputs and gave 11-15 % more Offline throughput at one inference in flight (docs/performance.md section 3c).
The registration is done in LoadGen's untimed load step and undone when LoadGen unloads the sample, before its
memory can be freed. The runtime is the one onnxruntime's CUDA provider loaded into this process.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

ALREADY_REGISTERED = 712  # cudaErrorHostMemoryAlreadyRegistered: the range overlaps one registered before
OUT_OF_MEMORY = 2  # cudaErrorMemoryAllocation


class PageLockError(RuntimeError):
    pass


def _mapped_cudart() -> str | None:
    """The path of the CUDA runtime library mapped into this process, if any (the first, by name)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return None
    paths = {fields[5].removesuffix(" (deleted)").strip() for line in lines
             if len(fields := line.split(maxsplit=5)) == 6 and "libcudart.so" in fields[5]}
    return min(paths, default=None)


def _cudart() -> Any:
    """The CUDA runtime onnxruntime's CUDA provider loaded, as a library to call."""
    path = _mapped_cudart()
    try:
        if path is None:
            raise OSError("not mapped")
        return ctypes.CDLL(path)
    except OSError as err:
        raise PageLockError(f"pinned_host_samples: no usable CUDA runtime (libcudart) in this process ({err}), so "
                            "host memory cannot be page-locked; run on the CUDA provider, or set "
                            "pinned_host_samples=false") from err


class PageLocker:
    """Registers arrays with the CUDA runtime and keeps each alive until it is unregistered (thread-safe: LoadGen
    loads samples on several threads). `cudart`: the runtime to call (default: the one in this process)."""

    def __init__(self, cudart: Any = None) -> None:
        self._cudart = cudart if cudart is not None else _cudart()
        if hasattr(describe := getattr(self._cudart, "cudaGetErrorString", None), "restype"):  # a C function
            describe.restype = ctypes.c_char_p
        self._held: dict[int, np.ndarray] = {}  # data address -> the registered array
        self._guard = threading.Lock()

    def register(self, x: np.ndarray) -> np.ndarray:
        """`x` (made contiguous) with its pages locked; give the returned array to `unregister` when it is dropped."""
        x = np.ascontiguousarray(x)
        status = self._cudart.cudaHostRegister(ctypes.c_void_p(x.ctypes.data), ctypes.c_size_t(x.nbytes), 0)
        if status != 0:
            self._cudart.cudaGetLastError()  # clear it: the runtime would report it again at a later call's check
            raise PageLockError(self._registration_failed(status, x.nbytes))
        with self._guard:
            self._held[x.ctypes.data] = x
        return x

    def unregister(self, x: Any) -> None:
        """Undo `register` for the array it returned (nothing for any other object, a view of it included)."""
        with self._guard:
            address = x.ctypes.data if isinstance(x, np.ndarray) else None
            held = self._held.pop(address) if address in self._held and self._held[address] is x else None
        if held is not None and (status := self._unregister(held)) != 0:
            self._cudart.cudaGetLastError()
            raise PageLockError(f"cudaHostUnregister failed: {self._describe(status)}")

    def unregister_all(self) -> None:
        """Unregister everything still held (errors ignored: the run is over)."""
        with self._guard:
            held, self._held = list(self._held.values()), {}
        for x in held:
            self._unregister(x)

    def __del__(self) -> None:
        """Unregister whatever is still held before the arrays can be freed: a freed range the runtime still counts
        as registered makes later copies from memory reusing it fail ("invalid argument")."""
        try:
            self.unregister_all()
        except Exception:  # noqa: BLE001 — at interpreter exit the runtime may already be gone
            pass

    def __len__(self) -> int:
        with self._guard:
            return len(self._held)

    def _unregister(self, x: np.ndarray) -> int:
        return self._cudart.cudaHostUnregister(ctypes.c_void_p(x.ctypes.data))

    def _registration_failed(self, status: int, nbytes: int) -> str:
        what = f"cudaHostRegister failed for a {nbytes / 1e6:.1f} MB sample: {self._describe(status)}"
        if status == ALREADY_REGISTERED:
            return f"{what} (its memory is page-locked already: a sample placed twice?)"
        if status == OUT_OF_MEMORY:
            return f"{what}; lower loadgen_buffer_size, or set pinned_host_samples=false"
        return f"{what}; set pinned_host_samples=false to run without it"

    def _describe(self, status: int) -> str:
        """The runtime's own name for an error status, with the number."""
        try:
            text = self._cudart.cudaGetErrorString(status)
            return f"{text.decode() if isinstance(text, bytes) else text} (CUDA error {status})"
        except (AttributeError, OSError, UnicodeDecodeError):
            return f"CUDA error {status}"

"""Keep freed memory in the process: glibc malloc settings for CPU training and inference.

PyTorch's CPU allocator has no cache: every tensor is a fresh ``malloc`` and every free a
``free``. glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns them with ``munmap``, so each large temporary -- a (chunk × vocabulary) logits
block is 200 MB -- is paged in again, one page fault per 4 KiB, on every use. Measured on
this machine (2-core AVX-512/AMX, one thread, a 1024 × 49,152 tensor): ``.float()`` of a bf16
tensor 103 ms as shipped, 11 ms with the settings below, where the copy itself costs 18 ms
into an existing buffer; one small-model training step spends a third of its time in such
faults. Intel's CPU training guides make the same point and swap in jemalloc or tcmalloc; we
get the effect from glibc itself, through ``mallopt`` (glibc manual, "Malloc Tunable
Parameters"): no mmap for large blocks (``M_MMAP_MAX = 0``) and no trimming of the heap top
(``M_TRIM_THRESHOLD`` = ∞), so freed blocks are reused without faults.

The cost: memory freed by the process stays resident until it exits (its peak does not
grow). A process that wants it back runs with ``LLM4ALL_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
_done = False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (``find_library`` runs ``ldconfig`` in a subprocess)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True if they are in effect (glibc, not opted out)."""
    global _done
    if _done:
        return True
    if os.environ.get("LLM4ALL_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)  # musl and other libcs have none
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done


def release_freed_memory() -> bool:
    """Return the pages of freed heap memory to the OS now: glibc's ``malloc_trim(0)``, which
    gives back free pages anywhere in the heap, not only at its top (glibc manual, "Memory
    Allocation Tunables"; since 2.8). A long run of phases that each allocate their own
    temporaries among long-lived small objects (``curate``: read, signals, each step) otherwise
    keeps every phase's freed holes resident: on the curate benchmark corpus the driver's peak
    at 8x fell 293 -> 273 MiB and its growth from 1x to 8x 51 -> 41 MiB (docs/curate.md).
    A no-op (False) where freed memory is kept on purpose (``keep_freed_memory``) or there is no
    glibc."""
    trim = getattr(_libc(), "malloc_trim", None) if sys.platform.startswith("linux") else None
    if _done or trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True

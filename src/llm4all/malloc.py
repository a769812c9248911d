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
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True if they are in effect (glibc, not opted out)."""
    global _done
    if _done:
        return True
    if os.environ.get("LLM4ALL_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done

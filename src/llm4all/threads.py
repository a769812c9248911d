"""How many threads to compute with on a machine other processes share.

Torch's OpenMP threads and BLAS threads wait on each other at every barrier: when another
process holds one of two cores, two threads run slower than one. ``free_cores`` counts the
cores other processes leave free (from /proc/stat over a quarter second); ``thread_limit``
applies a count to torch and BLAS for the duration of a block.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def busy_cores(seconds: float = 0.25) -> float:
    """Cores' worth of CPU time used (by other processes: we sleep) over ``seconds``, from
    /proc/stat; the 1-minute load average where there is no /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait (jiffies)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def free_cores(requested: int = 0) -> int:
    """Threads to use: ``requested``, else ``$LLM4ALL_THREADS``, else the cores that other
    processes leave free.

    A core counts as taken when other processes keep it ≥ 85% busy. Measured on this shared
    2-core machine (SmolLM2 GPTQ, 16k tokens): with another process using a full core, two
    threads took 136 s and one 70 s (OpenMP and BLAS threads wait on each other); with one
    using ~70% of a core, two threads took 45 s and one 60 s.
    """
    if requested > 0:
        return requested
    fixed = os.environ.get("LLM4ALL_THREADS", "")
    if fixed.isdigit() and int(fixed) > 0:  # the user's one count for every command and stage
        return int(fixed)
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - int(busy_cores() + 0.15)))


@contextlib.contextmanager
def thread_limit(n: int):
    """torch's intra-op threads and (if threadpoolctl is installed) BLAS threads limited to ``n``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then BLAS (syrk) keeps its own default
        threadpool_limits = None
    try:
        with threadpool_limits(n, user_api="blas") if threadpool_limits else contextlib.nullcontext():
            yield n
    finally:
        torch.set_num_threads(before)

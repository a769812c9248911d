"""glibc malloc settings (llm4all/malloc.py): freed memory kept for training, given back for curate."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

FREED = """
import re
from llm4all.malloc import keep_freed_memory, release_freed_memory

def anon():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

if {keep}:
    keep_freed_memory()
blocks = [bytes(2048) for _ in range(100_000)]  # ~200 MiB of heap, not mmap-ed blocks
last = blocks[-1]  # the heap's top stays in use: free() alone cannot give the rest back
del blocks
before = anon()
print(release_freed_memory(), before, anon())
"""


def _freed(keep: bool) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", FREED.format(keep=keep)], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def test_release_gives_freed_heap_pages_back_to_the_os():
    released, before, after = _freed(keep=False)
    assert released and before - after > 150, (before, after)  # MiB


def test_release_is_a_no_op_where_freed_memory_is_kept_on_purpose():
    released, before, after = _freed(keep=True)
    assert not released and before - after < 20, (before, after)

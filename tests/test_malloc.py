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


LARGE = """
import re
from llm4all.malloc import return_large_blocks

def anon():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024

if {fixed}:
    return_large_blocks()
big = bytearray(16 << 20)
del big  # freeing a mmap-ed block raises glibc's threshold to its size (16 MiB)
blocks, small = [], []
for _ in range(50):  # 200 MiB of 4 MiB temporaries, each followed by a long-lived small object
    blocks.append(bytearray(4 << 20))
    small.append(bytearray(1024))
before = anon()
del blocks
print(before, anon())
"""


@pytest.mark.parametrize("fixed", [True, False])
def test_large_temporaries_go_back_to_the_os_with_a_fixed_mmap_threshold(fixed):
    """With ``return_large_blocks`` (curate's driver) freed multi-MiB blocks leave the process;
    without it, after glibc raised its threshold, they stay as heap holes (what it prevents)."""
    out = subprocess.run([sys.executable, "-c", LARGE.format(fixed=fixed)], capture_output=True,
                         text=True, check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert before > 190, before
    assert (before - after > 180) if fixed else (before - after < 20), (fixed, before, after)

"""engine/allocator.py: freed frame-sized arrays are reused instead of page-faulted in again."""
import platform
import subprocess
import sys

import pytest

from engine.allocator import keep_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")

# Allocates and touches a 64 MB array twice and prints the minor page faults of the second time.
_FAULTS = """
import resource, numpy as np
from engine.allocator import keep_freed_memory
if {keep}: assert keep_freed_memory()
a = np.ones(16 << 20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_allocation_faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS.format(keep=keep)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_second_large_allocation_reuses_the_heap():
    without, with_setting = _second_allocation_faults(False), _second_allocation_faults(True)
    assert without >= 32  # glibc unmapped the first array: the second is faulted in afresh (2 MB pages at best)
    assert with_setting < 16 and with_setting * 4 < without


@glibc
def test_settings_are_taken():
    assert keep_freed_memory() is True


def test_thresholds_that_make_no_sense_are_refused():
    assert keep_freed_memory(mmap_threshold=0) is False
    assert keep_freed_memory(mmap_threshold=1 << 30, trim_threshold=1 << 20) is False

"""engine/allocator.py: freed frame-sized arrays are reused instead of page-faulted in again."""
import platform
import subprocess
import sys

import pytest

from engine.allocator import keep_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")

# Allocates and touches an array of {mb} MB twice and prints the minor page faults of the second time.
_FAULTS = """
import resource, numpy as np
{setup}
a = np.ones({mb} << 18, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones({mb} << 18, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


_KEEP = "from engine.allocator import keep_freed_memory; assert keep_freed_memory()"
# what every `eyefuse` command does first
_ENTRY = "from engine.process import configure_process; configure_process()"
# a program that embeds the engine and runs a burst without asking for the setting
_EMBEDDED = ("from engine.burst.align import AlignConfig; from engine.burst.merge import MergeConfig; "
             "from engine.burst.fusion import BurstConfig, BurstFusion, prepare_for_bursts; import app.recorder; "
             "prepare_for_bursts(BurstConfig(align=AlignConfig(method='dis'), merge=MergeConfig(method='robust')))")


def _second_allocation_faults(setup: str, mb: int) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS.format(setup=setup, mb=mb)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@glibc
@pytest.mark.parametrize("setup, mb", [(_KEEP, 64), (_ENTRY, 64), (_KEEP, 400)])  # 400 MB: a 12 MP burst
def test_second_large_allocation_reuses_the_heap(setup, mb):
    without, with_setting = _second_allocation_faults("", mb), _second_allocation_faults(setup, mb)
    assert without >= 32  # glibc unmapped the first array: the second is faulted in afresh (2 MB pages at best)
    assert with_setting < 16 and with_setting * 4 < without


@glibc
def test_importing_and_using_the_engine_leaves_the_allocator_alone():
    faults = _second_allocation_faults(_EMBEDDED, 64)
    assert faults >= 32, "the library changed glibc's allocator settings without being asked"


@glibc
def test_settings_are_taken():
    assert keep_freed_memory() is True


def test_thresholds_that_make_no_sense_are_refused():
    assert keep_freed_memory(mmap_threshold=0) is False
    assert keep_freed_memory(mmap_threshold=1 << 30, trim_threshold=1 << 20) is False
    assert keep_freed_memory(mmap_threshold=1 << 30, trim_threshold=1 << 31) is False  # mallopt takes a C int

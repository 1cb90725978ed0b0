"""Keep freed memory in the process, so large per-frame arrays are not page-faulted in every time.

glibc hands every allocation above its mmap threshold (dynamic, 32 MiB at most) straight back to the
kernel when it is freed, so the next one gets fresh pages that the kernel must fault in and zero.
The burst merge makes tile and spectrum arrays of 36-41 MB for every 640x480 burst (and strips of
that size at 12 MP), and scipy's FFT allocates its output itself: on this machine the faults cost a
fifth of the merge (77-80 ms with this setting against 97-105 ms without, same bursts, same run
order) and a few ms of the aligner. Raising the mmap threshold makes such arrays come from the heap,
and a trim threshold above it keeps freed heap memory for the next frame instead of returning it.
A 12 MP burst is 390 MB and its aligner's level stacks 85 MB each, about 1 GB in all between two
bursts: with 256/512 MB thresholds glibc gave it back, and the next 12 MP align took 810-970 ms
instead of 565-590 (the same bursts with 1/1.5 GB, which are the defaults).
The price is resident memory: up to `trim_threshold` of freed memory may stay mapped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 3 << 29) -> bool:
    """Ask glibc's malloc to serve allocations below `mmap_threshold` bytes from the heap and to keep
    up to `trim_threshold` bytes of freed heap memory. Process-wide; call once at start-up.

    Returns True if the C library took both settings, False where it is not glibc (macOS, Windows,
    musl), which is harmless: only speed differs, and for thresholds out of order or past the
    C int that mallopt takes."""
    if not sys.platform.startswith("linux") or not 0 < mmap_threshold <= trim_threshold < 1 << 31:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))

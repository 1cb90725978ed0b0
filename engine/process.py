"""Process-wide settings the engine runs best with, made by the entry points that want them.

Importing EyeFuse's packages changes nothing in the host process: a program that embeds the
engine keeps its own allocator and thread settings. The `eyefuse` command line (which runs every
command, the benchmarks included) calls `configure_process()` once, before any work:

- numba's parallel kernels (the burst path) on OpenMP threads where numba's OpenMP layer loads
  (GNU libgomp), then TBB, then numba's own workqueue. Under workqueue the calling thread only
  waits while two sleeping workers wake up and share the work, which on a 2-core machine costs as
  long as a small kernel; OpenMP's calling thread does half the work itself.
- OpenMP's workers wait passively: spinning after each kernel would take the cores from the
  OpenCV and scipy threads that run between kernels.
- glibc keeps freed memory for the next frame (engine/allocator.py).

Each setting the environment already makes (NUMBA_THREADING_LAYER, NUMBA_THREADING_LAYER_PRIORITY,
OMP_WAIT_POLICY) is left as the environment has it. The thread settings take effect if made before
the first parallel kernel runs (numba chooses its layer then, and libgomp reads its policy when it
loads).
"""
from __future__ import annotations

import os
import sys

from engine.allocator import keep_freed_memory

THREADING_LAYER_PRIORITY = ("omp", "tbb", "workqueue")


def configure_process(keep_freed: bool = True) -> None:
    """Make the process-wide settings above; `keep_freed` False leaves the allocator alone."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = " ".join(THREADING_LAYER_PRIORITY)
        numba = sys.modules.get("numba")
        if numba is not None:  # already imported: its config has read the environment
            numba.config.THREADING_LAYER_PRIORITY = list(THREADING_LAYER_PRIORITY)
    if keep_freed:
        keep_freed_memory()

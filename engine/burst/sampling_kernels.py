"""What the burst path's compiled kernels share (align_kernels.py, merge_kernels.py): how they read
a frame between its pixels, the lock around their parallel calls, and which of them this machine
has compiled yet.

Sampling is OpenCV's remap with BORDER_REFLECT_101, one tile or one point at a time, so no warped
copy of a frame goes through memory: `_bilinear` is align.warp's INTER_LINEAR at one point;
`_shifted_tile` is merge.warp_planes' INTER_CUBIC (or INTER_LINEAR) over one tile moved by one flow,
a translation. They equal those up to rounding (tests check; OpenCV's remap rounds each position to
1/32 pixel).
Data-dependent indices (the warps' sample positions, the tiles' flows) are folded into the image by
`_reflect`, which returns an index inside it for any input, NaN included: numba does not check
bounds.

Every kernel compiles on first use and is cached beside its own module (`cache=True`), so later
runs and processes load it in about a second. numba's cache checks only the file that defines a
kernel: a helper changed here (or in fft16.py) leaves the kernels that inline it cached as they
were, so after such a change remove their cache files (engine/burst/__pycache__/*_kernels.*.nbi,
*.nbc) or touch align_kernels.py and merge_kernels.py.
"""
from __future__ import annotations

import importlib
import os
import threading

import numba
import numpy as np
from numba import njit, prange

# Workqueue aborts the process if two threads launch parallel kernels at once, and two kernels at
# once would only oversubscribe two cores: callers hold LOCK around their parallel kernel calls
# (serial ones need not). Re-entrant, so a caller may hold it over several calls that take it too.
LOCK = threading.RLock()

# the modules whose cached kernels `uncached` reports
KERNEL_MODULES = ("engine.burst.sampling_kernels", "engine.burst.align_kernels", "engine.burst.merge_kernels")


# -- points and indices -------------------------------------------------------------------------------
@njit(inline="always")
def _reflect(i: int, n: int) -> int:
    """Index i folded into 0..n-1 as OpenCV's BORDER_REFLECT_101 does (one fold, then clamped)."""
    if i < 0:
        i = -i
    if i > n - 1:
        i = 2 * (n - 1) - i
    return min(max(i, 0), n - 1)


@njit(inline="always", fastmath=True)
def _bilinear(img: np.ndarray, sx: float, sy: float, inside: bool) -> float:
    """(H, W) img sampled at (sx, sy), bilinear; borders reflected unless the caller knows the
    point and its right and lower neighbours are inside."""
    if inside:  # sx, sy >= 0: truncation is the floor, and much cheaper than a call to floorf
        x0, y0 = int(sx), int(sy)
        ax, ay = sx - np.float32(x0), sy - np.float32(y0)
        x1, y1 = x0 + 1, y0 + 1
    else:
        fx, fy = np.floor(sx), np.floor(sy)
        x0, y0 = int(fx), int(fy)
        ax, ay = sx - fx, sy - fy
        h, w = img.shape
        x0, x1, y0, y1 = _reflect(x0, w), _reflect(x0 + 1, w), _reflect(y0, h), _reflect(y0 + 1, h)
    top = img[y0, x0] + ax * (img[y0, x1] - img[y0, x0])
    bottom = img[y1, x0] + ax * (img[y1, x1] - img[y1, x0])
    return top + ay * (bottom - top)


# -- tiles moved by a flow ----------------------------------------------------------------------------
# The merge takes each tile of a frame at that tile's own flow, a translation (merge.py says why that
# is enough): a translation is separable, so one tile of four planes costs two short 4-tap passes.
_P = 4  # planes, side by side in the frames the merge samples
_FAR = 1e6  # a flow beyond this (or NaN) is taken as none


@njit(inline="always", fastmath=True)
def _interp_weights(frac: float, cubic: bool, out: np.ndarray) -> None:
    """out[0..3] = the weights of samples -1, 0, 1, 2 at fraction frac in [0, 1): OpenCV's bicubic
    (A = -0.75, as its remap's INTER_CUBIC) or linear."""
    if cubic:
        a = np.float32(-0.75)
        x1 = frac + np.float32(1.0)
        y = np.float32(1.0) - frac
        out[0] = ((a * x1 - np.float32(5.0) * a) * x1 + np.float32(8.0) * a) * x1 - np.float32(4.0) * a
        out[1] = ((a + np.float32(2.0)) * frac - (a + np.float32(3.0))) * frac * frac + np.float32(1.0)
        out[2] = ((a + np.float32(2.0)) * y - (a + np.float32(3.0))) * y * y + np.float32(1.0)
        out[3] = np.float32(1.0) - out[0] - out[1] - out[2]
    else:
        out[0] = 0.0
        out[1] = np.float32(1.0) - frac
        out[2] = frac
        out[3] = 0.0


@njit(inline="always", fastmath=True)
def _tile_rows(frames: np.ndarray, flat: np.ndarray, f: int, t: int, top: int, left: int, fx: float, fy: float,
               cubic: bool, wx: np.ndarray, wy: np.ndarray, tmp: np.ndarray) -> None:
    """The first half of sampling a t x t tile of frame f of frames (F, h, w, 4) at (left + x + fx,
    top + y + fy), bicubic (or linear), borders reflected (REFLECT_101): the t + 3 source rows the
    tile needs, filtered along x into tmp[(r t + x) 4 + p] (r = 0 .. t + 2), and the weights along
    y into wy[0..3] (the columns' pass: _shifted_tile). flat: frames.ravel();
    tmp: (t + 3) t 4 float32; wx, wy: 4 float32 scratch.

    Both passes filter along contiguous memory, four planes at once, and LLVM vectorises them as
    long as two things hold: indices are unsigned (a signed index gets numba's negative-index
    wraparound, a compare and a select per load), and t is a runtime value (with a literal 16 LLVM
    unrolls the row loop completely and then leaves it scalar)."""
    h, w = frames.shape[1], frames.shape[2]
    if not (abs(fx) < _FAR and abs(fy) < _FAR):  # NaN, or so far that the index arithmetic would overflow
        fx, fy = np.float32(0.0), np.float32(0.0)
    ox = np.floor(fx)
    oy = np.floor(fy)
    _interp_weights(np.float32(fx - ox), cubic, wx)
    _interp_weights(np.float32(fy - oy), cubic, wy)
    x0 = left + int(ox) - 1  # the first tap's column and row
    y0 = top + int(oy) - 1
    w0, w1, w2, w3 = wx[0], wx[1], wx[2], wx[3]
    m_n = _P * t
    inside = x0 >= 0 and x0 + t + 3 <= w
    one, two, three = np.uint64(_P), np.uint64(2 * _P), np.uint64(3 * _P)
    for r in range(t + 3):
        o = np.uint64(r * m_n)
        row = _reflect(y0 + r, h)
        if inside:
            b = np.uint64(((f * h + row) * w + x0) * _P)
            for m in range(m_n):
                mu = np.uint64(m)
                tmp[o + mu] = (w0 * flat[b + mu] + w1 * flat[b + mu + one] + w2 * flat[b + mu + two]
                               + w3 * flat[b + mu + three])
        else:
            for x in range(t):
                c0, c1 = _reflect(x0 + x, w), _reflect(x0 + x + 1, w)
                c2, c3 = _reflect(x0 + x + 2, w), _reflect(x0 + x + 3, w)
                for p in range(_P):
                    tmp[o + np.uint64(x * _P + p)] = (w0 * frames[f, row, c0, p] + w1 * frames[f, row, c1, p]
                                                      + w2 * frames[f, row, c2, p] + w3 * frames[f, row, c3, p])


@njit(inline="always", fastmath=True)
def _shifted_tile(frames: np.ndarray, flat: np.ndarray, f: int, t: int, top: int, left: int, fx: float, fy: float,
                  cubic: bool, wx: np.ndarray, wy: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    """out[(y t + x) 4 + p] = plane p of frame f of frames (F, h, w, 4) at (left + x + fx,
    top + y + fy), for the t x t tile (_tile_rows, then the columns)."""
    _tile_rows(frames, flat, f, t, top, left, fx, fy, cubic, wx, wy, tmp)
    v0, v1, v2, v3 = wy[0], wy[1], wy[2], wy[3]
    m_n = _P * t
    row1, row2, row3 = np.uint64(m_n), np.uint64(2 * m_n), np.uint64(3 * m_n)
    for q in range(t * m_n):
        qu = np.uint64(q)
        out[qu] = v0 * tmp[qu] + v1 * tmp[qu + row1] + v2 * tmp[qu + row2] + v3 * tmp[qu + row3]


@njit(cache=True, parallel=True)
def interleave_frames(planes: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out (F, h, w, 4) = planes[idx] (F of (4, h, w)) with the four planes side by side, the
    layout _shifted_tile filters along."""
    f_n, h, w, p_n = out.shape
    for job in prange(f_n * h):
        f = job // h
        y = job % h
        src = planes[idx[f]]
        for x in range(w):
            for p in range(p_n):
                out[f, y, x, p] = src[p, y, x]


# -- the on-disk cache --------------------------------------------------------------------------------
def cached_kernels() -> list:
    """The dispatchers of every kernel in KERNEL_MODULES that numba caches on disk (`cache=True`),
    each once (a module also holds the helpers it imports)."""
    out = []
    for name in KERNEL_MODULES:
        for v in vars(importlib.import_module(name)).values():
            if (isinstance(v, numba.core.registry.CPUDispatcher) and v.py_func.__module__ == name
                    and hasattr(v._cache, "_cache_file")):
                out.append(v)
    return out


def uncached() -> list[str]:
    """Names of the cached kernels that numba has not compiled on this machine yet (no cache index
    beside their module): each costs seconds of compile on its first call, so callers can say so."""
    return [k.__name__ for k in cached_kernels() if not os.path.exists(k._cache._cache_file._index_path)]

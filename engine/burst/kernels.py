"""Compiled inner loops of the Wiener merge (numba): one pass where numpy needs several.

The merge's arithmetic between the FFTs is elementwise over small (16 x 16 or 16 x 9) tiles; numpy
runs each step (difference, clip mask, window, |D|^2, gain, product, sum over frames) as its own
pass through memory with inner loops of 16 elements, which cost more than the FFTs themselves.
These kernels fuse each chain into one loop per tile, over both cores. Their results equal the
numpy expressions in their docstrings up to float32 rounding (tests/test_burst_merge.py checks).

Compiled on first use (about 5 s) and cached beside this file (`cache=True`), so later runs and
processes load them in well under a second.
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np
from numba import njit, prange

# numba's own "workqueue" threads, not OpenMP: OpenMP's workers spin after each kernel, and the
# merge calls a kernel between every pair of scipy FFTs and OpenCV remaps, whose threads they then
# starve (merge 140 -> 117 ms with them idle). Workqueue aborts the process if two threads launch
# parallel kernels at once, so callers hold LOCK around their kernel calls.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
LOCK = threading.Lock()


@njit(cache=True, fastmath=True, parallel=True)
def windowed_differences(ref: np.ndarray, alts: np.ndarray, window: np.ndarray, saturation: float,
                         out: np.ndarray) -> None:
    """Raised-cosine-windowed tiles of reference - frame, for every frame at once.

    ref: (4, R, W) float32 reference planes of a strip. alts: (F, R, W, 4) float32 the frames
    warped onto it, planes interleaved (what OpenCV's remap gives). window: (t, t) float32.
    out: (F, 4, R/s - 1, W/s - 1, t, t) float32, s = t/2, filled with
        window * where((alt >= saturation) & (ref < saturation), 0, ref - alt)
    taken at tile (j, i) from rows s j .. s j + t and columns s i .. s i + t: a clipped sample in
    another frame says nothing about the scene, so there the reference speaks.
    """
    f_n, _, ny, nx, t, _ = out.shape
    s = t // 2
    for job in prange(f_n * ny):
        f = job // ny
        j = job % ny
        for i in range(nx):
            for y in range(t):
                row = s * j + y
                for x in range(t):
                    col = s * i + x
                    w = window[y, x]
                    for p in range(4):  # side by side in alts: a literal 4 lets LLVM vectorise
                        r = ref[p, row, col]
                        a = alts[f, row, col, p]
                        d = r - a
                        if a >= saturation and r < saturation:
                            d = 0.0
                        out[f, p, j, i, y, x] = w * d


@njit(cache=True, fastmath=True, parallel=True)
def windowed_tiles(img: np.ndarray, window: np.ndarray, out: np.ndarray) -> None:
    """(P, R, W) float32 planes -> out (P, R/s - 1, W/s - 1, t, t) = window * tile (j, i) at
    stride s = t/2 (the reference's own tiles, for the spatial step)."""
    p_n, ny, nx, t, _ = out.shape
    s = t // 2
    for job in prange(p_n * ny):
        p = job // ny
        j = job % ny
        for i in range(nx):
            for y in range(t):
                for x in range(t):
                    out[p, j, i, y, x] = window[y, x] * img[p, s * j + y, s * i + x]


@njit(cache=True, fastmath=True, parallel=True)
def wiener_sum(spec: np.ndarray, c: np.ndarray, conf: np.ndarray, inv_n: float, out: np.ndarray) -> None:
    """The temporal Wiener merge of the difference spectra, summed over frames.

    spec: (F, 4, ny, nx, t, k) complex64 spectra D_z of windowed reference - frame tiles.
    c: (4, ny, nx) float32 the Wiener constant per plane and tile (strength x window energy x the
    noise variance of a difference). conf: (F, ny, nx) float32 alignment confidence.
    out: (4, ny, nx, t, k) complex64 = inv_n * sum_z conf_z c / (|D_z|^2 + c) D_z,
    i.e. the part of each frame's difference that noise explains, which the merge removes from
    the reference (HDR+'s (1 - A_z) D_z).
    """
    f_n, p_n, ny, nx, t, k = spec.shape
    for job in prange(p_n * ny):
        p = job // ny
        j = job % ny
        for i in range(nx):
            cp = c[p, j, i]
            acc = out[p, j, i]
            acc[:] = 0.0
            for f in range(f_n):  # frame by frame: each frame's tile is read in one contiguous run
                g = conf[f, j, i] * cp
                z = spec[f, p, j, i]
                for u in range(t):
                    for v in range(k):
                        zz = z[u, v]
                        acc[u, v] += zz * (g / (zz.real * zz.real + zz.imag * zz.imag + cp))
            for u in range(t):
                for v in range(k):
                    acc[u, v] *= inv_n


@njit(cache=True, fastmath=True, parallel=True)
def spatial_shrink(ref_spec: np.ndarray, correction: np.ndarray, c2: np.ndarray) -> None:
    """The spatial Wiener step, in place on ref_spec: m = ref_spec - correction, then
    m * |m|^2 / (|m|^2 + c2) per frequency. ref_spec, correction: (4, ny, nx, t, k) complex64;
    c2: (4, ny, nx) float32 the constant for the merged tile's (reduced) noise."""
    p_n, ny, nx, t, k = ref_spec.shape
    for job in prange(p_n * ny):
        p = job // ny
        j = job % ny
        for i in range(nx):
            cp = c2[p, j, i]
            for u in range(t):
                for v in range(k):
                    m = ref_spec[p, j, i, u, v] - correction[p, j, i, u, v]
                    pw = m.real * m.real + m.imag * m.imag
                    ref_spec[p, j, i, u, v] = m * (pw / (pw + cp))


@njit(cache=True, fastmath=True, parallel=True)
def overlap_add(tiles: np.ndarray, out: np.ndarray) -> None:
    """(P, ny, nx, t, t) tiles at stride s = t/2 added into out (P, (ny+1) s, (nx+1) s).
    Parallel over planes and over even / odd tile rows in turn, so no two threads add to the
    same pixel."""
    p_n, ny, nx, t, _ = tiles.shape
    s = t // 2
    for parity in range(2):
        rows = (ny - parity + 1) // 2
        for job in prange(p_n * rows):
            p = job // rows
            j = 2 * (job % rows) + parity
            for i in range(nx):
                for y in range(t):
                    for x in range(t):
                        out[p, s * j + y, s * i + x] += tiles[p, j, i, y, x]

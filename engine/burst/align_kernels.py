"""Compiled inner loops of the aligner (align.py), each the fast form of a readable numpy/OpenCV
expression there, equal to it up to rounding (tests check):

    warped_tile_sums   align._warp_sums: each frame warped by its affine model plus its tiles' own
                       flows (align.warp, OpenCV's remap), and per tile the sums of gx d, gy d and
                       d^2 that Lucas-Kanade and the tile tests need (align.tile_means)
    shifted_tile_ssd   align._integer_refine: the same warp's squared differences at the nine
                       whole-pixel steps around each tile's flow
    offset_tile_ssd    align._coarse_search: every whole-pixel offset's squared difference per tile
                       (np.pad(mode="reflect"), then align.tile_means)
    fit_affine_irls    align._fit_affine: the robust affine fit, iteratively reweighted least squares

Why compiled: every Lucas-Kanade step and tile test warps each frame and sums products per tile; as
OpenCV calls that is an affine map, a tile map, a remap, and three products with three area resizes
per frame, most of them tiny at the coarse levels. Each kernel fuses its chain into one loop per
tile, over both cores. The affine fit runs on a few hundred tiles, where numpy calls would be
mostly call overhead.
Some numpy features cost seconds of compile each (LAPACK's solve, np.median, array assignment's
shape-error text), so the small kernels spell those out as loops. Sampling and border folding are
sampling_kernels.py's.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.burst.sampling_kernels import _bilinear, _reflect


# -- warps --------------------------------------------------------------------------------------------
@njit(inline="always")
def _affine(model: np.ndarray, f: int) -> tuple:
    """Frame f's affine flow model as the six coefficients of its sample map:
    (sx, sy) = (a00 x + a01 y + a02, a10 x + a11 y + a12) = (x, y) + flow(x, y)."""
    one = np.float32(1.0)
    return (one + model[f, 0, 0], model[f, 0, 1], model[f, 0, 2],
            model[f, 1, 0], one + model[f, 1, 1], model[f, 1, 2])


@njit(inline="always")
def _row_start(a: tuple, y: float, rx: float, ry: float, x_lo: float, x_hi: float, h: int, w: int) -> tuple:
    """For row y of a tile whose own flow is (rx, ry), warped by affine coefficients `a`: the
    offsets (bx, by) with sample (sx, sy) = (a00 x + bx, a10 x + by) for x in [x_lo, x_hi], and
    whether every such sample has its bilinear neighbours inside an (h, w) image (an affine map of
    a row is a straight segment, so its ends decide), in which case no border is needed."""
    a00, a01, a02, a10, a11, a12 = a
    bx = a01 * y + a02 + rx
    by = a11 * y + a12 + ry
    sx0, sx1, sy0, sy1 = a00 * x_lo + bx, a00 * x_hi + bx, a10 * x_lo + by, a10 * x_hi + by
    inside = min(sx0, sx1) >= 0 and min(sy0, sy1) >= 0 and max(sx0, sx1) < w - 1 and max(sy0, sy1) < h - 1
    return bx, by, inside


@njit(inline="always", fastmath=True)
def _run_sums(img, ref, gx, gy, diff, keep, f, y, xs, xe, dx, iy, a00, a10, bx, by):
    """warped_tile_sums' inner loop over pixels xs..xe-1 of row y whose samples all lie between
    rows iy, iy + 1 and columns x + dx, x + dx + 1: contiguous loads, so it vectorises. Works on
    views indexed from 0, which spares numba's negative-index fix-up (it would make the loads
    gathers). Returns the run's sums of gx d, gy d and d^2."""
    n = xe - xs
    top_row = img[iy, xs + dx : xe + dx + 1]
    bottom_row = img[iy + 1, xs + dx : xe + dx + 1]
    r_row, gx_row, gy_row = ref[y, xs:xe], gx[y, xs:xe], gy[y, xs:xe]
    ox = bx - np.float32(xs + dx)  # fx = a00 x + bx - (x + dx), with x = xs + k
    oy = by - np.float32(iy)
    sgx = np.float32(0.0)
    sgy = np.float32(0.0)
    sdd = np.float32(0.0)
    for k in range(n):
        xf = np.float32(xs + k)
        fx = a00 * xf - np.float32(k) + ox
        fy = a10 * xf + oy
        top = top_row[k] + fx * (top_row[k + 1] - top_row[k])
        bottom = bottom_row[k] + fx * (bottom_row[k + 1] - bottom_row[k])
        d = top + fy * (bottom - top) - r_row[k]
        sgx += gx_row[k] * d
        sgy += gy_row[k] * d
        sdd += d * d
        if keep:
            diff[f, y, xs + k] = d
    return sgx, sgy, sdd


@njit(cache=True, fastmath=True, parallel=True)
def warped_tile_sums(alt: np.ndarray, ref: np.ndarray, gx: np.ndarray, gy: np.ndarray, model: np.ndarray,
                     resid: np.ndarray, tile: int, out: np.ndarray, diff: np.ndarray, row_step: int) -> None:
    """Each frame warped onto the reference by its affine model plus its tiles' own flows, and per
    tile the sums Lucas-Kanade and the tile tests need, in one pass.

    alt: (F, H, W) float32 frames. ref, gx, gy: (H, W) float32 the reference and its gradients,
    H = ny tile, W = nx tile. model: (F, 2, 3) float32 affine flow, flow(x, y) = model @ (x, y, 1).
    resid: (F, ny, nx, 2) float32 per-tile flow on top of it. out: (F, ny, nx, 3) float32, per tile
        sum(gx d), sum(gy d), sum(d^2)   with d = alt(x + flow(x)) - ref(x),
    alt sampled bilinearly with reflected borders, as OpenCV's remap(INTER_LINEAR, REFLECT_101).
    diff: (F, H, W) float32 that receives d itself, or a (0, 1, 1) array for none.
    row_step: sum over every row_step-th row of each tile only (1: all; diff needs 1).
    """
    f_n, ny, nx = resid.shape[0], resid.shape[1], resid.shape[2]
    h, w = alt.shape[1], alt.shape[2]
    keep = diff.shape[0] > 0
    for job in prange(f_n * ny):  # frames innermost: every frame's tile row j reads the same reference rows
        j = job // f_n
        f = job % f_n
        img = alt[f]
        a = _affine(model, f)
        a00, a10 = a[0], a[3]
        for i in range(nx):
            rx, ry = resid[f, j, i, 0], resid[f, j, i, 1]
            x_lo, x_hi = np.float32(i * tile), np.float32((i + 1) * tile - 1)
            sgx = np.float32(0.0)
            sgy = np.float32(0.0)
            sdd = np.float32(0.0)
            x0, x1 = i * tile, (i + 1) * tile - 1
            for y in range(j * tile, (j + 1) * tile, row_step):
                bx, by, inside = _row_start(a, np.float32(y), rx, ry, x_lo, x_hi, h, w)
                if inside:
                    # The row's samples lie on a straight segment, so they cross a pixel row or
                    # column boundary at most once each here (a burst's rotation is small): split
                    # the row where they do, and within each run the loads are contiguous.
                    xs = x0
                    while xs <= x1:
                        dx = int(a00 * np.float32(xs) + bx) - xs  # truncation is the floor: inside, samples are >= 0
                        iy = int(a10 * np.float32(xs) + by)
                        xe = x1 + 1
                        if int(a00 * x_hi + bx) - x1 != dx or int(a10 * x_hi + by) != iy:
                            xe = xs + 1
                            while (xe <= x1 and int(a00 * np.float32(xe) + bx) - xe == dx
                                   and int(a10 * np.float32(xe) + by) == iy):
                                xe += 1
                        s1, s2, s3 = _run_sums(img, ref, gx, gy, diff, keep, f, y, xs, xe, dx, iy, a00, a10, bx, by)
                        sgx += s1
                        sgy += s2
                        sdd += s3
                        xs = xe
                    continue
                for x in range(x0, x1 + 1):  # a row reaching past the image: fold each sample in
                    d = _bilinear(img, a00 * np.float32(x) + bx, a10 * np.float32(x) + by, False) - ref[y, x]
                    sgx += gx[y, x] * d
                    sgy += gy[y, x] * d
                    sdd += d * d
                    if keep:
                        diff[f, y, x] = d
            out[f, j, i, 0] = sgx
            out[f, j, i, 1] = sgy
            out[f, j, i, 2] = sdd


@njit(cache=True, fastmath=True, parallel=True)
def shifted_tile_ssd(alt: np.ndarray, ref: np.ndarray, model: np.ndarray, resid: np.ndarray, tile: int,
                     out: np.ndarray) -> None:
    """Per tile, the sum of squared differences between the reference and the frame warped as in
    `warped_tile_sums`, moved by each whole-pixel step (dx, dy) in -1..1: out (F, ny, nx, 9)
    float32, step k = 3 (dy + 1) + (dx + 1). One warped (tile + 2)^2 patch per tile serves all nine."""
    f_n, ny, nx = resid.shape[0], resid.shape[1], resid.shape[2]
    h, w = alt.shape[1], alt.shape[2]
    p = tile + 2
    for job in prange(f_n * ny):  # frames innermost: every frame's tile row j reads the same reference rows
        j = job // f_n
        f = job % f_n
        img = alt[f]
        a = _affine(model, f)
        a00, a10 = a[0], a[3]
        patch = np.empty((p, p), np.float32)
        for i in range(nx):
            rx, ry = resid[f, j, i, 0], resid[f, j, i, 1]
            x_lo, x_hi = np.float32(i * tile - 1), np.float32((i + 1) * tile)
            for py in range(p):
                bx, by, inside = _row_start(a, np.float32(j * tile + py - 1), rx, ry, x_lo, x_hi, h, w)
                for px in range(p):
                    x = np.float32(i * tile + px - 1)
                    patch[py, px] = _bilinear(img, a00 * x + bx, a10 * x + by, inside)
            for k in range(9):
                oy, ox = k // 3, k % 3
                s = np.float32(0.0)
                for y in range(tile):
                    for x in range(tile):
                        d = patch[y + oy, x + ox] - ref[j * tile + y, i * tile + x]
                        s += d * d
                out[f, j, i, k] = s


@njit(cache=True, fastmath=True, parallel=True)
def offset_tile_ssd(alt: np.ndarray, ref: np.ndarray, tile: int, radius: int, out: np.ndarray) -> None:
    """The exhaustive search's table: out (2r+1, 2r+1, F, ny, nx) float32 = per tile the mean of
    (alt[f, y + dy, x + dx] - ref[y, x])^2 over the tile's pixels, for every whole-pixel offset
    dy, dx in -r..r (index dy + r, dx + r); alt (F, H, W) read past its edges reflected (REFLECT_101,
    numpy's "reflect"), ref (H, W) with H, W >= ny tile, nx tile."""
    size, _, f_n, ny, nx = out.shape
    h, w = alt.shape[1], alt.shape[2]
    inv = np.float32(1.0 / (tile * tile))
    for job in prange(f_n * ny):  # frames innermost: every frame's tile row j reads the same reference rows
        j = job // f_n
        f = job % f_n
        img = alt[f]
        for i in range(nx):
            for dy in range(size):
                for dx in range(size):
                    oy, ox = dy - radius, dx - radius
                    inside = (j * tile + oy >= 0 and (j + 1) * tile + oy <= h and i * tile + ox >= 0
                              and (i + 1) * tile + ox <= w)
                    s = np.float32(0.0)
                    for y in range(j * tile, (j + 1) * tile):
                        if inside:  # the common case, with no folding: a loop LLVM vectorises
                            for x in range(i * tile, (i + 1) * tile):
                                d = img[y + oy, x + ox] - ref[y, x]
                                s += d * d
                        else:
                            sy = _reflect(y + oy, h)
                            for x in range(i * tile, (i + 1) * tile):
                                d = img[sy, _reflect(x + ox, w)] - ref[y, x]
                                s += d * d
                    out[dy, dx, f, j, i] = s * inv


# -- the robust affine fit ----------------------------------------------------------------------------
@njit(inline="always")
def _solve3_transposed(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) m, (3, 2) b -> (2, 3) (m^-1 b)^T, by Gaussian elimination with partial pivoting
    (what np.linalg.solve does through LAPACK, whose numba binding costs seconds of compile)."""
    m = m.copy()
    b = b.copy()
    for col in range(3):
        piv = col
        for r in range(col + 1, 3):
            if abs(m[r, col]) > abs(m[piv, col]):
                piv = r
        for c in range(3):
            m[col, c], m[piv, c] = m[piv, c], m[col, c]
        for c in range(2):
            b[col, c], b[piv, c] = b[piv, c], b[col, c]
        for r in range(col + 1, 3):
            k = m[r, col] / m[col, col]
            for c in range(col, 3):
                m[r, c] -= k * m[col, c]
            for c in range(2):
                b[r, c] -= k * b[col, c]
    out = np.empty((2, 3))
    for c in range(2):
        for r in range(2, -1, -1):
            s = b[r, c]
            for q in range(r + 1, 3):
                s -= m[r, q] * out[c, q]
            out[c, r] = s / m[r, r]
    return out


@njit(inline="always")
def _median(x: np.ndarray) -> float:
    """Median of a 1-D array (reordered in place), as np.median: Hoare's selection of the middle
    element, then the largest below it for an even length. numba's np.median and np.sort each
    cost seconds of compile, and selecting is cheaper than sorting."""
    n = len(x)
    k = n // 2
    lo, hi = 0, n - 1
    while lo < hi:  # afterwards x[:k] <= x[k] <= x[k + 1:]
        pivot = x[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while x[i] < pivot:
                i += 1
            while x[j] > pivot:
                j -= 1
            if i <= j:
                x[i], x[j] = x[j], x[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    if n % 2:
        return x[k]
    below = x[0]
    for q in range(1, k):
        below = max(below, x[q])
    return 0.5 * (below + x[k])


@njit(cache=True)
def fit_affine_irls(pts: np.ndarray, flow: np.ndarray, w0: np.ndarray, iterations: int) -> np.ndarray:
    """Robust affine flow per frame by iteratively reweighted least squares (align._fit_affine says
    what and why; this is its arithmetic, compiled: on a few hundred tiles, numpy calls would be
    mostly call overhead, and the aligner fits four times per burst).

    pts: (K, 2) float64 tile centres; flow: (F, K, 2) float64; w0: (K,) float64 prior weights.
    Returns (F, 2, 3) float64. Tiles with w0 > 0.2 are usable; with fewer than 3 the model is zero;
    with fewer than 8, or all in one row or column, only a translation (weighted mean) is fitted.
    Each step: solve the weighted normal equations (+1e-9 ridge), then reweight by a Cauchy
    function of the residual |v - A x| at twice the robust scale 1.4826 median(|r| over usable tiles),
    floored at 0.05 px."""
    k_n = pts.shape[0]
    f_n = flow.shape[0]
    out = np.zeros((f_n, 2, 3))
    # plain loops, not masks and reductions: each numpy feature used here costs seconds of compile
    n_use = 0
    x_lo, x_hi, y_lo, y_hi = np.inf, -np.inf, np.inf, -np.inf
    for k in range(k_n):
        if w0[k] > 0.2:
            n_use += 1
            x_lo, x_hi = min(x_lo, pts[k, 0]), max(x_hi, pts[k, 0])
            y_lo, y_hi = min(y_lo, pts[k, 1]), max(y_hi, pts[k, 1])
    if n_use < 3:
        return out
    full = n_use >= 8 and x_hi > x_lo and y_hi > y_lo
    r_use = np.empty(n_use)
    for f in range(f_n):
        w = w0.copy()
        a = np.zeros((2, 3))
        for _ in range(iterations):
            if full:
                m = np.zeros((3, 3))
                b = np.zeros((3, 2))
                for k in range(k_n):
                    x = (pts[k, 0], pts[k, 1], 1.0)
                    for r in range(3):
                        wx = w[k] * x[r]
                        for c in range(3):
                            m[r, c] += wx * x[c]
                        b[r, 0] += wx * flow[f, k, 0]
                        b[r, 1] += wx * flow[f, k, 1]
                for r in range(3):
                    m[r, r] += 1e-9
                a = _solve3_transposed(m, b)
            else:
                sw, sx, sy = 0.0, 0.0, 0.0
                for k in range(k_n):
                    sw += w[k]
                    sx += w[k] * flow[f, k, 0]
                    sy += w[k] * flow[f, k, 1]
                a[0, 2] = sx / max(sw, 1e-12)
                a[1, 2] = sy / max(sw, 1e-12)
            res = np.empty(k_n)
            u = 0
            for k in range(k_n):
                dx = flow[f, k, 0] - (a[0, 0] * pts[k, 0] + a[0, 1] * pts[k, 1] + a[0, 2])
                dy = flow[f, k, 1] - (a[1, 0] * pts[k, 0] + a[1, 1] * pts[k, 1] + a[1, 2])
                res[k] = np.sqrt(dx * dx + dy * dy)
                if w0[k] > 0.2:
                    r_use[u] = res[k]
                    u += 1
            scale = max(1.4826 * _median(r_use), 0.05)
            for k in range(k_n):
                q = res[k] / (2.0 * scale)
                w[k] = w0[k] / (1.0 + q * q)
        for r in range(2):  # element by element: an array assignment would compile numba's shape-error text (seconds)
            for c in range(3):
                out[f, r, c] = a[r, c]
    return out

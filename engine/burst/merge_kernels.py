"""Compiled inner loops of the Wiener merge (merge.merge_wiener), each the fast form of its
readable numpy/scipy/OpenCV steps, equal to them up to rounding (tests check).

The general path (any even tile size), with scipy's FFTs (merge.tile_spectra, merge.tile_inverse)
between the kernels, each the numpy expression in its docstring:
    shifted_differences   window * (reference - frame) per tile, each frame's tile taken at its
                          flow (merge.warp_planes over the tile) and its clipped samples ignored
    windowed_tiles        window * reference per tile, for the spatial step
    wiener_sum            the temporal Wiener gains applied to the difference spectra, summed
    spatial_shrink        the spatial Wiener step on the merged spectrum
    overlap_add           the tiles added back into the image
The fused path (16x16 tiles, the default): wiener_merge16, that whole chain per tile in one pass,
with generated 8-lane FFT codelets (fft16.py); tested against the general path.

Why compiled: between the FFTs the arithmetic is elementwise over small tiles, and as numpy calls
each step (difference, clip mask, window, |D|^2, gain, product, sum over frames) would be its own
pass through memory, which costs more than the FFTs themselves. The fused kernel keeps no warped
frame, tile or spectrum array in memory at all.
Compiled on first use, most of it the fused kernel's unrolled FFTs (merge.warm_up does it ahead).
Sampling and border folding are sampling_kernels.py's.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.burst.fft16 import fft16_cols, fft16_rows
from engine.burst.sampling_kernels import _P, _shifted_tile


# -- the general path ---------------------------------------------------------------------------------
@njit(cache=True, fastmath=True, parallel=True)
def shifted_differences(ref: np.ndarray, frames: np.ndarray, shifts: np.ndarray, cubic: bool, window: np.ndarray,
                        saturation: float, j0: int, out: np.ndarray) -> None:
    """Raised-cosine-windowed tiles of reference - frame, every frame taken at each tile's flow.

    ref: (4, H, W) float32 the padded reference planes; frames: (F, h, w, 4) float32 the other
    frames' planes side by side (interleave_frames), H = h + t (or more), W likewise;
    shifts: (F, NY, NX, 2) float32 each frame's flow (dx, dy) at each tile's centre;
    window: (t, t) float32. out: (F, 4, ny, nx, t, t) float32 for tile rows j0 .. j0 + ny, filled with
        window * where((a >= saturation) & (r < saturation), 0, r - a)
    where tile (j, i) covers reference rows s j .. s j + t and columns s i .. s i + t (s = t/2), r
    is the reference there and a the frame at those pixels less half a tile, plus the shift
    (_shifted_tile): a clipped sample in another frame says nothing about the scene, so there the
    reference speaks.
    """
    f_n, _, ny, nx, t, _ = out.shape
    s = t // 2
    flat = frames.reshape(frames.size)
    for job in prange(f_n * ny):  # frames innermost: every frame's tile row j reads the same reference rows
        jj = job // f_n
        f = job % f_n
        j = j0 + jj
        patch = np.empty(t * t * _P, np.float32)
        tmp = np.empty((t + 3) * t * _P, np.float32)
        wx = np.empty(4, np.float32)
        wy = np.empty(4, np.float32)
        for i in range(nx):
            _shifted_tile(frames, flat, f, t, s * (j - 1), s * (i - 1), shifts[f, j, i, 0], shifts[f, j, i, 1], cubic,
                          wx, wy, tmp, patch)
            for y in range(t):
                for x in range(t):
                    w = window[y, x]
                    for p in range(_P):
                        r = ref[p, s * j + y, s * i + x]
                        a = patch[(y * t + x) * _P + p]
                        d = r - a
                        if a >= saturation and r < saturation:
                            d = 0.0
                        out[f, p, jj, i, y, x] = w * d


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
def overlap_add(tiles: np.ndarray, out: np.ndarray, row0: int) -> None:
    """(P, ny, nx, t, t) tiles at stride s = t/2 added into out (P, H, (nx+1) s) from row row0 on
    (H >= row0 + (ny+1) s).
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
                        out[p, row0 + s * j + y, s * i + x] += tiles[p, j, i, y, x]


# -- the fused path -----------------------------------------------------------------------------------
# 16x16 tiles at a stride of 8, whose real half spectra hold 9 columns; the FFT codelets (fft16.py)
# work on 8 lanes at once, here two neighbouring tiles' four planes
_T, _S, _K, _LANES = 16, 8, 9, 8


@njit(cache=True, fastmath=True)
def _fft_tile16(buf: np.ndarray, forward: bool) -> None:
    """In place on a 16x16 tile of 8 lanes in the codelets' layout (fft16.py). Forward: a real tile,
    given with its rows 8..15 as the imaginary part of rows 0..7, becomes its half spectrum (eight
    row transforms of two real rows each, split apart, then columns 0..8, which are all a real
    tile's spectrum holds). Inverse, the other way round, with columns 9..15 filled in from
    Hermitian symmetry before the rows (the real part is the tile, times 256).
    Each codelet is inlined once, in a loop over the two stages: every inlined copy costs several
    seconds of compile time and buys no speed."""
    sign = np.float32(-1.0) if forward else np.float32(1.0)
    for stage in range(2):
        if forward == (stage == 0):  # the rows
            if not forward:  # a real row's spectrum at 16 - x is the conjugate of the one at x
                for y in range(_T):
                    for x in range(_K, _T):
                        o = 2 * (y * _T + x) * _LANES
                        m = 2 * (y * _T + _T - x) * _LANES
                        for lane in range(_LANES):
                            buf[o + lane] = buf[m + lane]
                            buf[o + _LANES + lane] = -buf[m + _LANES + lane]
            for y in range(_S if forward else _T):  # forward: two real rows per transform, Z = DFT(a + i b)
                fft16_rows(buf, y * _T, sign)
            if forward:  # split: A[k] = (Z[k] + conj Z[-k]) / 2 to row y, B[k] = (Z[k] - conj Z[-k]) / 2i to row y + 8
                for y in range(_S):
                    for k in range(_K):
                        o = 2 * (y * _T + k) * _LANES
                        m = 2 * (y * _T + (_T - k) % _T) * _LANES  # k = 1..7 read 15..9, which no k overwrites
                        ob = 2 * ((y + _S) * _T + k) * _LANES
                        for lane in range(_LANES):
                            zr, zi = buf[o + lane], buf[o + _LANES + lane]
                            cr, ci = buf[m + lane], -buf[m + _LANES + lane]
                            buf[o + lane] = np.float32(0.5) * (zr + cr)
                            buf[o + _LANES + lane] = np.float32(0.5) * (zi + ci)
                            buf[ob + lane] = np.float32(0.5) * (zi - ci)
                            buf[ob + _LANES + lane] = np.float32(-0.5) * (zr - cr)
        else:  # the columns
            for x in range(_K):
                fft16_cols(buf, x, sign)


@njit(inline="always")
def _forward_slot(y: int, x: int) -> int:
    """Where pixel (y, x) of a 16x16 tile goes in the forward transform's buffer (fft16.py's
    layout, point-major with 8 lanes; rows 8..15 as the imaginary part of rows 0..7): add the lane."""
    return 2 * ((y % _S) * _T + x) * _LANES + (0 if y < _S else _LANES)


@njit(inline="always", fastmath=True)
def _tile_into_lanes(patch: np.ndarray, refpix: np.ndarray, window: np.ndarray, saturation: float, half: int,
                     buf: np.ndarray) -> None:
    """A frame's 16x16 tile of four planes, patch[(y 16 + x) 4 + p] (_shifted_tile), windowed into
    lanes 4 half + p of the forward transform's buffer (fft16.py's layout, rows 8..15 as the
    imaginary part of rows 0..7); a sample that clips where the reference's (refpix, in the same
    lanes) does not is replaced by the reference's. The four planes are spelled out, loads before
    stores, so LLVM moves each four as one vector."""
    lanes = np.uint64(_P * half)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    for y in range(_T):
        for x in range(_T):
            w = window[y, x]
            o = np.uint64(_forward_slot(y, x)) + lanes
            q = np.uint64((y * _T + x) * _P)
            rq = np.uint64((y * _T + x) * _LANES) + lanes
            a0, a1, a2, a3 = patch[q], patch[q + one], patch[q + two], patch[q + three]
            r0, r1, r2, r3 = refpix[rq], refpix[rq + one], refpix[rq + two], refpix[rq + three]
            # a clipped sample says nothing: the reference speaks
            a0 = r0 if a0 >= saturation and r0 < saturation else a0
            a1 = r1 if a1 >= saturation and r1 < saturation else a1
            a2 = r2 if a2 >= saturation and r2 < saturation else a2
            a3 = r3 if a3 >= saturation and r3 < saturation else a3
            buf[o] = w * a0
            buf[o + one] = w * a1
            buf[o + two] = w * a2
            buf[o + three] = w * a3


@njit(cache=True, fastmath=True, parallel=True)
def wiener_merge16(ref: np.ndarray, frames: np.ndarray, shifts: np.ndarray, cubic: bool, window: np.ndarray,
                   saturation: float, c: np.ndarray, conf: np.ndarray, inv_n: float, c2: np.ndarray, spatial: bool,
                   out: np.ndarray) -> None:
    """The whole temporal (and spatial) Wiener merge of 16x16 tiles at stride 8 in one pass, tile by
    tile, with no warped frame, tile or spectrum arrays in memory: the same sums as
    shifted_differences -> tile_spectra -> wiener_sum -> spatial_shrink -> tile_inverse ->
    overlap_add, up to float32 rounding (tests check).

    ref: (4, H, W) float32 the padded reference planes; frames, shifts, cubic, window as for
    shifted_differences (F frames); c, c2: (4, ny, nx) the temporal and spatial Wiener constants
    per plane and tile; conf: (F, ny, nx) alignment confidence; inv_n: 1 / (F + 1).
    out: (4, H, W) float32, zero on entry, receives the merged planes
        sum over tiles of window-overlap-added IDFT(M),  M = R - inv_n sum_z conf_z c / (|D_z|^2 + c) D_z
    with R = DFT(window * ref), D_z = DFT(window * (ref - frame_z)) = R - DFT(window * frame_z)
    (a frame's clipped samples replaced by the reference's), M shrunk by |M|^2 / (|M|^2 + c2) if
    `spatial`.

    Two neighbouring tiles at a time, their four planes in the 8 lanes of the generated FFT
    codelets: the reference's tiles once, then each frame's, sampled at each tile's flow
    (_shifted_tile, _tile_into_lanes). So every step between the transforms is 8 lanes wide and
    vectorises, the Wiener gains' divisions included, and M accumulates in the layout the inverse
    transform takes. Tile rows of one parity run in parallel, so no two threads add to the same
    pixel.
    """
    f_n = frames.shape[0]
    _, ny, nx = c.shape
    scale = np.float32(1.0 / (_T * _T))
    t = window.shape[0]  # 16, as a runtime value for _tile_rows
    flat = frames.reshape(frames.size)
    size = _T * _T * 2 * _LANES
    lanes = c.shape[0] * 2  # 8, as a runtime value: LLVM vectorises a lane loop it has not unrolled
    for parity in range(2):
        rows = (ny - parity + 1) // 2
        for job in prange(rows):
            j = 2 * job + parity
            buf = np.empty(size, np.float32)  # the transform in hand
            spec = np.empty(size, np.float32)  # the reference tiles' spectra R
            inv = np.empty(size, np.float32)  # M, then the merged tiles
            refpix = np.empty(_T * _T * _LANES, np.float32)  # the reference tiles' samples
            cl = np.empty(_LANES, np.float32)  # c, conf * c and c2 per lane
            cfl = np.empty(_LANES, np.float32)
            c2l = np.empty(_LANES, np.float32)
            tmp = np.empty((_T + 3) * _T * _P, np.float32)
            patch = np.empty(_T * _T * _P, np.float32)  # a frame's tile
            wx = np.empty(4, np.float32)
            wy = np.empty(4, np.float32)
            for i0 in range(0, nx, 2):
                pair = 2 if i0 + 1 < nx else 1  # an odd last column: lanes 4..7 stay zero, their gains 0
                for half in range(2):
                    i = min(i0 + half, nx - 1)
                    for p in range(_P):
                        cl[_P * half + p] = c[p, j, i]
                        c2l[_P * half + p] = c2[p, j, i]
                    for y in range(_T):
                        for x in range(_T):
                            o = _forward_slot(y, x) + _P * half
                            for p in range(_P):
                                r = ref[p, _S * j + y, _S * i + x] if half < pair else np.float32(0.0)
                                refpix[(y * _T + x) * _LANES + _P * half + p] = r
                                buf[o + p] = window[y, x] * r
                _fft_tile16(buf, True)
                for u in range(_T):
                    for v in range(_K):
                        o = np.uint64(2 * (u * _T + v) * _LANES)
                        for k in range(2 * _LANES):
                            spec[o + np.uint64(k)] = buf[o + np.uint64(k)]
                            inv[o + np.uint64(k)] = buf[o + np.uint64(k)]
                for f in range(f_n):
                    for half in range(pair):
                        i = i0 + half
                        for p in range(_P):
                            cfl[_P * half + p] = inv_n * conf[f, j, i] * c[p, j, i]
                        _shifted_tile(frames, flat, f, t, _S * (j - 1), _S * (i - 1), shifts[f, j, i, 0],
                                      shifts[f, j, i, 1], cubic, wx, wy, tmp, patch)
                        _tile_into_lanes(patch, refpix, window, saturation, half, buf)
                    if pair == 1:
                        for p in range(_P):
                            cfl[_P + p] = 0.0
                    _fft_tile16(buf, True)
                    for u in range(_T):
                        for v in range(_K):
                            o = np.uint64(2 * (u * _T + v) * _LANES)  # unsigned: no wraparound test per lane
                            for lane in range(lanes):
                                lr, li = o + np.uint64(lane), o + np.uint64(_LANES + lane)
                                dr = spec[lr] - buf[lr]
                                di = spec[li] - buf[li]
                                gain = cfl[lane] / (dr * dr + di * di + cl[lane])
                                inv[lr] -= gain * dr
                                inv[li] -= gain * di
                if spatial:
                    for u in range(_T):
                        for v in range(_K):
                            o = np.uint64(2 * (u * _T + v) * _LANES)
                            for lane in range(lanes):
                                lr, li = o + np.uint64(lane), o + np.uint64(_LANES + lane)
                                mr, mi = inv[lr], inv[li]
                                pw = mr * mr + mi * mi
                                shrink = pw / (pw + c2l[lane])
                                inv[lr] = mr * shrink
                                inv[li] = mi * shrink
                _fft_tile16(inv, False)
                for half in range(pair):
                    i = i0 + half
                    for p in range(_P):
                        for y in range(_T):
                            for x in range(_T):
                                out[p, _S * j + y, _S * i + x] += scale * inv[2 * (y * _T + x) * _LANES + _P * half + p]

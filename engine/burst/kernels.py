"""Compiled inner loops of the burst path (numba): one pass where numpy and OpenCV need several.

Merge: for 16x16 tiles, the whole per-tile chain (each frame sampled at the tile's flow, window,
FFT, Wiener gains, inverse FFT, overlap-add) is one kernel, so no warped frame, tile or spectrum
array passes through memory (wiener_merge16).
For other tile sizes the FFTs are scipy's, and the arithmetic between them is elementwise over
small tiles; numpy ran each step (difference, clip mask, window, |D|^2, gain, product, sum over
frames) as its own pass through memory, which cost more than the FFTs themselves.
Align: every Lucas-Kanade step and tile test warps each frame by its affine model plus its tiles'
own flows and sums products per tile; as OpenCV calls that is an affine map, a tile map, a remap,
and three products with three area resizes per frame, most of them tiny at the coarse levels.
These kernels fuse each chain into one loop per tile, over both cores. Their results equal the
numpy/OpenCV expressions in their docstrings up to float32 rounding (tests check).

Compiled on first use (40-50 s for the default path on this machine, half of it the fused merge
kernel's unrolled FFTs; the general merge path's another 8 s, only when a tile size other than 16
asks for it) and cached beside this file (`cache=True`), so later runs and processes load them in
about a second. Some numpy features cost seconds of compile each (LAPACK's solve, np.median,
array assignment's shape-error text), so the small kernels spell those out as loops.
Data-dependent indices (the warps' sample positions, the tiles' flows) are folded into the image by
`_reflect`, which returns an index inside it for any input, NaN included: numba does not check
bounds.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from engine.burst.fft16 import fft16_cols, fft16_rows

# Workqueue aborts the process if two threads launch parallel kernels at once, and two kernels at
# once would only oversubscribe two cores: callers hold LOCK around their parallel kernel calls
# (serial ones need not). Re-entrant, so a caller may hold it over several calls that take it too.
LOCK = threading.RLock()


# -- frames sampled per tile --------------------------------------------------------------------------
# The merge takes each tile of a frame at that tile's own flow, a translation (HDR+ does the same): a
# translation is separable, so one tile of four planes costs two short 4-tap passes, and no warped
# copy of the frame goes through memory. Measured on 24 Kodak bursts at gains 1-8, the merged PSNR
# moved by 0.002 dB or less against warping every pixel by its own flow first.
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


# The fused merge for 16x16 tiles: 8 lanes, lane 0 the reference and lanes 1-7 seven other frames
# (the FFT codelets' layout, fft16.py); larger bursts take several groups of seven.
_T, _S, _K, _LANES = 16, 8, 9, 8


@njit(cache=True, fastmath=True)
def _fft_tile16(buf: np.ndarray, forward: bool) -> None:
    """In place on a 16x16 tile of 8 lanes in the codelets' layout (fft16.py). Forward: a real tile,
    given with its rows 8..15 as the imaginary part of rows 0..7, becomes its half spectrum (eight
    row transforms of two real rows each, split apart, then columns 0..8, which are all a real
    tile's spectrum holds). Inverse, the other way round, with columns 9..15 filled in from
    Hermitian symmetry before the rows (the real part is the tile, times 256).
    Each codelet is inlined once, in a loop over the two stages: every inlined copy costs several
    seconds of compile time (four copies took 35 s against 19 s for two) and buys no speed."""
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


# -- alignment ---------------------------------------------------------------------------------------
@njit(inline="always")
def _solve3_transposed(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) m, (3, 2) b -> (2, 3) (m^-1 b)^T, by Gaussian elimination with partial pivoting
    (what np.linalg.solve does through LAPACK, whose numba binding took 7 s to compile)."""
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
    took seconds to compile, and sorting is slower than selecting."""
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
    what and why; this is its arithmetic, compiled: as numpy calls on a few hundred tiles it was
    call overhead, about 1.3 ms per fit and four fits per burst).

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
        for r in range(2):  # element by element: an array assignment compiles numba's shape-error text (5 s)
            for c in range(3):
                out[f, r, c] = a[r, c]
    return out


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


# -- alignment, warps ---------------------------------------------------------------------------------------
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


def uncached() -> list[str]:
    """Names of the cached kernels that numba has not compiled on this machine yet (no cache index
    beside this file): each costs seconds of compile on its first call, so callers can say so."""
    import os

    cached = [v for v in globals().values() if isinstance(v, numba.core.registry.CPUDispatcher)
              and hasattr(v._cache, "_cache_file")]
    return [k.__name__ for k in cached if not os.path.exists(k._cache._cache_file._index_path)]

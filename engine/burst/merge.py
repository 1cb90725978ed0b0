"""Merge stage: the aligned frames of a burst averaged into the reference, robustly.

`merge_wiener` (default) is the pairwise temporal Wiener merge of HDR+ (Hasinoff et al. 2016):

    tiles of 16x16 plane pixels at a stride of 8, raised-cosine windowed (the windows of
        half-overlapping tiles add up to exactly 1, so tiles overlap-add back seamlessly)
    every frame's tile taken at the alignment's flow at the tile's centre (bicubic), as HDR+ takes
        each tile at its own offset: measured on 24 Kodak bursts at gains 1-8, the merged PSNR
        moved by 0.002 dB or less against warping every pixel by its own flow first
    per tile, plane and frame z: D_z = DFT(window * (reference - frame_z))
        A_z = |D_z|^2 / (|D_z|^2 + c * sigma_D^2)       sigma_D^2 from the noise model at
                                                           the tile's level, for a frame difference
        merged = reference - (1/N) sum_z conf_z (1 - A_z) D_z    (inverse DFT, overlap-add)
    so every frequency takes the other frames where they agree with the reference to within the
    noise, and the reference where they do not (motion, occlusion, a misaligned tile): it falls
    back to the reference, it does not ghost. conf_z is the alignment's tile confidence.
    optional spatial step: the merged spectrum shrunk once more against its reduced noise.

With 16x16 tiles (the default) one compiled kernel does all of that per tile, from the frames to
the overlap-added result (merge_kernels.wiener_merge16, with generated 8-lane FFT codelets: two
neighbouring tiles' four planes are transformed at once), so no warped frame, tile or spectrum
array ever goes through memory. Other tile sizes take the general path: batched real FFTs (scipy.fft,
float32, on every core) with the arithmetic between them (sampling, difference, clip mask, window,
gains, sum over frames, overlap-add) as compiled loops, strip by strip; it is also the reference
the fused kernel is tested against.

`merge_robust` is the simple baseline: a per-pixel weighted average whose weights fall to zero
where a frame differs from the reference by more than the noise allows (after a 3x3 box, so
that noise alone does not reject), times the tile confidence. `merge_mean` averages blindly.
Both warp whole frames by the dense flow first (OpenCV remap).

Saturated samples of a frame are replaced by the reference's before merging, so a clipped
highlight in one frame cannot leak into the others.

`reference_guard` (on by default after the Wiener merge) keeps the merge from ever being worse than
the reference frame: where a tile of the merged result differs from the reference by more than the
reference's own noise can explain, the merge changed the scene there (a misregistered frame, detail
averaged away under a noise model that was too high), and the tile is pulled back to the reference.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft

from engine.burst import merge_kernels
from engine.burst.align import Alignment
from engine.burst.raw import SATURATION, NoiseModel
from engine.burst.sampling_kernels import LOCK, interleave_frames

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class MergeConfig:
    """method: "wiener" (HDR+ pairwise frequency-domain merge), "robust" (per-pixel weighted
    average) or "mean" (plain average of the aligned frames, no rejection).
    tile: Wiener tile side in plane pixels (even; stride tile/2).
    strength: the Wiener constant c: higher averages more and rejects less.
    spatial: strength of the spatial Wiener step after the temporal merge (0: off).
    interpolation: how frames are sampled onto the reference, "cubic" or "linear" (the Wiener
        merge takes each tile at its flow, the others warp every pixel).
    robust_k: the robust merge rejects a frame where its 3x3-mean difference exceeds
        robust_k noise sigmas.
    guard: after the Wiener merge, pull tiles whose change from the reference more than noise
        can explain back to the reference (reference_guard).
    strip_mb: working memory of one strip of whole tile rows on the general path (tiles other
        than 16), whose tiles and spectra go through memory (about 65 KB per tile); the fused
        16x16 kernel keeps none, and merges the whole frame in one pass."""

    method: str = "wiener"
    tile: int = 16
    strength: float = 8.0
    spatial: float = 3.0
    interpolation: str = "cubic"
    robust_k: float = 3.0
    strip_mb: float = 192.0
    guard: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("wiener", "robust", "mean"):
            raise ValueError(f"merge method must be 'wiener', 'robust' or 'mean', got {self.method!r}")
        if self.tile < 4 or self.tile % 2:
            raise ValueError(f"merge tile must be even and at least 4, got {self.tile}")
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {self.interpolation!r}")
        if not self.strip_mb > 0:
            raise ValueError(f"strip_mb must be > 0, got {self.strip_mb}")
        if self.strength <= 0 or self.spatial < 0:
            raise ValueError(f"strength must be > 0 and spatial >= 0, got {self.strength}, {self.spatial}")


# -- warping (the baselines) ------------------------------------------------------------------------
def warp_planes(planes: np.ndarray, flow: np.ndarray, interpolation: str = "cubic") -> np.ndarray:
    """(4, h, w) planes sampled at x + flow(x), flow (h, w, 2), borders reflected -> (4, h, w)
    aligned planes: one OpenCV remap of the four planes side by side."""
    h, w = flow.shape[:2]
    xs = np.arange(w, dtype=np.float32) + flow[..., 0]
    ys = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    xy, frac = cv2.convertMaps(xs, ys, cv2.CV_16SC2)
    src = cv2.merge([np.ascontiguousarray(p, np.float32) for p in planes])
    out = cv2.remap(src, xy, frac, _INTERPOLATION[interpolation], borderMode=cv2.BORDER_REFLECT101)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# -- the DFT of windowed tiles ------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def raised_cosine(t: int) -> np.ndarray:
    """(t, t) float32 separable window 0.5 - 0.5 cos(2 pi (x + 0.5) / t); shifted copies at a
    stride of t/2 in both directions add up to exactly 1."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(t) + 0.5) / t)
    window = np.outer(w, w).astype(np.float32)
    window.setflags(write=False)  # cached and shared by every caller
    return window


def tile_spectra(tiles: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """(..., t, t) float32 real tiles -> (..., t, t/2+1) complex64 half spectra,
    X[ky, kx] = sum x[y, x] exp(-2 pi i (ky y + kx x) / t). pocketfft through scipy.fft keeps float32
    (numpy's FFT would promote to complex128) and splits the batch over every core; `overwrite`
    lets it use the input as scratch."""
    t = tiles.shape[-1]
    flat = tiles.reshape(-1, t, t)  # one batch axis: pocketfft splits it between workers better (-15%)
    return scipy.fft.rfft2(flat, workers=-1, overwrite_x=overwrite).reshape(*tiles.shape[:-1], t // 2 + 1)


def tile_inverse(spectra: np.ndarray, t: int) -> np.ndarray:
    """Inverse of `tile_spectra`: (..., t, t/2+1) complex -> (..., t, t) float32."""
    flat = spectra.reshape(-1, t, t // 2 + 1)
    return scipy.fft.irfft2(flat, s=(t, t), workers=-1).reshape(*spectra.shape[:-1], t)


# -- the merges ----------------------------------------------------------------------------------------
def merge(planes: np.ndarray, alignment: Alignment, noise: NoiseModel, cfg: MergeConfig = MergeConfig(),
          guard_noise: NoiseModel | None = None) -> np.ndarray:
    """(N, 4, h, w) normalised planes of a burst, aligned by `alignment` -> (4, h, w) merged.
    guard_noise: the noise the guard holds the merge to (default `noise`); the burst's measured
    noise where the merge runs on a profile that may be too high."""
    if cfg.method == "wiener":
        merged = merge_wiener(planes, alignment, noise, cfg)
        if cfg.guard and planes.shape[0] > 1:
            merged = reference_guard(merged, planes[alignment.ref], guard_noise or noise)
        return merged
    if cfg.method == "robust":
        return merge_robust(planes, alignment, noise, cfg)
    return merge_mean(planes, alignment, cfg)


def merge_wiener(planes: np.ndarray, alignment: Alignment, noise: NoiseModel, cfg: MergeConfig = MergeConfig()) -> np.ndarray:
    """The HDR+ pairwise Wiener merge (see the module docstring). (N, 4, h, w) -> (4, h, w)."""
    n, _, h, w = planes.shape
    ref = alignment.ref
    ref_planes = planes[ref]
    if n == 1:
        return ref_planes.copy()
    t = cfg.tile
    s = t // 2
    others = [i for i in range(n) if i != ref]
    # Pad to whole half-tiles, then half a tile on every side, so the windows cover every pixel.
    eh, ew = -h % s, -w % s
    hp, wp = h + eh + t, w + ew + t
    r_pad = np.empty((4, hp, wp), np.float32)
    for p, padded in zip(ref_planes, r_pad):
        cv2.copyMakeBorder(p, s, s + eh, s, s + ew, cv2.BORDER_REFLECT101, dst=padded)
    ny, nx = hp // s - 1, wp // s - 1
    centres = _tile_centres(ny, nx, s)
    conf = _confidence_on_tiles(alignment, others, centres)  # (F, ny, nx)
    shifts = alignment.flows_at(others, centres)  # (F, ny, nx, 2): each tile's flow
    level = _tile_means(r_pad, t)  # (4, ny, nx) reference level per tile
    var_d = 2.0 * noise.variance(level)  # noise of a frame difference, per plane and tile
    window = raised_cosine(t)
    sum_w2 = float((window**2).sum())
    c = (cfg.strength * sum_w2 * var_d).astype(np.float32)  # (4, ny, nx)
    # spatial Wiener on the merged spectrum, against its noise (about var / N)
    c2 = (cfg.spatial * sum_w2 * var_d / (2.0 * n)).astype(np.float32)
    spatial = cfg.spatial > 0
    cubic = cfg.interpolation == "cubic"
    f = len(others)
    frames = np.empty((f, h, w, 4), np.float32)
    # the fused kernel (t = 16) and the spatial step make the merged planes here; otherwise this is
    # what the merge takes away from the reference
    out = np.zeros((4, hp, wp), np.float32)
    with LOCK:
        interleave_frames(np.ascontiguousarray(planes, np.float32), np.array(others, np.int64), frames)
        if t == 16:
            merge_kernels.wiener_merge16(r_pad, frames, shifts, cubic, window, SATURATION, c, conf, 1.0 / n, c2, spatial,
                                         out)
            return np.ascontiguousarray(out[:, s : s + h, s : s + w])
        # the general path, in strips of whole tile rows: their tiles and spectra (about 65 KB a tile)
        rows_per = int(max(1, min(ny, cfg.strip_mb * 2**20 // (f * 4 * nx * (4 * t * t + 8 * t * (t // 2 + 1))))))
        tiles_buf = np.empty(f * 4 * rows_per * nx * t * t, np.float32)  # reused: fresh arrays page-fault each time
        for r0 in range(0, ny, rows_per):
            r1 = min(ny, r0 + rows_per)
            tiles = tiles_buf[: f * 4 * (r1 - r0) * nx * t * t].reshape(f, 4, r1 - r0, nx, t, t)
            # window * (reference - frame_z), frame_z taken at each tile's flow, its clipped samples the reference's
            merge_kernels.shifted_differences(r_pad, frames, shifts, cubic, window, SATURATION, r0, tiles)
            spec = tile_spectra(tiles, overwrite=True)  # D_z: (F, 4, nr, nx, t, t/2+1)
            acc = np.empty(spec.shape[1:], np.complex64)  # receives (1/N) sum_z conf_z (1 - A_z) D_z
            merge_kernels.wiener_sum(spec, np.ascontiguousarray(c[:, r0:r1]), np.ascontiguousarray(conf[:, r0:r1]),
                                     1.0 / n, acc)
            if spatial:
                ref_strip = np.ascontiguousarray(r_pad[:, r0 * s : (r1 + 1) * s])
                m = tiles_buf[: 4 * (r1 - r0) * nx * t * t].reshape(4, r1 - r0, nx, t, t)
                merge_kernels.windowed_tiles(ref_strip, window, m)
                m = tile_spectra(m, overwrite=True)  # the reference's spectrum
                # m - acc, the merged spectrum, shrunk against its reduced noise: the merged image itself
                merge_kernels.spatial_shrink(m, acc, np.ascontiguousarray(c2[:, r0:r1]))
                acc = m
            merge_kernels.overlap_add(tile_inverse(acc, t), out, r0 * s)
    merged = out if spatial else r_pad - out
    return np.ascontiguousarray(merged[:, s : s + h, s : s + w])


GUARD_TILE = 16


def reference_guard(merged: np.ndarray, ref: np.ndarray, noise: NoiseModel, tile: int = GUARD_TILE,
                    k: float = 3.0) -> np.ndarray:
    """(4, h, w) merged planes, pulled towards the (4, h, w) reference planes tile by tile where
    their difference has more energy than the reference's noise explains. Changes `merged` in
    place (the merge's own output) and returns it.

    A merge that only removed noise differs from the reference by (most of) the reference's own
    noise: per tile and plane, E = mean((merged - ref)^2) stays within var(level) (1 + k sqrt(2/n)),
    n the tile's pixels (a chi-square bound, k sigmas). Beyond that the merge changed the scene: its
    weight falls linearly to 0 at twice the bound, so a tile that differs that much is the
    reference's, and the weights are interpolated bilinearly between tile centres (no seams).
    One plane at a time, so a 12 MP burst needs no more than a plane's worth of scratch.
    """
    _, h, w = merged.shape
    ny, nx = max(1, h // tile), max(1, w // tile)
    weight = np.empty((4, ny, nx), np.float32)
    for p in range(4):
        diff = merged[p] - ref[p]
        energy = cv2.resize(diff * diff, (nx, ny), interpolation=cv2.INTER_AREA)
        level = cv2.resize(np.ascontiguousarray(ref[p]), (nx, ny), interpolation=cv2.INTER_AREA)
        bound = noise.variance(level, p) * (1.0 + k * np.sqrt(2.0 / (tile * tile)))
        weight[p] = np.clip(2.0 - energy / np.maximum(bound, 1e-20), 0.0, 1.0)
    if weight.min() >= 1.0:
        return merged
    for p in range(4):
        dense = cv2.resize(weight[p], (w, h), interpolation=cv2.INTER_LINEAR)
        merged[p] -= ref[p]
        merged[p] *= dense
        merged[p] += ref[p]
    return merged


def warm_up(tile: int = 16) -> None:
    """Compile the Wiener merge's kernels for `tile` now, on the calling thread, by merging a tiny
    burst through the same code path, so the same specialisations are made: the fused kernel for
    16 (about 30 s the first time on a machine, most of it the unrolled FFTs), the general path's
    for other sizes (about 7 s); about a second after that, as numba caches them on disk. A
    processor calls this when it is made, so the engine thread never stops for a compile."""
    n, t = 2, tile
    alignment = Alignment(t, np.zeros((n, 2, 2, 2), np.float32), np.ones((n, 2, 2), np.float32), (2 * t, 2 * t),
                          0, "tiles", np.zeros((n, 2, 3), np.float32))
    planes = np.full((n, 4, 2 * t, 2 * t), 0.25, np.float32)
    merge_wiener(planes, alignment, NoiseModel((1e-4,) * 4, (1e-6,) * 4), MergeConfig(tile=t))


def _tile_means(img: np.ndarray, t: int) -> np.ndarray:
    """(C, H, W) with H, W multiples of t/2 -> (C, H/s - 1, W/s - 1) mean over each stride-s tile."""
    s = t // 2
    c, hh, ww = img.shape
    blocks = cv2.resize(np.ascontiguousarray(img.reshape(c * hh, ww)), (ww // s, c * hh // s),
                        interpolation=cv2.INTER_AREA).reshape(c, hh // s, ww // s)
    return 0.25 * (blocks[:, :-1, :-1] + blocks[:, 1:, :-1] + blocks[:, :-1, 1:] + blocks[:, 1:, 1:])


def _tile_centres(ny: int, nx: int, s: int) -> np.ndarray:
    """(ny, nx, 2) float32 (x, y) plane coordinates of the merge tiles' centres: tile (j, i) covers
    padded pixels [s j, s j + 2 s), i.e. plane pixels from s (j - 1), so its centre is s j - 0.5."""
    cx, cy = np.meshgrid(s * np.arange(nx, dtype=np.float32) - 0.5, s * np.arange(ny, dtype=np.float32) - 0.5)
    return np.stack([cx, cy], axis=-1)


def _confidence_on_tiles(alignment: Alignment, others: list[int], centres: np.ndarray) -> np.ndarray:
    """The alignment's tile confidence resampled (bilinear) at the merge tiles' (ny, nx, 2) centres
    (_tile_centres) -> (F, ny, nx)."""
    at = alignment.tile
    mx, my = (centres[..., 0] + 0.5) / at - 0.5, (centres[..., 1] + 0.5) / at - 0.5
    return np.stack([cv2.remap(np.ascontiguousarray(alignment.confidence[i]), mx, my, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE) for i in others])


def merge_robust(planes: np.ndarray, alignment: Alignment, noise: NoiseModel, cfg: MergeConfig = MergeConfig()) -> np.ndarray:
    """Per-pixel robust average (the simple baseline). (N, 4, h, w) -> (4, h, w).

    Weight of frame z at a pixel: conf_z(tile) * max(0, 1 - (d / (k sigma_d))^2), d the 3x3 box
    mean of reference - frame_z (noise variance var_d / 9); the reference has weight 1."""
    n, _, h, w = planes.shape
    ref = alignment.ref
    r = planes[ref]
    num = r.astype(np.float32).copy()
    den = np.ones_like(num)
    var_box = 2.0 * noise.variance(cv2.blur(np.ascontiguousarray(r.transpose(1, 2, 0)), (5, 5)).transpose(2, 0, 1)) / 9.0
    inv = 1.0 / (cfg.robust_k**2 * var_box)
    for i in range(n):
        if i == ref:
            continue
        a = warp_planes(planes[i], alignment.flow(i), cfg.interpolation)
        d = cv2.blur(np.ascontiguousarray((r - a).transpose(1, 2, 0)), (3, 3)).transpose(2, 0, 1)
        wgt = np.maximum(0.0, 1.0 - d * d * inv)
        wgt *= _confidence_dense(alignment, i)
        wgt[(a >= SATURATION) & (r < SATURATION)] = 0.0
        num += wgt * a
        den += wgt
    return num / den


def _confidence_dense(alignment: Alignment, i: int) -> np.ndarray:
    """(h, w) confidence of frame i, bilinear between tile centres."""
    h, w = alignment.shape
    c = alignment.confidence[i][..., None].repeat(2, axis=-1)
    from engine.burst.align import upsample_flow

    return np.clip(upsample_flow(c, alignment.tile, h, w)[..., 0], 0.0, 1.0)


def merge_mean(planes: np.ndarray, alignment: Alignment | None = None, cfg: MergeConfig = MergeConfig()) -> np.ndarray:
    """Plain average of the frames, aligned when `alignment` is given (no rejection at all: the
    ghosting baseline). (N, 4, h, w) -> (4, h, w)."""
    if alignment is None:
        return planes.mean(axis=0, dtype=np.float32)
    acc = planes[alignment.ref].astype(np.float32).copy()
    for i in range(planes.shape[0]):
        if i != alignment.ref:
            acc += warp_planes(planes[i], alignment.flow(i), cfg.interpolation)
    return acc / planes.shape[0]

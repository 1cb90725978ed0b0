"""Align stage: where each part of the reference is in every other frame of the burst.

Works on the 2x2-averaged grey image (the mean of the four CFA planes, half the mosaic's
resolution), so every flow and tile here is in *plane pixels* (one plane pixel = two mosaic
pixels). Two aligners give the same `Alignment`:

`align_tiles` (default), coarse to fine as in HDR+, plus a robust global model:
    grey -> Gaussian pyramid (3-4 levels, 2x each)
    coarsest level: exhaustive integer search of +-coarse_radius per tile (box-summed SSD of
        whole-image shifts: every tile starts at zero there), quadratic fit for the sub-pixel part
    every level: an affine motion model per frame is fitted to the tile flows (iteratively
        reweighted least squares, weighted by each tile's texture), and each tile keeps only the
        part of its flow the model does not explain *and* that is significant against its noise
    each finer level: model and residuals carried down (x2), a noise-gated integer +-1 re-search,
        then Lucas-Kanade (Gauss-Newton) steps on every tile of every frame at once
Every warp and its per-tile sums run as one compiled loop over all frames (align_kernels.py).
So a static scene is aligned by its affine model (exact for handheld translation + rotation, and
right across flat sky or walls), while a moving object keeps its own tile flow.
`align_dis`: OpenCV's DIS optical flow on the gamma-encoded 8-bit grey images (dense).

Both report a per-tile confidence: the low-passed residual of the aligned frame against the
reference, compared with what the noise model says a perfect match leaves (1: as good as noise
allows; towards 0: does not match, because of motion, occlusion or a failed alignment).

Why not a learned flow: RAFT is the learned reference for optical flow, but on this CPU RAFT-small
(trainers/models/raft.py, timed by `eyefuse bench burst`: see benchmarks/results/burst.md) takes
hundreds of milliseconds per frame pair, seconds for the 7 pairs of an 8-frame burst, where this
aligner takes milliseconds for all of them: too slow for live use. On the synthetic bursts of the same benchmark the tile
aligner reaches a mean end-point error below 0.1 px at gain 1, where DIS is about 0.3 px
(benchmarks/results/burst.md).

Flow convention: other(x + flow(x)) shows what reference(x) shows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from engine.burst import align_kernels
from engine.burst.raw import NoiseModel
from engine.burst.sampling_kernels import LOCK


@dataclass(frozen=True)
class AlignConfig:
    """method: "tiles" (coarse-to-fine tile search + global model + Lucas-Kanade) or "dis".
    tile: tile side at the two finest levels, plane pixels (16 = 32 mosaic pixels).
    coarse_tile: tile side at the coarser levels.
    levels: pyramid levels including the finest; the search reaches about
        +- coarse_radius * 2 ** (levels - 1) plane pixels.
    lk_iterations: Gauss-Newton steps per level below the coarsest.
    global_model: fit the affine model (False: tile flows only, as plain HDR+).
    dis_preset: "ultrafast", "fast" or "medium"."""

    method: str = "tiles"
    tile: int = 16
    coarse_tile: int = 8
    levels: int = 4
    coarse_radius: int = 4
    lk_iterations: int = 2
    global_model: bool = True
    dis_preset: str = "medium"

    def __post_init__(self) -> None:
        if self.method not in ("tiles", "dis"):
            raise ValueError(f"align method must be 'tiles' or 'dis', got {self.method!r}")
        if self.tile < 4 or self.coarse_tile < 4:
            raise ValueError(f"alignment tiles must be at least 4 pixels, got {self.tile} and {self.coarse_tile}")
        if not 1 <= self.levels <= 6:
            raise ValueError(f"pyramid levels must be 1..6, got {self.levels}")
        if self.dis_preset not in _DIS_PRESETS:
            raise ValueError(f"dis_preset must be one of {sorted(_DIS_PRESETS)}, got {self.dis_preset!r}")


_DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass
class Alignment:
    """Where every frame's content is relative to the reference.

    tile: tile side (plane pixels) of tile_flow and confidence.
    tile_flow: (N, ny, nx, 2) float32 (dx, dy) in plane pixels at each tile centre; whole tiles
        from the top-left (ny = h // tile, nx = w // tile), the flow of a partial last row or
        column is extrapolated. Zero for the reference.
    confidence: (N, ny, nx) float32 in [0, 1]; 1 for the reference.
    shape: (h, w) of the planes. ref: index of the reference frame. method: "tiles" or "dis".
    affine: (N, 2, 3) float32 flow model, flow(x, y) = A @ (x, y, 1), or None.
    dense: (N, h, w, 2) float32 when the aligner made a dense field (DIS), else None.
    """

    tile: int
    tile_flow: np.ndarray
    confidence: np.ndarray
    shape: tuple[int, int]
    ref: int
    method: str
    affine: np.ndarray | None = None
    dense: np.ndarray | None = None

    def flow(self, i: int) -> np.ndarray:
        """(h, w, 2) float32 dense flow of frame i: the affine model plus the tile residuals
        interpolated between tile centres (or the aligner's own dense field)."""
        if self.dense is not None:
            return self.dense[i]
        h, w = self.shape
        resid = upsample_flow(self._residuals([i])[0], self.tile, h, w)
        return resid if self.affine is None else affine_dense(self.affine[i], h, w) + resid

    def flows_at(self, frames: list[int], points: np.ndarray) -> np.ndarray:
        """(F, ..., 2) float32 flow (dx, dy) of each of `frames` at (..., 2) points (x, y) in plane
        pixels, each point clamped into the frame first (the flow replicated past its edges):
        Alignment.flow's field, bilinear between its pixels (where it is itself bilinear, exactly),
        without making it. The merge takes each tile at the flow of its centre."""
        h, w = self.shape
        x = np.clip(points[..., 0], 0, w - 1).astype(np.float32)
        y = np.clip(points[..., 1], 0, h - 1).astype(np.float32)
        if self.dense is not None:
            return np.stack([bilinear_at(self.dense[i], x, y) for i in frames])
        # every frame's tile residuals as channels of one grid with its extrapolated ring, sampled
        # where upsample_flow samples them
        resid = self._residuals(frames)
        f, ny, nx = resid.shape[:3]
        grid = extend_tile_grid(np.moveaxis(resid, 0, 2).reshape(ny, nx, 2 * f))
        u, v = (x + 0.5) / self.tile + 0.5, (y + 0.5) / self.tile + 0.5
        out = np.moveaxis(bilinear_at(grid, u, v).reshape(x.shape + (f, 2)), -2, 0)
        if self.affine is not None:
            out += affine_at_stack(self.affine[frames], np.stack([x, y], axis=-1))
        return np.ascontiguousarray(out, np.float32)

    def _residuals(self, frames: list[int]) -> np.ndarray:
        """(F, ny, nx, 2) the frames' tile flows less their affine models at the tile centres."""
        resid = self.tile_flow[frames]
        if self.affine is None:
            return resid
        return resid - affine_at_stack(self.affine[frames], tile_centres(*resid.shape[1:3], self.tile))


# -- small pure helpers -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def tile_centres(ny: int, nx: int, tile: int) -> np.ndarray:
    """(ny, nx, 2) float32 (x, y) pixel coordinates of tile centres (pixel centres at integers).
    Cached and read-only: every level of every burst asks again (0.2 ms a time to build)."""
    c = (np.arange(max(ny, nx), dtype=np.float32) + 0.5) * tile - 0.5
    centres = np.stack(np.meshgrid(c[:nx], c[:ny]), axis=-1)
    centres.setflags(write=False)
    return centres


def affine_at(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(2, 3) affine flow model at (..., 2) points -> (..., 2) flow."""
    return pts @ a[:, :2].T + a[:, 2]


def affine_dense(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(2, 3) affine flow model -> (h, w, 2) float32 flow at every pixel."""
    out = np.empty((h, w, 2), np.float32)
    x, y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    for c in range(2):  # separable: a row vector plus a column vector
        np.add.outer(a[c, 1] * y + a[c, 2], a[c, 0] * x, out=out[..., c])
    return out


def extend_tile_grid(tile_flow: np.ndarray) -> np.ndarray:
    """(ny, nx, C) values at tile centres -> (ny + 2, nx + 2, C) with a ring extrapolated linearly
    (replicated along an axis of one tile), so interpolation reaches the image edges."""
    ny, nx = tile_flow.shape[:2]
    f = np.ascontiguousarray(tile_flow, np.float32)
    f = np.concatenate([2 * f[:1] - f[1:2], f, 2 * f[-1:] - f[-2:-1]] if ny > 1 else [f, f, f], axis=0)
    f = np.concatenate([2 * f[:, :1] - f[:, 1:2], f, 2 * f[:, -1:] - f[:, -2:-1]] if nx > 1 else [f, f, f], axis=1)
    return np.ascontiguousarray(f)


def upsample_flow(tile_flow: np.ndarray, tile: int, h: int, w: int) -> np.ndarray:
    """(ny, nx, 2) flow at tile centres -> (h, w, 2) by bilinear interpolation, extrapolated
    linearly past the outer tile centres (so a rotation stays a rotation up to the edges)."""
    ny, nx = tile_flow.shape[:2]
    big = cv2.resize(extend_tile_grid(tile_flow), ((nx + 2) * tile, (ny + 2) * tile), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[tile : tile + h, tile : tile + w])


def bilinear_at(field: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W, C) field sampled at column u and row v (arrays of one shape, inside the field),
    bilinear -> (*u.shape, C) float32."""
    hh, ww = field.shape[:2]
    u0 = np.clip(np.floor(u).astype(np.int64), 0, max(ww - 2, 0))
    v0 = np.clip(np.floor(v).astype(np.int64), 0, max(hh - 2, 0))
    u1, v1 = np.minimum(u0 + 1, ww - 1), np.minimum(v0 + 1, hh - 1)
    fu = (u - u0).astype(np.float32)[..., None]
    fv = (v - v0).astype(np.float32)[..., None]
    top = field[v0, u0] + fu * (field[v0, u1] - field[v0, u0])
    bottom = field[v1, u0] + fu * (field[v1, u1] - field[v1, u0])
    return (top + fv * (bottom - top)).astype(np.float32)


def tile_means(img: np.ndarray, tile: int) -> np.ndarray:
    """(..., ny*tile, nx*tile) float32 -> (..., ny, nx) mean over each tile (OpenCV area resize)."""
    *lead, h, w = img.shape
    flat = np.ascontiguousarray(img, np.float32).reshape(-1, w)
    out = cv2.resize(flat, (w // tile, flat.shape[0] // tile), interpolation=cv2.INTER_AREA)
    return out.reshape(*lead, h // tile, w // tile)


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached (h, w) float32 pixel x and y coordinates."""
    key = (h, w)
    if key not in _GRIDS:
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        xs = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
        ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
        _GRIDS[key] = (np.ascontiguousarray(xs), np.ascontiguousarray(ys))
    return _GRIDS[key]


def warp(img: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """(h, w[, c]) image sampled at x + flow(x), flow (h, w, 2) -> aligned image, edges reflected."""
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], interpolation, borderMode=cv2.BORDER_REFLECT101)


def confidence_from_residual(residual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-tile mean squared residual vs the noise-only expectation -> confidence in [0, 1]:
    1 up to 1.5x the expectation, then falling off exponentially (3.5x -> 0.14)."""
    q = residual / np.maximum(expected, 1e-12)
    return np.exp(-np.maximum(q - 1.5, 0.0)).astype(np.float32)


_LOWPASS_SIGMA = 1.0
_LOWPASS_NOISE = 1.0 / (4 * np.pi * _LOWPASS_SIGMA**2)  # variance left in white noise by that Gaussian


def tile_confidence(ref: np.ndarray, aligned: np.ndarray, noise: NoiseModel, tile: int) -> np.ndarray:
    """(H, W) reference and aligned grey (whole tiles) -> (ny, nx) confidence.

    Both are low-passed first (Gaussian, sigma 1 px): what remains of a residual is real mismatch
    (motion, occlusion, misalignment), not fine texture that interpolation softened nor most of
    the noise, whose left-over variance is known exactly."""
    d = cv2.GaussianBlur(aligned - ref, (0, 0), _LOWPASS_SIGMA, borderType=cv2.BORDER_REFLECT101)
    residual = tile_means(d * d, tile)
    expected = 2.0 * noise.grey_variance(tile_means(ref, tile)) * _LOWPASS_NOISE
    return confidence_from_residual(residual, expected)


# -- the tile aligner -------------------------------------------------------------------------------
def build_pyramid(grey: np.ndarray, levels: int) -> list[np.ndarray]:
    """(..., h, w) -> [level 0 (the input), level 1 (half size), ...]: Gaussian 5-tap then every
    other sample (cv2.pyrDown), so level-(k+1) pixel p sits at level-k pixel 2p."""
    pyr = [np.ascontiguousarray(grey, np.float32)]
    for _ in range(1, levels):
        prev = pyr[-1]
        if min(prev.shape[-2:]) < 32:
            break
        if prev.ndim == 2:
            pyr.append(cv2.pyrDown(prev))
            continue
        # each frame straight into one stack: at 12 MP a stack of separate results is another
        # copy of 20 MB per level, into memory touched for the first time
        nxt = np.empty(prev.shape[:-2] + ((prev.shape[-2] + 1) // 2, (prev.shape[-1] + 1) // 2), np.float32)
        for p, q in zip(prev, nxt):
            cv2.pyrDown(p, dst=q)
        pyr.append(nxt)
    return pyr


@dataclass
class _Level:
    """One pyramid level prepared for tile work (padded to whole tiles)."""

    tile: int
    ref: np.ndarray  # (H, W)
    alt: np.ndarray  # (F, H, W)
    centres: np.ndarray  # (ny, nx, 2)
    valid: np.ndarray  # (ny, nx)
    noise_var: np.ndarray  # (ny, nx) grey noise variance of one frame at this level
    gx: np.ndarray  # (H, W) gradients of the smoothed reference
    gy: np.ndarray
    sxx: np.ndarray  # (ny, nx) structure tensor sums
    syy: np.ndarray
    sxy: np.ndarray
    texture: np.ndarray  # (ny, nx) smallest eigenvalue of the structure tensor (mean per pixel)
    ref_s: np.ndarray  # (H, W) the reference, lightly smoothed (what Lucas-Kanade compares)
    alt_s: np.ndarray  # (F, H, W) the other frames, lightly smoothed

    @staticmethod
    def make(ref: np.ndarray, alt: np.ndarray, tile: int, noise: NoiseModel, level: int) -> "_Level":
        """Whole tiles only: a partial last row or column of tiles is left out (padding it with
        reflected content would hand the matcher pictures that move the wrong way); the flow
        there is extrapolated from the tiles next to it."""
        h, w = ref.shape
        ny, nx = max(1, h // tile), max(1, w // tile)
        r = np.ascontiguousarray(ref[: ny * tile, : nx * tile])
        a = np.ascontiguousarray(alt[:, : ny * tile, : nx * tile])
        rs = cv2.GaussianBlur(r, (_LK_KSIZE, _LK_KSIZE), _LK_SIGMA)
        alt_s = np.empty_like(a)
        for x, x_s in zip(a, alt_s):
            cv2.GaussianBlur(x, (_LK_KSIZE, _LK_KSIZE), _LK_SIGMA, dst=x_s)
        gx = cv2.Sobel(rs, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
        gy = cv2.Sobel(rs, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
        sxx, syy, sxy = tile_means(gx * gx, tile), tile_means(gy * gy, tile), tile_means(gx * gy, tile)
        lam = 0.5 * (sxx + syy - np.sqrt((sxx - syy) ** 2 + 4 * sxy * sxy))
        # pyrDown's 5x5 Gaussian leaves 0.075 of white noise's variance; later levels ~ 1/4 each.
        var = noise.grey_variance(tile_means(r, tile)) * (0.075 * 0.25 ** (level - 1) if level else 1.0)
        return _Level(tile, r, a, tile_centres(ny, nx, tile), np.ones((ny, nx), np.float32), var, gx, gy,
                      sxx, syy, sxy, np.maximum(lam, 0.0), rs, alt_s)

    def reliability(self) -> np.ndarray:
        """(ny, nx) in [0, 1]: how far a tile's own flow can be trusted (texture vs noise, and
        how much of the tile lies inside the image)."""
        # Gradient variance of the smoothed noise is ~ 0.02 var per axis; ask for 25x that.
        scale = 0.5 * self.noise_var
        return (self.texture / (self.texture + scale) * self.valid).astype(np.float32)


def align_tiles(grey: np.ndarray, ref: int, noise: NoiseModel, cfg: AlignConfig = AlignConfig()) -> Alignment:
    """(N, h, w) float32 grey images of a burst -> Alignment of every frame to frames[ref].

    All frames and all tiles of a level are processed together: each warp with its per-tile sums
    is one compiled loop over every frame (align_kernels.py); Python loops run over levels, search
    offsets and Gauss-Newton steps only.
    """
    n, h, w = grey.shape
    others = [i for i in range(n) if i != ref]
    t0 = max(1, min(cfg.tile, h, w))
    ny, nx = h // t0, w // t0
    flow_out = np.zeros((n, ny, nx, 2), np.float32)
    conf_out = np.ones((n, ny, nx), np.float32)
    aff_out = np.zeros((n, 2, 3), np.float32)
    if not others:
        return Alignment(t0, flow_out, conf_out, (h, w), ref, "tiles", aff_out)
    pyr_ref = build_pyramid(grey[ref], cfg.levels)
    # the frames before or after the reference are a view; others a copy (85 MB at 12 MP)
    alts = grey[1:] if ref == 0 else grey[:-1] if ref == n - 1 else grey[others]
    pyr_alt = build_pyramid(alts, len(pyr_ref))
    top = len(pyr_ref) - 1
    model = resid = prev = None
    for lvl in range(top, -1, -1):
        tile = t0 if lvl <= 1 else min(cfg.coarse_tile, *pyr_ref[lvl].shape)
        L = _Level.make(pyr_ref[lvl], pyr_alt[lvl], tile, noise, lvl)
        spread = None
        if model is None:
            total, _ = _coarse_search(L.ref, L.alt, tile, cfg.coarse_radius)
        else:
            model = model.copy()
            model[:, :, 2] *= 2.0  # x_l = 2 x_(l+1): the linear part is scale-free, the offset doubles
            resid = 2.0 * _resample_tiles(resid, prev, L)
            if lvl > 0:
                resid = _integer_refine(L, model, resid)
            # the difference left at the tile's own flow, measured by the last Gauss-Newton step
            resid, spread, conf = _lucas_kanade(L, model, resid, max(cfg.lk_iterations, 1), noise if lvl == 0 else None)
            total = affine_at_stack(model, L.centres) + resid
        weight = L.reliability()
        model = _fit_affine(L.centres, total, weight) if cfg.global_model else np.zeros((len(others), 2, 3), np.float32)
        resid = total - affine_at_stack(model, L.centres)
        if spread is None:
            spread = _tile_ssd(L, model, resid)
        # the model's own fit only feeds _significant's ratio test, for which every other row is
        # plenty: 1-2 ms less a 640x480 burst, the same merged PSNR on Kodak24 at gains 1-8
        resid = _significant(resid, L, spread, _tile_ssd(L, model, None, row_step=2), weight)
        prev = L
    L = prev
    if top == 0:  # a single level: no Lucas-Kanade pass made the confidence
        conf = _lucas_kanade(L, model, resid, 0, noise)[2]
    for k, i in enumerate(others):
        flow_out[i] = (affine_at(model[k], L.centres) + resid[k])[:ny, :nx]
        aff_out[i] = model[k]
        conf_out[i] = conf[k][:ny, :nx]
    return Alignment(t0, flow_out, conf_out, (h, w), ref, "tiles", aff_out)


def affine_at_stack(models: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(F, 2, 3) models at (ny, nx, 2) points -> (F, ny, nx, 2).
    One batched matmul: 14 us for a 640x480 burst's tiles, where broadcasting took 87 and einsum 150."""
    flat = pts.reshape(-1, 2)
    out = np.matmul(flat, models[:, :, :2].transpose(0, 2, 1)) + models[:, None, :, 2]  # (F, P, 2)
    return out.reshape((models.shape[0],) + pts.shape)


def _coarse_search(ref: np.ndarray, alt: np.ndarray, tile: int, radius: int) -> np.ndarray:
    """Exhaustive +-radius integer search from zero for every tile, sub-pixel by a separable
    quadratic fit of the SSD around the minimum. ref (H, W), alt (F, H, W) -> flows (F, ny, nx, 2)
    and the mean squared difference left at the best offset (F, ny, nx).
    The table searched holds, for every offset (dx, dy), tile_means((alt shifted by (dx, dy) -
    ref)^2) with alt's borders reflected (align_kernels.offset_tile_ssd)."""
    f, hh, ww = alt.shape
    size = 2 * radius + 1
    ssd = np.empty((size, size, f, hh // tile, ww // tile), np.float32)
    with LOCK:
        align_kernels.offset_tile_ssd(np.ascontiguousarray(alt, np.float32), np.ascontiguousarray(ref, np.float32),
                                      tile, radius, ssd)
    by, bx = np.divmod(ssd.reshape(size * size, *ssd.shape[2:]).argmin(axis=0), size)
    sub_x, sub_y = _quadratic_subpixel(ssd, by, bx)
    best = ssd.reshape(size * size, *ssd.shape[2:]).min(axis=0)
    return np.stack([bx - radius + sub_x, by - radius + sub_y], axis=-1).astype(np.float32), best


def _quadratic_subpixel(ssd: np.ndarray, by: np.ndarray, bx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ssd (sy, sx, ...) and its argmin (by, bx) per element -> sub-pixel (dx, dy) in [-0.5, 0.5]
    from 1-D parabolas through the minimum and its neighbours (0 where the minimum is on the rim)."""
    sy, sx = ssd.shape[:2]
    idx = np.indices(by.shape)

    def at(yy, xx):
        return ssd[(np.clip(yy, 0, sy - 1), np.clip(xx, 0, sx - 1), *idx)]

    c = at(by, bx)
    out = []
    for lo, hi, inside in ((at(by, bx - 1), at(by, bx + 1), (bx > 0) & (bx < sx - 1)),
                           (at(by - 1, bx), at(by + 1, bx), (by > 0) & (by < sy - 1))):
        den = lo - 2 * c + hi
        off = np.where(inside & (den > 1e-12), 0.5 * (lo - hi) / np.maximum(den, 1e-12), 0.0)
        out.append(np.clip(off, -0.5, 0.5))
    return out[0], out[1]


def _resample_tiles(resid: np.ndarray, coarse: _Level, fine: _Level) -> np.ndarray:
    """(F, nyc, nxc, 2) values at the coarse level's tile centres -> bilinear at the finer level's
    tile centres (coarse pixel = fine pixel / 2), edges replicated. Not scaled."""
    c = fine.centres / 2.0
    tx = ((c[..., 0] + 0.5) / coarse.tile - 0.5).astype(np.float32)
    ty = ((c[..., 1] + 0.5) / coarse.tile - 0.5).astype(np.float32)
    return np.stack([cv2.remap(np.ascontiguousarray(r), tx, ty, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for r in resid])


def _warp_sums(L: "_Level", model: np.ndarray, resid: np.ndarray | None, diff: np.ndarray | None = None,
               row_step: int = 1) -> np.ndarray:
    """(F, ny, nx, 3) per frame and tile, over every row_step-th row, the means of gx d, gy d and d^2
    (tile_means(gx * d, tile), ...), where d is the smoothed frame warped by its model plus each
    tile's own flow (resid None: the model alone), less the smoothed reference:
        d[f] = warp(alt_s[f], affine_dense(model[f], H, W) + resid[f] repeated over its tile) - ref_s
    (align_kernels.warped_tile_sums). `diff`, if given, receives d (row_step 1 only)."""
    f = L.alt_s.shape[0]
    r = np.zeros((f,) + L.valid.shape + (2,), np.float32) if resid is None else np.ascontiguousarray(resid, np.float32)
    out = np.empty((f,) + L.valid.shape + (3,), np.float32)
    with LOCK:
        align_kernels.warped_tile_sums(L.alt_s, L.ref_s, L.gx, L.gy, np.ascontiguousarray(model, np.float32), r,
                                       L.tile, out, _NO_DIFF if diff is None else diff, row_step)
    out /= L.tile * len(range(0, L.tile, row_step))
    return out


_NO_DIFF = np.empty((0, 1, 1), np.float32)


def _integer_refine(L: _Level, model: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Re-search +-1 pixel around each tile's flow, so a tile whose coarse guess was off by a pixel
    still lands in Lucas-Kanade's basin: per tile, the sum of squared differences between the
    reference and the frame warped by its model plus the tile's flow (as d in _warp_sums, unsmoothed),
    moved by each whole-pixel step in -1..1 (align_kernels.shifted_tile_ssd: nine sums from one
    warped patch). A move is taken only if it lowers the tile's mean squared
    difference by more than a quarter of what noise alone leaves, so flat tiles do not wander."""
    resid = np.ascontiguousarray(resid, np.float32).copy()
    tile = L.tile
    gate = max(0.25, 3.0 * np.sqrt(2.0 / (tile * tile))) * 2.0 * L.noise_var
    ssd = np.empty(resid.shape[:3] + (9,), np.float32)
    with LOCK:
        align_kernels.shifted_tile_ssd(L.alt, L.ref, np.ascontiguousarray(model, np.float32), resid, tile, ssd)
    ssd /= tile * tile
    best = ssd.argmin(axis=-1)
    gain = ssd[..., 4] - np.take_along_axis(ssd, best[..., None], -1)[..., 0]
    move = gain > gate
    by, bx = np.divmod(best, 3)
    resid[..., 0] += np.where(move, bx - 1, 0)
    resid[..., 1] += np.where(move, by - 1, 0)
    return resid


def _lucas_kanade(L: _Level, model: np.ndarray, resid: np.ndarray, iterations: int,
                  noise: NoiseModel | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gauss-Newton steps on each tile's residual translation, all tiles of all frames at once.

    The normal equations use the smoothed reference's gradients (the same for every frame and
    step); a ridge of a few noise variances keeps flat tiles from jumping; steps are capped at one
    pixel. Returns (residual flows, per-tile mean squared difference left after the last step's
    warp (F, ny, nx), and, when `noise` is given, the per-tile confidence from that difference).
    With iterations=0 only the difference (and confidence) at the given flows is measured.
    """
    ridge = 0.05 * L.noise_var
    sxx, syy, sxy = L.sxx + ridge, L.syy + ridge, L.sxy
    det = sxx * syy - sxy * sxy
    resid = np.ascontiguousarray(resid, np.float32).copy()
    f = L.alt.shape[0]
    conf = None
    steps = max(iterations, 1)
    for step in range(steps):
        last = step == steps - 1
        diff = np.empty_like(L.alt_s) if last and noise is not None else None
        # a step before the last is corrected by the next one, so every other row will do for it
        # (Kodak24 at gains 1-8: the same merged PSNR to 0.015 dB, the same EPE, 0.6 ms less)
        sums = _warp_sums(L, model, resid, diff, row_step=1 if last else 2)
        if last:
            spread = sums[..., 2].copy()
            if noise is not None:
                conf = np.empty((f,) + L.valid.shape, np.float32)
                for k in range(f):
                    energy, kept = _mismatch_energy(diff[k], L.tile)
                    conf[k] = confidence_from_residual(energy, 2.0 * L.noise_var * kept)
        if iterations == 0:
            break
        bx, by = sums[..., 0], sums[..., 1]
        du = -(syy * bx - sxy * by) / det
        dv = -(sxx * by - sxy * bx) / det
        resid[..., 0] += np.clip(du, -1.0, 1.0)
        resid[..., 1] += np.clip(dv, -1.0, 1.0)
    return resid, spread, conf


def _noise_kept(*kernels: np.ndarray) -> float:
    """Fraction of white noise's variance left by the separable 2-D filter that applies these 1-D
    kernels in turn along each axis."""
    k = functools.reduce(np.convolve, kernels)
    return float((k**2).sum() ** 2)


_LK_SIGMA = 0.8
_LK_KSIZE = 7  # what OpenCV picks for 0.8 on float images, spelled out for the noise fractions below
_LK_KERNEL = cv2.getGaussianKernel(_LK_KSIZE, _LK_SIGMA).ravel()
_PYR_KERNEL = np.array([1, 4, 6, 4, 1]) / 16.0  # pyrDown's binomial, sigma 1
_LOWPASS_KSIZE = 9  # OpenCV's choice for sigma 1
# noise kept in a difference of LK-smoothed frames by the confidence's low-pass: pyrDown's, or the
# sigma-1 Gaussian for an odd tile
_KEPT_PYR = _noise_kept(_LK_KERNEL, _PYR_KERNEL)
_KEPT_GAUSS = _noise_kept(_LK_KERNEL, cv2.getGaussianKernel(_LOWPASS_KSIZE, _LOWPASS_SIGMA).ravel())


def _mismatch_energy(diff: np.ndarray, tile: int) -> tuple[np.ndarray, float]:
    """(H, W) difference of two LK-smoothed frames, whole tiles -> the (ny, nx) mean square of its
    low-pass per tile, and the fraction of white noise's variance that the whole chain keeps.
    Low-passed, what remains is real mismatch (motion, occlusion, misalignment) and a known part of
    the noise. pyrDown's 5-tap low-pass computes every other pixel only, which is all a tile mean of
    a smooth image needs: at 12 MP 17 ms for seven frames against 74 ms for a full-size blur of
    the same width (1.5 against 0.45 ms at 640x480). An odd tile does not halve, so it takes the
    full-size blur."""
    if tile % 2 == 0:
        low = cv2.pyrDown(diff)
        return tile_means(low * low, tile // 2), _KEPT_PYR
    low = cv2.GaussianBlur(diff, (_LOWPASS_KSIZE, _LOWPASS_KSIZE), _LOWPASS_SIGMA)
    return tile_means(low * low, tile), _KEPT_GAUSS


def _fit_affine(centres: np.ndarray, flow: np.ndarray, weight: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Robust affine flow model per frame: (ny, nx, 2) centres, (F, ny, nx, 2) tile flows,
    (ny, nx) weights -> (F, 2, 3). Iteratively reweighted least squares with a Cauchy weight on
    the residual, so tiles on a moving object do not pull the camera's model; with too few
    reliable tiles spread over the frame, a translation (weighted mean) instead; with none, zero.
    The arithmetic is align_kernels.fit_affine_irls."""
    f = flow.shape[0]
    pts = np.ascontiguousarray(centres.reshape(-1, 2), np.float64)
    v = np.ascontiguousarray(flow.reshape(f, -1, 2), np.float64)
    w0 = np.ascontiguousarray(weight.reshape(-1), np.float64)
    return align_kernels.fit_affine_irls(pts, v, w0, iterations).astype(np.float32)


def _tile_ssd(L: _Level, model: np.ndarray, resid: np.ndarray | None, row_step: int = 1) -> np.ndarray:
    """(F, ny, nx) mean squared difference per tile between the smoothed reference and each
    smoothed frame warped by its model plus the per-tile residual (None: zero), over every
    row_step-th row."""
    return _warp_sums(L, model, resid, row_step=row_step)[..., 2].copy()


def _significant(resid: np.ndarray, L: _Level, spread: np.ndarray, model_spread: np.ndarray,
                 weight: np.ndarray) -> np.ndarray:
    """Keep of each tile's residual flow (the part the model does not explain) only what earns
    its place, by two tests that must both pass:
    - it matches clearly better than the model: the tile's mean squared difference at its own
      flow (`spread`) is under 1/1.3 of the one at the model's (`model_spread`), fully kept from
      1/2. A repetitive texture that locked onto the wrong repeat matches about as well as the
      model and is dropped; a moving object matches far better and is kept.
    - it is significant against its own noise: chi2 = n r^T S r / spread, the drop in the tile's
      squared difference that moving by r buys, scaled by chi2 / (chi2 + 16).
    Flat tiles (reliability below 0.15) follow the model."""
    n = L.tile * L.tile
    rx, ry = resid[..., 0], resid[..., 1]
    quad = L.sxx * rx * rx + 2 * L.sxy * rx * ry + L.syy * ry * ry
    chi2 = n * quad / np.maximum(spread, 1e-12)
    better = np.clip((model_spread / np.maximum(spread, 1e-12) - 1.3) / 0.7, 0.0, 1.0)
    # Pure-noise tiles have reliability ~0.05 (their "texture" is the noise's own gradient, on
    # which chi2 means nothing); only tiles with real structure keep a flow of their own.
    keep = chi2 / (chi2 + 16.0) * better * np.clip((weight - 0.15) / 0.25, 0.0, 1.0)
    return (resid * keep[..., None]).astype(np.float32)


# -- DIS ----------------------------------------------------------------------------------------------
def to_u8(grey: np.ndarray) -> np.ndarray:
    """Normalised linear grey -> uint8 through a square root (noise-levelling and perceptual)."""
    return cv2.convertScaleAbs(np.sqrt(np.clip(grey, 0.0, 1.0)), alpha=255.0)


def align_dis(grey: np.ndarray, ref: int, noise: NoiseModel, cfg: AlignConfig = AlignConfig(method="dis")) -> Alignment:
    """(N, h, w) grey images -> Alignment from OpenCV's DIS optical flow (dense), with tile flows
    (means over whole tiles) and confidences on cfg.tile tiles for the merge."""
    n, h, w = grey.shape
    tile = max(1, min(cfg.tile, h, w))
    ny, nx = h // tile, w // tile
    hh, ww = ny * tile, nx * tile
    dense = np.zeros((n, h, w, 2), np.float32)
    flow_t = np.zeros((n, ny, nx, 2), np.float32)
    conf = np.ones((n, ny, nx), np.float32)
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[cfg.dis_preset])
    r8 = to_u8(grey[ref])
    r_crop = np.ascontiguousarray(grey[ref][:hh, :ww])
    for i in range(n):
        if i == ref:
            continue
        dense[i] = dis.calc(r8, to_u8(grey[i]), None)
        for c in range(2):
            flow_t[i, ..., c] = tile_means(dense[i][:hh, :ww, c], tile)
        aligned = np.ascontiguousarray(warp(grey[i], dense[i])[:hh, :ww])
        conf[i] = tile_confidence(r_crop, aligned, noise, tile)
    return Alignment(tile, flow_t, conf, (h, w), ref, "dis", None, dense)


def warm_up() -> None:
    """Compile the tile aligner's kernels now, on the calling thread (about 15 s the first time on a
    machine, well under one after that: numba caches them on disk), by aligning a tiny burst
    through the same code path, so the same specialisations are made."""
    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.random((2 * 64, 64), dtype=np.float32), (0, 0), 2.0).reshape(2, 64, 64)
    align_tiles(np.ascontiguousarray(grey), 0, NoiseModel((1e-4,) * 4, (1e-6,) * 4))


def align(grey: np.ndarray, ref: int, noise: NoiseModel, cfg: AlignConfig = AlignConfig()) -> Alignment:
    """Dispatch on cfg.method ("tiles" or "dis"). grey: (N, h, w) float32."""
    return align_dis(grey, ref, noise, cfg) if cfg.method == "dis" else align_tiles(grey, ref, noise, cfg)

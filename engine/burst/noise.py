"""Noise stage: the burst's noise model, measured from the burst itself, and checked against metadata.

A burst is N looks at one scene with independent noise. Where two frames i and j see the same
scene point at the same sub-pixel phase, their difference is noise and nothing else:

    d = frame_i(y) - frame_j(y + k),  k whole pixels      E[d^2] = 2 var(x)

Texture cancels in d, which a single-frame estimate cannot do: on fine detail a single frame's
high-pass is mostly scene. Two frames at *different* sub-pixel phases do not cancel it, however
well they are aligned: each packed plane samples the scene at half the mosaic's rate, so fine
detail aliases differently at each phase, and resampling one frame onto the other cannot undo
that (on Kodak's finest textures at gain 1, a bicubic-aligned difference carried 3-12x the noise
variance). So the estimate compares, per 8x8 tile, the pairs of frames whose relative flow at the
tile is within PHASE of whole pixels (of 28 pairs in an 8-frame burst, a few per tile), at whole
pixel offsets (no resampling, so no change to the noise either).

What can still leak into d (a tile that moved on its own, an occlusion, the phase mismatch left)
only ever adds variance. So each level bin keeps a low quantile of its tiles' estimates (QUANTILE,
divided by where that quantile of a pure-noise estimate falls), not their mean, and the line
variance = S * x + O is fitted through the bins from below, one line for the four planes.

Where it fails (and the single-frame estimate, `raw.estimate_noise`, stands in): a burst of one or
two frames, or one whose frames sit at nearly the same phase nowhere (too few tiles, MIN_TILES a
plane); noise that is the same in every frame (fixed-pattern noise moves with the sensor, not the
scene, so it shows in d only when the camera moved); a brightness change between frames (flicker)
beyond a constant offset per tile, which the variance about the tile's mean absorbs. Near the black
clip (the lowest value the sensor records), the noise below it is cut off, and a level 2 sigma above
it still shows 4% less variance: each bin is corrected by the variance of a normal clipped there
(`clipped_share`), and bins within one sigma of the clip are left out. Tiles near saturation are
left out.

    estimate_noise_burst(stack, alignment) -> NoiseModel | None
    choose_noise(metadata, measured, single, mode) -> NoiseReport
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.burst.align import Alignment
from engine.burst.raw import SATURATION, NoiseModel, _fit_line

TILE = 8
PHASES = (0.1, 0.2, 0.35, 0.5)  # plane pixels: how close to whole pixels a pair's relative flow must
# be, in both axes; the next is tried when too few tiles pass (a burst that only translates has
# one phase per pair, and in an 8-frame burst no pair may come within 0.1)
PAIRS = 8  # the best-phased pairs used per tile
LEAK = 0.1  # a bin this far above the fitted line (relative) is taken to carry more than noise
FLAT = 1.5  # a tile whose mean's structure exceeds this many times the noise variance is not flat
QUANTILE = 0.25  # of each level bin's tile estimates: misalignment only adds variance
MAX_TILES = 4800  # 8x8 tiles looked at, at most (a 640x480 frame's planes have 1200)
MIN_TILES = 24  # usable tile-planes (a tile counts once per plane) the estimate needs, and a level bin
BINS = 12
DISAGREE = 4.0  # a metadata profile this far from the measured one (either way) is reported
NOISE_MODES = ("auto", "metadata", "estimate")


def _quantile_of_pure_noise(q: float, dof: float) -> float:
    """Where quantile q of a variance estimate with `dof` degrees of freedom falls, relative to the
    true variance (Wilson-Hilferty's cube-root normal approximation of chi-square)."""
    z = math.sqrt(2.0) * _erfinv(2.0 * q - 1.0)
    c = 2.0 / (9.0 * dof)
    return (1.0 - c + z * math.sqrt(c)) ** 3


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method on math.erf."""
    x = 0.0
    for _ in range(60):
        err = math.erf(x) - y
        x -= err / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
        if abs(err) < 1e-12:
            break
    return x


def clipped_share(a: np.ndarray) -> np.ndarray:
    """Var(max(X, c)) / sigma^2 for X ~ N(x, sigma^2) and a = (c - x) / sigma: the share of the
    noise's variance left when everything below the clip c reads as c (the censored normal)."""
    from scipy.special import ndtr

    a = np.asarray(a, np.float64)
    cdf, pdf = ndtr(a), np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    mean = a * cdf + pdf
    return a * a * cdf + (1.0 - cdf) + a * pdf - mean * mean


def unclip(level: np.ndarray, variance: np.ndarray, floor: float, iterations: int = 8) -> np.ndarray:
    """The noise variance that, clipped at `floor`, reads as `variance` at `level` (fixed point of
    sigma^2 = variance / clipped_share((floor - level) / sigma))."""
    v = np.asarray(variance, np.float64)
    if not np.isfinite(floor):
        return v
    true = v.copy()
    for _ in range(iterations):
        true = v / np.maximum(clipped_share((floor - level) / np.sqrt(np.maximum(true, 1e-30))), 1e-3)
    return true


def phase_matched_differences(stack: np.ndarray, alignment: Alignment,
                              phase: float = PHASES[0]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 8x8 tile and each of its best-phased frame pairs (module docstring): the variance of
    their difference over 2, their mean level, and the structure of their mean (its squared
    neighbour differences: scene edges and texture, plus noise), per plane.

    stack: (N, 4, h, w) normalised planes. Returns (estimate, level, structure), each (K, 4), one row per
    (tile, pair) used: pairs within `phase` of whole pixels, both tiles inside the frame (a
    saturated one gives NaN)."""
    n, _, h, w = stack.shape
    t = TILE
    # a regular subset of the tiles on large frames: MAX_TILES tell the noise as well as all would
    step = max(1, int(math.ceil(math.sqrt((h // t) * (w // t) / MAX_TILES))))
    cy, cx = np.mgrid[0 : h // t : step, 0 : w // t : step]
    frames = list(range(n))
    first, second = np.triu_indices(n, 1)

    def flows(dx: float, dy: float) -> np.ndarray:
        """(N, ny, nx, 2) every frame's flow at a point of each tile, (dx, dy) from its top left."""
        return alignment.flows_at(frames, np.stack([cx * t + dx, cy * t + dy], axis=-1).astype(np.float32))

    centre_flows = flows((t - 1) / 2, (t - 1) / 2)
    relative = centre_flows[second] - centre_flows[first]  # (P, ny, nx, 2)
    whole = np.rint(relative)
    mismatch = np.abs(relative - whole).max(axis=-1)
    # the phase mismatch anywhere in the tile: at its corners too (a relative rotation spreads it)
    for dx, dy in ((-0.5, -0.5), (t - 0.5, -0.5), (-0.5, t - 0.5), (t - 0.5, t - 0.5)):
        corner = flows(dx, dy)
        mismatch = np.maximum(mismatch, np.abs(corner[second] - corner[first] - whole).max(axis=-1))
    mismatch[~np.isfinite(mismatch)] = np.inf
    ranks = np.argsort(mismatch, axis=0)[:PAIRS]  # (R, ny, nx) pair indices, best first
    iy, ix = np.mgrid[0 : cy.shape[0], 0 : cy.shape[1]]
    ar = np.arange(t)
    planes = np.arange(4)[None, :, None, None]
    estimates, levels, structure = [], [], []
    for pair in ranks:
        fi, fj = first[pair], second[pair]
        off_i = np.rint(centre_flows[fi, iy, ix]).astype(np.int64)  # tile of frame i at whole pixels
        off_j = off_i + np.take_along_axis(whole, pair[None, ..., None], 0)[0].astype(np.int64)
        ok = np.take_along_axis(mismatch, pair[None], 0)[0] < phase
        for off in (off_i, off_j):
            top, left = cy * t + off[..., 1], cx * t + off[..., 0]
            ok &= (top >= 0) & (top + t <= h) & (left >= 0) & (left + t <= w)
        sel = np.nonzero(ok)
        if sel[0].size == 0:
            continue
        tiles = []
        for frame, off in ((fi, off_i), (fj, off_j)):
            rows = (cy * t + off[..., 1])[sel][:, None] + ar
            cols = (cx * t + off[..., 0])[sel][:, None] + ar
            tiles.append(stack[frame[sel][:, None, None, None], planes, rows[:, None, :, None], cols[:, None, None, :]])
        a, b = tiles
        d = (a - b).reshape(a.shape[0], 4, t * t)
        both = np.maximum(a, b).reshape(d.shape).max(axis=-1)
        var = d.var(axis=-1, ddof=1, dtype=np.float64) / 2.0  # about the tile's mean: an offset is not noise
        var[both >= SATURATION * 0.95] = np.nan
        estimates.append(var)
        mean = 0.5 * (a + b)
        levels.append(mean.reshape(d.shape).mean(axis=-1, dtype=np.float64))
        structure.append(0.5 * (np.square(np.diff(mean, axis=-1)).mean(axis=(-2, -1))
                                + np.square(np.diff(mean, axis=-2)).mean(axis=(-2, -1))))
    if not estimates:
        return np.empty((0, 4)), np.empty((0, 4)), np.empty((0, 4))
    return np.concatenate(estimates), np.concatenate(levels), np.concatenate(structure)


def estimate_noise_burst(stack: np.ndarray, alignment: Alignment, floor: float = -np.inf) -> NoiseModel | None:
    """variance = S * x + O (one line for the four planes), from the aligned burst's phase-matched
    frame differences (module docstring). stack: (N, 4, h, w) normalised planes; floor: the lowest
    value the sensor records (normalised: -black / (white - black)), near which noise is clipped
    away. None when the burst cannot say (fewer than MIN_TILES usable tiles)."""
    if stack.shape[0] < 2:
        return None
    for phase in PHASES:
        estimate, level, structure = phase_matched_differences(stack, alignment, phase)
        if np.isfinite(estimate).sum() >= MIN_TILES:
            break
    else:
        return None
    correction = _quantile_of_pure_noise(QUANTILE, TILE * TILE - 1)
    # One line for the four planes: a raw sample's noise depends on the light it counted, not on
    # the colour filter it came through. Pooled, the planes' different brightness (red and blue
    # under other light than green) also widens the range of levels the slope rests on.
    good = np.isfinite(estimate)
    xs, vs, ws = _binned_quantile(level[good], estimate[good], structure[good], correction)
    vs = unclip(xs, vs, floor)
    keep = xs - np.sqrt(vs) > floor  # closer, the clip leaves too little of the noise to correct
    if keep.any():
        xs, vs, ws = xs[keep], vs[keep], ws[keep]
    if not np.any(vs > 0):  # every tile flat to the last code (a lens cap, a clipped frame): no noise to see
        return None
    s, o = _fit_lower_line(xs, vs, ws)
    return NoiseModel((s,) * 4, (o,) * 4, estimated=True)


def _fit_lower_line(x: np.ndarray, v: np.ndarray, w: np.ndarray, iterations: int = 4) -> tuple[float, float]:
    """variance = s x + o through the bins, from below: what leaks into a bin (an edge, a flow
    error) only raises it, so a bin more than LEAK above the line loses weight, and the line is
    fitted again."""
    weight = w.astype(np.float64)
    s, o = _fit_line(x, v, weight)
    for _ in range(iterations):
        excess = np.maximum(v / np.maximum(s * x + o, 1e-30) - 1.0, 0.0) / LEAK
        s, o = _fit_line(x, v, weight / (1.0 + excess * excess))
    return s, o


def _binned_quantile(x: np.ndarray, v: np.ndarray, structure: np.ndarray,
                     correction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tiles binned by level: BINS equal widths over the levels present, a bin with fewer than
    MIN_TILES merged into the next (the last into the one before), so the few bright tiles of a
    dark scene still get a bin of their own: the line's slope rests on them. In each bin the flat
    tiles are kept (FLAT; at least MIN_TILES / 2 of the smoothest): an edge or texture is where a
    phase mismatch or a flow error leaks, and the structure of a tile's mean is independent of its
    difference's noise, so choosing by it does not bias the estimate. Their QUANTILE estimate
    divided by `correction` is the bin's. Returns each bin's mean level, that estimate and its count."""
    order = np.argsort(x)
    x, v, structure = x[order], v[order], structure[order]
    ends = [*np.searchsorted(x, np.linspace(x[0], x[-1], BINS + 1)[1:-1]), x.size]
    bounds: list[list[int]] = []
    start = 0
    for end in ends:
        if end - start >= MIN_TILES:
            bounds.append([start, int(end)])
            start = int(end)
    if start < x.size:  # a remainder too small for a bin of its own
        if bounds:
            bounds[-1][1] = x.size
        else:
            bounds.append([0, x.size])
    xs, vs = [], []
    for a, b in bounds:
        # a flat tile's structure is about its noise variance (the mean of two frames has half the
        # variance, a neighbour difference twice that): more than FLAT times the bin's first
        # estimate is an edge or texture
        first = np.quantile(v[a:b], QUANTILE) / correction
        flat = structure[a:b] <= FLAT * first
        if flat.sum() < MIN_TILES // 2:
            flat = structure[a:b] <= np.sort(structure[a:b])[MIN_TILES // 2 - 1]
        xs.append(x[a:b].mean())
        vs.append(np.quantile(v[a:b][flat], QUANTILE) / correction)
    return np.array(xs), np.array(vs), np.array([b - a for a, b in bounds], np.float64)


@dataclass(frozen=True)
class NoiseReport:
    """Where the noise model in use came from, for the user.

    source: "metadata" (the frames' NoiseProfile), "burst" (measured from the aligned burst),
        "single frame" (measured from the reference alone: a burst of one, or too little to go on).
    ratio: measured / metadata variance at mid grey (0.25), when both exist.
    disagrees: the metadata is off by more than DISAGREE either way.
    """

    source: str
    model: NoiseModel
    metadata: NoiseModel | None = None
    measured: NoiseModel | None = None
    ratio: float | None = None
    disagrees: bool = False

    def describe(self) -> str:
        """One line for the user: where the noise model came from, and the model."""
        s, o = np.mean(self.model.scale), np.mean(self.model.offset)
        model = f"variance = {s:.3g} x + {o:.3g}"
        if self.source == "metadata":
            text = f"noise from the metadata's noise profile: {model}"
        else:
            text = f"noise measured from the {self.source}: {model}"
            if self.metadata is None:
                text = "the frames carry no noise profile; " + text
        if self.ratio is not None:
            text += f"; the burst shows {self.ratio:.2g}x the metadata's variance at mid grey"
            if self.disagrees:
                text += (" (more than 4x off: the measured noise is used; --noise metadata keeps the profile)"
                         if self.source != "metadata" else " (more than 4x off; kept, as --noise metadata asks)")
        return text


def mid_grey_ratio(a: NoiseModel, b: NoiseModel, x: float = 0.25) -> float:
    """a's variance over b's at level x, averaged over the planes."""
    va = float(np.mean(a.variance(np.full(4, x, np.float32))))
    vb = float(np.mean(b.variance(np.full(4, x, np.float32))))
    return va / vb if vb > 0 else math.inf


def choose_noise(metadata: NoiseModel | None, measured: NoiseModel | None, single: NoiseModel | None,
                 mode: str = "auto") -> NoiseReport:
    """The noise model to merge with, and why. mode: "metadata" (the profile when there is one),
    "estimate" (the measured one), "auto" (the profile unless the burst disagrees by more than
    DISAGREE). `single` (the single-frame estimate) stands in when the burst could not be measured."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
    best_measure, source = (measured, "burst") if measured is not None else (single, "single frame")
    ratio = mid_grey_ratio(measured, metadata) if measured is not None and metadata is not None else None
    disagrees = ratio is not None and not (1.0 / DISAGREE <= ratio <= DISAGREE)
    if metadata is not None and (mode == "metadata" or (mode == "auto" and not disagrees)):
        return NoiseReport("metadata", metadata, metadata, measured, ratio, disagrees)
    if best_measure is None:
        raise ValueError("no noise model: the frames carry no noise profile and none could be measured")
    return NoiseReport(source, best_measure, metadata, measured, ratio, disagrees)

"""RAW stage: Bayer mosaics <-> 4 planes, black/white-level normalisation, the noise model, defects.

Everything downstream (align, merge, lens, finish) works on *planes*: a (4, H/2, W/2) float32 stack
of the four CFA positions in row-major order, (0,0), (0,1), (1,0), (1,1), black-subtracted and
scaled so that 0 is black and 1 is the white level. Which colour each plane holds follows the CFA
pattern (`plane_colours`), so the same code serves RGGB, BGGR, GRBG and GBRG sensors.

    pack(mosaic) -> planes            unpack(planes) -> mosaic
    normalise(mosaic, meta) -> planes denormalise(planes, black, white) -> uint16 mosaic
    NoiseModel.from_meta(meta) / estimate_noise(planes)   variance = S * x + O per plane
    defect_mask(stack, noise, frames) / repair_defects(planes, mask)   hot and dead pixels
    check_burst(frames, ref) -> [(index, why)]             frames that cannot join the burst
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from capture.frame import CFA_PATTERNS, Frame, PixelFormat, RawMeta
from engine.processor import FrameFormatError

SATURATION = 0.98  # normalised values at or above this are treated as clipped by the sensor


class BurstError(FrameFormatError):
    """Frames that cannot be fused as given; the message names the frame and says what to do."""


# -- layout -----------------------------------------------------------------------------------------
def plane_colours(pattern: str) -> tuple[str, str, str, str]:
    """'RGGB' -> ('R', 'G', 'G', 'B'): the colour of each packed plane (row-major CFA positions)."""
    if pattern not in CFA_PATTERNS:
        raise ValueError(f"CFA pattern {pattern!r} is not one of {CFA_PATTERNS}")
    return tuple(pattern)  # type: ignore[return-value]


def rggb_index(pattern: str) -> tuple[int, int, int, int]:
    """Indices of the (R, Gr, Gb, B) planes in a packed stack of `pattern`; Gr shares a row with R."""
    colours = plane_colours(pattern)
    r, b = colours.index("R"), colours.index("B")
    greens = [i for i, c in enumerate(colours) if c == "G"]
    gr = next(g for g in greens if g // 2 == r // 2)
    gb = next(g for g in greens if g != gr)
    return r, gr, gb, b


def colour_index(pattern: str) -> np.ndarray:
    """(4,) int: 0, 1, 2 for the R, G, B colour of each packed plane."""
    return np.array(["RGB".index(c) for c in plane_colours(pattern)])


# (row, column) of each packed plane's sample in a 2x2 CFA cell, row-major
_CELL = ((0, 0), (0, 1), (1, 0), (1, 1))


def _check_mosaic(mosaic: np.ndarray, who: str) -> None:
    if mosaic.ndim != 2 or mosaic.shape[0] % 2 or mosaic.shape[1] % 2:
        raise ValueError(f"{who} needs a 2-D mosaic with even sides, got shape {mosaic.shape}")


def pack(mosaic: np.ndarray) -> np.ndarray:
    """(H, W) mosaic, H and W even -> (4, H/2, W/2) planes in row-major CFA order (a new array)."""
    _check_mosaic(mosaic, "pack")
    return np.stack([mosaic[dy::2, dx::2] for dy, dx in _CELL])


def unpack(planes: np.ndarray) -> np.ndarray:
    """(4, h, w) planes -> (2h, 2w) mosaic, the inverse of `pack`."""
    if planes.ndim != 3 or planes.shape[0] != 4:
        raise ValueError(f"unpack needs (4, h, w) planes, got shape {planes.shape}")
    _, h, w = planes.shape
    out = np.empty((2 * h, 2 * w), planes.dtype)
    for (dy, dx), plane in zip(_CELL, planes):
        out[dy::2, dx::2] = plane
    return out


def black_levels(meta: RawMeta) -> np.ndarray:
    """(4,) float32 black level per packed plane (one value is repeated for all four)."""
    black = np.asarray(meta.black_level, np.float32)
    if black.size == 1:
        black = np.repeat(black, 4)
    if black.size != 4:
        raise ValueError(f"a Bayer frame needs 1 or 4 black levels, got {meta.black_level}")
    return black


def normalise(mosaic: np.ndarray, meta: RawMeta, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint16 mosaic -> (4, H/2, W/2) float32 planes, 0 = black, 1 = white level, into `out`
    if given (a burst's stack: no copy of each frame's planes into it).

    Values below black (read noise) stay negative: clipping them would bias dark areas upwards
    once frames are averaged.
    """
    _check_mosaic(mosaic, "normalise")
    black = black_levels(meta)
    scale = (1.0 / (float(meta.white_level) - black)).astype(np.float32)
    if out is None:
        out = np.empty((4, mosaic.shape[0] // 2, mosaic.shape[1] // 2), np.float32)
    for k, (dy, dx) in enumerate(_CELL):  # pack's planes, one pass each
        np.subtract(mosaic[dy::2, dx::2], black[k], out=out[k])  # in float32, as before
        out[k] *= scale[k]
    return out


def denormalise(planes: np.ndarray, black: Sequence[float], white: int) -> np.ndarray:
    """(4, h, w) normalised planes -> (2h, 2w) uint16 mosaic with the given levels, rounded and
    clipped to [0, white]."""
    black = np.asarray(black, np.float64).reshape(-1)
    if black.size == 1:
        black = np.repeat(black, 4)
    out = planes.astype(np.float64) * (white - black)[:, None, None] + black[:, None, None]
    return unpack(np.clip(np.rint(out), 0, white).astype(np.uint16))


def grey(planes: np.ndarray) -> np.ndarray:
    """(..., 4, h, w) planes -> (..., h, w) float32 mean of the 4 CFA positions (the 2x2-averaged
    image alignment runs on; its noise variance is a quarter of a plane's). For float32 planes
    the same sums as planes.mean(axis=-3, dtype=np.float32), in half its time."""
    out = np.add(planes[..., 0, :, :], planes[..., 1, :, :], dtype=np.float32)
    out += planes[..., 2, :, :]
    out += planes[..., 3, :, :]
    out *= np.float32(0.25)
    return out


# -- noise ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseModel:
    """Per-plane Poisson-Gaussian noise on normalised signal: variance = scale * x + offset.

    scale, offset: (4,) float64, one per packed plane (row-major CFA position).
    estimated: True when measured from the pixels rather than read from the metadata.
    """

    scale: tuple[float, float, float, float]
    offset: tuple[float, float, float, float]
    estimated: bool = False

    def __post_init__(self) -> None:
        if len(self.scale) != 4 or len(self.offset) != 4:
            raise ValueError(f"NoiseModel needs 4 scales and 4 offsets, got {self.scale}, {self.offset}")
        if not all(math.isfinite(v) and v >= 0 for v in (*self.scale, *self.offset)):
            raise ValueError(f"noise scales and offsets must be finite and >= 0, got {self.scale}, {self.offset}")

    def variance(self, x: np.ndarray | float, plane: int | None = None) -> np.ndarray:
        """Noise variance at signal x. With plane=None, x is (4, ...) and each row uses its plane's
        coefficients; otherwise x is any shape and uses plane `plane`'s."""
        s, o = np.asarray(self.scale, np.float32), np.asarray(self.offset, np.float32)
        x = np.maximum(np.asarray(x, np.float32), 0.0)
        if plane is not None:
            return s[plane] * x + o[plane]
        extra = (1,) * (x.ndim - 1)
        return s.reshape(4, *extra) * x + o.reshape(4, *extra)

    def grey_variance(self, x: np.ndarray | float) -> np.ndarray:
        """Variance of the 4-plane mean at grey level x (independent noise per plane)."""
        x = np.maximum(np.asarray(x, np.float32), 0.0)
        return (float(np.mean(self.scale)) * x + float(np.mean(self.offset))) / 4.0

    def scaled(self, factor: Sequence[float] | float) -> "NoiseModel":
        """The model with every variance multiplied by `factor` (one value, or one per plane)."""
        f = np.broadcast_to(np.asarray(factor, np.float64), (4,))
        return NoiseModel(tuple(float(v) for v in np.asarray(self.scale) * f),
                          tuple(float(v) for v in np.asarray(self.offset) * f), self.estimated)

    @staticmethod
    def from_meta(meta: RawMeta) -> "NoiseModel | None":
        """From RawMeta.noise_profile: 1 pair (all planes), 3 pairs (per colour R, G, B, as DNG
        NoiseProfile stores them) or 4 pairs (per packed plane). None when the metadata has none."""
        profile = meta.noise_profile
        if not profile:
            return None
        pairs = [tuple(float(v) for v in p) for p in profile]
        if len(pairs) == 1:
            pairs *= 4
        elif len(pairs) == 3:
            pairs = [pairs[c] for c in colour_index(meta.cfa_pattern)]
        elif len(pairs) != 4:
            raise ValueError(f"noise_profile has {len(pairs)} pairs; expected 1, 3 (R, G, B) or 4 (per CFA position)")
        return NoiseModel(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))  # type: ignore[arg-type]

    def as_profile(self, pattern: str) -> tuple[tuple[float, float], ...]:
        """The 3 (scale, offset) pairs, per colour R, G, B, that a DNG NoiseProfile holds (the two
        green planes averaged)."""
        colours = colour_index(pattern)
        out = []
        for c in range(3):
            idx = np.flatnonzero(colours == c)
            out.append((float(np.mean(np.asarray(self.scale)[idx])), float(np.mean(np.asarray(self.offset)[idx]))))
        return tuple(out)


def estimate_noise(planes: np.ndarray, bins: int = 16, min_count: int = 200) -> NoiseModel:
    """Fit variance = S * x + O per plane from one frame's (4, h, w) normalised planes.

    The finest diagonal Haar detail of each plane, d = (a - b - c + d) / 2 over 2x2 blocks, has
    the pixel noise variance in flat areas and little scene content. Blocks are binned by their
    mean; each bin gives a robust variance (MAD of d, which ignores the few textured blocks), and
    a weighted least-squares line through the bins gives S and O (both kept >= 0). Saturated
    blocks are left out; small frames get fewer blocks per bin, tiny ones one variance.
    """
    p = planes[:, : planes.shape[1] // 2 * 2, : planes.shape[2] // 2 * 2].astype(np.float32)
    blocks = p.shape[1] * p.shape[2] // 4
    if blocks > 1 << 18:  # a 12 MP frame: a regular subset of block rows is plenty
        step = int(math.ceil(blocks / (1 << 18)))
        keep_rows = np.arange(p.shape[1] // 2)[::step]
        p = p.reshape(4, -1, 2, p.shape[2])[:, keep_rows].reshape(4, -1, p.shape[2])
    a, b, c, d = p[:, 0::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 0::2], p[:, 1::2, 1::2]
    detail = ((a - b - c + d) * 0.5).reshape(4, -1)
    level = ((a + b + c + d) * 0.25).reshape(4, -1)
    scales, offsets = [], []
    for i in range(4):
        keep = level[i] < SATURATION * 0.95
        lv, dt = level[i][keep], detail[i][keep]
        if lv.size < 8:
            scales.append(0.0)
            offsets.append(1e-6)
            continue
        per_bin = max(16, min(min_count, lv.size // (2 * bins)))
        edges = np.unique(np.quantile(lv, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, lv, side="right") - 1, 0, len(edges) - 2)
        xs, vs, ws = [], [], []
        for k in range(len(edges) - 1):
            sel = dt[which == k]
            if sel.size < per_bin:
                continue
            mad = float(np.median(np.abs(sel - np.median(sel))))
            xs.append(float(np.mean(lv[which == k])))
            vs.append((1.4826 * mad) ** 2)
            ws.append(sel.size)
        if not xs:  # too few blocks to bin: one robust variance for the whole plane
            mad = float(np.median(np.abs(dt - np.median(dt))))
            xs, vs, ws = [float(np.mean(lv))], [(1.4826 * mad) ** 2], [dt.size]
        s, o = _fit_line(np.array(xs), np.array(vs), np.array(ws, np.float64))
        scales.append(s)
        offsets.append(o)
    return NoiseModel(tuple(scales), tuple(offsets), estimated=True)  # type: ignore[arg-type]


def _fit_line(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares v = s * x + o with s, o >= 0 (a one-point or flat fit gives s = 0)."""
    if x.size == 0:
        return 0.0, 1e-6
    if x.size == 1 or np.ptp(x) < 1e-6:
        return 0.0, float(max(np.average(v, weights=w), 1e-10))
    # Relative weighting: variance estimates scatter in proportion to their size.
    w = w / np.maximum(v, 1e-12) ** 2
    A = np.stack([x, np.ones_like(x)], axis=1) * np.sqrt(w)[:, None]
    s, o = np.linalg.lstsq(A, v * np.sqrt(w), rcond=None)[0]
    if o < 0:
        s, o = float(np.sum(w * x * v) / np.sum(w * x * x)), 0.0
    if s < 0:
        s, o = 0.0, float(np.average(v, weights=w))
    return float(s), float(max(o, 1e-10))


# -- defects ----------------------------------------------------------------------------------------
def defect_mask(stack: np.ndarray, noise: NoiseModel, frames: Sequence[int] | None = None, k: float = 8.0) -> np.ndarray:
    """(N, 4, h, w) normalised planes of a burst -> (4, h, w) bool: hot, dead or stuck pixels.

    A pixel is a defect when it differs from the median of its 3x3 same-colour neighbours by more
    than k noise sigmas, the same way (too bright or too dark), in all of `frames` (default: all)
    but one when there are four or more (a dead pixel cannot show in a dark part of the scene).
    Pass frames the camera moved between (`displaced_frames`): scene detail then lands on other
    pixels from frame to frame while a sensor defect stays put. Fewer than 3 frames flag nothing:
    they cannot tell the two apart.
    """
    frames = list(range(stack.shape[0])) if frames is None else list(frames)
    if len(frames) < 3:
        return np.zeros(stack.shape[1:], bool)
    hot = np.zeros(stack.shape[1:], np.int16)
    cold = np.zeros(stack.shape[1:], np.int16)
    for i in frames:
        frame = stack[i]
        med = median3(frame)
        limit = k * np.sqrt(noise.variance(med))
        hot += frame - med > limit
        cold += med - frame > limit
    need = len(frames) if len(frames) <= 3 else len(frames) - 1
    return (hot >= need) | (cold >= need)


def displaced_frames(offsets: np.ndarray, ref: int, min_shift: float = 1.0, max_frames: int = 4) -> list[int]:
    """Frames (starting with the reference) whose positions, (N, 2) plane-pixel (dx, dy) offsets
    relative to the reference, differ pairwise by at least `min_shift` plane pixels along both
    axes (a scene edge that moves along itself must not pass for a defect)."""
    chosen = [ref]
    for i in np.argsort(-np.linalg.norm(offsets - offsets[ref], axis=1)):
        if len(chosen) >= max_frames:
            break
        if all(np.all(np.abs(offsets[i] - offsets[j]) >= min_shift) for j in chosen):
            chosen.append(int(i))
    return chosen


def median3(planes: np.ndarray) -> np.ndarray:
    """(4, h, w) float32 -> the 3x3 median of each plane (same shape)."""
    return np.stack([cv2.medianBlur(np.ascontiguousarray(p, np.float32), 3) for p in planes])


def repair_defects(planes: np.ndarray, mask: np.ndarray, inplace: bool = False) -> np.ndarray:
    """(..., 4, h, w) planes (one frame or a burst) with the pixels in (4, h, w) bool `mask`
    replaced, in every frame, by their 3x3 same-colour median (median3's: borders replicated):
    a new array unless `inplace`; the input itself when the mask is empty.

    Only the masked pixels' neighbourhoods are read: a whole-plane median per frame took 10 ms
    for an 8-frame 640x480 burst, for the few dozen pixels a sensor has."""
    if not mask.any():
        return planes
    p, y, x = np.nonzero(mask)
    dy, dx = np.divmod(np.arange(9), 3)
    h, w = mask.shape[1:]
    yy = np.clip(y[:, None] + dy - 1, 0, h - 1)
    xx = np.clip(x[:, None] + dx - 1, 0, w - 1)
    medians = np.partition(planes[..., p[:, None], yy, xx], 4, axis=-1)[..., 4]  # the 5th of 9; read before any write
    out = planes if inplace else planes.copy()
    out[..., p, y, x] = medians
    return out


# -- burst checks -----------------------------------------------------------------------------------
def check_burst(frames: Sequence[Frame], ref: int) -> list[tuple[int, str]]:
    """[(index, why)] for every frame that cannot be merged with frames[ref]: not BAYER16, another
    size, CFA pattern, black/white level, or exposure (time or ISO differ by more than 1 %).
    The reference itself is checked for being a Bayer frame."""
    problems: list[tuple[int, str]] = []
    r = frames[ref]
    if r.pixel_format is not PixelFormat.BAYER16:
        return [(ref, f"the reference frame is {r.pixel_format.value}; burst fusion needs BAYER16 RAW frames "
                      f"(a DNG burst or the simulated Bayer camera, simulated:bayer)")]
    for i, f in enumerate(frames):
        if i == ref:
            continue
        why = []
        if f.pixel_format is not PixelFormat.BAYER16:
            why.append(f"pixel format {f.pixel_format.value}, not BAYER16")
        elif f.pixels.shape != r.pixels.shape:
            why.append(f"size {f.width}x{f.height} vs {r.width}x{r.height}")
        else:
            a, b = f.raw, r.raw
            if a.cfa_pattern != b.cfa_pattern:
                why.append(f"CFA pattern {a.cfa_pattern} vs {b.cfa_pattern}")
            if tuple(black_levels(a)) != tuple(black_levels(b)) or a.white_level != b.white_level:
                why.append(f"levels black {a.black_level} white {a.white_level} vs black {b.black_level} "
                           f"white {b.white_level}")
            for name, x, y in (("exposure time", a.exposure_time_s, b.exposure_time_s), ("ISO", a.iso, b.iso)):
                if x is not None and y is not None and abs(x - y) > 0.01 * max(abs(x), abs(y)):
                    why.append(f"{name} {x:g} vs {y:g}")
        if why:
            problems.append((i, ", ".join(why)))
    return problems

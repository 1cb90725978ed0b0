"""Lens stage: vignetting, lateral chromatic aberration and distortion, from DNG opcodes or a model.

DNG 1.3+ carries lens corrections as opcode lists (tags OpcodeList1/2/3; RawMeta.opcodes holds
their bytes). A list is big-endian: uint32 count, then per opcode uint32 id, uint32 minimum DNG
version, uint32 flags (1 = optional, 2 = may be skipped for previews), uint32 parameter bytes and
the parameters. We read and write three of them:

    WarpRectilinear (id 1)    uint32 planes (1 or 3); per plane six doubles kr0..kr3, kt0, kt1;
                              doubles cx, cy (optical centre, fraction of width and height).
                              A corrected pixel x takes the source pixel
                              c + R (d (kr0 + kr1 r^2 + kr2 r^4 + kr3 r^6) + tangential(d))
                              with d = (x - c) / R, r = |d|, R the distance from c to the farthest
                              corner; per-plane coefficients = lateral chromatic aberration.
    FixVignetteRadial (id 3)  doubles k0..k4, cx, cy: pixels are multiplied by
                              1 + k0 r^2 + k1 r^4 + k2 r^6 + k3 r^8 + k4 r^10 (r at pixel centres).
    GainMap (id 9)            uint32 top, left, bottom, right, plane, planes, row pitch, column
                              pitch, points v, points h; doubles spacing v, h, origin v, h (in
                              fractions of the image); uint32 map planes; float32 gains [v][h][plane],
                              bilinear between points: lens shading per CFA site.
Every other opcode is kept as bytes (and passed through to output files untouched).

Corrections work on the packed planes in the RAW domain: gains per CFA site, and the warp applied
to each CFA plane with the coefficients of its colour at its own sample positions (what a raw
converter does after demosaicing, done before it). Without opcodes a `LensModel` can come from
the user or from `estimate_lateral_ca` (a radial magnification of R and B against G, fitted to
the image); `LensModel.as_vector()` gives a fixed-size parameter vector for learned refinement.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Sequence, Union

import cv2
import numpy as np

from engine.burst.raw import colour_index, plane_colours

WARP_RECTILINEAR, WARP_FISHEYE, FIX_VIGNETTE_RADIAL, GAIN_MAP = 1, 2, 3, 9
OPCODE_NAMES = {1: "WarpRectilinear", 2: "WarpFisheye", 3: "FixVignetteRadial", 4: "FixBadPixelsConstant",
                5: "FixBadPixelsList", 6: "TrimBounds", 7: "MapTable", 8: "MapPolynomial", 9: "GainMap",
                10: "DeltaPerRow", 11: "DeltaPerColumn", 12: "ScalePerRow", 13: "ScalePerColumn",
                14: "WarpRectilinear2"}
DNG_1_3 = (1, 3, 0, 0)
OPTIONAL, PREVIEW_SKIP = 1, 2


class OpcodeError(ValueError):
    """An opcode list that cannot be parsed; the message gives the byte offset and what was wrong."""


# -- opcodes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawOpcode:
    """An opcode we do not interpret, kept byte for byte."""

    id: int
    params: bytes
    version: tuple[int, int, int, int] = DNG_1_3
    flags: int = OPTIONAL

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.id, f"opcode {self.id}")


@dataclass(frozen=True)
class WarpRectilinear:
    """coefficients: one (kr0, kr1, kr2, kr3, kt0, kt1) per plane (1 for all, or 3 for R, G, B);
    centre: (cx, cy) as fractions of the image width and height."""

    coefficients: tuple[tuple[float, ...], ...]
    centre: tuple[float, float] = (0.5, 0.5)
    flags: int = OPTIONAL
    version: tuple[int, int, int, int] = DNG_1_3
    id: int = WARP_RECTILINEAR

    def __post_init__(self) -> None:
        if len(self.coefficients) not in (1, 3) or any(len(c) != 6 for c in self.coefficients):
            raise ValueError(f"WarpRectilinear needs 1 or 3 planes of 6 coefficients, got {self.coefficients}")
        _check_centre(self.centre, "WarpRectilinear")

    def plane(self, colour: int) -> tuple[float, ...]:
        """Coefficients for colour 0, 1, 2 (R, G, B)."""
        return self.coefficients[colour if len(self.coefficients) == 3 else 0]


@dataclass(frozen=True)
class FixVignetteRadial:
    """k: (k0..k4) of the gain 1 + k0 r^2 + ... + k4 r^10; centre: fractions of width, height."""

    k: tuple[float, float, float, float, float]
    centre: tuple[float, float] = (0.5, 0.5)
    flags: int = OPTIONAL
    version: tuple[int, int, int, int] = DNG_1_3
    id: int = FIX_VIGNETTE_RADIAL

    def __post_init__(self) -> None:
        if len(self.k) != 5:
            raise ValueError(f"FixVignetteRadial needs 5 coefficients, got {self.k}")
        _check_centre(self.centre, "FixVignetteRadial")


@dataclass(frozen=True)
class GainMap:
    """A gain map over a rectangle of the image and a subset of its samples (rows top, top +
    row_pitch, ... < bottom; columns likewise). gains: (points_v, points_h, map_planes) float32;
    spacing and origin in fractions of the image height/width."""

    top: int
    left: int
    bottom: int
    right: int
    gains: np.ndarray
    spacing: tuple[float, float] = (1.0, 1.0)  # (v, h)
    origin: tuple[float, float] = (0.0, 0.0)  # (v, h)
    plane: int = 0
    planes: int = 1
    row_pitch: int = 1
    col_pitch: int = 1
    flags: int = OPTIONAL
    version: tuple[int, int, int, int] = DNG_1_3
    id: int = GAIN_MAP

    def __post_init__(self) -> None:
        g = np.asarray(self.gains, np.float32)
        if g.ndim == 2:
            g = g[..., None]
        if g.ndim != 3 or min(g.shape) < 1:
            raise ValueError(f"GainMap gains must be (points_v, points_h[, planes]), got shape {np.shape(self.gains)}")
        object.__setattr__(self, "gains", g)
        if self.row_pitch < 1 or self.col_pitch < 1 or self.bottom <= self.top or self.right <= self.left:
            raise ValueError(f"GainMap area {self.top, self.left, self.bottom, self.right} with pitch "
                             f"{self.row_pitch, self.col_pitch} is empty or invalid")

    def __eq__(self, other) -> bool:
        if not isinstance(other, GainMap):
            return NotImplemented
        same = [getattr(self, f) == getattr(other, f) for f in ("top", "left", "bottom", "right", "spacing", "origin",
                                                                "plane", "planes", "row_pitch", "col_pitch", "flags")]
        return all(same) and np.array_equal(self.gains, other.gains)

    __hash__ = None  # type: ignore[assignment]


Opcode = Union[WarpRectilinear, FixVignetteRadial, GainMap, RawOpcode]


def _check_centre(centre, what: str) -> None:
    if len(centre) != 2 or not all(0.0 <= c <= 1.0 for c in centre):
        raise ValueError(f"{what} centre must be two fractions in [0, 1], got {centre}")


def parse_opcode_list(data: bytes) -> list[Opcode]:
    """Bytes of a DNG OpcodeList tag -> its opcodes, in order. Raises OpcodeError naming the byte
    offset of whatever is short or inconsistent."""
    data = bytes(data)
    if len(data) < 4:
        raise OpcodeError(f"opcode list of {len(data)} bytes is shorter than its 4-byte count")
    (count,) = struct.unpack_from(">I", data, 0)
    pos = 4
    out: list[Opcode] = []
    for index in range(count):
        if pos + 16 > len(data):
            raise OpcodeError(f"opcode {index} of {count}: its 16-byte header at byte {pos} runs past the end "
                              f"({len(data)} bytes); the list is truncated")
        op_id, version, flags, size = struct.unpack_from(">IIII", data, pos)
        start = pos + 16
        if start + size > len(data):
            raise OpcodeError(f"opcode {index} ({OPCODE_NAMES.get(op_id, op_id)}) at byte {pos} declares {size} "
                              f"parameter bytes but only {len(data) - start} remain; the list is truncated")
        params = data[start : start + size]
        ver = tuple(version.to_bytes(4, "big"))
        try:
            out.append(_parse_params(op_id, params, ver, flags))
        except (struct.error, ValueError) as exc:
            raise OpcodeError(f"opcode {index} ({OPCODE_NAMES.get(op_id, op_id)}) at byte {pos}: {exc}") from exc
        pos = start + size
    return out


def _parse_params(op_id: int, p: bytes, version, flags: int) -> Opcode:
    if op_id == WARP_RECTILINEAR:
        (planes,) = struct.unpack_from(">I", p, 0)
        if planes not in (1, 3) or len(p) != 4 + planes * 48 + 16:
            raise ValueError(f"{planes} planes need {4 + planes * 48 + 16} bytes, got {len(p)}")
        vals = struct.unpack_from(f">{planes * 6 + 2}d", p, 4)
        coeffs = tuple(tuple(vals[6 * i : 6 * i + 6]) for i in range(planes))
        return WarpRectilinear(coeffs, (vals[-2], vals[-1]), flags, version)
    if op_id == FIX_VIGNETTE_RADIAL:
        if len(p) != 56:
            raise ValueError(f"needs 56 parameter bytes, got {len(p)}")
        vals = struct.unpack(">7d", p)
        return FixVignetteRadial(tuple(vals[:5]), (vals[5], vals[6]), flags, version)
    if op_id == GAIN_MAP:
        if len(p) < 76:
            raise ValueError(f"needs at least 76 parameter bytes, got {len(p)}")
        top, left, bottom, right, plane, planes, rp, cp, pv, ph = struct.unpack_from(">10I", p, 0)
        sv, sh, ov, oh = struct.unpack_from(">4d", p, 40)
        (mp,) = struct.unpack_from(">I", p, 72)
        n = pv * ph * mp
        if len(p) != 76 + 4 * n:
            raise ValueError(f"a {pv}x{ph}x{mp} map needs {76 + 4 * n} bytes, got {len(p)}")
        gains = np.frombuffer(p, ">f4", count=n, offset=76).astype(np.float32).reshape(pv, ph, mp)
        return GainMap(top, left, bottom, right, gains, (sv, sh), (ov, oh), plane, planes, rp, cp, flags, version)
    return RawOpcode(op_id, bytes(p), version, flags)


def opcode_list_bytes(opcodes: Sequence[Opcode]) -> bytes:
    """Opcodes -> the bytes of a DNG OpcodeList tag (inverse of parse_opcode_list)."""
    out = [struct.pack(">I", len(opcodes))]
    for op in opcodes:
        params = _params_bytes(op)
        version = int.from_bytes(bytes(op.version), "big")
        out.append(struct.pack(">IIII", op.id, version, op.flags, len(params)))
        out.append(params)
    return b"".join(out)


def _params_bytes(op: Opcode) -> bytes:
    if isinstance(op, WarpRectilinear):
        vals = [v for plane in op.coefficients for v in plane] + list(op.centre)
        return struct.pack(">I", len(op.coefficients)) + struct.pack(f">{len(vals)}d", *vals)
    if isinstance(op, FixVignetteRadial):
        return struct.pack(">7d", *op.k, *op.centre)
    if isinstance(op, GainMap):
        pv, ph, mp = op.gains.shape
        head = struct.pack(">10I", op.top, op.left, op.bottom, op.right, op.plane, op.planes, op.row_pitch,
                           op.col_pitch, pv, ph)
        return head + struct.pack(">4d", *op.spacing, *op.origin) + struct.pack(">I", mp) + op.gains.astype(">f4").tobytes()
    return op.params


# -- the lens model -------------------------------------------------------------------------------------
IDENTITY_WARP = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class LensModel:
    """Everything the lens stage corrects, whichever way it was obtained.

    vignette: (k0..k4) radial gain, 1 + k0 r^2 + ... (zeros: none).
    warp: per colour R, G, B: (kr0, kr1, kr2, kr3, kt0, kt1) (identity: (1, 0, 0, 0, 0, 0)).
    centre: optical centre, fractions of width and height.
    gain_maps: GainMap opcodes (lens shading per CFA site), applied first.
    source: "none", "opcodes", "estimated" or "user".
    """

    vignette: tuple[float, ...] = (0.0,) * 5
    warp: tuple[tuple[float, ...], ...] = (IDENTITY_WARP,) * 3
    centre: tuple[float, float] = (0.5, 0.5)
    gain_maps: tuple[GainMap, ...] = field(default=(), compare=False)
    source: str = "none"

    VECTOR_SIZE = 29

    @property
    def has_vignette(self) -> bool:
        return any(v != 0.0 for v in self.vignette)

    @property
    def has_warp(self) -> bool:
        return any(tuple(w) != IDENTITY_WARP for w in self.warp)

    @property
    def is_identity(self) -> bool:
        return not (self.has_vignette or self.has_warp or self.gain_maps)

    def as_vector(self) -> np.ndarray:
        """(29,) float32: vignette k0..k4, centre cx, cy, then R, G, B warps (kr0 - 1, kr1, kr2,
        kr3, kt0, kt1), then for each CFA position the gain-map gain at the corners over the
        centre minus 1 (0 without gain maps). Zero for a perfect lens."""
        v = list(self.vignette) + [self.centre[0] - 0.5, self.centre[1] - 0.5]
        for w in self.warp:
            v += [w[0] - 1.0, *w[1:]]
        v += list(gain_map_falloff(self.gain_maps))
        return np.asarray(v, np.float32)

    @staticmethod
    def from_opcodes(opcodes: dict[int, bytes]) -> "LensModel":
        """The lens corrections in RawMeta.opcodes (lists 1-3; the last of each kind wins)."""
        vig, warp, centre, maps = None, None, None, []
        for n in sorted(opcodes):
            for op in parse_opcode_list(opcodes[n]) if opcodes[n] else []:
                if isinstance(op, FixVignetteRadial):
                    vig, centre = op, op.centre
                elif isinstance(op, WarpRectilinear):
                    warp, centre = op, op.centre
                elif isinstance(op, GainMap):
                    maps.append(op)
        if vig is None and warp is None and not maps:
            return LensModel()
        return LensModel(
            vignette=tuple(vig.k) if vig else (0.0,) * 5,
            warp=tuple(warp.plane(c) for c in range(3)) if warp else (IDENTITY_WARP,) * 3,
            centre=centre or (0.5, 0.5), gain_maps=tuple(maps), source="opcodes",
        )

    def to_opcodes(self) -> dict[int, bytes]:
        """Opcode lists that describe this model: gain maps in list 2, warp and vignette in 3."""
        out: dict[int, bytes] = {}
        if self.gain_maps:
            out[2] = opcode_list_bytes(list(self.gain_maps))
        ops3: list[Opcode] = []
        if self.has_warp:
            ops3.append(WarpRectilinear(tuple(tuple(w) for w in self.warp), self.centre))
        if self.has_vignette:
            ops3.append(FixVignetteRadial(tuple(self.vignette), self.centre))
        if ops3:
            out[3] = opcode_list_bytes(ops3)
        return out


def without_lens_opcodes(opcodes: dict[int, bytes]) -> dict[int, bytes]:
    """The opcode lists with WarpRectilinear, FixVignetteRadial and GainMap removed (after they
    have been applied to the pixels, so no reader applies them twice); the rest kept as is."""
    out = {}
    for n, data in opcodes.items():
        if not data:
            continue
        rest = [op for op in parse_opcode_list(data) if not isinstance(op, (WarpRectilinear, FixVignetteRadial, GainMap))]
        if rest:
            out[n] = opcode_list_bytes(rest)
    return out


def gain_map_falloff(maps: Sequence[GainMap]) -> tuple[float, float, float, float]:
    """For each CFA position (row-major), the gain at the image corners over the gain at the
    centre, minus 1, from the gain maps that cover it (0 where none does)."""
    out = [0.0] * 4
    for gm in maps:
        g = gm.gains[..., 0]
        corners = float(np.mean([g[0, 0], g[0, -1], g[-1, 0], g[-1, -1]]))
        centre = float(g[g.shape[0] // 2, g.shape[1] // 2])
        for pos in _cfa_positions(gm):
            out[pos] = corners / centre - 1.0 if centre else 0.0
    return tuple(out)  # type: ignore[return-value]


def _cfa_positions(gm: GainMap) -> list[int]:
    rows = {gm.top % 2} if gm.row_pitch % 2 == 0 else {0, 1}
    cols = {gm.left % 2} if gm.col_pitch % 2 == 0 else {0, 1}
    return sorted(2 * r + c for r in rows for c in cols)


# -- corrections on planes --------------------------------------------------------------------------------
def _site_coords(h: int, w: int, pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic (x, y) coordinates of packed plane `pos`'s samples: (h, w) arrays each."""
    row, col = divmod(pos, 2)
    xs = (2 * np.arange(w, dtype=np.float64) + col)[None, :].repeat(h, axis=0)
    ys = (2 * np.arange(h, dtype=np.float64) + row)[:, None].repeat(w, axis=1)
    return xs, ys


def vignette_gain(k: Sequence[float], centre: Sequence[float], height: int, width: int,
                  xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """FixVignetteRadial gain at mosaic pixels (xs, ys) of a height x width image (pixel centres
    at +0.5, r = 1 at the farthest corner)."""
    cx, cy = centre[0] * width, centre[1] * height
    rmax = math.hypot(max(cx, width - cx), max(cy, height - cy))
    r2 = ((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2) / (rmax * rmax)
    gain = np.zeros_like(r2)
    for kk in reversed(list(k)):
        gain = r2 * (kk + gain)
    return (1.0 + gain).astype(np.float32)


def warp_source(coeffs: Sequence[float], centre: Sequence[float], height: int, width: int,
                xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WarpRectilinear: for corrected mosaic pixels (xs, ys), the source (uncorrected) positions."""
    kr0, kr1, kr2, kr3, kt0, kt1 = coeffs
    cx, cy = centre[0] * width, centre[1] * height
    norm = max(math.hypot(cx - x, cy - y) for x in (0, width) for y in (0, height))
    dx, dy = (xs - cx) / norm, (ys - cy) / norm
    r2 = np.minimum(dx * dx + dy * dy, 1.0)
    ratio = kr0 + r2 * (kr1 + r2 * (kr2 + r2 * kr3))
    tx = kt1 * (r2 + 2 * dx * dx) + 2 * kt0 * dx * dy
    ty = kt0 * (r2 + 2 * dy * dy) + 2 * kt1 * dx * dy
    return cx + norm * (dx * ratio + tx), cy + norm * (dy * ratio + ty)


def gain_map_gain(gm: GainMap, height: int, width: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A gain map's gain at mosaic pixels (xs, ys) (map plane 0): positions at pixel centres as
    fractions of the whole image, bilinear between map points, constant past the outer ones (a
    map one point wide or tall is constant along that axis)."""
    pv, ph = gm.gains.shape[:2]
    sv, ov = (gm.spacing[0], gm.origin[0]) if pv > 1 else (1.0, 0.0)
    sh, oh = (gm.spacing[1], gm.origin[1]) if ph > 1 else (1.0, 0.0)
    v = ((ys + 0.5) / height - ov) / sv
    u = ((xs + 0.5) / width - oh) / sh
    g = np.ascontiguousarray(gm.gains[..., 0], np.float32)
    return cv2.remap(g, np.clip(u, 0, ph - 1).astype(np.float32), np.clip(v, 0, pv - 1).astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def gain_map_mask(gm: GainMap, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which mosaic pixels (xs, ys) a gain map applies to (its area and pitch)."""
    xi, yi = xs.astype(np.int64), ys.astype(np.int64)
    return ((yi >= gm.top) & (yi < gm.bottom) & ((yi - gm.top) % gm.row_pitch == 0)
            & (xi >= gm.left) & (xi < gm.right) & ((xi - gm.left) % gm.col_pitch == 0))


@dataclass(frozen=True)
class LensMaps:
    """Per-plane gains and remap maps for one image size (precomputed once, reused per frame).
    gain: (4, h, w) float32 or None; maps: per plane (map1, map2) fixed-point, or None."""

    gain: np.ndarray | None
    maps: tuple | None


def lens_maps(model: LensModel, pattern: str, h: int, w: int) -> LensMaps:
    """Precompute what `apply_lens_maps` needs for (4, h, w) planes of a `pattern` sensor."""
    height, width = 2 * h, 2 * w
    gain = None
    if model.gain_maps or model.has_vignette:
        gain = np.ones((4, h, w), np.float32)
        for pos in range(4):
            xs, ys = _site_coords(h, w, pos)
            for gm in model.gain_maps:
                mask = gain_map_mask(gm, xs, ys)
                if mask.any():
                    gain[pos] = np.where(mask, gain[pos] * gain_map_gain(gm, height, width, xs, ys), gain[pos])
            if model.has_vignette:
                gain[pos] *= vignette_gain(model.vignette, model.centre, height, width, xs, ys)
    maps = None
    if model.has_warp:
        colours = colour_index(pattern)
        maps = []
        for pos in range(4):
            row, col = divmod(pos, 2)
            xs, ys = _site_coords(h, w, pos)
            sx, sy = warp_source(model.warp[colours[pos]], model.centre, height, width, xs, ys)
            # source mosaic position -> this plane's coordinates
            maps.append(cv2.convertMaps(((sx - col) / 2).astype(np.float32), ((sy - row) / 2).astype(np.float32),
                                        cv2.CV_16SC2))
        maps = tuple(maps)
    return LensMaps(gain, maps)


def apply_lens_maps(planes: np.ndarray, maps: LensMaps, clip: bool = True) -> np.ndarray:
    """(4, h, w) normalised planes -> lens-corrected planes (a new array): gains (shading and
    vignetting; clipped at 1 like the DNG SDK when `clip`), then the per-colour warp (bicubic)."""
    out = planes * maps.gain if maps.gain is not None else planes.copy()
    if clip and maps.gain is not None:
        np.minimum(out, 1.0, out=out)
    if maps.maps is not None:
        out = np.stack([cv2.remap(np.ascontiguousarray(out[p]), m1, m2, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
                        for p, (m1, m2) in enumerate(maps.maps)])
    return out.astype(np.float32, copy=False)


def correct(planes: np.ndarray, model: LensModel, pattern: str) -> np.ndarray:
    """(4, h, w) normalised planes -> corrected planes (see apply_lens_maps)."""
    if model.is_identity:
        return planes
    return apply_lens_maps(planes, lens_maps(model, pattern, *planes.shape[1:]))


def distort(planes: np.ndarray, model: LensModel, pattern: str, iterations: int = 8) -> np.ndarray:
    """The aberrations a lens described by `model` causes: the inverse of `correct` (divides by the
    gains, and warps with the inverse of the correction, found by fixed-point iteration). For
    synthesising test images and training data. (4, h, w) -> (4, h, w)."""
    _, h, w = planes.shape
    height, width = 2 * h, 2 * w
    out = planes.astype(np.float32).copy()
    if model.has_warp:
        colours = colour_index(pattern)
        warped = []
        for pos in range(4):
            row, col = divmod(pos, 2)
            xs, ys = _site_coords(h, w, pos)
            # find corrected positions q with warp_source(q) = (xs, ys)
            qx, qy = xs.copy(), ys.copy()
            for _ in range(iterations):
                sx, sy = warp_source(model.warp[colours[pos]], model.centre, height, width, qx, qy)
                qx, qy = qx - (sx - xs), qy - (sy - ys)
            warped.append(cv2.remap(out[pos], ((qx - col) / 2).astype(np.float32), ((qy - row) / 2).astype(np.float32),
                                    cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE))
        out = np.stack(warped)
    if model.gain_maps or model.has_vignette:
        maps = lens_maps(LensModel(model.vignette, centre=model.centre, gain_maps=model.gain_maps), pattern, h, w)
        out = out / maps.gain
    return out.astype(np.float32)


# -- a model from the image -----------------------------------------------------------------------------
def estimate_lateral_ca(planes: np.ndarray, pattern: str, grid: int = 32, max_scale: float = 0.01) -> LensModel:
    """Lateral chromatic aberration as a radial magnification (kr0) of R and of B relative to G
    about the image centre, fitted to one (4, h, w) frame.

    Local shifts of the R and B planes against the mean green are measured on a grid of patches
    by a Lucas-Kanade step on zero-mean, contrast-normalised patches (colour planes differ in level,
    not in where their edges are); a weighted median of each patch's radial shift over its radius
    gives the magnification, clamped to 1 +- max_scale. A frame without enough edges gives the
    identity."""
    colours = plane_colours(pattern)
    g_idx = [i for i, c in enumerate(colours) if c == "G"]
    green = planes[g_idx].mean(axis=0)
    _, h, w = planes.shape
    warp = []
    for colour in "RGB":
        if colour == "G":
            warp.append(IDENTITY_WARP)
            continue
        p = colours.index(colour)
        row, col = divmod(p, 2)
        k = _fit_radial(planes[p], green, (col - 0.5, row - 0.5), grid, max_scale)
        warp.append((k[0], k[1], 0.0, 0.0, 0.0, 0.0))
    model = LensModel(warp=tuple(warp), source="estimated")
    return model if model.has_warp else LensModel()


def _fit_radial(plane: np.ndarray, green: np.ndarray, offset, grid: int, max_scale: float) -> tuple[float, float]:
    """Fit plane(x) ~ green at the radially scaled position: returns (kr0, kr1) of the warp that
    corrects the plane (source = c + d (kr0 + kr1 r^2), mosaic units)."""
    h, w = plane.shape
    ny, nx = h // grid, w // grid
    if ny < 3 or nx < 3:
        return 1.0, 0.0

    def norm(img):
        t = img[: ny * grid, : nx * grid].reshape(ny, grid, nx, grid)
        t = t - t.mean(axis=(1, 3), keepdims=True)
        return t / np.maximum(t.std(axis=(1, 3), keepdims=True), 1e-6)

    a, b = norm(cv2.GaussianBlur(plane, (0, 0), 1.0)), norm(cv2.GaussianBlur(green, (0, 0), 1.0))
    bimg = b.reshape(ny * grid, nx * grid)
    gx = np.gradient(bimg, axis=1).reshape(ny, grid, nx, grid)
    gy = np.gradient(bimg, axis=0).reshape(ny, grid, nx, grid)
    it = a - b
    sxx, syy, sxy = (gx * gx).sum((1, 3)), (gy * gy).sum((1, 3)), (gx * gy).sum((1, 3))
    bx, by = (gx * it).sum((1, 3)), (gy * it).sum((1, 3))
    det = sxx * syy - sxy * sxy
    ok = det > 1e-3 * np.maximum(sxx + syy, 1e-12) ** 2
    # shift s with plane(x) ~ green(x + s) (plane pixels): H s = sum grad(green) (plane - green);
    # less the offset the sampling itself puts between this plane's sites and the green mean
    sx = np.where(ok, (syy * bx - sxy * by) / np.where(ok, det, 1), 0) - offset[0] / 2
    sy = np.where(ok, (sxx * by - sxy * bx) / np.where(ok, det, 1), 0) - offset[1] / 2
    # patch centres in mosaic coordinates, relative to the image centre, normalised to the corner
    cyy = (np.arange(ny) * grid + grid / 2 - 0.5) * 2 + 0.5 + offset[1]
    cxx = (np.arange(nx) * grid + grid / 2 - 0.5) * 2 + 0.5 + offset[0]
    X, Y = np.meshgrid(cxx, cyy)
    norm_r = math.hypot(w, h)  # the mosaic is 2w x 2h, its centre (w, h)
    dx, dy = (X - w) / norm_r, (Y - h) / norm_r
    r = np.hypot(dx, dy)
    # The correction samples the plane at c + (x - c) kr0: (kr0 - 1) d = -s / R along the radius.
    # Each patch votes with the radial part of its shift; the weighted median ignores the patches
    # whose colour edges do not line up anyway.
    use = ok & (r > 0.3)
    if use.sum() < 6:
        return 1.0, 0.0
    s_rad = (sx * dx + sy * dy) / np.maximum(r, 1e-6)  # plane pixels, outward
    votes = -2.0 * s_rad[use] / (norm_r * r[use])
    wts = np.minimum(sxx, syy)[use] * r[use]
    order = np.argsort(votes)
    cum = np.cumsum(wts[order])
    k0 = float(votes[order][np.searchsorted(cum, 0.5 * cum[-1])])
    return 1.0 + float(np.clip(k0, -max_scale, max_scale)), 0.0

"""What the learned refinement sees besides the merged planes: its conditioning maps, in numpy.

The refinement (engine/burst/refine.py) works in a latent grid 8x coarser than the packed planes.
Beside the merge's latent it is given, per latent cell:

    confidence      the alignment's mean confidence over the non-reference frames (how much of
                    the burst the merge could use there)
    noise std       sqrt(S x + O) of one frame at the merged level x, and the same after the merge
                    (divided by the frames merged): how much noise the merge had to remove, and
                    how much can remain
    vignette        the lens's relative illumination (1 at the centre, less towards the corners:
                    the same light gives a noisier signal there)
    CA R, CA B      the lateral chromatic aberration's radial shift of the red and blue planes
                    against green, in plane pixels

The trainers make the same maps for training (trainers/burst_refine_data.py), so training and
inference cannot drift apart.

    condition_maps(merged, confidence, noise, frames, lens, pattern) -> (C_MAPS, h/8, w/8) float32
"""
from __future__ import annotations

import cv2
import numpy as np

from engine.burst.lens import LensModel, vignette_gain, warp_source
from engine.burst.raw import NoiseModel, colour_index

LATENT_FACTOR = 8  # packed planes per latent cell, each side
C_MAPS = 6  # confidence, noise std (frame), noise std (merged), vignette, CA R, CA B


def condition_maps(merged: np.ndarray, confidence: np.ndarray, noise: NoiseModel, frames: int,
                   lens: LensModel, pattern: str) -> np.ndarray:
    """(4, h, w) merged planes (h, w multiples of 8), (ny, nx) alignment confidence (any grid),
    the burst's noise model, the number of frames merged and the lens -> (C_MAPS, h/8, w/8) float32."""
    _, h, w = merged.shape
    if h % LATENT_FACTOR or w % LATENT_FACTOR:
        raise ValueError(f"planes of {h}x{w}: both sides must be multiples of {LATENT_FACTOR} (pad first)")
    lh, lw = h // LATENT_FACTOR, w // LATENT_FACTOR
    level = cv2.resize(np.ascontiguousarray(merged.mean(axis=0, dtype=np.float32)), (lw, lh),
                       interpolation=cv2.INTER_AREA)
    var = noise.grey_variance(level) * 4.0  # one plane's variance at that level
    conf = cv2.resize(np.ascontiguousarray(confidence, np.float32), (lw, lh), interpolation=cv2.INTER_LINEAR)
    out = np.empty((C_MAPS, lh, lw), np.float32)
    out[0] = np.clip(conf, 0.0, 1.0)
    out[1] = np.sqrt(var)
    out[2] = np.sqrt(var / max(frames, 1))
    out[3:] = lens_maps_latent(lens, pattern, lh, lw)
    return out


def lens_maps_latent(lens: LensModel, pattern: str, lh: int, lw: int) -> np.ndarray:
    """(3, lh, lw): relative illumination (1 / the vignetting correction's gain) and the radial
    shift of the R and B planes in plane pixels, at the latent cells' centres of a frame whose
    planes are (8 lh, 8 lw)."""
    out = np.zeros((3, lh, lw), np.float32)
    out[0] = 1.0
    if lens.is_identity:
        return out
    height, width = 2 * LATENT_FACTOR * lh, 2 * LATENT_FACTOR * lw  # the mosaic
    ys, xs = np.mgrid[0:lh, 0:lw].astype(np.float64)
    xs = (xs + 0.5) * 2 * LATENT_FACTOR  # latent cell centres in mosaic pixels
    ys = (ys + 0.5) * 2 * LATENT_FACTOR
    if lens.has_vignette:
        out[0] = 1.0 / np.maximum(vignette_gain(lens.vignette, lens.centre, height, width, xs - 0.5, ys - 0.5), 1e-6)
    if lens.has_warp:
        colours = list(colour_index(pattern))
        gx, gy = warp_source(lens.warp[1], lens.centre, height, width, xs, ys)
        cx, cy = lens.centre[0] * width, lens.centre[1] * height
        r = np.hypot(xs - cx, ys - cy)
        for k, colour in ((1, 0), (2, 2)):  # R, B
            if colour not in colours:
                continue
            sx, sy = warp_source(lens.warp[colour], lens.centre, height, width, xs, ys)
            radial = ((sx - gx) * (xs - cx) + (sy - gy) * (ys - cy)) / np.maximum(r, 1e-6)
            out[k] = radial / 2.0  # mosaic pixels -> plane pixels
    return out

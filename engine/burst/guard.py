"""Guard stage: the learned refinement may only add what the burst can vouch for; and the measure of
what it adds that is not there.

    guard(refined, merged, noise_var, confidence) -> planes      the refinement, held to the burst
    hallucination_rate(out, merged, truth) -> (rate, over_smoothed)   the benchmark's measure

Both look at a high-pass H(u) = u - GaussianBlur(u, sigma) of the linear packed planes, in 8x8
patches, where a generative model invents texture: the measure at sigma 1 (the finest detail), the
guard at GUARD_SIGMA (everything but brightness and colour).

The guard, per patch and plane, on the change the model made above a coarse scale (GUARD_SIGMA),
D = H(refined - merged). The merge's high-pass energy E is the scene's plus its remaining noise, so
a refinement that only removed that noise has lost at most the noise's energy and gained none.
Kept whole is a refinement whose high-pass energy stays within [E - REMOVE x noise, E + SLACK x
noise] (noise: the merge's remaining noise variance). Above it, the model added structure the
aligned frames did not show (hallucination); below it, it took scene detail away with the noise
(over-smoothing, as a denoiser does where little noise is left). Either way D is scaled down towards
the merge, by the largest factor in [0, 1] that keeps the energy within the bounds. Tiles the aligner could not match (confidence below 0.5)
fall back to the merge's detail, linearly from confidence 0.5 to 0.25. The low-pass of the
refinement (brightness and colour, coarser than any texture) is kept as it is.

The rate, per patch (all planes; each patch high-passed on its own): hallucinated when the
high-pass error to the truth exceeds the merge's by the margin (MARGIN x, plus FLOOR) AND the output's high-pass energy exceeds the truth's
(detail that is not there); over-smoothed when the error exceeds it and the energy falls short. The
merge scores 0 against itself by construction.
"""
from __future__ import annotations

import cv2
import numpy as np

PATCH = 8
GUARD_SIGMA = 3.0  # the guard leaves alone only what is coarser than this (brightness, colour)
SLACK = 0.1  # of the merge's remaining noise variance: detail energy the merge's noise could hide
REMOVE = 2.0  # of the merge's remaining noise variance: the most energy removing that noise takes away
MARGIN = 1.25
FLOOR = 1e-6  # squared error per pixel (linear [0, 1]): below it no patch counts, whatever the ratio


def high_pass(planes: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """(C, h, w) -> u - GaussianBlur(u, sigma) per plane (borders reflected), float32."""
    return np.stack([p - cv2.GaussianBlur(p, (0, 0), sigma, borderType=cv2.BORDER_REFLECT101)
                     for p in np.asarray(planes, np.float32)])


def patch_means(x: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(C, h, w) -> (C, h // patch, w // patch) mean of each whole patch (a partial edge is dropped)."""
    c, h, w = x.shape
    ny, nx = h // patch, w // patch
    return x[:, : ny * patch, : nx * patch].reshape(c, ny, patch, nx, patch).mean(axis=(2, 4))


def guard(refined: np.ndarray, merged: np.ndarray, noise_var: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(4, h, w) refined and merged planes, (4, h, w) or broadcastable noise variance of the merge,
    (ny, nx) alignment confidence on any grid -> (4, h, w) float32 guarded planes."""
    _, h, w = merged.shape
    change = np.asarray(refined, np.float32) - merged
    detail = high_pass(change, GUARD_SIGMA)  # D
    hm = high_pass(merged, GUARD_SIGMA)
    cross = patch_means(hm * detail)
    e_d = patch_means(detail * detail)
    noise = patch_means(np.broadcast_to(noise_var, merged.shape).astype(np.float32))
    # E(s) = E(H(merged) + s D) = e_m + 2 s cross + s^2 e_d; the largest s in [0, 1] that keeps
    # e_m - REMOVE noise <= E(s) <= e_m + SLACK noise
    e_d = np.maximum(e_d, 1e-20)
    add, remove = SLACK * noise, REMOVE * noise
    s_add = (-cross + np.sqrt(cross * cross + e_d * add)) / e_d  # where E(s) reaches the upper bound
    disc = cross * cross - e_d * remove
    s_remove = np.where((cross < 0) & (disc >= 0), (-cross - np.sqrt(np.maximum(disc, 0.0))) / e_d, np.inf)
    scale = np.clip(np.minimum(s_add, s_remove), 0.0, 1.0).astype(np.float32)
    conf = cv2.resize(np.ascontiguousarray(confidence, np.float32), (scale.shape[2], scale.shape[1]),
                      interpolation=cv2.INTER_LINEAR)
    scale *= np.clip((conf - 0.25) / 0.25, 0.0, 1.0)[None]
    # each patch's own factor (interpolated factors would let a patch's invented detail through at
    # its edges, where its neighbours' factors reach); D is high-pass, so the steps do not show
    dense = np.ones((4, h, w), np.float32)
    ph, pw = scale.shape[1] * PATCH, scale.shape[2] * PATCH
    dense[:, :ph, :pw] = np.repeat(np.repeat(scale, PATCH, axis=1), PATCH, axis=2)
    return (merged + (change - detail) + dense * detail).astype(np.float32)


def patch_high_pass(planes: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(C, h, w) -> (C, ny, nx, patch, patch): each whole patch's own high-pass, u - its Gaussian
    blur (sigma 1, 5 taps, borders reflected at the patch's edges), so a patch's measure depends on
    that patch alone (a blur across patches would spread one patch's texture into its neighbours)."""
    c, h, w = planes.shape
    ny, nx = h // patch, w // patch
    x = np.asarray(planes, np.float32)[:, : ny * patch, : nx * patch].reshape(c, ny, patch, nx, patch)
    x = x.transpose(0, 1, 3, 2, 4)  # (C, ny, nx, patch, patch)
    taps = cv2.getGaussianKernel(5, 1.0).ravel().astype(np.float32)
    blurred = x
    for axis in (-2, -1):
        pad = [(0, 0)] * blurred.ndim
        pad[axis] = (2, 2)
        padded = np.pad(blurred, pad, mode="reflect")
        blurred = sum(taps[k] * np.take(padded, np.arange(k, k + patch), axis=axis) for k in range(5))
    return x - blurred


def hallucination_rate(out: np.ndarray, merged: np.ndarray, truth: np.ndarray,
                       patch: int = PATCH) -> tuple[float, float]:
    """(4, h, w) planes of an output, the merge it refined and the truth -> (share of patches
    hallucinated, share over-smoothed), as the module docstring defines them."""
    ho, hm, ht = (patch_high_pass(x, patch) for x in (out, merged, truth))
    err_out = ((ho - ht) ** 2).mean(axis=(0, 3, 4))
    err_merge = ((hm - ht) ** 2).mean(axis=(0, 3, 4))
    energy_out = (ho * ho).mean(axis=(0, 3, 4))
    energy_truth = (ht * ht).mean(axis=(0, 3, 4))
    worse = err_out > MARGIN * err_merge + FLOOR
    return float(np.mean(worse & (energy_out > energy_truth))), float(np.mean(worse & (energy_out < energy_truth)))

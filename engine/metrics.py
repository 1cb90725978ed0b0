"""Image quality metrics, scored the way the SR literature does (pure functions)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def psnr(output: np.ndarray, reference: np.ndarray, border: int = 0, peak: float = 255.0) -> float:
    """PSNR in dB of two same-shape images (H, W[, C]); `border` pixels are ignored on every side."""
    if output.shape != reference.shape:
        raise ValueError(f"PSNR needs equal shapes, got {output.shape} and {reference.shape}")
    if border:
        output, reference = output[border:-border, border:-border], reference[border:-border, border:-border]
    mse = np.mean((output.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def ssim(output: np.ndarray, reference: np.ndarray, border: int = 0, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of (H, W[, C]) images, channels averaged."""
    if output.shape != reference.shape:
        raise ValueError(f"SSIM needs equal shapes, got {output.shape} and {reference.shape}")
    from skimage.metrics import structural_similarity  # scikit-image and scipy: half a second to import

    if border:
        output, reference = output[border:-border, border:-border], reference[border:-border, border:-border]
    return float(structural_similarity(
        output.astype(np.float64), reference.astype(np.float64), data_range=peak,
        channel_axis=-1 if output.ndim == 3 else None, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    ))


@dataclass(frozen=True)
class BurstScores:
    """Quality of a merged burst against the clean reference (see `burst_score`)."""

    psnr_linear: float
    ssim_linear: float
    psnr_gamma: float
    ssim_gamma: float
    extra: dict = field(default_factory=dict)


def burst_score(merged: np.ndarray, clean: np.ndarray, border: int = 8) -> BurstScores:
    """PSNR/SSIM of (4, h, w) merged planes against the clean reference planes, on [0, 1]: in
    linear light (the SyntheticBurst protocol) and after gamma x ** (1 / 2.2) (the KPN one).
    `border` is in mosaic pixels (border // 2 plane pixels are ignored on every side)."""
    b = border // 2
    m = np.clip(np.moveaxis(merged, 0, -1), 0.0, 1.0)
    c = np.clip(np.moveaxis(clean, 0, -1), 0.0, 1.0)
    mg, cg = m ** (1 / 2.2), c ** (1 / 2.2)
    return BurstScores(psnr(m, c, b, 1.0), ssim(m, c, b, 1.0), psnr(mg, cg, b, 1.0), ssim(mg, cg, b, 1.0))

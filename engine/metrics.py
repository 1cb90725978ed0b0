"""Image quality metrics, scored the way the SR literature does (pure functions)."""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


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
    if border:
        output, reference = output[border:-border, border:-border], reference[border:-border, border:-border]
    return float(structural_similarity(
        output.astype(np.float64), reference.astype(np.float64), data_range=peak,
        channel_axis=-1 if output.ndim == 3 else None, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    ))

"""OpenCV's Gaussian kernel as an array: the blur StudentSR applies before its bilinear base
(base_blur_sigma), which the engine finds in the manifest's base_filter, recognises and runs as
cv2.GaussianBlur (engine/student.py, prefilter_for).
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def gaussian_kernel(sigma: float) -> np.ndarray:
    """(2r+1, 2r+1) float32 Gaussian of `sigma` pixels, r = ceil(2 sigma), summing to 1: OpenCV's
    own, so the engine recognises it and runs it as cv2.GaussianBlur."""
    g = cv2.getGaussianKernel(2 * max(1, math.ceil(2 * sigma)) + 1, sigma, cv2.CV_64F).ravel()
    return np.outer(g, g).astype(np.float32)

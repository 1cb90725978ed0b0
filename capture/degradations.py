"""The webcam-like degradation protocol of DESIGN.md, as pure numpy/OpenCV functions (no torch).

Used by the simulated camera (capture/), the StudentSR training data (trainers/) and the engine
benchmark, so all three see the same degradations:

    clean (2H, 2W) sRGB  -> linear light -> motion blur along the handheld motion
                         -> 2x area downscale -> Poisson-Gaussian noise (variance = shot*x + read)
                         -> sRGB -> 8-bit -> optional YUYV 4:2:2 chroma round trip -> (H, W)

The clean full-resolution image is the ground truth for the 2x output. The blur kernel is centred
on the clean image's position, so input and ground truth stay registered.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from capture.convert import bgr_to_yuyv, yuyv_to_bgr


@dataclass(frozen=True)
class NoiseLevel:
    """Poisson-Gaussian noise on linear [0, 1] signal: variance = sigma_shot**2 * x + sigma_read**2."""

    sigma_read: float
    sigma_shot: float

    def variance(self, linear: np.ndarray) -> np.ndarray:
        return self.sigma_shot**2 * linear + self.sigma_read**2


# Fixed levels for benchmarks: the KPN gain levels 1, 2 and 4 (log10 sigma_read -2.2/-1.8/-1.44,
# log10 sigma_shot -2.6/-2.2/-1.8), which span a webcam from good light to a dim room.
WEBCAM_NOISE_LEVELS: dict[str, NoiseLevel] = {
    "low": NoiseLevel(10**-2.2, 10**-2.6),
    "mid": NoiseLevel(10**-1.8, 10**-2.2),
    "high": NoiseLevel(10**-1.44, 10**-1.8),
}


@dataclass(frozen=True)
class WebcamDegradation:
    """Ranges the training protocol samples from (one draw per image)."""

    scale: int = 2
    blur_probability: float = 0.5
    max_blur_px: float = 8.0  # length of the motion during exposure, in full-resolution pixels
    log10_sigma_read: tuple[float, float] = (-2.6, -1.3)
    log10_sigma_shot: tuple[float, float] = (-3.0, -1.7)
    yuyv_probability: float = 0.5


@dataclass(frozen=True)
class WebcamParams:
    """One draw of the protocol: blur motion (dx, dy) in full-resolution pixels, noise, chroma."""

    blur: tuple[float, float] = (0.0, 0.0)
    noise: NoiseLevel = WEBCAM_NOISE_LEVELS["mid"]
    yuyv: bool = False
    scale: int = 2


def sample_webcam_params(rng: np.random.Generator, cfg: WebcamDegradation = WebcamDegradation()) -> WebcamParams:
    blur = (0.0, 0.0)
    if rng.random() < cfg.blur_probability:
        length = rng.uniform(1.0, cfg.max_blur_px)
        angle = rng.uniform(0, np.pi)
        blur = (float(length * np.cos(angle)), float(length * np.sin(angle)))
    noise = NoiseLevel(10 ** rng.uniform(*cfg.log10_sigma_read), 10 ** rng.uniform(*cfg.log10_sigma_shot))
    return WebcamParams(blur, noise, bool(rng.random() < cfg.yuyv_probability), cfg.scale)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear [0, 1] (IEC 61966-2-1), any shape, float32."""
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> sRGB-encoded [0, 1], any shape, float32. Clips to [0, 1] first."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def motion_blur_kernel(dx: float, dy: float) -> np.ndarray:
    """Normalised (k, k) float32 kernel of a straight motion of (dx, dy) pixels, centred on 0.

    A line drawn anti-aliased, so sub-pixel lengths still blur; (0, 0) gives the identity.
    """
    length = float(np.hypot(dx, dy))
    k = 2 * int(np.ceil(length / 2)) + 3
    c = k // 2
    kernel = np.zeros((k, k), np.float32)
    n = max(2, int(np.ceil(length * 4)))
    for t in np.linspace(-0.5, 0.5, n):  # splat points along the path with bilinear weights
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    return kernel / kernel.sum()


def apply_motion_blur(linear: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """(H, W, C) float32 linear image blurred along (dx, dy); edges reflected."""
    if dx == 0 and dy == 0:
        return linear
    return cv2.filter2D(linear, -1, motion_blur_kernel(dx, dy), borderType=cv2.BORDER_REFLECT_101)


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (H // factor, W // factor, C) by area averaging (what a sensor's binning does)."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    return cv2.resize(img[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def add_poisson_gaussian_noise(linear: np.ndarray, noise: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    """Linear [0, 1] float32 image + heteroscedastic Gaussian noise with variance shot*x + read."""
    std = np.sqrt(noise.variance(np.clip(linear, 0.0, 1.0))).astype(np.float32)
    return linear + std * rng.standard_normal(linear.shape, dtype=np.float32)


_U8_TO_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)
_LUT_SIZE = 1 << 14  # linear -> sRGB u8 via a table: the curve is steep near 0, so the table is fine-grained


def u8_to_linear(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB (any shape) -> float32 linear [0, 1], by table look-up."""
    return _U8_TO_LINEAR[img]


def linear_to_u8(linear: np.ndarray) -> np.ndarray:
    """float linear (any shape) -> uint8 sRGB, clipped, by table look-up (error < 0.5 LSB in the darks)."""
    idx = np.clip(linear * (_LUT_SIZE - 1) + 0.5, 0, _LUT_SIZE - 1).astype(np.int32)
    return _LINEAR_TO_U8[idx]


def quantise_u8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding and clipping."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_LINEAR_TO_U8 = quantise_u8(linear_to_srgb(np.linspace(0, 1, _LUT_SIZE, dtype=np.float32)))


def degrade_webcam(clean_bgr: np.ndarray, params: WebcamParams, rng: np.random.Generator) -> np.ndarray:
    """Apply one draw of the webcam protocol.

    clean_bgr: (s*H, s*W, 3) uint8 sRGB, s = params.scale; H and W even when params.yuyv.
    Returns (H, W, 3) uint8 sRGB: what the camera would have delivered.
    """
    linear = u8_to_linear(clean_bgr)
    linear = apply_motion_blur(linear, *params.blur)
    if params.scale > 1:
        linear = downscale(linear, params.scale)
    noisy = add_poisson_gaussian_noise(linear, params.noise, rng)
    out = linear_to_u8(noisy)
    if params.yuyv:
        out = yuyv_to_bgr(bgr_to_yuyv(out))
    return out


def random_crop(img: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random (height, width, ...) window of img; raises when img is smaller."""
    if img.shape[0] < height or img.shape[1] < width:
        raise ValueError(f"image {img.shape[:2]} is smaller than the crop {(height, width)}")
    y = int(rng.integers(0, img.shape[0] - height + 1))
    x = int(rng.integers(0, img.shape[1] - width + 1))
    return img[y : y + height, x : x + width]

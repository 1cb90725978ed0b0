"""Synthetic RAW bursts for the burst tests, from scikit-image's bundled photos (no downloads)."""
from __future__ import annotations

import functools

import numpy as np

from capture.burst_synthesis import (
    KPN_GAINS,
    STATIC,
    SYNTHETIC_BURST_MOTION,
    MotionConfig,
    MovingObject,
    SyntheticBurst,
    synthesize_burst,
)


@functools.lru_cache(maxsize=8)
def photo(name: str = "astronaut") -> np.ndarray:
    """(h, w, 3) uint8 BGR photo from skimage.data, read-only."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    bgr = np.ascontiguousarray(img[..., 2::-1]).astype(np.uint8)
    bgr.setflags(write=False)
    return bgr


def burst(n: int = 8, gain: int = 1, size: tuple[int, int] = (256, 192), seed: int = 0, name: str = "astronaut",
          motion: MotionConfig = SYNTHETIC_BURST_MOTION, pattern: str = "RGGB",
          moving_object: MovingObject | None = None) -> SyntheticBurst:
    """A burst of n frames, size (width, height) of the mosaic, at a KPN gain (1, 2, 4, 8)."""
    return synthesize_burst(photo(name), n, np.random.default_rng(seed), KPN_GAINS[gain], motion=motion,
                            size=size, pattern=pattern, moving_object=moving_object)


def noise_model(b: SyntheticBurst):
    from engine.burst.raw import NoiseModel

    return NoiseModel((b.noise.sigma_shot**2,) * 4, (b.noise.sigma_read**2,) * 4)


__all__ = ["burst", "photo", "noise_model", "STATIC", "SYNTHETIC_BURST_MOTION", "MovingObject", "MotionConfig"]

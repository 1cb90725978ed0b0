"""Synthetic RAW bursts from sRGB photos: the burst protocol of DESIGN.md, in numpy and OpenCV only.

Shared by the burst trainers and `eyefuse bench burst` (and usable by tests), so training and
scoring see the same bursts:

    sRGB photo -> unprocess (inverse tone curve, gamma, colour matrix, white balance; Brooks et
    al. 2019) -> per frame: random handheld motion (frame 0 is the reference) -> each CFA site
    sampled through the motion (mosaic, packed as 4 planes) -> optional independently moving
    object -> Poisson-Gaussian noise, variance = shot * x + read

Motion convention (the simulated camera's): frame pixel x sees the scene point
R(angle) (x - c) + c + (dx, dy), c the frame centre. The content of a frame therefore moves by
-(dx, dy); `true_flow` gives, for every reference pixel, where the same scene point is in another
frame, which is what the aligners estimate.

No torch here: the engine's benchmark imports this module.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from capture.degradations import NoiseLevel

# KPN (Mildenhall et al. 2018) fixed gain levels, as DESIGN.md lists them: sigma_read, sigma_shot.
KPN_GAINS: dict[int, NoiseLevel] = {
    1: NoiseLevel(10**-2.2, 10**-2.6),
    2: NoiseLevel(10**-1.8, 10**-2.2),
    4: NoiseLevel(10**-1.44, 10**-1.8),
    8: NoiseLevel(10**-1.07, 10**-1.5),
}

# sRGB (D65) -> XYZ, and XYZ -> camera matrices of a few DSLRs (DNG ColorMatrix values, D65).
RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_CAMERAS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
])


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MotionConfig:
    """Per-frame camera motion relative to the reference (frame 0), in frame pixels and degrees.

    uniform=True: translation ~ U(-max, max) per axis, rotation ~ U(-max, max) (SyntheticBurst).
    uniform=False: translation ~ N(0, sigma) clipped to max, rotation ~ N(0, max/3), plus with
    probability `jump_probability` a jump of `jump_px` in a random direction (a handheld burst).
    """

    max_translation_px: float = 6.0
    max_rotation_deg: float = 1.0
    uniform: bool = True
    sigma_px: float = 1.5
    jump_probability: float = 0.0
    jump_px: tuple[float, float] = (4.0, 12.0)


# SyntheticBurst (Bhat et al. 2021): +-24 px and +-1 degree on the 4x image, i.e. +-6 px at ours.
SYNTHETIC_BURST_MOTION = MotionConfig(max_translation_px=6.0, max_rotation_deg=1.0, uniform=True)
# Same-resolution denoising: a few pixels of shake, rare larger jumps.
HANDHELD_MOTION = MotionConfig(max_translation_px=4.0, max_rotation_deg=0.3, uniform=False, sigma_px=1.5,
                               jump_probability=0.1)
STATIC = MotionConfig(max_translation_px=0.0, max_rotation_deg=0.0)


@dataclass(frozen=True)
class Unprocessing:
    """What unprocessing did, so a finishing ISP can undo it: rgb_to_cam (3, 3) linear sRGB ->
    camera RGB (rows sum to 1), and the white-balance gains the camera would apply."""

    rgb_to_cam: np.ndarray
    red_gain: float
    blue_gain: float
    overall_gain: float

    @property
    def as_shot_neutral(self) -> tuple[float, float, float]:
        return (1.0 / self.red_gain, 1.0, 1.0 / self.blue_gain)

    @property
    def xyz_to_cam(self) -> np.ndarray:
        """The DNG ColorMatrix (XYZ -> camera) matching rgb_to_cam."""
        return self.rgb_to_cam @ np.linalg.inv(RGB_TO_XYZ)


@dataclass(frozen=True)
class MovingObject:
    """A square that moves on its own across the burst (for ghosting tests): `size` frame pixels
    (even), starting at `start` (top-left, frame pixels, even) and moving `velocity` px per frame."""

    size: int = 64
    start: tuple[int, int] = (100, 100)
    velocity: tuple[int, int] = (12, 6)


@dataclass
class SyntheticBurst:
    """A synthetic RAW burst, normalised (0 = black, 1 = white), packed as planes.

    noisy: (N, 4, h, w) float32 noisy planes (row-major CFA positions of `pattern`); frame 0 is the
        reference. Saturates at 1; values below 0 are kept (read noise below black).
    clean: (N, 4, h, w) float32 noise-free planes (or (1, 4, h, w), the reference only, when the
        burst was made with keep_clean=False).
    motion: (N, 3) float64 (dx, dy, angle_deg) per frame; motion[0] = 0.
    object_boxes: per frame (x, y, size) of the moving object in frame pixels, or None.
    """

    noisy: np.ndarray
    clean: np.ndarray
    motion: np.ndarray
    noise: NoiseLevel
    pattern: str
    unprocessing: Unprocessing
    object_boxes: list[tuple[int, int, int]] | None = None
    name: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the mosaic."""
        return 2 * self.noisy.shape[2], 2 * self.noisy.shape[3]


# -- unprocessing -----------------------------------------------------------------------------------
def random_unprocessing(rng: np.random.Generator) -> Unprocessing:
    """A random colour matrix (convex mix of XYZ->camera matrices, rows normalised) and white
    balance (overall 1/N(0.8, 0.1), red 1.9-2.4, blue 1.5-1.9), as DESIGN.md draws them."""
    weights = rng.random(len(XYZ_TO_CAMERAS))
    xyz_to_cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAMERAS, axes=1)
    rgb_to_cam = xyz_to_cam @ RGB_TO_XYZ
    rgb_to_cam /= rgb_to_cam.sum(axis=1, keepdims=True)
    overall = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.5, 1.1))
    return Unprocessing(rgb_to_cam, float(rng.uniform(1.9, 2.4)), float(rng.uniform(1.5, 1.9)), overall)


def unprocess(bgr: np.ndarray, params: Unprocessing) -> np.ndarray:
    """(H, W, 3) uint8 sRGB (OpenCV BGR order) -> (H, W, 3) float32 linear camera RGB in [0, 1]
    (R, G, B order): inverse smoothstep, gamma 2.2, sRGB -> camera, inverse white balance with
    the gains fading out towards saturation so that highlights stay clipped."""
    x = bgr[..., ::-1].astype(np.float32) / 255.0
    x = 0.5 - np.sin(np.arcsin(np.clip(1.0 - 2.0 * x, -1.0, 1.0)) / 3.0)
    x = np.maximum(x, 1e-8) ** 2.2
    x = cv2.transform(np.ascontiguousarray(x), params.rgb_to_cam.astype(np.float32))
    gains = np.float32([1.0 / params.red_gain, 1.0, 1.0 / params.blue_gain]) / np.float32(params.overall_gain)
    mask = (np.maximum(x.mean(axis=2, keepdims=True) - 0.9, 0.0) / 0.1) ** 2
    x *= np.maximum(mask + (1.0 - mask) * gains, gains)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# -- motion -----------------------------------------------------------------------------------------
def random_motion(n: int, rng: np.random.Generator, cfg: MotionConfig = SYNTHETIC_BURST_MOTION) -> np.ndarray:
    """(n, 3) (dx, dy, angle_deg) per frame; frame 0 (the reference) does not move."""
    out = np.zeros((n, 3))
    if n <= 1:
        return out
    m = n - 1
    if cfg.uniform:
        out[1:, :2] = rng.uniform(-cfg.max_translation_px, cfg.max_translation_px, (m, 2))
        out[1:, 2] = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, m)
    else:
        out[1:, :2] = np.clip(rng.normal(0, cfg.sigma_px, (m, 2)), -cfg.max_translation_px, cfg.max_translation_px)
        out[1:, 2] = np.clip(rng.normal(0, cfg.max_rotation_deg / 3, m), -cfg.max_rotation_deg, cfg.max_rotation_deg)
        jumps = rng.random(m) < cfg.jump_probability
        angle = rng.uniform(0, 2 * np.pi, m)
        length = rng.uniform(*cfg.jump_px, m)
        out[1:, 0] += jumps * length * np.cos(angle)
        out[1:, 1] += jumps * length * np.sin(angle)
    return out


def frame_to_scene(motion, width: int, height: int) -> np.ndarray:
    """(2, 3) float64 map from frame pixels (x, y, 1) to scene pixels, for motion (dx, dy, angle)."""
    dx, dy, angle = (float(v) for v in motion)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.hstack([rot, (c + np.array([dx, dy]) - rot @ c)[:, None]])


def true_flow(ref_motion, other_motion, height: int, width: int, points: np.ndarray | None = None) -> np.ndarray:
    """Where each reference-frame pixel's scene point lies in the other frame, minus its position.

    Returns (height, width, 2) float32 (dx, dy) in frame pixels, or (K, 2) for `points` (K, 2) of
    (x, y) frame coordinates. other(x + flow(x)) shows what ref(x) shows.
    """
    if points is None:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    else:
        pts = np.asarray(points, np.float64)
    a = frame_to_scene(ref_motion, width, height)
    b = frame_to_scene(other_motion, width, height)
    scene = pts @ a[:, :2].T + a[:, 2]
    other = (scene - b[:, 2]) @ np.linalg.inv(b[:, :2]).T
    flow = (other - pts).astype(np.float32)
    return flow if points is not None else flow.reshape(height, width, 2)


# -- rendering --------------------------------------------------------------------------------------
def render_planes(scene: np.ndarray, motion, width: int, height: int, pattern: str = "RGGB",
                  scale: float | None = None) -> np.ndarray:
    """Sample a (Hs, Ws, 3) linear camera-RGB scene through one frame's motion straight into the
    (4, height/2, width/2) float32 planes of a `pattern` mosaic (each CFA site samples its colour
    at its own position: no full-resolution RGB frame is ever made, so 12 MP bursts stay cheap).

    The frame is centred on the scene magnified by `scale` (default: the smallest magnification
    that covers the frame, and at least 1). Bicubic sampling, clipped to [0, 1].
    """
    hs, ws = scene.shape[:2]
    if scale is None:
        scale = max(1.0, width / ws, height / hs)
    frame_map = frame_to_scene(motion, width, height)
    # frame px -> magnified-scene px (frame centred) -> scene px (pixel centres at integers)
    off = np.array([(ws * scale - width) / 2, (hs * scale - height) / 2])
    to_scene = np.hstack([frame_map[:, :2] / scale, ((frame_map[:, 2] + off + 0.5) / scale - 0.5)[:, None]])
    out = np.empty((4, height // 2, width // 2), np.float32)
    for k, colour in enumerate(pattern):
        row, col = divmod(k, 2)
        # plane pixel (j, i) is frame pixel (2j + col, 2i + row)
        site = np.hstack([2 * to_scene[:, :2], (to_scene[:, :2] @ np.array([col, row]) + to_scene[:, 2])[:, None]])
        cv2.warpAffine(np.ascontiguousarray(scene[..., "RGB".index(colour)]), site.astype(np.float64),
                       (width // 2, height // 2), dst=out[k], flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_REFLECT101)
    return np.clip(out, 0.0, 1.0, out=out)


def paste_object(planes: np.ndarray, patch: np.ndarray, x: int, y: int, pattern: str = "RGGB") -> None:
    """Overwrite, in place, the CFA samples of (4, h, w) planes covered by a (s, s, 3) linear RGB
    `patch` whose top-left is at frame pixel (x, y) (both even; the patch is cut at the edges)."""
    s = patch.shape[0]
    h, w = 2 * planes.shape[1], 2 * planes.shape[2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
    if x1 <= x0 or y1 <= y0:
        return
    for k, colour in enumerate(pattern):
        row, col = divmod(k, 2)
        ys = np.arange(y0 + (y0 - row) % 2, y1, 2)
        xs = np.arange(x0 + (x0 - col) % 2, x1, 2)
        if ys.size and xs.size:
            planes[k][np.ix_((ys - row) // 2, (xs - col) // 2)] = patch[np.ix_(ys - y, xs - x)][..., "RGB".index(colour)]


def mosaic_rgb(rgb: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """(H, W, 3) RGB -> (4, H/2, W/2) planes of a `pattern` mosaic (a new array)."""
    out = []
    for k, colour in enumerate(pattern):
        row, col = divmod(k, 2)
        out.append(rgb[row::2, col::2, "RGB".index(colour)])
    return np.stack(out).astype(np.float32)


def add_noise(clean: np.ndarray, noise: NoiseLevel, rng: np.random.Generator, clip_white: bool = True) -> np.ndarray:
    """clean (any shape, normalised) + N(0, sigma_shot^2 * x + sigma_read^2), float32; clipped at 1
    (the white level) when clip_white, never below (read noise goes below black)."""
    var = noise.sigma_shot**2 * np.maximum(clean, 0.0) + noise.sigma_read**2
    out = clean + np.sqrt(var).astype(np.float32) * rng.standard_normal(clean.shape, dtype=np.float32)
    if clip_white:
        np.minimum(out, 1.0, out=out)
    return out.astype(np.float32)


def sample_noise(rng: np.random.Generator) -> NoiseLevel:
    """A random noise level as the burst protocol draws it: shot variance log-uniform in
    [1e-4, 0.012], log read variance = 2.18 log shot + 1.20 + N(0, 0.26)."""
    shot = math.exp(rng.uniform(math.log(1e-4), math.log(0.012)))
    read = math.exp(2.18 * math.log(shot) + 1.20 + rng.normal(0.0, 0.26))
    return NoiseLevel(sigma_read=math.sqrt(read), sigma_shot=math.sqrt(shot))


def landscape(bgr: np.ndarray) -> np.ndarray:
    """Portrait images turned a quarter so every photo covers a landscape frame."""
    return np.ascontiguousarray(np.rot90(bgr)) if bgr.shape[0] > bgr.shape[1] else bgr


def synthesize_burst(bgr: np.ndarray, n: int, rng: np.random.Generator, noise: NoiseLevel,
                     motion: MotionConfig = SYNTHETIC_BURST_MOTION, size: tuple[int, int] | None = None,
                     pattern: str = "RGGB", moving_object: MovingObject | None = None,
                     keep_clean: bool = True, name: str = "") -> SyntheticBurst:
    """A burst of n frames of the sRGB photo `bgr` (uint8 BGR), size (width, height) (default: the
    photo's, rounded down to even). See the module docstring for the steps."""
    if n < 1:
        raise ValueError(f"a burst needs at least one frame, got n={n}")
    width, height = size or (bgr.shape[1] // 2 * 2, bgr.shape[0] // 2 * 2)
    if width % 2 or height % 2:
        raise ValueError(f"burst size {width}x{height} must be even on both sides")
    params = random_unprocessing(rng)
    scene = unprocess(bgr, params)
    motions = random_motion(n, rng, motion)
    patch = None
    if moving_object is not None:
        other = np.ascontiguousarray(bgr[::-1, ::-1])  # the photo upside down: unlike the background
        patch = cv2.resize(unprocess(other, params), (moving_object.size, moving_object.size),
                           interpolation=cv2.INTER_AREA)
    noisy = np.empty((n, 4, height // 2, width // 2), np.float32)
    clean = np.empty((n if keep_clean else 1, 4, height // 2, width // 2), np.float32)
    boxes = [] if moving_object is not None else None
    for i in range(n):
        planes = render_planes(scene, motions[i], width, height, pattern)
        if patch is not None:
            x = moving_object.start[0] + i * moving_object.velocity[0]
            y = moving_object.start[1] + i * moving_object.velocity[1]
            paste_object(planes, patch, x, y, pattern)
            boxes.append((x, y, moving_object.size))
        if i < clean.shape[0]:
            clean[i] = planes
        noisy[i] = add_noise(planes, noise, rng)
    return SyntheticBurst(noisy, clean, motions, noise, pattern, params, boxes, name)


def burst_frames(burst: SyntheticBurst, black: int = 256, white: int = 4095, source: str = "synthetic") -> list:
    """The burst as BAYER16 capture Frames (12-bit by default) with RawMeta: levels, pattern,
    white balance, colour matrix and the noise profile (one (S, O) pair per colour, as DNG has it)."""
    from capture.frame import Frame, GroundTruth, PixelFormat, RawMeta

    var = (float(burst.noise.sigma_shot**2), float(burst.noise.sigma_read**2))
    meta = RawMeta(black_level=(float(black),) * 4, white_level=white, cfa_pattern=burst.pattern,
                   as_shot_neutral=burst.unprocessing.as_shot_neutral, color_matrix=burst.unprocessing.xyz_to_cam,
                   noise_profile=(var,) * 3, exposure_time_s=1 / 60, iso=100.0,
                   bits_per_sample=int(white).bit_length())
    frames = []
    for i in range(burst.noisy.shape[0]):
        mosaic = planes_to_u16(burst.noisy[i], black, white)
        truth = None
        if i < burst.clean.shape[0]:
            truth = GroundTruth(planes_to_u16(burst.clean[i], black, white), tuple(float(v) for v in burst.motion[i]))
        frames.append(Frame(mosaic, i, time.monotonic_ns(), source, PixelFormat.BAYER16, raw=meta, truth=truth))
    return frames


def planes_to_u16(planes: np.ndarray, black: int, white: int) -> np.ndarray:
    """(4, h, w) normalised planes -> (2h, 2w) uint16 mosaic at the given levels (rounded, clipped)."""
    _, h, w = planes.shape
    out = np.empty((2 * h, 2 * w), np.float32)
    out[0::2, 0::2], out[0::2, 1::2], out[1::2, 0::2], out[1::2, 1::2] = planes
    return np.clip(np.rint(out * (white - black) + black), 0, white).astype(np.uint16)

"""The built-in simulated camera: real photos seen through a shaky, noisy webcam or RAW sensor.

No hardware and no downloads: it looks at the photos that ship with scikit-image (or at a folder
of the user's images), changes scene every `scene_seconds`, and films them handheld:

    BGR8:     photo -> 2x canvas (sRGB u8) -> linear -> 2x area downscale (1x linear canvas)
              per frame: warp by the handheld motion -> motion blur along the frame-to-frame motion
              -> Poisson-Gaussian noise in linear light -> sRGB -> 8 bit           (H, W, 3) uint8
              truth: the 2x canvas warped by the same motion (no blur, no noise)  (2H, 2W, 3) uint8
    BAYER16:  photo -> 1x canvas -> unprocessed to linear camera RGB (DESIGN.md burst protocol)
              per frame: each CFA site sampled through the handheld motion -> RGGB mosaic
              -> Poisson-Gaussian noise in linear raw -> black/white level -> (H, W) uint16 + RawMeta
              truth: the same mosaic without noise                                 (H, W) uint16

Motion convention (GroundTruth.motion = (dx, dy, angle_deg), frame pixels and degrees): frame
pixel x sees the scene point  R(angle) (x - c) + c + (dx, dy),  c the frame centre. So the picture
content moves by -(dx, dy): frame j is frame k shifted by (dx_k - dx_j, dy_k - dy_j).

Speed: this runs in the capture thread beside a model on a 2-core CPU, so every per-frame step is
one OpenCV pass over preallocated buffers, noise comes from a pool of pre-drawn Gaussian fields, and
the BGR 2x truth (a 2x warp costs more than the whole frame) is rendered when first read. Paced,
it renders each frame just before the frame is due rather than right after the previous one left,
so that work falls while the engine waits for the frame instead of beside the model. All of its
timing (the schedule, capture times, how long rendering takes) is read from its Clock, so a test can
run it on logical time (capture.clock.FakeClock).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import SourceInvalid
from capture.frame import Frame, GroundTruth, PixelFormat, RawMeta
from capture.source import Source, SourceInfo
from capture.degradations import (
    WEBCAM_NOISE_LEVELS,
    NoiseLevel,
    linear_to_srgb,
    motion_blur_kernel,
    quantise_u8,
    u8_to_linear,
)

BUILTIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # skimage.data, all offline
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NOISE_OFF = NoiseLevel(0.0, 0.0)
_BAND_ROWS = 64
_BLUR_MIN_PX = 0.35  # shorter blurs are invisible next to the 1x resampling; skipping them saves a pass


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ShakeConfig:
    """Handheld motion: a mean-reverting random walk, low-pass filtered, with rare larger jumps.

    All in frame pixels, degrees and seconds, so the shake looks the same at any frame rate.
    """

    sigma_px: float = 1.5  # steady-state spread of the translation
    tau_s: float = 0.8  # how long the walk takes to drift back (its correlation time)
    smooth_s: float = 0.06  # low-pass time constant: a hand has inertia
    jump_rate_hz: float = 0.1  # rare larger jerks (one every ~10 s)
    jump_px: tuple[float, float] = (4.0, 10.0)
    max_shift_px: float = 12.0
    sigma_deg: float = 0.25
    max_rotation_deg: float = 1.0

    @staticmethod
    def still() -> "ShakeConfig":
        """A camera on a tripod."""
        return ShakeConfig(sigma_px=0.0, jump_rate_hz=0.0, sigma_deg=0.0, max_shift_px=0.0, max_rotation_deg=0.0)


@dataclass(frozen=True)
class SimulatedConfig:
    """What the simulated camera films and how. Sizes must be even (RGGB needs whole 2x2 cells)."""

    width: int = 640
    height: int = 480
    fps: float = 30.0
    realtime: bool = True  # pace frames like a live camera; False: as fast as they can be rendered
    seed: int = 0
    pixel_format: PixelFormat = PixelFormat.BGR8  # BGR8 or BAYER16
    image_dir: str | None = None  # look at these images instead of scikit-image's photos
    scene_seconds: float = 8.0  # simulated seconds between scene changes (a burst never spans one in practice)
    noise: str | NoiseLevel = "mid"  # a WEBCAM_NOISE_LEVELS name, "off", or a NoiseLevel
    exposure_fraction: float = 0.5  # shutter open for this part of the frame interval: sets the blur length
    shake: ShakeConfig = field(default_factory=ShakeConfig)
    moving_object: bool = False  # paste a small patch that moves on its own (for ghosting tests)
    black_level: int = 64  # BAYER16 only
    white_level: int = 1023  # BAYER16 only: 1023 (10-bit) or 4095 (12-bit)


# -- pure image maths ---------------------------------------------------------------------------
def fit_cover(img: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, C) uint8 -> (height, width, C) uint8: scaled to cover the size, cropped at a random place."""
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    cw, ch = min(w, max(1, round(width / scale))), min(h, max(1, round(height / scale)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    # Shrinking averages, as optics and pixels do; enlarging interpolates smoothly.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=interp)


def shake_matrix(motion: tuple[float, float, float], width: int, height: int, margin: float,
                 scale: int = 1) -> np.ndarray:
    """(2, 3) float32 map from output pixels to canvas pixels, for cv2.warpAffine(..., WARP_INVERSE_MAP).

    The output is (scale*height, scale*width); the canvas has `scale*margin` extra pixels per side.
    At scale 2 this is exactly the 2x version of the scale-1 map: output pixel X = 2x + 0.5 maps to
    canvas pixel 2u + 0.5 (pixel centres at integers, as OpenCV has them).
    """
    dx, dy, angle = motion
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = (scale * width - 1) / 2, (scale * height - 1) / 2
    tx = cx + scale * (margin + dx) - (cos * cx - sin * cy)
    ty = cy + scale * (margin + dy) - (sin * cx + cos * cy)
    return np.float32([[cos, -sin, tx], [sin, cos, ty]])


def cfa_site_matrix(motion: tuple[float, float, float], width: int, height: int, margin: float,
                    row: int, col: int) -> np.ndarray:
    """(2, 3) float32 inverse map for one CFA site: its (height/2, width/2) plane pixel (i, j) is
    frame pixel (2i + row, 2j + col), sampled from the 1x canvas through the handheld motion."""
    m = shake_matrix(motion, width, height, margin).astype(np.float64)
    lin, t = m[:, :2], m[:, 2]
    return np.hstack([2 * lin, (lin @ np.array([col, row], np.float64) + t)[:, None]]).astype(np.float32)


# sRGB D65 -> XYZ, and XYZ -> camera matrices (D65) typical of DSLRs, as DNG ColorMatrix2 holds them.
RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_CAMERAS = np.array([
    [[0.4716, 0.0603, -0.0830], [-0.7798, 1.5474, 0.2480], [-0.1496, 0.1937, 0.6651]],
    [[0.8139, -0.2171, -0.0663], [-0.8747, 1.6541, 0.2295], [-0.1925, 0.2008, 0.8093]],
    [[0.5271, -0.0712, -0.0347], [-0.6153, 1.3653, 0.2763], [-0.1601, 0.2366, 0.7242]],
])


def random_rgb_to_camera(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) linear sRGB -> camera RGB: a convex mix of XYZ->camera matrices times sRGB->XYZ, rows
    normalised so white stays white (before white balance)."""
    weights = rng.random(len(XYZ_TO_CAMERAS))
    xyz_to_cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAMERAS, axes=1)
    rgb_to_cam = xyz_to_cam @ RGB_TO_XYZ
    return rgb_to_cam / rgb_to_cam.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class WhiteBalance:
    """Gains a camera would apply to its raw RGB (DESIGN.md: overall 1/N(0.8, 0.1), red 1.9-2.4, blue 1.5-1.9)."""

    overall: float
    red: float
    blue: float

    @property
    def as_shot_neutral(self) -> tuple[float, float, float]:
        return (1.0 / self.red, 1.0, 1.0 / self.blue)

    @staticmethod
    def sample(rng: np.random.Generator) -> "WhiteBalance":
        overall = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.6, 1.0))
        return WhiteBalance(overall, float(rng.uniform(1.9, 2.4)), float(rng.uniform(1.5, 1.9)))


def _untone(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear: inverse smoothstep tone curve, then gamma 2.2 (DESIGN.md step 1)."""
    v = 0.5 - np.sin(np.arcsin(np.clip(1.0 - 2.0 * v, -1.0, 1.0)) / 3.0)
    return np.maximum(v, 1e-8) ** 2.2


_U8_UNTONED = _untone(np.arange(256) / 255.0).astype(np.float32)


def unprocess_srgb(bgr: np.ndarray, rgb_to_cam: np.ndarray, wb: WhiteBalance) -> np.ndarray:
    """(H, W, 3) uint8 sRGB BGR -> (H, W, 3) float32 linear camera RGB in [0, 1] (R, G, B order).

    Inverts what a camera pipeline did (Brooks et al. 2019): tone curve and gamma (a table: the
    input has 256 values), colour correction, then white balance, with the gains fading to 1 near
    saturation so highlights stay clipped instead of turning grey.
    """
    gains = np.array([1.0 / wb.red, 1.0, 1.0 / wb.blue]) / wb.overall
    # Colour matrix and gains in one transform (BGR in, camera RGB out).
    x = cv2.transform(cv2.LUT(bgr, _U8_UNTONED), (gains[:, None] * rgb_to_cam[:, ::-1]).astype(np.float32))
    # Highlight protection: each gain g becomes g + h * (1 - g) (never below g), with h rising from 0
    # to 1 as the ungained mean goes from 0.9 to 1. Few pixels are that bright, so fix up only those.
    mean = cv2.transform(x, (1.0 / (3.0 * gains))[None, :].astype(np.float32))
    bright = mean > 0.9
    if bright.any():
        h = ((mean[bright] - 0.9) / 0.1) ** 2
        x[bright] *= 1.0 + h[:, None] * (np.maximum(1.0 - gains, 0.0) / gains).astype(np.float32)
    cv2.threshold(x, 1.0, 1.0, cv2.THRESH_TRUNC, x)
    cv2.threshold(x, 0.0, 0.0, cv2.THRESH_TOZERO, x)
    return x


def std_as_line(noise: NoiseLevel, tolerance: float = 0.005) -> tuple[float, float] | None:
    """(a, b) with a + b * x within `tolerance` (relative) of the noise std sqrt(shot * x + read) for
    every x in [0, 1], or None when no straight line is that close.

    The chord is that close whenever read noise dominates, as in all WEBCAM_NOISE_LEVELS (0.1%), and
    it saves the square-root pass.
    """
    f = np.sqrt(noise.variance(np.linspace(0.0, 1.0, 1025)))
    if f[0] <= 0:
        return None
    a, b = float(f[0]), float(f[-1] - f[0])
    error = np.max(np.abs(a + b * np.linspace(0.0, 1.0, 1025) - f) / f)
    return (a, b) if error <= tolerance else None


def add_noise_inplace(x: np.ndarray, noise: NoiseLevel, unit_noise: np.ndarray, scratch: np.ndarray,
                      line: tuple[float, float] | None = None) -> None:
    """x += sqrt(shot * x + read) * unit_noise, in place. All (R, C) float32; x contiguous, in [0, 1].

    line: std_as_line(noise), to use its straight-line std instead of the square root.
    """
    if line is not None:
        cv2.addWeighted(x, line[1], x, 0.0, line[0], scratch)
    else:
        cv2.addWeighted(x, noise.sigma_shot**2, x, 0.0, noise.sigma_read**2, scratch)
        cv2.sqrt(scratch, scratch)
    cv2.accumulateProduct(scratch, unit_noise, x)


# A linear value's sRGB byte through its square root: two OpenCV passes and a 256-entry table instead
# of a 16k-entry numpy gather (3x faster). The square root spends its codes where sRGB does, so the
# result is within one code of exact rounding (it adds ~0.3 code RMS of quantisation noise).
_U8_TO_LINEAR = u8_to_linear(np.arange(256, dtype=np.uint8))  # as a cv2.LUT table
_SQRT_TO_SRGB_U8 = quantise_u8(linear_to_srgb((np.arange(256, dtype=np.float32) / 255.0) ** 2))


def sqrt_codes(x: np.ndarray, scratch: np.ndarray, codes: np.ndarray) -> None:
    """codes = round(255 * sqrt(x)), clipped to [0, 255]: (R, C) float32 -> (R, C) uint8 in `codes`.

    Below-black values (noise) are clamped to 0 before the square root: the square root of a negative
    is NaN, and what a byte conversion makes of NaN is not defined (OpenCV 4 gave 0, OpenCV 5 gives
    255). Above 1 the conversion saturates at 255, which OpenCV defines. scratch (R, C) float32 is
    overwritten.
    """
    cv2.threshold(x, 0.0, 0.0, cv2.THRESH_TOZERO, scratch)
    cv2.sqrt(scratch, scratch)
    cv2.convertScaleAbs(scratch, codes, alpha=255.0)


def to_raw_u16(x: np.ndarray, black: int, white: int) -> np.ndarray:
    """(H, W) float32 normalised raw (0 = black, 1 = white, nothing above 1) -> new (H, W) uint16,
    rounded; values below 0 stop at 0 (the sensor keeps some signal below the black level)."""
    return cv2.addWeighted(x, float(white - black), x, 0.0, float(black), dtype=cv2.CV_16U)


def bgr_truth_2x(canvas_bgra: np.ndarray, matrix: np.ndarray, width: int, height: int,
                 patch: np.ndarray | None = None, patch_xy: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The clean 2x frame: (2*height, 2*width, 3) uint8 from the 2x BGRA canvas and its 2x motion map,
    with the moving object pasted at patch_xy (2x pixels) when given."""
    out = cv2.warpAffine(canvas_bgra, matrix, (2 * width, 2 * height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT101)
    out = cv2.cvtColor(out, cv2.COLOR_BGRA2BGR)
    if patch is not None:
        x, y = patch_xy
        out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


# -- state: the hand, the noise pool, the scene -------------------------------------------------
class HandheldShake:
    """The camera's motion, one step per frame: (dx, dy, angle_deg) relative to the scene."""

    def __init__(self, cfg: ShakeConfig, fps: float, rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        dt = 1.0 / fps
        self._decay = math.exp(-dt / cfg.tau_s)  # exact discretisation of the mean-reverting walk
        self._kick = math.sqrt(1.0 - self._decay**2)  # keeps its steady-state spread at sigma
        self._smooth = 1.0 - math.exp(-dt / cfg.smooth_s)
        self._p_jump = 1.0 - math.exp(-cfg.jump_rate_hz * dt)
        self._walk = np.clip(rng.normal(0.0, 1.0, 3) * [cfg.sigma_px, cfg.sigma_px, cfg.sigma_deg],
                             -self._limits(), self._limits())
        self._pos = self._walk.copy()

    def _limits(self) -> np.ndarray:
        return np.array([self.cfg.max_shift_px, self.cfg.max_shift_px, self.cfg.max_rotation_deg])

    def step(self) -> tuple[float, float, float]:
        cfg = self.cfg
        sigma = np.array([cfg.sigma_px, cfg.sigma_px, cfg.sigma_deg])
        self._walk = self._decay * self._walk + self._kick * sigma * self.rng.standard_normal(3)
        jump, direction, length = self.rng.random(3)
        if jump < self._p_jump:
            r = cfg.jump_px[0] + length * (cfg.jump_px[1] - cfg.jump_px[0])
            self._walk[:2] += r * np.array([math.cos(2 * math.pi * direction), math.sin(2 * math.pi * direction)])
        self._walk = np.clip(self._walk, -self._limits(), self._limits())
        self._pos += self._smooth * (self._walk - self._pos)
        return float(self._pos[0]), float(self._pos[1]), float(self._pos[2])


class NoisePool:
    """Windows of a few pre-drawn N(0, 1) float32 fields, at random offsets.

    Drawing a frame's worth of normals costs more than rendering the frame; any window of an i.i.d.
    field is i.i.d., so the per-frame statistics are exact. Each take() also redraws a band of one
    field, so the pool renews itself every `fields / refresh` frames and no pattern lasts.
    """

    def __init__(self, rows: int, cols: int, rng: np.random.Generator, fields: int = 4, pad: int = 48,
                 refresh: float = 1 / 256):
        self.rows, self.cols, self.pad, self.rng = rows, cols, pad, rng
        self.fields = [rng.standard_normal((rows + pad, cols + pad), dtype=np.float32) for _ in range(fields)]
        self._band = max(1, int(math.ceil((rows + pad) * refresh)))
        self._next = 0  # the band to redraw next, counted over all fields

    def take(self) -> np.ndarray:
        """A (rows, cols) float32 view; valid until the next take()."""
        per_field = math.ceil((self.rows + self.pad) / self._band)
        f, b = divmod(self._next % (per_field * len(self.fields)), per_field)
        band = self.fields[f][b * self._band : (b + 1) * self._band]
        self.rng.standard_normal(dtype=np.float32, out=band)
        self._next += 1
        k, oy, ox = self.rng.integers(0, [len(self.fields), self.pad + 1, self.pad + 1])
        return self.fields[k][oy : oy + self.rows, ox : ox + self.cols]


@dataclass(frozen=True)
class _Scene:
    """One photo prepared for rendering. Read-only arrays: lazy truths in other threads read them."""

    index: int
    name: str
    lin_1x: np.ndarray | None = None  # BGR8: (H + 2m, W + 2m, 4) float32 linear BGRA
    canvas_2x: np.ndarray | None = None  # BGR8: (2H + 4m, 2W + 4m, 4) uint8 sRGB BGRA
    planes: tuple[np.ndarray, ...] = ()  # BAYER16: R, G, B (H + 2m, W + 2m) float32 linear camera RGB
    raw: RawMeta | None = None
    patch_1x: np.ndarray | None = None  # moving object: (s, s, 3) linear BGR or camera RGB
    patch_2x: np.ndarray | None = None  # moving object: (2s, 2s, 3) uint8 BGR
    object_start: tuple[float, float] = (0.0, 0.0)
    object_velocity: tuple[float, float] = (0.0, 0.0)  # frame pixels per second


class _RenderedOnRead(GroundTruth):
    """GroundTruth whose `clean` image is rendered the first time it is read (then kept).

    The 2x warp costs more than the whole frame, and live use never looks at it; scoring code reads
    `truth.clean` as usual and pays for it in its own thread. Pickles as a plain GroundTruth.
    """

    def __init__(self, clean: np.ndarray | None = None, motion: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 render: Callable[[], np.ndarray] | None = None):
        if clean is None and render is None:
            raise ValueError("_RenderedOnRead needs a clean image or a render function")
        object.__setattr__(self, "motion", motion)
        object.__setattr__(self, "_clean", clean)
        object.__setattr__(self, "_render", render)
        object.__setattr__(self, "_lock", threading.Lock())

    @property
    def clean(self) -> np.ndarray:  # type: ignore[override]
        if self._clean is None:
            with self._lock:
                if self._clean is None:
                    img = self._render()
                    img.setflags(write=False)
                    object.__setattr__(self, "_clean", img)
                    object.__setattr__(self, "_render", None)
        return self._clean

    def __reduce__(self):
        return (GroundTruth, (self.clean, self.motion))


# -- photos ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_builtin_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """scikit-image's bundled photos as (name, (h, w, 3) read-only uint8 BGR); those missing offline
    are skipped. Decoded once per process (~0.7 s)."""
    import skimage.data

    photos = []
    for name in BUILTIN_PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # not shipped with this scikit-image version, or needs a download: skip it
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append((name, _frozen(np.ascontiguousarray(img[..., 2::-1]).astype(np.uint8))))
    return tuple(photos)


def list_images(folder: str) -> list[Path]:
    """Image files directly in `folder`, sorted; SourceInvalid when it is not a folder or has none."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SourceInvalid(f"simulated camera image folder {folder!r} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceInvalid(
            f"simulated camera image folder {folder!r} has no images ({', '.join(IMAGE_SUFFIXES)}); "
            f"add some or leave the folder out to use the built-in photos"
        )
    return files


def read_image(path: Path) -> np.ndarray | None:
    """(h, w, 3) uint8 BGR, or None when the file cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return img if img is not None and img.size else None


# -- the camera --------------------------------------------------------------------------------
class RecentMax:
    """A duration to plan with: the longest recent one, with a margin. It jumps up to any longer
    time at once and decays slowly back down, so one fast run does not make the next one late.
    measure() times a block on `clock`, the clock the plan is made on."""

    def __init__(self, initial_s: float, margin: float = 1.25, decay: float = 0.98, clock: Clock = SYSTEM_CLOCK):
        self.seconds, self.margin, self.decay = initial_s, margin, decay
        self.clock = clock

    def observe(self, seconds: float) -> None:
        self.seconds = max(self.margin * seconds, self.decay * self.seconds)

    @contextlib.contextmanager
    def measure(self):
        t0 = self.clock.monotonic()
        try:
            yield
        finally:
            self.observe(self.clock.monotonic() - t0)


class SimulatedCamera(Source):
    """The simulated camera. See the module docstring for what it renders and how fast.

    clock: what it paces by and stamps capture times with (tests pass a FakeClock).
    """

    def __init__(self, config: SimulatedConfig = SimulatedConfig(), clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.clock = clock
        self.noise = _resolve_noise(config.noise)
        self._std_line = std_as_line(self.noise)
        self.pixel_format = _check_config(config)
        w, h = config.width, config.height
        s = config.shake
        # Canvas margin: the largest shift plus what the largest rotation moves a corner, plus 2 px.
        self.margin = int(math.ceil(s.max_shift_px + math.radians(s.max_rotation_deg) * math.hypot(w, h) / 2 + 2))
        self.frames_per_scene = max(1, int(round(config.scene_seconds * config.fps)))
        self.name = self.describe().name
        self._open = False

    # -- Source interface ----------------------------------------------------------------------
    def open(self) -> None:
        cfg = self.config
        if cfg.image_dir is not None:
            self._files = list_images(cfg.image_dir)
            if not any(read_image(p) is not None for p in self._files):
                raise SourceInvalid(f"no image in {cfg.image_dir!r} could be decoded; check the files")
            self._photos: tuple[tuple[str, np.ndarray], ...] = ()
        else:
            self._files = []
            self._photos = load_builtin_photos()
            if not self._photos:
                raise SourceInvalid("scikit-image ships none of its sample photos here; pass an image folder")
        shake_ss, noise_ss, camera_ss = np.random.SeedSequence(cfg.seed).spawn(3)
        self._shake = HandheldShake(cfg.shake, cfg.fps, np.random.default_rng(shake_ss))
        self._noise_rng = np.random.default_rng(noise_ss)
        self._rgb_to_cam = random_rgb_to_camera(np.random.default_rng(camera_ss))
        w, h = cfg.width, cfg.height
        bayer = self.pixel_format is PixelFormat.BAYER16
        cols = w if bayer else 3 * w
        self._pool = NoisePool(h, cols, self._noise_rng) if self.noise != NOISE_OFF else None
        # Preallocated per-frame buffers: fresh large arrays would page-fault on every frame.
        self._x = np.empty((h, cols), np.float32)
        self._x4 = np.empty((h, w, 4), np.float32) if not bayer else None
        self._x_blur = np.empty((h, cols), np.float32)
        self._scratch = np.empty((h, cols), np.float32)
        self._codes = np.empty((h, w, 3), np.uint8)
        self._sites = [np.empty((h // 2, w // 2), np.float32) for _ in range(4)]
        self._scene: _Scene | None = None
        self._seq = 0
        self._prev_motion: tuple[float, float, float] | None = None
        self._next_due: float | None = None
        period = 1.0 / cfg.fps
        self._render_time = RecentMax(period / 4, clock=self.clock)
        self._scene_time = RecentMax(period / 2, clock=self.clock)
        self._open = True

    def read(self) -> Frame:
        if not self._open:
            raise SourceInvalid("simulated camera is not open; call open() first")
        seq = self._seq
        k = seq // self.frames_per_scene
        new_scene = self._scene is None or self._scene.index != k
        self._wait_to_render(new_scene)
        if new_scene:
            with self._scene_time.measure():
                self._scene = self._prepare_scene(k)
        with self._render_time.measure():
            motion = self._shake.step()
            prev = self._prev_motion or motion
            self._prev_motion = motion
            if self.pixel_format is PixelFormat.BAYER16:
                pixels, truth = self._render_bayer(self._scene, seq, motion)
                raw = self._scene.raw
            else:
                pixels, truth = self._render_bgr(self._scene, seq, motion, prev)
                raw = None
        t_ns = self._pace()
        self._seq += 1
        return Frame(pixels, seq, t_ns, self.name, self.pixel_format, raw=raw, truth=truth)

    def close(self) -> None:
        self._open = False
        self._scene = self._pool = None
        self._x = self._x4 = self._x_blur = self._scratch = None  # ~20 MB at 640x480

    def describe(self) -> SourceInfo:
        cfg = self.config
        bayer = self.pixel_format is PixelFormat.BAYER16
        noise = cfg.noise if isinstance(cfg.noise, str) else (
            f"read {self.noise.sigma_read:.3g} shot {self.noise.sigma_shot:.3g}")
        looks_at = cfg.image_dir or "scikit-image photos"
        return SourceInfo(
            name=f"simulated:{cfg.width}x{cfg.height}@{cfg.fps:g}" + (":bayer" if bayer else ""),
            kind="simulated", width=cfg.width, height=cfg.height, fps=cfg.fps, pixel_format=self.pixel_format,
            detail=f"{looks_at}; noise {noise}; new scene every {cfg.scene_seconds:g} s"
                   + (f"; RGGB {cfg.black_level}..{cfg.white_level}" if bayer else "; 2x truth rendered on read"),
        )

    # -- frames ---------------------------------------------------------------------------------
    def _render_bgr(self, scene: _Scene, seq: int, motion, prev) -> tuple[np.ndarray, GroundTruth]:
        cfg, w, h, m = self.config, self.config.width, self.config.height, self.margin
        x = self._x
        # OpenCV warps 4-channel float images faster than 3-channel ones, even with the repacking.
        cv2.warpAffine(scene.lin_1x, shake_matrix(motion, w, h, m), (w, h), dst=self._x4,
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
        cv2.cvtColor(self._x4, cv2.COLOR_BGRA2BGR, dst=x.reshape(h, w, 3))
        # Blur along the motion during the exposure, centred on this frame's position so the truth
        # (which has no blur) stays registered.
        bx, by = (cfg.exposure_fraction * (a - b) for a, b in zip(motion[:2], prev[:2]))
        if math.hypot(bx, by) >= _BLUR_MIN_PX:
            cv2.filter2D(x.reshape(h, w, 3), -1, motion_blur_kernel(bx, by), dst=self._x_blur.reshape(h, w, 3),
                         borderType=cv2.BORDER_REFLECT101)
            x, self._x_blur = self._x_blur, x
            self._x = x
        xy = self._object_xy(scene, seq, motion)
        if xy is not None:
            s = scene.patch_1x.shape[0]
            x.reshape(h, w, 3)[xy[1] : xy[1] + s, xy[0] : xy[0] + s] = scene.patch_1x
        noise = self._pool.take() if self._pool is not None else None
        codes = self._codes.reshape(h, 3 * w)
        # Noise and quantisation by bands of rows, so each band stays in cache through the five passes.
        for r in range(0, h, _BAND_ROWS):
            band = slice(r, r + _BAND_ROWS)
            if noise is not None:
                add_noise_inplace(x[band], self.noise, noise[band], self._scratch[band], self._std_line)
            sqrt_codes(x[band], self._scratch[band], codes[band])
        pixels = cv2.LUT(self._codes, _SQRT_TO_SRGB_U8)
        m2 = shake_matrix(motion, w, h, m, scale=2)
        patch, xy2 = (scene.patch_2x, (2 * xy[0], 2 * xy[1])) if xy is not None else (None, (0, 0))
        canvas = scene.canvas_2x
        truth = _RenderedOnRead(motion=motion, render=lambda: bgr_truth_2x(canvas, m2, w, h, patch, xy2))
        return pixels, truth

    def _render_bayer(self, scene: _Scene, seq: int, motion) -> tuple[np.ndarray, GroundTruth]:
        cfg, w, h, m = self.config, self.config.width, self.config.height, self.margin
        x = self._x
        for (row, col), site in zip(((0, 0), (0, 1), (1, 0), (1, 1)), self._sites):
            channel = (0, 1, 1, 2)[2 * row + col]  # RGGB
            cv2.warpAffine(scene.planes[channel], cfa_site_matrix(motion, w, h, m, row, col), (w // 2, h // 2),
                           dst=site, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101)
            x[row::2, col::2] = site
        xy = self._object_xy(scene, seq, motion)
        if xy is not None:
            px, py = xy
            s = scene.patch_1x.shape[0]
            rows = (np.arange(py, py + s) % 2)[:, None]
            cols = (np.arange(px, px + s) % 2)[None, :]
            channel = np.array([[0, 1], [1, 2]])[rows, cols]  # the CFA colour at each covered pixel
            x[py : py + s, px : px + s] = np.take_along_axis(scene.patch_1x, channel[..., None], axis=2)[..., 0]
        clean = to_raw_u16(x, cfg.black_level, cfg.white_level)
        if self._pool is not None:
            add_noise_inplace(x, self.noise, self._pool.take(), self._scratch, self._std_line)
            cv2.threshold(x, 1.0, 1.0, cv2.THRESH_TRUNC, x)  # the sensor saturates at the white level
            pixels = to_raw_u16(x, cfg.black_level, cfg.white_level)
        else:
            pixels = clean.copy()
        clean.setflags(write=False)
        return pixels, GroundTruth(clean, motion)

    def _object_xy(self, scene: _Scene, seq: int, motion) -> tuple[int, int] | None:
        """Top-left frame pixel of the moving object, or None. It bounces around the frame on its own
        path and shakes with the camera like anything else in the scene."""
        if scene.patch_1x is None:
            return None
        s = scene.patch_1x.shape[0]
        t = seq / self.config.fps
        xy = []
        for start, v, extent, shake in zip(scene.object_start, scene.object_velocity,
                                           (self.config.width - s, self.config.height - s), motion[:2]):
            p = (start + v * t) % (2 * extent)
            p = p if p <= extent else 2 * extent - p  # bounce off the frame edges
            xy.append(int(np.clip(round(p - shake), 0, extent)))
        return xy[0], xy[1]

    # -- scenes ---------------------------------------------------------------------------------
    def _photo(self, k: int) -> tuple[str, np.ndarray]:
        """The k-th photo of the cycle (seeded start); unreadable files are skipped."""
        if self._photos:
            return self._photos[(k + self.config.seed) % len(self._photos)]
        n = len(self._files)
        for i in range(n):
            path = self._files[(k + self.config.seed + i) % n]
            img = read_image(path)
            if img is not None:
                return path.name, img
        raise SourceInvalid(f"no image in {self.config.image_dir!r} can be decoded any more")

    def _prepare_scene(self, k: int) -> _Scene:
        cfg, w, h, m = self.config, self.config.width, self.config.height, self.margin
        rng = np.random.default_rng([cfg.seed, k, 0x5CE7E])
        name, photo = self._photo(k)
        bayer = self.pixel_format is PixelFormat.BAYER16
        s = 2 * max(4, min(w, h) // 10)  # object side (frame pixels), even so its CFA phase is simple
        fields: dict = {}
        if bayer:
            wb = WhiteBalance.sample(rng)
            cam = unprocess_srgb(fit_cover(photo, w + 2 * m, h + 2 * m, rng), self._rgb_to_cam, wb)
            fields["planes"] = tuple(_frozen(p) for p in cv2.split(cam))
            fields["raw"] = self._raw_meta(wb)
            if cfg.moving_object:
                _, other = self._photo(k + 1)
                fields["patch_1x"] = _frozen(unprocess_srgb(fit_cover(other, s, s, rng), self._rgb_to_cam, wb))
        else:
            # BGRA throughout: OpenCV warps 4 channels faster than 3 (the alpha is never used).
            canvas = fit_cover(cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA), 2 * (w + 2 * m), 2 * (h + 2 * m), rng)
            lin = cv2.LUT(canvas, _U8_TO_LINEAR)
            fields["lin_1x"] = _frozen(cv2.resize(lin, (w + 2 * m, h + 2 * m), interpolation=cv2.INTER_AREA))
            fields["canvas_2x"] = _frozen(canvas)
            if cfg.moving_object:
                _, other = self._photo(k + 1)
                patch = fit_cover(other, 2 * s, 2 * s, rng)
                fields["patch_2x"] = _frozen(patch)
                fields["patch_1x"] = _frozen(cv2.resize(u8_to_linear(patch), (s, s), interpolation=cv2.INTER_AREA))
        if cfg.moving_object:
            speed = 0.25 * min(w, h)  # frame pixels per second
            a = rng.uniform(0, 2 * math.pi)
            fields["object_start"] = (float(rng.uniform(0, w - s)), float(rng.uniform(0, h - s)))
            fields["object_velocity"] = (speed * math.cos(a), speed * math.sin(a))
        return _Scene(index=k, name=name, **fields)

    def _raw_meta(self, wb: WhiteBalance) -> RawMeta:
        cfg = self.config
        # The XYZ->camera matrix that matches the rgb->camera transform actually applied.
        xyz_to_cam = _frozen(self._rgb_to_cam @ np.linalg.inv(RGB_TO_XYZ))
        var = (float(self.noise.sigma_shot**2), float(self.noise.sigma_read**2))
        return RawMeta(
            black_level=(float(cfg.black_level),) * 4, white_level=cfg.white_level, cfa_pattern="RGGB",
            as_shot_neutral=wb.as_shot_neutral, color_matrix=xyz_to_cam,
            noise_profile=(var,) * 3,  # per colour plane R, G, B, as DNG NoiseProfile holds it
            exposure_time_s=cfg.exposure_fraction / cfg.fps, bits_per_sample=int(cfg.white_level).bit_length(),
        )

    # -- pacing ---------------------------------------------------------------------------------
    def _wait_to_render(self, new_scene: bool) -> None:
        """Paced: sleep until just before this frame is due, less the time its rendering takes.

        A real camera's frame costs the host nothing until it arrives. Rendering right after the
        previous frame went out would instead run beside the model working on that frame, and on
        2 cores it slows the model down; rendered just in time it mostly runs while the engine waits.
        """
        if not self.config.realtime or self._next_due is None:
            return
        lead = self._render_time.seconds + (self._scene_time.seconds if new_scene else 0.0)
        wait = self._next_due - lead - self.clock.monotonic()
        if wait > 0:
            self.clock.sleep(wait)

    def _pace(self) -> int:
        """Wait for this frame's slot when paced; the capture time of the frame (monotonic ns)."""
        if not self.config.realtime:
            return self.clock.monotonic_ns()
        period = 1.0 / self.config.fps
        now = self.clock.monotonic()
        if self._next_due is None or now - self._next_due > period:
            self._next_due = now  # first frame, or fell behind: a camera drops frames, it does not burst
        elif self._next_due > now:
            self.clock.sleep(self._next_due - now)
        self._next_due += period
        return self.clock.monotonic_ns()


def _resolve_noise(noise: str | NoiseLevel) -> NoiseLevel:
    if isinstance(noise, NoiseLevel):
        return noise
    if noise == "off":
        return NOISE_OFF
    if noise in WEBCAM_NOISE_LEVELS:
        return WEBCAM_NOISE_LEVELS[noise]
    raise SourceInvalid(f"simulated camera noise {noise!r} is not 'off' or one of {sorted(WEBCAM_NOISE_LEVELS)}")


def _check_config(cfg: SimulatedConfig) -> PixelFormat:
    try:
        fmt = PixelFormat(cfg.pixel_format)
    except ValueError:
        fmt = None
    if fmt not in (PixelFormat.BGR8, PixelFormat.BAYER16):
        raise SourceInvalid(f"simulated camera makes BGR8 or BAYER16 frames, not {cfg.pixel_format!r}")
    if cfg.width < 16 or cfg.height < 16 or cfg.width % 2 or cfg.height % 2:
        raise SourceInvalid(f"simulated camera size {cfg.width}x{cfg.height} must be even and at least 16x16")
    if not cfg.fps > 0:
        raise SourceInvalid(f"simulated camera fps must be positive, got {cfg.fps}")
    if not (cfg.shake.tau_s > 0 and cfg.shake.smooth_s > 0):
        raise SourceInvalid(f"shake tau_s and smooth_s must be positive, got {cfg.shake.tau_s}, {cfg.shake.smooth_s}")
    if not 0 <= cfg.exposure_fraction <= 1:
        raise SourceInvalid(f"exposure_fraction must be in [0, 1], got {cfg.exposure_fraction}")
    if fmt is PixelFormat.BAYER16 and not 0 <= cfg.black_level < cfg.white_level <= 65535:
        raise SourceInvalid(f"need 0 <= black level < white level <= 65535, got {cfg.black_level}, {cfg.white_level}")
    return fmt


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a

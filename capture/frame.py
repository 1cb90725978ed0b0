"""The one frame type that flows from every source through the engine to the viewer.

A `Frame` is immutable: its pixel array is made read-only on construction, so a consumer can never
see a frame that another thread is still writing (no torn frames).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import numpy as np


class PixelFormat(str, enum.Enum):
    """How `Frame.pixels` is laid out."""

    BGR8 = "BGR8"  # (H, W, 3) uint8, OpenCV channel order
    GRAY8 = "GRAY8"  # (H, W) uint8
    YUYV = "YUYV"  # (H, W, 2) uint8, YUV 4:2:2 packed as [Y, U|V] pairs (what the PS3 Eye sends)
    BAYER16 = "BAYER16"  # (H, W) uint16 colour-filter-array mosaic; pattern in RawMeta.cfa_pattern
    RGB16 = "RGB16"  # (H, W, 3) uint16 linear demosaiced RGB (DNG LinearRaw, e.g. iPhone ProRAW)


CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


@dataclass(frozen=True)
class RawMeta:
    """Sensor metadata that travels with RAW frames (BAYER16 and RGB16).

    black_level: per CFA position in row-major 2x2 order (4 values; 3 for RGB16 frames).
    white_level: the sensor's saturation value in the stored integers.
    cfa_pattern: one of CFA_PATTERNS, row-major ('RGGB': R at (0,0), G at (0,1), G at (1,0), B at (1,1)).
    as_shot_neutral: camera-space RGB of a neutral grey (DNG AsShotNeutral); WB gains are its inverse.
    color_matrix: (3, 3) XYZ -> camera matrix (DNG ColorMatrix1/2), or None.
    noise_profile: per-plane (scale S, offset O) so that variance = S * x + O on [0, 1] signal
        (DNG NoiseProfile), or None when unknown.
    opcodes: raw DNG opcode-list bytes keyed by list number (1, 2, 3), parsed by the lens stage.
    """

    black_level: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    white_level: int = 65535
    cfa_pattern: str = "RGGB"
    as_shot_neutral: tuple[float, float, float] = (1.0, 1.0, 1.0)
    color_matrix: np.ndarray | None = None
    noise_profile: tuple[tuple[float, float], ...] | None = None
    opcodes: dict[int, bytes] = field(default_factory=dict)
    exposure_time_s: float | None = None
    iso: float | None = None
    bits_per_sample: int = 16

    def __post_init__(self) -> None:
        if self.cfa_pattern not in CFA_PATTERNS:
            raise ValueError(f"CFA pattern {self.cfa_pattern!r} is not one of {CFA_PATTERNS}")
        if self.white_level <= max(self.black_level):
            raise ValueError(
                f"white level {self.white_level} must be above every black level {self.black_level}"
            )

    def replace(self, **changes) -> "RawMeta":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class GroundTruth:
    """What a synthetic source knows about a frame, so later stages can be scored.

    clean: the frame before degradation, same layout as the frame's pixels (or at 2x for SR truth).
    motion: (dx, dy, angle_deg) of this frame relative to the scene, in pixels and degrees.
    """

    clean: np.ndarray
    motion: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    pixels: array whose shape and dtype follow `pixel_format` (see PixelFormat).
    seq: sequence number from the source, strictly increasing.
    t_capture_ns: `time.monotonic_ns()` when the frame was captured (latency is measured from here).
    """

    pixels: np.ndarray
    seq: int
    t_capture_ns: int
    source: str
    pixel_format: PixelFormat
    raw: RawMeta | None = None
    truth: GroundTruth | None = None

    def __post_init__(self) -> None:
        _check_layout(self.pixels, self.pixel_format)
        if self.pixel_format in (PixelFormat.BAYER16, PixelFormat.RGB16) and self.raw is None:
            raise ValueError(f"a {self.pixel_format.value} frame needs RawMeta (black/white level, CFA)")
        if self.pixels.flags.writeable:
            # Own a private read-only view: whoever made the array can't change it under a reader.
            pixels = self.pixels if self.pixels.flags.owndata else self.pixels.copy()
            pixels.setflags(write=False)
            object.__setattr__(self, "pixels", pixels)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


_LAYOUTS = {
    PixelFormat.BGR8: (3, np.uint8, 3),
    PixelFormat.GRAY8: (2, np.uint8, None),
    PixelFormat.YUYV: (3, np.uint8, 2),
    PixelFormat.BAYER16: (2, np.uint16, None),
    PixelFormat.RGB16: (3, np.uint16, 3),
}


def _check_layout(pixels: np.ndarray, fmt: PixelFormat) -> None:
    ndim, dtype, channels = _LAYOUTS[PixelFormat(fmt)]
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"Frame pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.ndim != ndim or pixels.dtype != dtype or (channels and pixels.shape[2] != channels):
        want = f"{ndim}-D {np.dtype(dtype).name}" + (f" with {channels} channels" if channels else "")
        raise ValueError(
            f"{fmt.value} frame must be {want}; got shape {pixels.shape} dtype {pixels.dtype}"
        )
    if fmt in (PixelFormat.BAYER16, PixelFormat.YUYV) and pixels.shape[1] % 2:
        raise ValueError(f"{fmt.value} frame width must be even, got {pixels.shape[1]}")
    if fmt is PixelFormat.BAYER16 and pixels.shape[0] % 2:
        raise ValueError(f"BAYER16 frame height must be even, got {pixels.shape[0]}")

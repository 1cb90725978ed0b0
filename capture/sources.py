"""Turn what the user typed after --source into a Source.

    simulated | simulated:bayer | simulated:320x240@60   the built-in camera (default)
    ps3eye | ps3eye:320x240@120 | ps3eye:bayer             our userspace USB driver (bayer: raw 8-bit mosaic)
    0 | /dev/video0 | 1:640x480@60                         a camera through OpenCV/V4L2
    clip.mp4                                               a video file (PyAV, OpenCV fallback)
    'burst/*.dng' | burst/ (a folder of DNGs)              a DNG burst played as a stream
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from capture.errors import SourceInvalid
from capture.frame import PixelFormat
from capture.source import Source

_MODE = re.compile(r"^(?P<w>\d+)x(?P<h>\d+)(@(?P<fps>\d+(\.\d+)?))?$")


@dataclass(frozen=True)
class SourceOptions:
    """Options that apply to every source kind (each kind ignores what does not concern it)."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    realtime: bool = True  # pace files and the simulated camera like a live camera
    loop: bool = False
    seed: int = 0
    images: str | None = None  # a folder of images for the simulated camera to look at


def parse_mode(text: str) -> tuple[int, int, float | None]:
    """'640x480@60' -> (640, 480, 60.0); '320x240' -> (320, 240, None)."""
    m = _MODE.match(text)
    if not m:
        raise SourceInvalid(f"mode {text!r} is not WIDTHxHEIGHT[@FPS], e.g. 640x480@60")
    return int(m["w"]), int(m["h"]), float(m["fps"]) if m["fps"] else None


def _mode_and_bayer(rest: str, w, h, fps) -> tuple:
    """The "WxH@FPS" and "bayer" parts of a camera spec's tail (in any order), over the options'
    (w, h, fps): -> (w, h, fps, bayer)."""
    bayer = False
    for part in filter(None, rest.split(":")):
        if part == "bayer":
            bayer = True
        else:
            w, h, fps = _merge(parse_mode(part), w, h, fps)
    return w, h, fps, bayer


def open_source(spec: str, options: SourceOptions = SourceOptions()) -> Source:
    """A Source for `spec` (not yet opened). Raises SourceInvalid naming what was not understood."""
    kind, _, rest = spec.partition(":")
    w, h, fps = options.width, options.height, options.fps
    mode_text = rest
    if kind == "simulated":
        from capture.simulated import SimulatedCamera, SimulatedConfig

        w, h, fps, bayer = _mode_and_bayer(rest, w, h, fps)
        cfg = SimulatedConfig(
            width=w or 640, height=h or 480, fps=fps or 30.0, realtime=options.realtime, seed=options.seed,
            pixel_format=PixelFormat.BAYER16 if bayer else PixelFormat.BGR8, image_dir=options.images,
        )
        return SimulatedCamera(cfg)
    if kind == "ps3eye":
        from capture.ps3eye import PS3EyeCamera, PS3EyeConfig

        w, h, fps, bayer = _mode_and_bayer(rest, w, h, fps)
        return PS3EyeCamera(PS3EyeConfig(width=w or 640, height=h or 480, fps=fps or 60,
                                         pixel_format=PixelFormat.BAYER16 if bayer else PixelFormat.YUYV))
    if kind.isdigit() or spec.startswith("/dev/video"):
        from capture.opencv_camera import OpenCVCamera, OpenCVCameraConfig

        device: int | str = int(kind) if kind.isdigit() else spec
        if kind.isdigit() and mode_text:
            w, h, fps = _merge(parse_mode(mode_text), w, h, fps)
        return OpenCVCamera(OpenCVCameraConfig(device=device, width=w or 640, height=h or 480, fps=fps or 60))
    path = Path(spec)
    if path.is_dir() or spec.lower().endswith(".dng") or glob.has_magic(spec):
        from capture.dng import DngBurstSource

        pattern = str(path / "*.dng") if path.is_dir() else spec
        return DngBurstSource(pattern, fps=fps or 30.0, paced=options.realtime, loop=options.loop)
    if path.exists():
        from capture.video_file import VideoFileConfig, VideoFileSource

        return VideoFileSource(VideoFileConfig(spec, paced=options.realtime, loop=options.loop))
    raise SourceInvalid(
        f"source {spec!r} is not a camera index, a device path, 'simulated', 'ps3eye', an existing video "
        f"file, or a DNG folder/glob. `eyefuse sources` lists what can be opened."
    )


def _merge(mode: tuple[int, int, float | None], w, h, fps):
    mw, mh, mfps = mode
    return mw, mh, mfps if mfps is not None else fps

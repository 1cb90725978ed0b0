"""Cameras through cv2.VideoCapture (V4L2 on Linux): how a PS3 Eye with the gspca ov534 driver is read."""
from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from capture.errors import DeviceDisconnected, SourceUnavailable
from capture.frame import Frame, PixelFormat
from capture.source import Source, SourceInfo


@dataclass(frozen=True)
class OpenCVCameraConfig:
    device: int | str = 0  # index, or a device path such as /dev/video0
    width: int = 640
    height: int = 480
    fps: float = 60.0
    read_failures_before_disconnect: int = 5  # a camera may miss a frame; several in a row means it's gone


def video_devices() -> list[str]:
    """The V4L2 device nodes present (Linux); empty elsewhere."""
    return sorted(glob.glob("/dev/video*")) if sys.platform.startswith("linux") else []


class OpenCVCamera(Source):
    def __init__(self, config: OpenCVCameraConfig = OpenCVCameraConfig()):
        self.config = config
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0
        self._fps = 0.0
        self._size = (0, 0)

    def open(self) -> None:
        dev = self.config.device
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") and not _is_file(dev) else cv2.CAP_ANY
        cap = cv2.VideoCapture(dev, backend)
        if not cap.isOpened():
            cap.release()
            found = ", ".join(video_devices()) or "none"
            raise SourceUnavailable(
                f"cannot open camera {dev!r} (video devices found: {found}). Check that it is plugged in, "
                f"not used by another program, and that you can read it (Linux: add yourself to the "
                f"'video' group); `eyefuse sources` lists what can be opened."
            )
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        cap.set(cv2.CAP_PROP_FPS, self.config.fps)
        self._fps = cap.get(cv2.CAP_PROP_FPS) or self.config.fps
        self._size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self._cap = cap

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceUnavailable("camera is not open; call open() first")
        for _ in range(self.config.read_failures_before_disconnect):
            ok, img = self._cap.read()
            if ok and img is not None:
                t = time.monotonic_ns()
                if img.ndim == 2:
                    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                frame = Frame(np.ascontiguousarray(img), self._seq, t, self.describe().name, PixelFormat.BGR8)
                self._seq += 1
                return frame
        raise DeviceDisconnected(
            f"camera {self.config.device!r} stopped delivering frames "
            f"({self.config.read_failures_before_disconnect} failed reads in a row)"
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> SourceInfo:
        return SourceInfo(
            name=f"camera:{self.config.device}",
            kind="opencv",
            width=self._size[0] or self.config.width,
            height=self._size[1] or self.config.height,
            fps=self._fps or self.config.fps,
            pixel_format=PixelFormat.BGR8,
        )


def _is_file(dev: int | str) -> bool:
    return isinstance(dev, str) and not dev.startswith("/dev/")

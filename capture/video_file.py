"""Video files as a source: anything PyAV (FFmpeg) decodes, with OpenCV as a fallback reader.

Paced at the file's own frame rate (by presentation time) or as fast as possible, optionally looped.
Pacing and capture times are read from a Clock (capture.clock), so a test can run a file on logical time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import SourceEnded, SourceInvalid
from capture.frame import Frame, PixelFormat
from capture.source import Source, SourceInfo


@dataclass(frozen=True)
class VideoFileConfig:
    path: str
    paced: bool = True  # deliver frames at the file's frame rate, as a camera would
    loop: bool = False


class _PyAVReader:
    """Decoded BGR frames with their presentation times (s), through PyAV."""

    def __init__(self, path: str):
        import av

        self._av = av
        self.container = av.open(path)
        if not self.container.streams.video:
            self.container.close()
            raise SourceInvalid(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        self._frames = self.container.decode(self.stream)

    def next(self) -> tuple[np.ndarray, float] | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        t = float(frame.time) if frame.time is not None else None
        return frame.to_ndarray(format="bgr24"), t

    def rewind(self) -> None:
        self.container.seek(0)
        self._frames = self.container.decode(self.stream)

    def close(self) -> None:
        self.container.close()


class _OpenCVReader:
    """The same through cv2.VideoCapture, for what FFmpeg-through-PyAV does not open (image sequences)."""

    def __init__(self, path: str):
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise SourceInvalid(f"cannot open {path}")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def next(self) -> tuple[np.ndarray, float] | None:
        ok, img = self.cap.read()
        if not ok:
            return None
        return img, self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def rewind(self) -> None:
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def close(self) -> None:
        self.cap.release()


class VideoFileSource(Source):
    """A video file played as a camera. clock: what it paces by and stamps capture times with."""

    def __init__(self, config: VideoFileConfig, clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.clock = clock
        self._reader: _PyAVReader | _OpenCVReader | None = None
        self._seq = 0
        self._t0_wall: float | None = None
        self._t0_media: float = 0.0
        self._loop_offset = 0.0
        self._last_t = 0.0

    def open(self) -> None:
        path = Path(self.config.path)
        if not path.exists():
            raise SourceInvalid(f"video file {path} does not exist; check the path")
        errors = []
        for reader in (_PyAVReader, _OpenCVReader):
            try:
                self._reader = reader(str(path))
                break
            except SourceInvalid:
                raise
            except Exception as exc:  # each library has its own error types; we try the next reader
                errors.append(f"{reader.__name__.strip('_')}: {exc}")
        else:
            raise SourceInvalid(f"cannot decode {path} as a video ({'; '.join(errors)})")
        self._t0_wall = None

    def read(self) -> Frame:
        if self._reader is None:
            raise SourceInvalid("video source is not open; call open() first")
        try:
            item = self._reader.next()
            if item is None and self.config.loop and self._seq > 0:
                self._reader.rewind()
                self._loop_offset = self._last_t + 1.0 / self._reader.fps
                item = self._reader.next()
        except Exception as exc:
            raise SourceInvalid(f"decode error in {self.config.path} after frame {self._seq}: {exc}") from exc
        if item is None:
            raise SourceEnded(f"{self.config.path} ended after {self._seq} frames")
        img, t_media = item
        if t_media is None:
            t_media = self._seq / self._reader.fps
        t_media += self._loop_offset
        self._last_t = t_media
        if self.config.paced:
            self._wait_until_media_time(t_media)
        frame = Frame(np.ascontiguousarray(img), self._seq, self.clock.monotonic_ns(), self.describe().name,
                      PixelFormat.BGR8)
        self._seq += 1
        return frame

    def _wait_until_media_time(self, t_media: float) -> None:
        now = self.clock.monotonic()
        if self._t0_wall is None:
            self._t0_wall, self._t0_media = now, t_media
            return
        due = self._t0_wall + (t_media - self._t0_media)
        if due > now:
            self.clock.sleep(due - now)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def describe(self) -> SourceInfo:
        r = self._reader
        return SourceInfo(
            name=f"video:{Path(self.config.path).name}",
            kind="video",
            width=r.width if r else 0,
            height=r.height if r else 0,
            fps=r.fps if r else 0.0,
            pixel_format=PixelFormat.BGR8,
            detail=str(self.config.path),
        )

"""The small interface every frame source implements: open, read, close, describe."""
from __future__ import annotations

import abc
from dataclasses import dataclass

from capture.frame import Frame, PixelFormat


@dataclass(frozen=True)
class SourceInfo:
    """What a source delivers, for the GUI and the `sources` command."""

    name: str
    kind: str  # "simulated", "opencv", "ps3eye", "video", "dng"
    width: int
    height: int
    fps: float
    pixel_format: PixelFormat
    detail: str = ""


class Source(abc.ABC):
    """A source of frames. Not thread-safe: one CaptureWorker thread owns it.

    read() blocks until the next frame and returns it with a fresh `t_capture_ns`. It raises
    SourceEnded at the end of a finite source, DeviceDisconnected when the device went away,
    SourceUnavailable when it cannot be opened, FrameDecodeError for one bad frame.
    """

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> Frame: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> SourceInfo: ...

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

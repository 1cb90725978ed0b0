"""Fake sources for the capture and live tests: cameras that follow a script or a test's hand."""
from __future__ import annotations

import queue
import threading
import time

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import DeviceDisconnected, FrameDecodeError, SourceEnded, SourceUnavailable
from capture.frame import PixelFormat
from capture.source import Source, SourceInfo
from tests.conftest import DEADLINE_S, make_bgr_frame


class ScriptedCamera(Source):
    """A camera that follows a script: each entry is 'frame', 'bad' (decode error), 'unplug',
    'end', or an exception to raise from open(). Counts from 0 again after every reopen, like a
    real device does. Each read takes `period_s` on `clock`."""

    def __init__(self, read_script, open_script=(), period_s=0.0, clock: Clock = SYSTEM_CLOCK):
        self.read_script = list(read_script)
        self.open_script = list(open_script)
        self.period_s = period_s
        self.clock = clock
        self.opened = 0
        self.closed = 0
        self._seq = 0
        self.lock = threading.Lock()

    def open(self):
        if self.open_script:
            exc = self.open_script.pop(0)
            if exc is not None:
                raise exc
        self.opened += 1
        self._seq = 0

    def read(self):
        self.clock.sleep(self.period_s)
        step = self.read_script.pop(0) if self.read_script else "frame"
        if step == "bad":
            raise FrameDecodeError("corrupt packet")
        if step == "unplug":
            raise DeviceDisconnected("cable pulled")
        if step == "end":
            raise SourceEnded("no more")
        f = make_bgr_frame(self._seq)
        self._seq += 1
        return f

    def close(self):
        self.closed += 1

    def describe(self):
        return SourceInfo("scripted", "test", 8, 8, 100.0, PixelFormat.BGR8)


class Unpluggable(Source):
    """A camera the test drives: `deliver(n, period_s)` lets n frames through, each period_s after
    the one before on `clock` (or `stream(period_s)`: frames for ever); `unplug()` makes reads fail as
    a pulled cable does and open() wait until `plug()`; `finish()` ends the stream."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._steps: queue.Queue = queue.Queue()
        self._plugged = threading.Event()
        self._plugged.set()
        self._ended = threading.Event()
        self._stream_period: float | None = None
        self.waiting_for_plug = threading.Event()
        self._seq = 0

    def deliver(self, n: int, period_s: float = 0.1) -> None:
        for _ in range(n):
            self._steps.put(period_s)

    def stream(self, period_s: float) -> None:
        self._stream_period = period_s

    def unplug(self) -> None:
        self._plugged.clear()

    def plug(self) -> None:
        self._plugged.set()

    def finish(self) -> None:
        self._ended.set()
        self._plugged.set()

    def open(self) -> None:
        if not self._plugged.is_set():
            self.waiting_for_plug.set()
            if not self._plugged.wait(DEADLINE_S):
                raise SourceUnavailable("the test never plugged the camera back")
            self.waiting_for_plug.clear()
        self._seq = 0

    def read(self):
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if self._ended.is_set():
                raise SourceEnded("finished")
            if not self._plugged.is_set():
                raise DeviceDisconnected("cable pulled")
            if self._stream_period is not None:
                period = self._stream_period
                break
            try:
                period = self._steps.get(timeout=0.01)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise SourceEnded("the test gave no more frames") from None
        self.clock.sleep(period)
        frame = make_bgr_frame(self._seq, 16, 16)
        self._seq += 1
        return frame

    def close(self) -> None:
        pass

    def describe(self):
        return SourceInfo("unpluggable", "test", 16, 16, 30.0, PixelFormat.BGR8)

"""Outages of a source: a camera unplugged and plugged back, or frames that just stop. The capture
status says how long ago the last frame came and shows no frame rate meanwhile, and every outage is
kept with its start, duration and reason. All on logical time (FakeClock), so durations are exact."""
from __future__ import annotations

import queue
import threading
import time

import pytest

from capture.clock import Clock, FakeClock
from capture.errors import DeviceDisconnected, SourceEnded, SourceUnavailable
from capture.frame import PixelFormat
from capture.ring_buffer import RingBuffer
from capture.source import Source, SourceInfo
from capture.worker import CaptureState, CaptureWorker, Outage, RetryPolicy
from tests.conftest import DEADLINE_S, eventually, make_bgr_frame
from tests.test_capture_worker import ScriptedCamera


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield


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


def start(source, clock, **kwargs) -> CaptureWorker:
    w = CaptureWorker(source, RingBuffer(64), clock=clock, **kwargs)
    w.start()
    return w


def test_an_unplugged_camera_is_an_outage_from_its_last_frame_to_its_next():
    """5 frames 0.1 s apart, the cable pulled at the 6th read, two failed reopenings (backoff 0.2,
    0.4, 0.8 s), then frames again: the outage runs from the 5th frame to the first one after."""
    clock = FakeClock(1000.0)
    cam = ScriptedCamera(["frame"] * 5 + ["unplug"] + ["frame"] * 5 + ["end"],
                         open_script=[None, SourceUnavailable("busy"), SourceUnavailable("busy")],
                         period_s=0.1, clock=clock)
    w = start(cam, clock)
    assert w.join(DEADLINE_S)
    st = w.status()
    assert st.state is CaptureState.ENDED and st.frames == 10 and st.reconnects == 1
    assert len(st.outages) == 1
    out = st.outages[0]
    assert out.reason == "cable pulled; reconnecting" and out.recovered
    assert out.start_s == pytest.approx(1000.5, abs=1e-9), "from the last frame before it"
    assert out.duration_s == pytest.approx(0.1 + 0.2 + 0.4 + 0.8 + 0.1, abs=1e-9), "to the first frame after it"
    assert out.as_dict(t0=1000.0) == {"start_s": 0.5, "duration_s": 1.6, "reason": "cable pulled; reconnecting",
                                      "recovered": True}


def test_while_unplugged_the_status_has_no_frame_rate_and_counts_the_time_since_the_last_frame():
    clock = FakeClock(1000.0)
    cam = Unpluggable(clock)
    w = start(cam, clock)
    try:
        cam.deliver(40, 1 / 30)
        eventually(lambda: w.status().frames == 40, "40 frames captured")
        assert w.status().fps > 0 and w.status().since_frame_s == 0.0
        cam.unplug()
        assert cam.waiting_for_plug.wait(DEADLINE_S), "the worker never tried to reopen the camera"
        clock.advance(5.0)
        st = w.status()
        assert st.state is CaptureState.RETRYING
        assert st.fps == 0.0, "no frames: no frame rate, not the last one it had"
        assert st.since_frame_s == pytest.approx(0.2 + 5.0, abs=1e-9), "one backoff wait, then 5 s"
        assert st.outages == (Outage(st.outages[0].start_s, st.since_frame_s, "cable pulled; reconnecting", False),)
        cam.plug()
        cam.deliver(3, 1 / 30)
        eventually(lambda: w.status().frames == 43, "frames after the camera came back")
        st = w.status()
        assert st.state is CaptureState.RUNNING and st.since_frame_s == 0.0
        assert len(st.outages) == 1 and st.outages[0].recovered
        assert st.outages[0].duration_s == pytest.approx(0.2 + 5.0 + 1 / 30, abs=1e-9)
    finally:
        cam.finish()
        assert w.join(DEADLINE_S)


def test_frames_that_stop_without_a_word_are_an_outage_too():
    clock = FakeClock(1000.0)
    cam = Unpluggable(clock)
    w = start(cam, clock, stall_s=1.0)
    try:
        cam.deliver(5, 0.1)
        eventually(lambda: w.status().frames == 5, "5 frames captured")
        clock.advance(0.9)  # within stall_s: a slow frame, not an outage
        assert w.status().outages == () and w.status().fps > 0
        clock.advance(1.1)
        st = w.status()
        assert st.state is CaptureState.RUNNING and st.fps == 0.0
        assert st.outages == (Outage(1000.5, pytest.approx(2.0), "no frame for 2.0 s", False),)
        cam.deliver(1, 0.5)  # arrives 2.5 s after the last one
        cam.deliver(3, 0.1)
        eventually(lambda: w.status().frames == 9, "frames after the stall")
        assert w.status().outages == (Outage(1000.5, pytest.approx(2.5), "no frame for 2.5 s", True),)
    finally:
        cam.finish()
        assert w.join(DEADLINE_S)
    assert len(w.status().outages) == 1, "a source that ends is not an outage"


def test_a_capture_that_ends_during_an_outage_keeps_it_unrecovered():
    clock = FakeClock(1000.0)
    cam = ScriptedCamera(["frame"] * 3 + ["unplug"], open_script=[None] + [SourceUnavailable("gone")] * 10,
                         period_s=0.1, clock=clock)
    w = start(cam, clock, retry=RetryPolicy(initial_s=0.2, max_s=0.2, max_attempts=4))
    assert w.join(DEADLINE_S)
    st = w.status()
    assert st.state is CaptureState.ERROR
    assert len(st.outages) == 1 and not st.outages[0].recovered
    assert st.outages[0].start_s == pytest.approx(1000.3, abs=1e-9)
    assert st.outages[0].duration_s == pytest.approx(0.1 + 3 * 0.2, abs=1e-9)

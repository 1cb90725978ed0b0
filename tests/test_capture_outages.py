"""Outages of a source: a camera unplugged and plugged back, or frames that just stop. The capture
status says how long ago the last frame came and shows no frame rate meanwhile, and every outage is
kept with its start, duration and reason. All on logical time (FakeClock), so durations are exact."""
from __future__ import annotations


import pytest

from capture.clock import FakeClock
from capture.errors import SourceUnavailable
from capture.ring_buffer import RingBuffer
from capture.worker import CaptureState, CaptureWorker, Outage, RetryPolicy
from tests.conftest import DEADLINE_S, eventually
from tests.fakes import ScriptedCamera, Unpluggable


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield





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


import numpy as np
import pytest

from capture.clock import FakeClock
from capture.errors import SourceInvalid, SourceUnavailable
from capture.ring_buffer import RingBuffer
from capture.video_file import VideoFileConfig, VideoFileSource
from capture.worker import CaptureState, CaptureWorker, RetryPolicy
from tests.conftest import DEADLINE_S, eventually
from tests.fakes import ScriptedCamera
from tests.media import write_clip

FAST_RETRY = RetryPolicy(initial_s=0.01, max_s=0.05)


def ended(worker: CaptureWorker) -> None:
    """The worker's thread ends on its own (a finite or failing source), in time."""
    assert worker.join(DEADLINE_S), f"the capture thread did not end: {worker.status()}"





def test_runs_until_source_ends(no_leaked_threads):
    ring = RingBuffer(100)
    src = ScriptedCamera(["frame"] * 10 + ["end"])
    w = CaptureWorker(src, ring)
    w.start()
    ended(w)
    st = w.status()
    assert st.state is CaptureState.ENDED and st.frames == 10
    assert src.closed == 1
    assert ring.closed and len(ring) == 10


def test_decode_errors_are_skipped_and_counted(no_leaked_threads):
    ring = RingBuffer(100)
    w = CaptureWorker(ScriptedCamera(["frame", "bad", "frame", "bad", "frame", "end"]), ring)
    w.start()
    ended(w)
    st = w.status()
    assert (st.state, st.frames, st.decode_errors) == (CaptureState.ENDED, 3, 2)


def test_unplug_is_retried_with_backoff_and_keeps_captured_frames(no_leaked_threads):
    ring = RingBuffer(100)
    gone = SourceUnavailable("no device")
    src = ScriptedCamera(["frame"] * 5 + ["unplug"] + ["frame"] * 5 + ["end"], open_script=[None, gone, gone, None])
    states = []
    clock = FakeClock()
    w = CaptureWorker(src, ring, retry=RetryPolicy(initial_s=0.2, max_s=2.0, factor=2.0),
                      on_status=lambda s: states.append(s.state), clock=clock)
    w.start()
    ended(w)
    assert clock.waits == [0.2, 0.4, 0.8], "after the unplug, a wait before each reopen, doubling"
    assert CaptureState.RETRYING in states
    st = w.status()
    assert st.state is CaptureState.ENDED and st.frames == 10 and st.reconnects == 1
    seqs = [f.seq for f in ring.last(100)]
    assert seqs == sorted(set(seqs)) and len(seqs) == 10, "seq keeps increasing across the reconnect"


def test_gives_up_after_max_attempts(no_leaked_threads):
    clock = FakeClock()
    w = CaptureWorker(ScriptedCamera([], open_script=[SourceUnavailable("busy")] * 10), RingBuffer(4),
                      retry=RetryPolicy(0.2, 0.5, max_attempts=5), clock=clock)
    w.start()
    ended(w)
    assert w.status().state is CaptureState.ERROR and "gave up after 5" in w.status().message
    assert clock.waits == [0.2, 0.4, 0.5, 0.5], "backoff doubles up to max_s; no wait after the last attempt"


def test_invalid_source_is_an_error_not_a_retry(no_leaked_threads):
    w = CaptureWorker(ScriptedCamera([], open_script=[SourceInvalid("no such file")]), RingBuffer(4), retry=FAST_RETRY)
    w.start()
    ended(w)
    assert w.status().state is CaptureState.ERROR and "no such file" in w.status().message


def test_stop_ends_the_thread_while_streaming_and_while_retrying(no_leaked_threads):
    # Retrying, the worker is in an hour-long backoff wait: stop() must cut it short, not sleep it out.
    hour = RetryPolicy(3600.0, 3600.0)
    streaming = ScriptedCamera([], period_s=0.01)
    retrying = ScriptedCamera([], open_script=[SourceUnavailable("x")] * 1000)
    for src, busy, what in ((streaming, lambda w: w.status().frames > 0, "streams"),
                            (retrying, lambda w: w.status().state is CaptureState.RETRYING, "retries")):
        w = CaptureWorker(src, RingBuffer(4), retry=hour)
        w.start()
        eventually(lambda: busy(w), f"the worker {what}")
        assert w.stop(DEADLINE_S), f"stop() did not end a worker that {what}"
        assert w.status().state is CaptureState.STOPPED


def test_start_twice_is_refused():
    w = CaptureWorker(ScriptedCamera(["end"]), RingBuffer(4))
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    assert w.stop(DEADLINE_S)





def test_video_file_paced_at_its_frame_rate(tmp_path, no_leaked_threads):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=12, fps=24, size=(64, 48))
    ring = RingBuffer(64)
    clock = FakeClock()
    w = CaptureWorker(VideoFileSource(VideoFileConfig(str(path), paced=True), clock=clock), ring)
    t0 = clock.monotonic_ns()
    w.start()
    ended(w)
    assert w.status().state is CaptureState.ENDED and w.status().frames == 12
    frames = ring.last(64)
    assert frames[0].pixels.shape == (48, 64, 3)
    assert frames[0].t_capture_ns == t0, "the first frame at once, stamped by the source's clock"
    gaps = np.diff([f.t_capture_ns for f in frames]) / 1e9
    np.testing.assert_allclose(gaps, 1 / 24, atol=1e-4)  # each frame at its presentation time
    assert clock.monotonic() - t0 / 1e9 == pytest.approx(11 / 24, abs=1e-4), "and no waiting beyond the last"


def test_video_file_loops_and_fast_mode(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=5, fps=24, size=(64, 48))
    src = VideoFileSource(VideoFileConfig(str(path), paced=False, loop=True))
    src.open()
    seqs = [src.read().seq for _ in range(13)]
    src.close()
    assert seqs == list(range(13))
    assert src.describe().kind == "video"


def test_unreadable_and_missing_video_files_are_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    for path in (bad, tmp_path / "missing.mp4"):
        w = CaptureWorker(VideoFileSource(VideoFileConfig(str(path))), RingBuffer(4))
        w.start()
        ended(w)
        st = w.status()
        assert st.state is CaptureState.ERROR and path.name in st.message

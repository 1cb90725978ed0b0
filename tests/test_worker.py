"""EngineWorker: newest-frame policy, mailboxes, switching, errors, and clean stops."""
from __future__ import annotations

import queue
import random
import threading
import time

import numpy as np
import pytest

from capture.frame import Frame, PixelFormat
from capture.ring_buffer import RingBuffer
from engine.processor import Processor, Result, StageTimer, StepsNotSupported
from engine.runtime import SessionConfig
from engine.student import StudentSRProcessor
from engine.worker import EngineWorker, ResultSlot, WorkerConfig, WorkerState
from tests.conftest import make_bgr_frame
from tests.onnx_models import make_weights_dir

FAST = WorkerConfig(poll_s=0.02)


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield


def wait_until(predicate, timeout=5.0, interval=0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Recording(Processor):
    """Upscales by repetition after `delay` s; remembers what it saw; can be made to fail."""

    def __init__(self, name="rec", delay=0.0, frames_needed=1, steps=None):
        self.name, self.delay, self.frames_needed = name, delay, frames_needed
        self._steps = steps
        self.seen: list[list[int]] = []
        self.fail = threading.Event()
        self.closed = False
        self.used_after_close = False

    @property
    def steps(self):
        return self._steps

    @steps.setter
    def steps(self, value):
        if self._steps is None:
            raise StepsNotSupported(f"{self.name} has no step count")
        self._steps = value

    def enhance(self, frames, timer: StageTimer):
        if self.closed:
            self.used_after_close = True
        self.seen.append([f.seq for f in frames])
        with timer.stage("work"):
            if self.delay:
                time.sleep(self.delay)
            if self.fail.is_set():
                raise RuntimeError("synthetic failure")
            bgr = frames[-1].pixels
            return bgr, bgr.repeat(2, 0).repeat(2, 1)

    def close(self):
        self.closed = True


class Producer(threading.Thread):
    """A stand-in capture thread: puts frames at `period` s, timing every put."""

    def __init__(self, ring, n=None, period=0.002, value=None):
        super().__init__(name="test-producer", daemon=True)
        self.ring, self.n, self.period, self.value = ring, n, period, value
        self.halt = threading.Event()
        self.max_put_s = 0.0
        self.count = 0

    def run(self):
        seq = 0
        while not self.halt.is_set() and (self.n is None or seq < self.n):
            frame = make_bgr_frame(seq, value=self.value)
            t0 = time.perf_counter()
            self.ring.put(frame)
            self.max_put_s = max(self.max_put_s, time.perf_counter() - t0)
            seq += 1
            self.count = seq
            time.sleep(self.period)

    def finish(self):
        self.halt.set()
        self.join(2)


def make_result(seq: int) -> Result:
    f = make_bgr_frame(seq)
    return Result((f,), f.pixels, f.pixels, seq, f.t_capture_ns, 0, 0, {}, "t")


# -- ResultSlot ----------------------------------------------------------------------------------
def test_result_slot_latest_wins():
    slot = ResultSlot()
    assert slot.peek() is None
    with pytest.raises(TimeoutError):
        slot.get(timeout=0.01)
    for seq in (1, 2, 3):
        slot.put(make_result(seq))
    assert slot.peek().seq == 3
    assert slot.get(timeout=0).seq == 3
    assert (slot.published, slot.overwritten, slot.taken) == (3, 2, 1)
    with pytest.raises(TimeoutError):  # already taken: get waits for a newer one
        slot.get(timeout=0.01)
    assert slot.peek().seq == 3  # still there to look at
    threading.Timer(0.02, slot.put, [make_result(4)]).start()
    assert slot.get(timeout=2).seq == 4
    assert slot.overwritten == 2


# -- newest frame, skips, mailboxes --------------------------------------------------------------
def test_newest_frame_policy_counts_skips_exactly():
    ring = RingBuffer(4)
    proc = Recording(delay=0.015)
    worker = EngineWorker(ring, proc, config=FAST)
    producer = Producer(ring, n=200, period=0.002)
    worker.start()
    producer.start()
    producer.join(10)
    assert wait_until(lambda: proc.seen and proc.seen[-1] == [199]), "the newest frame is always processed"
    assert worker.stop()
    seqs = [s[0] for s in proc.seen]
    assert seqs == sorted(set(seqs)), "frames are processed in order, never twice"
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    stats = worker.stats()
    assert stats.processed == len(seqs) and stats.skipped == gaps > 0
    assert len(seqs) < 150  # it fell behind and skipped rather than queueing
    assert worker.slot.peek().seq == 199 and worker.slot.peek().skipped == gaps
    assert producer.max_put_s < 0.1, "capture never waits for the engine (15 ms per frame)"
    assert stats.stage_median_ms["work"] >= 14 and stats.fps > 0 and stats.errors == 0


def test_record_queue_drops_oldest_counted_and_never_blocks():
    ring = RingBuffer(2)
    rec = queue.Queue(maxsize=3)  # a recorder that never reads
    proc = Recording()
    worker = EngineWorker(ring, proc, record_queue=rec, config=FAST)
    worker.start()
    for seq in range(20):
        ring.put(make_bgr_frame(seq))
        assert wait_until(lambda: worker.stats().processed == seq + 1, timeout=2)
    assert worker.stop()
    stats = worker.stats()
    assert stats.processed == 20 and stats.record_dropped == 17
    assert [rec.get_nowait().seq for _ in range(3)] == [17, 18, 19]  # the newest stay
    assert worker.slot.overwritten == 19 and worker.slot.get(timeout=0).seq == 19


def test_unbounded_record_queue_is_refused():
    with pytest.raises(ValueError, match="must be bounded"):
        EngineWorker(RingBuffer(2), Recording(), record_queue=queue.Queue())


def test_slow_display_and_recorder_do_not_slow_the_engine():
    ring = RingBuffer(4)
    rec = queue.Queue(maxsize=2)
    worker = EngineWorker(ring, Recording(), record_queue=rec, config=FAST)
    stop_consumers = threading.Event()

    def slow_consumer():
        while not stop_consumers.is_set():
            try:
                worker.slot.get(timeout=0.05)
                rec.get(timeout=0.05)
            except (TimeoutError, queue.Empty):
                pass
            time.sleep(0.03)

    consumer = threading.Thread(target=slow_consumer, name="test-consumer")
    producer = Producer(ring, n=100, period=0.002)
    worker.start()
    consumer.start()
    producer.start()
    producer.join(10)
    assert wait_until(lambda: worker.slot.peek() is not None and worker.slot.peek().seq == 99)
    assert worker.stop()
    stop_consumers.set()
    consumer.join(2)
    stats = worker.stats()
    assert stats.processed > 10 and stats.record_dropped > 0 and stats.slot_overwritten > 0


# -- switching -----------------------------------------------------------------------------------
def test_set_processor_while_running_is_safe():
    ring = RingBuffer(4)
    first = Recording("p0")
    worker = EngineWorker(ring, first, config=FAST)
    producer = Producer(ring, period=0.001)
    worker.start()
    producer.start()
    procs = [first]
    rnd = random.Random(0)
    for i in range(1, 60):
        p = Recording(f"p{i}", delay=rnd.choice([0, 0.001]))
        procs.append(p)
        worker.set_processor(p)
        time.sleep(rnd.choice([0, 0.001, 0.003]))
    last = procs[-1]
    assert wait_until(lambda: last.seen, timeout=2), "the last processor chosen takes over"
    assert worker.state is WorkerState.RUNNING and worker.error is None
    assert worker.stop()
    producer.finish()
    assert all(p.closed for p in procs), "replaced processors are closed, the last one at stop()"
    assert not any(p.used_after_close for p in procs)
    assert worker.stats().errors == 0 and worker.slot.peek().processor.startswith("p")


def test_set_steps_applies_between_frames_and_is_refused_without_steps():
    ring = RingBuffer(2)
    stepped = Recording("iter", steps=2)
    worker = EngineWorker(ring, stepped, config=FAST)
    worker.start()
    worker.set_steps(4)
    ring.put(make_bgr_frame(0))
    assert wait_until(lambda: worker.slot.peek() is not None)
    assert stepped.steps == 4 and worker.slot.peek().steps == 4 and worker.stats().steps == 4
    worker.set_processor(Recording("plain"))
    with pytest.raises(StepsNotSupported, match="'plain' has no step count"):
        worker.set_steps(2)
    with pytest.raises(ValueError):
        worker.set_steps(0)
    assert worker.stop()


def test_burst_processor_gets_the_newest_n_frames_oldest_first():
    ring = RingBuffer(8)
    burst = Recording("burst", frames_needed=3)
    worker = EngineWorker(ring, burst, config=FAST)
    worker.start()
    ring.put(make_bgr_frame(0))
    ring.put(make_bgr_frame(1))
    time.sleep(0.05)
    assert burst.seen == []  # waits for a full burst
    ring.put(make_bgr_frame(2))
    assert wait_until(lambda: burst.seen == [[0, 1, 2]])
    ring.put(make_bgr_frame(3))
    assert wait_until(lambda: burst.seen[-1] == [1, 2, 3])
    worker.set_processor(Recording("too long", frames_needed=9))
    ring.put(make_bgr_frame(4))
    assert wait_until(lambda: worker.state is WorkerState.ERROR)
    assert "needs bursts of 9 frames but the ring buffer holds only 8" in worker.error
    assert worker.stop()


# -- errors --------------------------------------------------------------------------------------
def test_exception_becomes_error_state_and_recovers():
    ring = RingBuffer(4)
    proc = Recording("flaky")
    states = []
    worker = EngineWorker(ring, proc, config=FAST, on_status=lambda s, e: states.append(s))
    producer = Producer(ring, period=0.003)
    worker.start()
    producer.start()
    assert wait_until(lambda: worker.stats().processed > 0)
    proc.fail.set()
    assert wait_until(lambda: worker.state is WorkerState.ERROR)
    assert worker.error.startswith("flaky failed on frame ") and "synthetic failure" in worker.error
    assert wait_until(lambda: worker.slot.peek().error is not None)
    bad = worker.slot.peek()
    assert bad.output is None and bad.input_bgr is not None and "synthetic failure" in bad.error
    assert worker.alive
    proc.fail.clear()
    assert wait_until(lambda: worker.state is WorkerState.RUNNING and worker.error is None)
    assert wait_until(lambda: worker.slot.peek().ok)
    assert worker.stop()
    producer.finish()
    assert worker.stats().errors > 0
    changes = [s for i, s in enumerate(states) if i == 0 or s is not states[i - 1]]  # the message changes per frame
    assert changes == [WorkerState.RUNNING, WorkerState.ERROR, WorkerState.RUNNING, WorkerState.STOPPED]


def test_nan_from_a_model_becomes_error_state_and_recovers(tmp_path):
    weights = make_weights_dir(tmp_path, ["nan"])
    proc = StudentSRProcessor.from_name("nan", weights, SessionConfig(intra_op_threads=1, log_severity=4))
    ring = RingBuffer(2)
    worker = EngineWorker(ring, proc, config=FAST)
    worker.start()
    ring.put(make_bgr_frame(0, value=0))  # the model divides 0 by 0
    assert wait_until(lambda: worker.state is WorkerState.ERROR)
    assert "nan failed on frame 0" in worker.error and "NaN/Inf" in worker.error
    ring.put(make_bgr_frame(1, value=7))
    assert wait_until(lambda: worker.state is WorkerState.RUNNING)
    assert worker.error is None and worker.slot.peek().seq == 1
    assert worker.slot.peek().output.shape == (16, 16, 3) and (worker.slot.peek().output == 7).all()
    assert worker.stop()
    stats = worker.stats()
    assert (stats.processed, stats.errors) == (1, 1)


# -- pause, stop ----------------------------------------------------------------------------------
def test_pause_and_resume():
    ring = RingBuffer(4)
    proc = Recording()
    worker = EngineWorker(ring, proc, config=FAST)
    producer = Producer(ring, period=0.003)
    worker.start()
    producer.start()
    assert wait_until(lambda: worker.stats().processed > 3)
    worker.pause()
    assert wait_until(lambda: worker.state is WorkerState.PAUSED)
    time.sleep(0.05)  # let a frame in flight finish
    n = worker.stats().processed
    skipped = worker.stats().skipped
    time.sleep(0.15)
    assert worker.stats().processed == n
    worker.resume()
    assert wait_until(lambda: worker.stats().processed > n + 2)
    assert worker.state is WorkerState.RUNNING
    assert worker.stats().skipped - skipped < 10, "frames that passed while paused are not skips"
    assert worker.stop()
    producer.finish()


@pytest.mark.parametrize("with_frames", [False, True])
def test_stop_joins_within_a_second(with_frames):
    ring = RingBuffer(4)
    proc = Recording(delay=0.01)
    worker = EngineWorker(ring, proc)  # default poll interval
    producer = Producer(ring, period=0.002)
    worker.start()
    if with_frames:
        producer.start()
        assert wait_until(lambda: worker.stats().processed > 2)
    else:
        time.sleep(0.1)  # blocked waiting on an empty ring
    t0 = time.monotonic()
    assert worker.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert worker._thread not in threading.enumerate() and not worker.alive
    assert worker.state is WorkerState.STOPPED and proc.closed
    if with_frames:
        producer.finish()
    with pytest.raises(RuntimeError, match="make a new worker"):
        worker.start()


def test_closed_ring_does_not_spin_and_stop_still_works():
    ring = RingBuffer(2)
    proc = Recording()
    worker = EngineWorker(ring, proc, config=FAST)
    worker.start()
    ring.put(make_bgr_frame(0))
    assert wait_until(lambda: worker.stats().processed == 1)
    ring.close()  # capture stopped
    clock = time.pthread_getcpuclockid(worker._thread.ident)  # the engine thread's own CPU time
    cpu0 = time.clock_gettime(clock)
    time.sleep(0.2)
    assert time.clock_gettime(clock) - cpu0 < 0.05, "the engine busy-waits on a closed ring"
    assert worker.alive and worker.state is WorkerState.RUNNING
    ring.reopen()  # capture restarted: the engine picks up again
    ring.put(make_bgr_frame(1))
    assert wait_until(lambda: worker.stats().processed == 2)
    assert worker.stop()


def test_stop_without_start_and_switch_after_stop_close_processors():
    a, b = Recording("a"), Recording("b")
    worker = EngineWorker(RingBuffer(2), a)
    assert worker.stop() and a.closed and worker.state is WorkerState.STOPPED
    worker.set_processor(b)
    assert b.closed, "nothing will run a processor handed to a stopped worker"


def test_yuyv_frames_through_the_worker():
    ring = RingBuffer(2)
    from capture.convert import bgr_to_yuyv
    from engine.processor import BicubicProcessor

    worker = EngineWorker(ring, BicubicProcessor(), config=FAST)
    worker.start()
    bgr = np.full((8, 10, 3), 128, np.uint8)
    ring.put(Frame(bgr_to_yuyv(bgr), 0, time.monotonic_ns(), "t", PixelFormat.YUYV))
    r = worker.slot.get(timeout=2)
    assert worker.stop()
    assert r.ok and r.output.shape == (16, 20, 3) and r.input_bgr.shape == (8, 10, 3)

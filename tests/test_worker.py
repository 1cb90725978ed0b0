"""EngineWorker: newest-frame policy, mailboxes, switching, errors, and clean stops."""
from __future__ import annotations

import queue
import random
import threading
import time

import numpy as np
import pytest

from capture.clock import FakeClock
from capture.frame import Frame, PixelFormat
from capture.ring_buffer import RingBuffer
from engine.processor import Processor, Result, StageTimer, StepsNotSupported
from engine.runtime import SessionConfig
from engine.student import StudentSRProcessor
from engine.worker import EngineWorker, ResultSlot, WorkerConfig, WorkerState
from tests.conftest import DEADLINE_S, make_bgr_frame
from tests.onnx_models import make_weights_dir

FAST = WorkerConfig(poll_s=0.02)


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield


def wait_until(predicate, timeout=DEADLINE_S, interval=0.005) -> bool:
    """True as soon as `predicate()` holds; False if `timeout` s pass first (the caller asserts it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Gate:
    """Holds a processor inside each frame until the test lets it through, so the test knows what the
    engine is doing at that moment instead of guessing from how long things take."""

    def __init__(self) -> None:
        self._entered: queue.Queue[int] = queue.Queue()
        self._through = threading.Semaphore(0)

    def hold(self, seq: int) -> None:
        """Called in the engine thread with the frame it is working on; returns when let through."""
        self._entered.put(seq)
        if not self._through.acquire(timeout=DEADLINE_S):
            raise RuntimeError("the test never let the frame through the gate")

    def entered(self) -> int:
        """Wait for the engine to reach the gate; the seq of the frame it holds."""
        try:
            return self._entered.get(timeout=DEADLINE_S)
        except queue.Empty:
            pytest.fail("the engine never started on a frame")

    def let_through(self) -> None:
        self._through.release()


class Recording(Processor):
    """Upscales by repetition after `delay` s; remembers what it saw; can be made to fail; with a
    gate, stops in every frame until the test lets it through."""

    def __init__(self, name="rec", delay=0.0, frames_needed=1, steps=None, gate: Gate | None = None):
        self.name, self.delay, self.frames_needed = name, delay, frames_needed
        self.gate = gate
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
        if self.gate is not None:
            self.gate.hold(frames[-1].seq)
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
    """A stand-in capture thread: puts frames at `period` s."""

    def __init__(self, ring, n=None, period=0.002, value=None):
        super().__init__(name="test-producer", daemon=True)
        self.ring, self.n, self.period, self.value = ring, n, period, value
        self.halt = threading.Event()
        self.count = 0

    def run(self):
        seq = 0
        while not self.halt.is_set() and (self.n is None or seq < self.n):
            self.ring.put(make_bgr_frame(seq, value=self.value))
            seq += 1
            self.count = seq
            time.sleep(self.period)

    def finish(self):
        self.halt.set()
        self.join(DEADLINE_S)
        assert not self.is_alive(), "the producer did not stop"


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
    assert slot.get(timeout=DEADLINE_S).seq == 4
    assert slot.overwritten == 2


# -- newest frame, skips, mailboxes --------------------------------------------------------------
def test_newest_frame_policy_counts_skips_exactly():
    # A producer and a slow engine at their own paces: whatever interleaving the machine makes of them,
    # the counts must agree (which frames get skipped is the next test's business).
    ring = RingBuffer(4)
    proc = Recording(delay=0.015)
    worker = EngineWorker(ring, proc, config=FAST)
    producer = Producer(ring, n=200, period=0.002)
    worker.start()
    producer.start()
    producer.join(DEADLINE_S)
    assert not producer.is_alive(), "capture was held up"
    assert wait_until(lambda: proc.seen and proc.seen[-1] == [199]), "the newest frame is always processed"
    assert worker.stop(DEADLINE_S)
    seqs = [s[0] for s in proc.seen]
    assert seqs == sorted(set(seqs)), "frames are processed in order, never twice"
    gaps = sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    stats = worker.stats()
    assert stats.processed == len(seqs) and stats.skipped == gaps
    assert worker.slot.peek().seq == 199 and worker.slot.peek().skipped == gaps
    # a lower bound the 15 ms sleep guarantees: the stage timings reach the figures
    assert stats.stage_median_ms["work"] >= 14 and stats.fps > 0 and stats.errors == 0


def test_a_busy_engine_skips_to_the_newest_frame_and_capture_never_waits_for_it():
    ring = RingBuffer(4)
    gate = Gate()
    proc = Recording(gate=gate)
    worker = EngineWorker(ring, proc, config=FAST)
    worker.start()
    ring.put(make_bgr_frame(0))
    assert gate.entered() == 0  # the engine is busy with frame 0 until the gate opens
    capture = threading.Thread(target=lambda: [ring.put(make_bgr_frame(seq)) for seq in range(1, 10)], daemon=True)
    capture.start()
    capture.join(DEADLINE_S)
    assert not capture.is_alive(), "capture waited for the busy engine"
    gate.let_through()
    assert gate.entered() == 9, "after frame 0 the engine takes the newest frame, not the next one"
    gate.let_through()
    assert wait_until(lambda: worker.stats().processed == 2)
    stats = worker.stats()
    assert stats.skipped == 8 and worker.slot.peek().skipped == 8, "frames 1 to 8 were skipped, and counted"
    assert ring.stats().pushed == 10
    ring.put(make_bgr_frame(10))
    assert gate.entered() == 10
    gate.let_through()
    assert wait_until(lambda: worker.stats().processed == 3)
    assert worker.stats().skipped == 8, "keeping up, it skips nothing"
    assert worker.stop(DEADLINE_S)
    assert proc.seen == [[0], [9], [10]]


def test_record_queue_drops_oldest_counted_and_never_blocks():
    ring = RingBuffer(2)
    rec = queue.Queue(maxsize=3)  # a recorder that never reads
    proc = Recording()
    worker = EngineWorker(ring, proc, record_queue=rec, config=FAST)
    worker.start()
    for seq in range(20):
        ring.put(make_bgr_frame(seq))
        assert wait_until(lambda: worker.stats().processed == seq + 1), f"frame {seq} not processed"
    assert worker.stop(DEADLINE_S)
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
        # Slower than the engine by construction, whatever the machine's speed: after each result it
        # takes, it waits for the engine to publish five more.
        while not stop_consumers.is_set():
            try:
                worker.slot.get(timeout=0.05)
                rec.get(timeout=0.05)
            except (TimeoutError, queue.Empty):
                continue
            taken_at = worker.slot.published
            while worker.slot.published < taken_at + 5 and not stop_consumers.is_set():
                time.sleep(0.001)

    consumer = threading.Thread(target=slow_consumer, name="test-consumer")
    worker.start()
    consumer.start()
    for seq in range(100):  # the next frame once the engine has this one: it never has to skip
        ring.put(make_bgr_frame(seq))
        assert wait_until(lambda: worker.stats().processed == seq + 1), f"the engine was held up at frame {seq}"
    assert worker.stop(DEADLINE_S)
    stop_consumers.set()
    consumer.join(DEADLINE_S)
    stats = worker.stats()
    assert stats.processed == 100 and stats.record_dropped > 0 and stats.slot_overwritten > 0


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
    assert wait_until(lambda: last.seen), "the last processor chosen takes over"
    assert worker.state is WorkerState.RUNNING and worker.error is None
    assert worker.stop(DEADLINE_S)
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
    assert worker.stop(DEADLINE_S)


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
    assert worker.stop(DEADLINE_S)


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
    assert worker.stop(DEADLINE_S)
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
    assert worker.stop(DEADLINE_S)
    stats = worker.stats()
    assert (stats.processed, stats.errors) == (1, 1)


# -- pause, stop ----------------------------------------------------------------------------------
def test_pause_and_resume():
    # On a FakeClock the paused engine's polls of its pause flag pass logical time, so "paused for two
    # seconds" means two seconds of the engine's own waiting, however slowly the machine runs it.
    clock = FakeClock()
    ring = RingBuffer(8)
    proc = Recording()
    worker = EngineWorker(ring, proc, config=FAST, clock=clock)
    worker.start()
    ring.put(make_bgr_frame(0))
    assert wait_until(lambda: worker.stats().processed == 1)
    worker.pause()
    assert worker.state is WorkerState.PAUSED
    t = clock.monotonic()
    assert wait_until(lambda: clock.monotonic() >= t + 1.0), "the paused engine does not poll its pause flag"
    for seq in range(1, 6):  # frames that arrive while it is paused
        ring.put(make_bgr_frame(seq))
    t = clock.monotonic()
    assert wait_until(lambda: clock.monotonic() >= t + 2.0)
    assert worker.stats().processed == 1 and proc.seen == [[0]], "paused: no frame taken"
    worker.resume()
    assert wait_until(lambda: worker.stats().processed == 2)
    assert worker.state is WorkerState.RUNNING
    assert proc.seen[-1] == [5], "resumed on the newest frame"
    assert worker.stats().skipped == 0, "frames that passed while paused are not skips"
    assert worker.stop(DEADLINE_S)


@pytest.mark.parametrize("with_frames", [False, True])
def test_stop_ends_the_thread_and_closes_the_processor(with_frames):
    ring = RingBuffer(4)
    proc = Recording(delay=0.01)
    worker = EngineWorker(ring, proc)  # default poll interval
    producer = Producer(ring, period=0.002)
    worker.start()
    if with_frames:
        producer.start()
        assert wait_until(lambda: worker.stats().processed > 2)
    else:
        time.sleep(0.1)  # most likely waiting on the empty ring by now; if not, stop() catches it sooner
    assert worker.stop(timeout=DEADLINE_S), "the engine thread did not end"
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
    assert worker.stop(DEADLINE_S)


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
    r = worker.slot.get(timeout=DEADLINE_S)
    assert worker.stop(DEADLINE_S)
    assert r.ok and r.output.shape == (16, 20, 3) and r.input_bgr.shape == (8, 10, 3)

"""EngineWorker: the engine thread between the capture RingBuffer and the display and recorder.

It always takes the newest frame (or the newest N for a burst processor), so when it falls behind it
skips frames instead of building latency, and counts what it skipped (gaps in `seq`). Each Result
goes to a ResultSlot (one place, latest wins: the display) and to a bounded queue (the recorder;
when full the oldest queued result is dropped and counted). Nothing here ever blocks the capture
thread or waits on a slow consumer. A processor that raises or returns NaN puts the worker in the
ERROR state with the message; the thread keeps going and the next good frame clears it. Its own
waits (paused, or on a closed ring) and the times on error results are read from its Clock
(capture.clock), so a test can run them on logical time.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import queue
import statistics
import threading
from dataclasses import dataclass
from typing import Callable

from capture.clock import SYSTEM_CLOCK, Clock
from capture.convert import to_bgr8
from capture.ring_buffer import BufferClosed, RingBuffer
from engine.processor import Processor, Result, StepsNotSupported


class ResultSlot:
    """A single-slot mailbox: `put` replaces whatever is there (latest wins) and never waits.

    `get` takes the newest result not taken before, waiting for one; `peek` looks without taking.
    `overwritten` counts results replaced before anyone took them (frames the display never showed).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._result: Result | None = None
        self._fresh = False  # the held result has not been taken by get()
        self._published = self._overwritten = self._taken = 0

    def put(self, result: Result) -> None:
        with self._cond:
            if self._fresh:
                self._overwritten += 1
            self._result, self._fresh = result, True
            self._published += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Result:
        """The newest result not yet taken; raises TimeoutError if none arrives within `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh, timeout):
                raise TimeoutError(f"no new result within {timeout} s")
            self._fresh = False
            self._taken += 1
            return self._result

    def peek(self) -> Result | None:
        """The newest result, taken or not (None before the first). Does not take it."""
        with self._cond:
            return self._result

    @property
    def published(self) -> int:
        return self._published

    @property
    def overwritten(self) -> int:
        return self._overwritten

    @property
    def taken(self) -> int:
        return self._taken


class WorkerState(str, enum.Enum):
    IDLE = "idle"  # made, not started
    RUNNING = "running"
    PAUSED = "paused"
    ERROR = "error"  # the last frame failed; `error` says why; the thread keeps trying new frames
    STOPPED = "stopped"


@dataclass(frozen=True)
class EngineStats:
    """Figures since start. fps and the medians are over the last `window` results.

    skipped: frames not processed because the engine was busy (seq gaps between processed frames).
    slot_overwritten: results the display never took. record_dropped: results dropped from the
    record queue because the recorder fell behind.
    """

    state: WorkerState
    error: str | None
    processor: str | None
    steps: int | None
    processed: int
    skipped: int
    errors: int
    fps: float
    latency_median_ms: float
    stage_median_ms: dict[str, float]
    slot_overwritten: int
    record_dropped: int


@dataclass(frozen=True)
class _Timing:
    """What the statistics need of one Result, without its pictures."""

    t_done_ns: int
    latency_ms: float
    stages: dict[str, float]


@dataclass(frozen=True)
class WorkerConfig:
    """poll_s: how long one wait for a frame lasts, which bounds how fast stop/pause/switch react.
    window: results kept for fps and the medians."""

    poll_s: float = 0.05
    window: int = 120


class EngineWorker:
    """One thread that runs a Processor on the newest frames of a RingBuffer.

    The worker owns the processors it is given: it closes one when it is replaced and at stop().
    Control calls (set_processor, set_steps, pause, resume, stop) may come from any thread and take
    effect between frames. A worker runs once: start() after stop() raises; make a new one.
    clock: what its waits are timed on and its error results stamped with.
    """

    def __init__(
        self,
        ring: RingBuffer,
        processor: Processor,
        slot: ResultSlot | None = None,
        record_queue: queue.Queue | None = None,
        config: WorkerConfig = WorkerConfig(),
        on_status: Callable[[WorkerState, str | None], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.ring = ring
        self.slot = slot if slot is not None else ResultSlot()
        self._check_bounded(record_queue)
        self._record_queue = record_queue
        self.config = config
        self._on_status = on_status
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._unpaused = threading.Event()
        self._unpaused.set()
        self._thread: threading.Thread | None = None
        self._processor: Processor | None = processor
        self._pending: Processor | None = None  # set_processor's choice, swapped in between frames
        self._pending_steps: int | None = None
        self._closed = False  # processors closed for good (stop); later ones are closed on arrival
        self._state = WorkerState.IDLE
        self._error: str | None = None
        self._processed = self._skipped = self._errors = self._record_dropped = 0
        # Timings only: holding whole Results would keep `window` full-size pictures alive (~550 MB
        # of 1280x960 outputs at the default window) just for statistics.
        self._recent: collections.deque[_Timing] = collections.deque(maxlen=config.window)

    # -- control (any thread) ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("EngineWorker.start() called twice or after stop(); make a new worker to restart")
        self._thread = threading.Thread(target=self._run, name="eyefuse-engine", daemon=True)
        self._set_state(WorkerState.PAUSED if not self._unpaused.is_set() else WorkerState.RUNNING)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread, wait up to `timeout` s for it, close the processors. True when it ended
        (False only if a processor is stuck in one frame longer than `timeout`)."""
        self._stop.set()
        self._unpaused.set()  # wake a paused loop
        if self._thread is None:
            self._close_processors()
            ended = True
        else:  # the thread closes the processors as it ends (also if that is after our timeout)
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        self._set_state(WorkerState.STOPPED, self._error)
        return ended

    def set_processor(self, processor: Processor) -> None:
        """Switch processor; the running frame finishes with the old one, which is then closed."""
        with self._lock:
            closed = self._closed
            if not closed:
                superseded, self._pending = self._pending, processor
                self._pending_steps = None  # a new processor comes with its own step count
        if closed:
            processor.close()  # stopped: nothing will run it, and the worker owns it
            return
        if superseded is not None and superseded is not processor:
            superseded.close()  # chosen but never ran; nobody else will close it
        if self._thread is None:
            self._apply_pending()  # no loop yet to do it

    def set_steps(self, steps: int) -> None:
        """Set the step count of the current (or just chosen) processor, between frames.
        Raises StepsNotSupported now if that processor has no step count."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer (0: the processor's refinement off), got {steps!r}")
        with self._lock:
            target = self._pending or self._processor
            if target is None or target.steps is None:
                raise StepsNotSupported(f"processor {getattr(target, 'name', None)!r} has no step count")
            self._pending_steps = steps
        if self._thread is None:
            self._apply_pending()

    def pause(self) -> None:
        """Stop taking frames after the current one (the display keeps the last result)."""
        self._unpaused.clear()
        if self._thread is not None and not self._stop.is_set():
            self._set_state(WorkerState.PAUSED, self._error)

    def resume(self) -> None:
        self._unpaused.set()

    def set_record_queue(self, record_queue: queue.Queue | None) -> None:
        """Start (a bounded queue) or stop (None) sending results to a recorder."""
        self._check_bounded(record_queue)
        self._record_queue = record_queue

    # -- state (any thread) ------------------------------------------------------------------
    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def processor(self) -> Processor | None:
        with self._lock:
            return self._pending or self._processor

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        with self._lock:
            recent = list(self._recent)
            proc = self._pending or self._processor
            processed, skipped, errors, dropped = self._processed, self._skipped, self._errors, self._record_dropped
        fps = 0.0
        if len(recent) >= 2 and recent[-1].t_done_ns > recent[0].t_done_ns:
            fps = (len(recent) - 1) * 1e9 / (recent[-1].t_done_ns - recent[0].t_done_ns)
        names: dict[str, list[float]] = {}
        for r in recent:
            for name, ms in r.stages.items():
                names.setdefault(name, []).append(ms)
        return EngineStats(
            state=self._state, error=self._error,
            processor=proc.name if proc else None, steps=proc.steps if proc else None,
            processed=processed, skipped=skipped, errors=errors, fps=fps,
            latency_median_ms=statistics.median(r.latency_ms for r in recent) if recent else 0.0,
            stage_median_ms={n: statistics.median(v) for n, v in names.items()},
            slot_overwritten=self.slot.overwritten, record_dropped=dropped,
        )

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        seen: int | None = None  # newest seq taken from the ring (processed or not)
        last_done: int | None = None  # seq of the last frame processed; gaps after it are skips
        try:
            while not self._stop.is_set():
                if not self._unpaused.is_set():
                    if self._state is not WorkerState.PAUSED:
                        self._set_state(WorkerState.PAUSED, self._error)
                    self._clock.wait(self._unpaused, self.config.poll_s)
                    last_done = None  # frames that pass while paused are not skips
                    continue
                if self._state is WorkerState.PAUSED:
                    self._set_state(WorkerState.ERROR if self._error else WorkerState.RUNNING, self._error)
                self._apply_pending()  # a switch made while paused or idle shows up in stats now
                try:
                    frame = self.ring.wait_newer(seen, timeout=self.config.poll_s)
                except TimeoutError:
                    continue
                except BufferClosed:
                    # Capture stopped; it may reopen the ring later. Idle without spinning.
                    self._clock.wait(self._stop, self.config.poll_s)
                    continue
                self._apply_pending()  # and a switch made while we waited applies to this frame
                proc = self._processor
                seen = frame.seq
                frames = [frame]
                if proc.frames_needed > 1:
                    if self.ring.capacity < proc.frames_needed:
                        self._fail(f"{proc.name} needs bursts of {proc.frames_needed} frames but the ring buffer "
                                   f"holds only {self.ring.capacity}; make the ring larger or the burst shorter")
                        continue
                    frames = self.ring.last(proc.frames_needed)
                    if len(frames) < proc.frames_needed:
                        continue  # the stream just started: wait for a full burst
                    seen = frames[-1].seq
                ref = frames[-1].seq
                skipped_now = max(0, ref - last_done - 1) if last_done is not None else 0
                last_done = ref
                self._process(proc, frames, skipped_now)
        except Exception as exc:  # a bug in the loop itself: report it rather than die silently
            self._set_state(WorkerState.ERROR, f"engine thread failed: {type(exc).__name__}: {exc}")
            self._stop.set()
            raise
        finally:
            self._close_processors()
            self._set_state(WorkerState.STOPPED, self._error)

    def _process(self, proc: Processor, frames: list, skipped_now: int) -> None:
        with self._lock:
            self._skipped += skipped_now
            skipped = self._skipped
        t_start = self._clock.monotonic_ns()
        try:
            result = proc.process(frames)
        except Exception as exc:  # any processor failure is a state for the GUI, not a dead thread
            message = f"{proc.name} failed on frame {frames[-1].seq}: {exc}"
            with self._lock:
                self._errors += 1
            self._fail(message)
            ref = frames[-1]
            try:
                before = to_bgr8(ref)  # so the display can still show the input under the error banner
            except Exception:
                before = None
            self.slot.put(Result(tuple(frames), before, None, ref.seq, ref.t_capture_ns, t_start,
                                 self._clock.monotonic_ns(), {}, proc.name, proc.steps, skipped, message))
            return
        result = dataclasses.replace(result, skipped=skipped)
        with self._lock:
            self._processed += 1
            self._recent.append(_Timing(result.t_done_ns, result.latency_ms, dict(result.stages)))
        if self._state is WorkerState.ERROR:
            self._set_state(WorkerState.RUNNING, None)
        self.slot.put(result)
        self._offer(result)

    def _offer(self, result: Result) -> None:
        """Put into the record queue without ever waiting: drop (and count) the oldest when full."""
        q = self._record_queue
        if q is None:
            return
        while True:
            try:
                q.put_nowait(result)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                    q.task_done()  # keep Queue.join() balanced for a recorder that uses it
                    with self._lock:
                        self._record_dropped += 1
                except queue.Empty:  # the recorder took one meanwhile; try again
                    pass

    def _apply_pending(self) -> None:
        with self._lock:
            new, self._pending = self._pending, None
            steps, self._pending_steps = self._pending_steps, None
            old = self._processor
            if new is not None:
                self._processor = new
                self._recent.clear()  # fps and medians describe the processor now running
        if new is not None and old is not None and old is not new:
            old.close()
        if new is not None and self._state is WorkerState.ERROR:
            self._set_state(WorkerState.RUNNING, None)  # the error belonged to the old processor
        if steps is not None:
            try:
                self._processor.steps = steps
            except Exception as exc:
                self._fail(f"cannot set {self._processor.name} to {steps} steps: {exc}")

    def _fail(self, message: str) -> None:
        self._set_state(WorkerState.ERROR, message)

    def _set_state(self, state: WorkerState, error: str | None = None) -> None:
        with self._lock:
            if self._state is WorkerState.STOPPED:
                return  # terminal
            changed = (state, error) != (self._state, self._error)
            self._state, self._error = state, error
        if changed and self._on_status is not None:
            try:
                self._on_status(state, error)
            except Exception:  # a broken GUI callback must not kill the engine
                pass

    def _close_processors(self) -> None:
        with self._lock:
            procs = [p for p in (self._pending, self._processor) if p is not None]
            self._pending = self._processor = None
            self._closed = True
        for p in procs:
            try:
                p.close()
            except Exception:
                pass

    @staticmethod
    def _check_bounded(q: queue.Queue | None) -> None:
        if q is not None and q.maxsize <= 0:
            raise ValueError("the record queue must be bounded (queue.Queue(maxsize=N)); an unbounded one "
                             "grows without limit when the recorder falls behind")

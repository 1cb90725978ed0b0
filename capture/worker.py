"""CaptureWorker: one thread that reads one source into a RingBuffer, and survives what cameras do.

States: idle -> running -> (retrying <-> running) -> ended | error | stopped.
A device that disappears is reopened with exponential backoff; frames already in the ring stay
there. A finite source that ends, or a source that can never work, stops the thread with a state
and a message the GUI can show. `stop()` returns within a second and no thread outlives it.

Outages are kept: each time the source delivered nothing for a while (it went away and was being
reopened, or its frames simply stopped for longer than `stall_s`), from its last frame to the next,
with the reason. The status says how long ago the last frame came, and its frame rate drops to 0
when frames stop, instead of showing the last rate it had.
Backoff waits and outage times are on the worker's Clock (capture.clock), so a test can check them
in logical time.
"""
from __future__ import annotations

import dataclasses
import enum
import threading
import time
from dataclasses import dataclass
from typing import Callable

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import CaptureError, DeviceDisconnected, FrameDecodeError, SourceEnded, SourceUnavailable
from capture.frame import Frame
from capture.ring_buffer import RingBuffer
from capture.source import Source


class CaptureState(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    RETRYING = "retrying"  # the device went away or is busy; reopening with backoff
    ENDED = "ended"  # a finite source has no more frames
    ERROR = "error"  # the source cannot work; the message says why
    STOPPED = "stopped"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for reopening a source that is unavailable or went away."""

    initial_s: float = 0.2
    max_s: float = 2.0
    factor: float = 2.0
    max_attempts: int | None = None  # None: keep trying until stopped (a camera may be plugged back in)

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


@dataclass(frozen=True)
class Outage:
    """A time the source delivered no frames: from its last frame (or from the start, if it had
    none yet) to its next frame, or, while it lasts, to now.

    start_s: on the worker's clock (Clock.monotonic). reason: why (the disconnect or open error the
    source gave, or that frames stopped coming). recovered: a frame came again; False while it lasts
    and for one the capture ended in.
    """

    start_s: float
    duration_s: float
    reason: str
    recovered: bool

    def as_dict(self, t0: float = 0.0) -> dict:
        """For stats files: start as seconds after t0 (the run's start on the same clock)."""
        return {"start_s": round(self.start_s - t0, 3), "duration_s": round(self.duration_s, 3),
                "reason": self.reason, "recovered": self.recovered}


@dataclass(frozen=True)
class CaptureStatus:
    state: CaptureState
    message: str
    frames: int  # frames put into the ring
    decode_errors: int  # single frames that could not be decoded and were skipped
    reconnects: int  # successful reopenings after the device went away
    fps: float  # over the last second; 0 once the frames have stopped (see stall_s)
    since_frame_s: float | None = None  # time since the last frame (None: none yet), on the worker's clock
    outages: tuple[Outage, ...] = ()  # oldest first; the last may be going on (recovered False)


class CaptureWorker:
    """Runs `source` in a thread, putting frames into `ring`.

    The worker owns the source: it opens it in the thread and closes it when the thread ends.
    Sequence numbers stay strictly increasing across reconnects (a reopened source may count
    from 0 again), so consumers can rely on them. clock: what the backoff waits and outages are timed
    on; stop() cuts a wait short on any clock. stall_s: frames that stop for longer than this (and
    than 3 of the source's own frame intervals) count as an outage even if the source says nothing.
    """

    def __init__(
        self,
        source: Source,
        ring: RingBuffer,
        retry: RetryPolicy = RetryPolicy(),
        on_status: Callable[[CaptureStatus], None] | None = None,
        close_ring_on_exit: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        stall_s: float = 1.0,
    ):
        self.source = source
        self.ring = ring
        self.retry = retry
        self._on_status = on_status
        self._close_ring_on_exit = close_ring_on_exit
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = CaptureState.IDLE
        self._message = ""
        self._frames = self._decode_errors = self._reconnects = 0
        self._seq_offset = 0
        self._last_seq: int | None = None
        self._recent: list[int] = []  # capture times of the last frames, for fps
        self.stall_s = stall_s
        self._t_start: float | None = None  # clock time the worker started
        self._t_frame: float | None = None  # clock time the last frame was put into the ring
        self._interval = 0.0  # clock time between the last two frames
        self._outage: tuple[float, str] | None = None  # (start, reason) of the outage going on
        self._outages: list[Outage] = []  # the ones that are over

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("CaptureWorker.start() called twice; make a new worker to restart")
        self.ring.reopen()
        self._t_start = self._clock.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self._source_name()}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to finish and wait for it. True when it has ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end on its own (a finite source). True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> CaptureStatus:
        now = self._clock.monotonic()
        with self._lock:
            recent = self._recent
            since = None if self._t_frame is None else max(0.0, now - self._t_frame)
            fps = 0.0
            if len(recent) >= 2 and recent[-1] > recent[0] and since is not None and since <= self._stall_limit():
                fps = (len(recent) - 1) * 1e9 / (recent[-1] - recent[0])
            outages = list(self._outages)
            if self._outage is not None:
                start, reason = self._outage
                outages.append(Outage(start, max(0.0, now - start), reason, False))
            elif since is not None and since > self._stall_limit() and self._state is CaptureState.RUNNING:
                outages.append(Outage(self._t_frame, since, f"no frame for {since:.1f} s", False))
            return CaptureStatus(self._state, self._message, self._frames, self._decode_errors, self._reconnects,
                                 fps, since, tuple(outages))

    def _stall_limit(self) -> float:
        return max(self.stall_s, 3 * self._interval)

    # -- thread ----------------------------------------------------------------------------
    def _source_name(self) -> str:
        try:
            return self.source.describe().name
        except Exception:  # describe() may need an open device; a name is only cosmetic
            return type(self.source).__name__

    def _set_state(self, state: CaptureState, message: str = "") -> None:
        with self._lock:
            changed = (state, message) != (self._state, self._message)
            self._state, self._message = state, message
            if state is CaptureState.RETRYING and self._outage is None:
                # it began when the frames stopped, not when the source admitted it
                start = self._t_frame if self._t_frame is not None else self._t_start
                self._outage = (start if start is not None else self._clock.monotonic(), message)
        if changed and self._on_status is not None:
            self._on_status(self.status())

    def _run(self) -> None:
        opened = False
        attempt = 0
        try:
            while not self._stop.is_set():
                if not opened:
                    try:
                        self.source.open()
                    except (SourceUnavailable, DeviceDisconnected) as exc:
                        attempt += 1
                        if self.retry.max_attempts is not None and attempt >= self.retry.max_attempts:
                            self._set_state(CaptureState.ERROR, f"{exc} (gave up after {attempt} attempts)")
                            return
                        self._set_state(CaptureState.RETRYING, f"{exc} (retry {attempt})")
                        self._clock.wait(self._stop, self.retry.delay(attempt))
                        continue
                    opened = True
                    if attempt and self._frames:
                        self._reconnects += 1
                    attempt = 0
                    self._set_state(CaptureState.RUNNING)
                try:
                    frame = self.source.read()
                except FrameDecodeError as exc:
                    with self._lock:
                        self._decode_errors += 1
                        self._message = str(exc)
                    continue
                except SourceEnded as exc:
                    self._set_state(CaptureState.ENDED, str(exc) or "source ended")
                    return
                except DeviceDisconnected as exc:
                    self._close_quietly()
                    opened = False
                    attempt = 1
                    self._set_state(CaptureState.RETRYING, f"{exc}; reconnecting")
                    self._clock.wait(self._stop, self.retry.delay(attempt))
                    continue
                self._publish(frame)
        except CaptureError as exc:
            self._set_state(CaptureState.ERROR, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: report it, don't die silently
            self._set_state(CaptureState.ERROR, f"capture failed: {type(exc).__name__}: {exc}")
        finally:
            if opened:
                self._close_quietly()
            self._end_outage(recovered=False)
            if self._state in (CaptureState.RUNNING, CaptureState.RETRYING, CaptureState.IDLE):
                self._set_state(CaptureState.STOPPED)
            if self._close_ring_on_exit:
                self.ring.close()

    def _publish(self, frame: Frame) -> None:
        if self._last_seq is not None and frame.seq + self._seq_offset <= self._last_seq:
            self._seq_offset = self._last_seq + 1 - frame.seq  # the source restarted its count
        if self._seq_offset:
            frame = dataclasses.replace(frame, seq=frame.seq + self._seq_offset)
        self._last_seq = frame.seq
        self.ring.put(frame)
        now = self._clock.monotonic()
        with self._lock:
            gap = None if self._t_frame is None else now - self._t_frame
            if self._outage is not None:  # the source went away and is back
                self._end_outage_locked(now, recovered=True)
            elif gap is not None:
                if gap > self._stall_limit():  # it said nothing, but nothing came
                    self._outages.append(Outage(self._t_frame, gap, f"no frame for {gap:.1f} s", True))
                self._interval = gap  # a source that slowed down for good stops counting as stalled
            self._t_frame = now
            self._frames += 1
            self._recent.append(frame.t_capture_ns)
            cutoff = frame.t_capture_ns - 1_000_000_000
            while len(self._recent) > 2 and self._recent[0] < cutoff:
                self._recent.pop(0)

    def _end_outage(self, recovered: bool) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self._end_outage_locked(now, recovered)

    def _end_outage_locked(self, now: float, recovered: bool) -> None:
        if self._outage is not None:
            start, reason = self._outage
            self._outages.append(Outage(start, max(0.0, now - start), reason, recovered))
            self._outage = None

    def _close_quietly(self) -> None:
        try:
            self.source.close()
        except Exception:  # closing a device that is already gone may fail; nothing to do about it
            pass


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` passes (for tests and the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

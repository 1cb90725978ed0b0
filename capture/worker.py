"""CaptureWorker: one thread that reads one source into a RingBuffer, and survives what cameras do.

States: idle -> running -> (retrying <-> running) -> ended | error | stopped.
A device that disappears is reopened with exponential backoff; frames already in the ring stay
there. A finite source that ends, or a source that can never work, stops the thread with a state
and a message the GUI can show. `stop()` returns within a second and no thread outlives it.
Backoff waits are timed on the worker's Clock (capture.clock), so a test can check them in logical time.
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
class CaptureStatus:
    state: CaptureState
    message: str
    frames: int  # frames put into the ring
    decode_errors: int  # single frames that could not be decoded and were skipped
    reconnects: int  # successful reopenings after the device went away
    fps: float  # over the last second or so


class CaptureWorker:
    """Runs `source` in a thread, putting frames into `ring`.

    The worker owns the source: it opens it in the thread and closes it when the thread ends.
    Sequence numbers stay strictly increasing across reconnects (a reopened source may count
    from 0 again), so consumers can rely on them. clock: what the backoff waits are timed on; stop()
    cuts a wait short on any clock.
    """

    def __init__(
        self,
        source: Source,
        ring: RingBuffer,
        retry: RetryPolicy = RetryPolicy(),
        on_status: Callable[[CaptureStatus], None] | None = None,
        close_ring_on_exit: bool = True,
        clock: Clock = SYSTEM_CLOCK,
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

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("CaptureWorker.start() called twice; make a new worker to restart")
        self.ring.reopen()
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
        with self._lock:
            recent = self._recent
            fps = 0.0
            if len(recent) >= 2 and recent[-1] > recent[0]:
                fps = (len(recent) - 1) * 1e9 / (recent[-1] - recent[0])
            return CaptureStatus(self._state, self._message, self._frames, self._decode_errors, self._reconnects, fps)

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
        with self._lock:
            self._frames += 1
            self._recent.append(frame.t_capture_ns)
            cutoff = frame.t_capture_ns - 1_000_000_000
            while len(self._recent) > 2 and self._recent[0] < cutoff:
                self._recent.pop(0)

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

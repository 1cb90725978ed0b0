"""The clock the capture, engine and recording code reads and waits by, so that tests can replace it.

Pacing (a camera's frame slots, a video file's presentation times), retry backoff and silence
timeouts are all about time passing. Code that takes a `Clock` does its timing through it: the
product runs on SYSTEM_CLOCK (time.monotonic and real waits, exactly as if it called them itself),
and a test passes a FakeClock whose sleeps and timed waits move logical time forward at once, so it
can check a schedule or a timeout to the nanosecond however busy the machine is.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Protocol


class Waitable(Protocol):
    """What a clock can wait on: threading.Event, or a threading.Condition whose lock the caller holds."""

    def wait(self, timeout: float | None = None) -> bool: ...


class Clock(Protocol):
    """Monotonic time and the ways the code waits for it to pass."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""
        ...

    def monotonic_ns(self) -> int:
        """The same in integer nanoseconds (frame capture times use these)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let `seconds` (>= 0) pass."""
        ...

    def wait(self, waitable: Waitable, timeout: float | None) -> bool:
        """waitable.wait(timeout), with the timeout counted on this clock: True when it was woken
        (an Event set, a Condition notified), False when the timeout passed first."""
        ...


class SystemClock:
    """The real clock: time.monotonic and real waits."""

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, waitable: Waitable, timeout: float | None) -> bool:
        return waitable.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """Logical time for tests: it moves only when code sleeps or waits on it, or the test calls advance().

    sleep(s) returns at once, s later in logical time. A timed wait returns at once too: True without
    moving time if the waitable is already woken (an Event already set), else False with time moved
    by the whole timeout, as if nothing woke it meanwhile. A wait without a timeout has no end to skip
    to, so it waits for real. Time moves by whole nanoseconds, rounded up, so a loop that sleeps until a
    deadline always reaches it.

    `sleeps` and `waits` list every sleep and every timed wait that ran its course, in seconds, for
    tests that check a schedule. Thread-safe: a worker thread may sleep on it while the test reads it.
    Code running on it never waits for real, so a thread that loops on timed waits spins through them.
    """

    def __init__(self, start_s: float = 1000.0):
        if start_s < 0:
            raise ValueError(f"a clock starts at a time >= 0, got {start_s}")
        self._ns = math.ceil(start_s * 1e9)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.monotonic_ns() / 1e9

    def monotonic_ns(self) -> int:
        with self._lock:
            return self._ns

    def advance(self, seconds: float) -> None:
        """Move logical time forward by `seconds` (>= 0): the test's way of letting time pass."""
        if seconds < 0:
            raise ValueError(f"time cannot go back: advance({seconds})")
        with self._lock:
            self._ns += math.ceil(seconds * 1e9)

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds}")  # as time.sleep says
        with self._lock:
            self.sleeps.append(seconds)
            self._ns += math.ceil(seconds * 1e9)

    def wait(self, waitable: Waitable, timeout: float | None) -> bool:
        if timeout is None:
            return waitable.wait(None)
        if waitable.wait(0):  # also lets a thread holding the Condition's lock in for a moment
            return True
        timeout = max(0.0, timeout)
        with self._lock:
            self.waits.append(timeout)
            self._ns += math.ceil(timeout * 1e9)
        return False

    def __repr__(self) -> str:
        return f"FakeClock(at {self.monotonic():.9f} s)"

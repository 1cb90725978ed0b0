"""A fixed-size, thread-safe ring buffer of frames that drops the oldest when full.

The capture thread never waits on a consumer: `put` always succeeds, evicting the oldest frame
when the buffer is full and counting it. Consumers either read in order (`get`), or jump to the
newest (`latest`, `wait_newer`), or take the newest N in order for a burst (`last`).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

from capture.frame import Frame


@dataclass(frozen=True)
class RingStats:
    """Counters since the buffer was made.

    pushed: frames put. dropped: frames evicted because the buffer was full.
    overwritten_unread: the evicted frames that no `get` had returned (lost to an in-order reader).
    read: frames returned by `get`.
    """

    capacity: int
    size: int
    pushed: int
    dropped: int
    overwritten_unread: int
    read: int


class BufferClosed(Exception):
    """The buffer was closed and has nothing more to give."""


class RingBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._frames: collections.deque[Frame] = collections.deque()
        self._unread: int = 0  # how many of the newest frames `get` has not returned yet
        self._cond = threading.Condition()
        self._closed = False
        self._pushed = self._dropped = self._overwritten_unread = self._read = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def put(self, frame: Frame) -> None:
        """Append a frame; evicts (and counts) the oldest when full. Never blocks for long."""
        with self._cond:
            if self._closed:
                raise BufferClosed("cannot put into a closed ring buffer")
            if len(self._frames) == self._capacity:
                self._frames.popleft()
                self._dropped += 1
                if self._unread == self._capacity:
                    self._overwritten_unread += 1
                    self._unread -= 1
            self._frames.append(frame)
            self._unread += 1
            self._pushed += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame:
        """The oldest frame not yet returned by `get`, waiting up to `timeout` seconds.

        Raises TimeoutError when none arrives in time, BufferClosed when closed and drained.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._unread > 0 or self._closed, timeout):
                raise TimeoutError(f"no frame within {timeout} s")
            if self._unread == 0:
                raise BufferClosed("ring buffer closed")
            frame = self._frames[len(self._frames) - self._unread]
            self._unread -= 1
            self._read += 1
            return frame

    def latest(self) -> Frame | None:
        """The newest frame, or None when empty. Does not count as a read."""
        with self._cond:
            return self._frames[-1] if self._frames else None

    def wait_newer(self, after_seq: int | None, timeout: float | None = None) -> Frame:
        """Wait for a frame with seq > after_seq and return the newest one (latency beats throughput).

        The read cursor moves to the newest frame: the older ones were passed over on purpose, so
        they no longer count as unread (overwritten_unread then counts only frames evicted before
        any consumer reached them). Raises TimeoutError when none arrives in time, BufferClosed
        when the buffer is closed.
        """
        def ready() -> bool:
            newest = self._frames[-1] if self._frames else None
            return self._closed or (newest is not None and (after_seq is None or newest.seq > after_seq))

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"no new frame within {timeout} s")
            newest = self._frames[-1] if self._frames else None
            if newest is None or (after_seq is not None and newest.seq <= after_seq):
                raise BufferClosed("ring buffer closed")
            if self._unread:
                self._unread = 0
                self._read += 1
            return newest

    def last(self, n: int) -> list[Frame]:
        """The newest `n` frames (fewer if the buffer holds fewer), oldest first."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        with self._cond:
            return list(self._frames)[-n:]

    def stats(self) -> RingStats:
        with self._cond:
            return RingStats(self._capacity, len(self._frames), self._pushed, self._dropped,
                             self._overwritten_unread, self._read)

    def close(self) -> None:
        """Wake every waiting consumer; frames already in the buffer stay readable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


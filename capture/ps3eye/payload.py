"""Bulk payloads into frames: the UVC-style payload header, and the assembler. Knows nothing about USB.

Each payload of the bulk stream starts with a header: its length, a flags byte (bit 0 frame id,
toggling every frame; bit 1 end of frame; bit 2 PTS present; bit 3 SCR present; bit 6 error) and
the PTS (4 bytes) and SCR (6 bytes). As the kernel's gspca ov534 driver and the libusb PS3 Eye
drivers do, a header is accepted only when its length byte is 12 and it carries a PTS; the pixels
always start 12 bytes in, whatever the SCR bit says. A payload that fails spoils the frame it falls in.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

HEADER_LENGTH = 12
UVC_FID, UVC_EOF, UVC_PTS, UVC_SCR, UVC_ERR = 0x01, 0x02, 0x04, 0x08, 0x40


class PayloadHeader(NamedTuple):
    fid: int
    eof: bool
    pts: int


class Rejected(enum.Enum):
    """Why a payload was thrown away. Each is counted (PS3EyeStats.rejected_<name>)."""

    BAD_HEADER = "a header length byte other than 12, or a payload shorter than 12 bytes"
    ERROR = "the error flag set by the camera"
    NO_PTS = "no presentation time stamp"
    STRAY = "no frame to belong to (after an end of frame, before the frame id changed)"

    @property
    def counter(self) -> str:
        return f"rejected_{self.name.lower()}"


def parse_payload_header(payload) -> PayloadHeader | Rejected:
    """The header at the start of one bulk payload (bytes-like, header + data), or why the payload
    is rejected, checked in the kernel driver's order: length, error flag, PTS."""
    if len(payload) < HEADER_LENGTH or payload[0] != HEADER_LENGTH:
        return Rejected.BAD_HEADER
    flags = payload[1]
    if flags & UVC_ERR:
        return Rejected.ERROR
    if not flags & UVC_PTS:
        return Rejected.NO_PTS
    return PayloadHeader(flags & UVC_FID, bool(flags & UVC_EOF), int.from_bytes(payload[2:6], "little"))


@dataclass(frozen=True)
class Completed:
    pixels: np.ndarray  # uint8, the assembler's shape
    t_first_ns: int  # arrival of the frame's first payload


@dataclass(frozen=True)
class Dropped:
    reason: str  # "short", "long" or "corrupt"
    detail: str


Event = Completed | Dropped | Rejected


class FrameAssembler:
    """Builds frames of a fixed byte size from the payloads of one stream.

    A frame starts when the frame id toggles (or the PTS changes) and ends with a payload flagged
    end-of-frame. It is kept only when it has exactly the expected size and no payload in it was
    rejected (nor a bulk read inside it failed).
    shape: the uint8 array a frame fills, e.g. (480, 640, 2) for YUYV, (480, 640) for RAW8.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.frame_bytes = int(np.prod(self.shape))
        self._pixels: np.ndarray | None = None
        self._dst: memoryview | None = None
        self._filled = 0
        self._overflow = False
        self._t_first = 0
        self._in_frame = False
        self._fid: int | None = None
        self._pts: int | None = None
        self._corrupt: str | None = None  # why the frame in progress is bad

    def poison(self, why: str) -> None:
        """Mark the frame in progress as corrupt. Between frames there is nothing to spoil: if what
        was lost belonged to the next frame, that frame comes out short."""
        if self._in_frame:
            self._corrupt = self._corrupt or why

    def push(self, header: PayloadHeader | Rejected, payload, t_ns: int) -> list[Event]:
        """Feed one payload (the whole of it, header included) that arrived at `t_ns`; what came of it."""
        if isinstance(header, Rejected):
            self.poison(f"a payload was rejected for {header.value}")
            return [header]
        events: list[Event] = []
        starts = self._fid is None or header.fid != self._fid or (self._pts is not None and header.pts != self._pts)
        if starts:
            if self._in_frame:  # the previous frame never saw its end-of-frame payload
                events.append(self._drop("corrupt", self._corrupt) if self._corrupt else self._drop(
                    "short", f"it ended without an end-of-frame payload after {self._filled} of "
                             f"{self.frame_bytes} bytes"))
            self._begin(header, t_ns)
        elif not self._in_frame:
            events.append(Rejected.STRAY)
            return events
        self._append(payload[HEADER_LENGTH:])
        if header.eof:
            events.append(self._finish())
        return events

    def _begin(self, header: PayloadHeader, t_ns: int) -> None:
        self._pixels = np.empty(self.shape, np.uint8)
        self._dst = memoryview(self._pixels).cast("B")
        self._filled = 0
        self._overflow = False
        self._t_first = t_ns
        self._in_frame = True
        self._fid, self._pts = header.fid, header.pts
        self._corrupt = None

    def _append(self, data) -> None:
        n = len(data)
        if self._filled + n > self.frame_bytes:
            self._overflow = True
            self._filled += n
            return
        self._dst[self._filled:self._filled + n] = data
        self._filled += n

    def _finish(self) -> Completed | Dropped:
        if self._corrupt:
            return self._drop("corrupt", self._corrupt)
        if self._overflow:
            return self._drop("long", f"it held {self._filled} bytes, more than the {self.frame_bytes} of the mode")
        if self._filled != self.frame_bytes:
            return self._drop("short", f"it held {self._filled} of {self.frame_bytes} bytes (a payload was lost)")
        done = Completed(self._pixels, self._t_first)
        self._end()
        return done

    def _drop(self, reason: str, detail: str) -> Dropped:
        self._end()
        return Dropped(reason, detail)

    def _end(self) -> None:
        self._in_frame = False
        self._pixels = self._dst = None
        self._corrupt = None

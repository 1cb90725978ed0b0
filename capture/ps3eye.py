"""PS3 Eye userspace driver over pyusb: the OV534 bridge, the OV772x sensor behind it, the bulk stream.

How the camera talks (as the Linux kernel's gspca ov534 driver documents it):
- The OV534 USB bridge has 8-bit registers, read and written with vendor control transfers
  (request 0x01, wIndex = register, one data byte).
- The OV772x sensor sits behind the bridge on SCCB (OmniVision's I2C). The bridge holds the sensor's
  bus address (0xf1), the sensor register (0xf2) and the byte to write (0xf3); writing an operation
  code to 0xf5 runs the transaction, 0xf6 then reports 0x00 done, 0x03 busy or 0x04 no acknowledge,
  and a read leaves its byte in 0xf4.
- Video comes on the bulk IN endpoint of interface 0 as payloads of 2048 bytes. Each starts with a
  UVC-style header: its length, a flags byte (bit 0 frame id, toggling every frame; bit 1 end of
  frame; bit 2 PTS present; bit 3 SCR present; bit 6 error) and the optional PTS (4 bytes) and SCR
  (6 bytes). Pixels are YUYV; the last payload of a frame is shorter and flagged end-of-frame.

Frames that come out short, over-long or with a corrupt payload are dropped, counted (`stats()`) and
reported as FrameDecodeError, which the CaptureWorker skips and counts.
"""
from __future__ import annotations

import dataclasses
import errno
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import usb.core
import usb.util

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import DeviceDisconnected, FrameDecodeError, SourceInvalid, SourceUnavailable
from capture.frame import Frame, PixelFormat
from capture.source import Source, SourceInfo

VENDOR_ID = 0x1415
PRODUCT_ID = 0x2000
VIDEO_INTERFACE = 0

# Vendor control transfers to the bridge.
_REQUEST = 0x01
_CTRL_OUT = 0x40  # host to device | vendor | device
_CTRL_IN = 0xC0  # device to host | vendor | device
_CTRL_TIMEOUT_MS = 500

# Bridge registers.
REG_SCCB_ADDRESS = 0xF1
REG_SCCB_SUBADDR = 0xF2
REG_SCCB_WRITE = 0xF3
REG_SCCB_READ = 0xF4
REG_SCCB_OPERATION = 0xF5
REG_SCCB_STATUS = 0xF6
REG_STREAM = 0xE0  # 0x00 streams; 0x08 / 0x09 hold the video path in reset (stopped)
REG_CAMERA_CLOCK = 0xE5
REG_INDIRECT_INDEX = 0x1C  # 0x1c selects an indirect register, 0x1d writes it and moves to the next
REG_INDIRECT_DATA = 0x1D
REG_LED_DIRECTION = 0x21  # bit 7
REG_LED_OUTPUT = 0x23  # bit 7

SCCB_OP_WRITE_3 = 0x37  # address, subaddress, data
SCCB_OP_WRITE_2 = 0x33  # address, subaddress: sets the sensor's read pointer
SCCB_OP_READ_2 = 0xF9  # address, data: the byte lands in REG_SCCB_READ
SCCB_OK, SCCB_BUSY, SCCB_NACK = 0x00, 0x03, 0x04
OV772X_SCCB_ADDRESS = 0x42

# Sensor registers (OV7720/OV7725 datasheet names).
SENSOR_GAIN = 0x00
SENSOR_AECH = 0x08  # exposure, high byte
SENSOR_PID = 0x0A
SENSOR_VER = 0x0B
SENSOR_COM3 = 0x0C  # bit 6 mirror, bit 7 vertical flip
SENSOR_COM4 = 0x0D  # bits 7:6 PLL multiplier
SENSOR_AEC = 0x10  # exposure, low byte
SENSOR_CLKRC = 0x11  # clock prescaler
SENSOR_COM7 = 0x12  # bit 7 resets every register, bit 6 selects QVGA
SENSOR_COM8 = 0x13  # bit 0 auto exposure, bit 1 auto white balance, bit 2 auto gain
SENSOR_AWB_CTRL0 = 0x63
SENSOR_DSP_CTRL1 = 0x64

COM8_AEC, COM8_AWB, COM8_AGC = 0x01, 0x02, 0x04

PAYLOAD_SIZE = 2048  # what the start sequence programs (indirect registers 1-2, in 4-byte words)
TRANSFER_SIZE = 8 * PAYLOAD_SIZE  # one bulk read; the kernel driver's URBs are this size too

UVC_FID, UVC_EOF, UVC_PTS, UVC_SCR, UVC_ERR = 0x01, 0x02, 0x04, 0x08, 0x40

UDEV_RULE = 'SUBSYSTEM=="usb", ATTRS{idVendor}=="1415", ATTRS{idProduct}=="2000", MODE="0666"'
_UDEV_HINT = (
    "Allow it with a udev rule: put the line\n    " + UDEV_RULE + "\ninto a file in /etc/udev/rules.d/ "
    "(e.g. 99-ps3eye.rules), run `sudo udevadm control --reload`, then unplug and replug the camera."
)
_NO_LIBUSB_HINT = (
    "pyusb found no libusb backend: install libusb 1.0 (Debian/Ubuntu: sudo apt install libusb-1.0-0; "
    "macOS: brew install libusb; Windows: the WinUSB driver via Zadig)"
)
_KERNEL_DRIVER_HINT = (
    "unload it with `sudo modprobe -r gspca_ov534` (or blacklist it in /etc/modprobe.d/) and try again"
)


# -- modes and frame rates ----------------------------------------------------------------------
@dataclass(frozen=True)
class RateSetting:
    """One frame rate and the three registers that make it (the sensor and bridge clocks)."""

    fps: int
    clkrc: int  # sensor CLKRC: input clock divider
    com4: int  # sensor COM4: PLL multiplier in bits 7:6
    camera_clock: int  # bridge 0xe5: the clock the bridge feeds the sensor


@dataclass(frozen=True)
class SensorMode:
    """A picture size and the register values that select it."""

    width: int
    height: int
    com7: int  # sensor COM7: YUV output, QVGA bit
    hstart: int  # sensor HSTART
    vstart: int  # sensor VSTRT
    reg65: int  # sensor 0x65, as the kernel sets it per size
    frame_words: int  # bridge indirect registers 3-5: frame size limit in 4-byte words (kernel values)
    rates: tuple[RateSetting, ...]  # fastest first

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 2


# Frame rates from the kernel's ov534 rate tables; 75 fps at 640x480 is the fastest row of
# PS3EYEDriver's extended table that its authors found to give valid video.
_VGA_RATES = tuple(RateSetting(*row) for row in (
    (75, 0x01, 0x81, 0x02),
    (60, 0x01, 0xC1, 0x04),
    (50, 0x01, 0x41, 0x02),
    (40, 0x02, 0xC1, 0x04),
    (30, 0x04, 0x81, 0x02),
    (15, 0x03, 0x41, 0x04),
))
_QVGA_RATES = tuple(RateSetting(*row) for row in (
    (187, 0x01, 0x81, 0x02),
    (150, 0x01, 0xC1, 0x04),
    (137, 0x02, 0xC1, 0x02),
    (125, 0x02, 0x81, 0x02),
    (100, 0x02, 0xC1, 0x04),
    (75, 0x03, 0xC1, 0x04),
    (60, 0x04, 0xC1, 0x04),
    (50, 0x02, 0x41, 0x04),
    (37, 0x03, 0x41, 0x04),
    (30, 0x04, 0x41, 0x04),
))

MODES: dict[tuple[int, int], SensorMode] = {
    (640, 480): SensorMode(640, 480, com7=0x00, hstart=0x26, vstart=0x07, reg65=0x20,
                           frame_words=0x025800, rates=_VGA_RATES),
    (320, 240): SensorMode(320, 240, com7=0x40, hstart=0x3F, vstart=0x03, reg65=0x2F,
                           frame_words=0x014B00, rates=_QVGA_RATES),
}


def sensor_mode(width: int, height: int) -> SensorMode:
    """The PS3 Eye mode for a size; SourceInvalid names the sizes there are."""
    try:
        return MODES[(width, height)]
    except KeyError:
        raise SourceInvalid(
            f"the PS3 Eye has no {width}x{height} mode: use 640x480 (up to {_VGA_RATES[0].fps} fps) or "
            f"320x240 (up to {_QVGA_RATES[0].fps} fps), e.g. --source ps3eye:320x240@120"
        ) from None


def choose_rate(mode: SensorMode, fps: float) -> RateSetting:
    """The fastest rate of `mode` not above `fps` (the slowest when `fps` is below them all)."""
    for rate in mode.rates:
        if rate.fps <= fps:
            return rate
    return mode.rates[-1]


# -- register sequences ---------------------------------------------------------------------------
# Bridge set-up, in the kernel driver's order (register values are the hardware's, the grouping ours).
_BRIDGE_INIT: tuple[tuple[int, int], ...] = (
    (0x88, 0xF8), (0x89, 0xFF), (0x76, 0x03), (0x92, 0x01), (0x93, 0x18), (0x94, 0x10), (0x95, 0x10),
    (0xE2, 0x00), (0xE7, 0x3E),
    (0x96, 0x00),
    *((0x97, v) for v in (0x20, 0x20, 0x20, 0x0A, 0x3F, 0x4A, 0x20, 0x15, 0x0B)),  # a register fed in turn
    (0x8E, 0x40), (0x1F, 0x81), (0x34, 0x05), (0xE3, 0x04), (0x89, 0x00), (0x76, 0x00), (0xE7, 0x2E),
    (0x31, 0xF9), (0x25, 0x42), (0x21, 0xF0),
    (REG_INDIRECT_INDEX, 0x0A), (REG_INDIRECT_DATA, 0x08), (REG_INDIRECT_DATA, 0x0E),  # UVC headers on
)

# Sensor set-up after its reset (OV772x). The kernel writes CLKRC ten more times right after the reset
# as a delay; we sleep instead. The window registers are left to the start sequence.
_SENSOR_INIT: tuple[tuple[int, int], ...] = (
    (SENSOR_CLKRC, 0x01),
    (0x3D, 0x03),  # COM12
    (0x32, 0x00),  # HREF
    (0x42, 0x7F),
    (SENSOR_AWB_CTRL0, 0xAA),
    (SENSOR_DSP_CTRL1, 0xFF),
    (0x66, 0x00),  # DSP_Ctrl3
    (SENSOR_COM8, 0xF0),
    (SENSOR_COM4, 0x41),
    (0x0F, 0xC5),  # COM6
    (0x14, 0x11),  # COM9
    (0x22, 0x7F), (0x23, 0x03),  # banding filter
    (0x24, 0x40), (0x25, 0x30), (0x26, 0xA1),  # auto exposure target window
    (0x2A, 0x00), (0x2B, 0x00),  # no dummy pixels
    (0x6B, 0xAA),  # AWB_Ctrl3
    (SENSOR_COM8, 0xFF),  # every automatic control on
    # sharpness, de-noise, colour matrix, brightness, contrast
    (0x90, 0x05), (0x91, 0x01), (0x92, 0x03), (0x93, 0x00), (0x94, 0x60), (0x95, 0x3C), (0x96, 0x24),
    (0x97, 0x1E), (0x98, 0x62), (0x99, 0x80), (0x9A, 0x1E), (0x9B, 0x08), (0x9C, 0x20), (0x9E, 0x81),
    (0xA6, 0x07),  # special digital effects
    # gamma curve
    (0x7E, 0x0C), (0x7F, 0x16), (0x80, 0x2A), (0x81, 0x4E), (0x82, 0x61), (0x83, 0x6F), (0x84, 0x7B),
    (0x85, 0x86), (0x86, 0x8E), (0x87, 0x97), (0x88, 0xA4), (0x89, 0xAF), (0x8A, 0xC5), (0x8B, 0xD7),
    (0x8C, 0xE8), (0x8D, 0x20),
    (0x14, 0x41),  # COM9: gain ceiling
    (0x0E, 0xCD),  # COM5
    (0xAC, 0xBF),  # DSP auto
    (0x8E, 0x00),  # de-noise threshold
)


def bridge_start_sequence(mode: SensorMode) -> list[tuple[int, int]]:
    """Bridge writes that set payload size, frame size and output size for `mode` (YUYV)."""
    words = PAYLOAD_SIZE // 4
    return [
        (0x88, 0x00),
        (REG_INDIRECT_INDEX, 0x00),
        (REG_INDIRECT_DATA, 0x40),
        (REG_INDIRECT_DATA, words >> 8), (REG_INDIRECT_DATA, words & 0xFF),
        (REG_INDIRECT_DATA, mode.frame_words >> 16), (REG_INDIRECT_DATA, (mode.frame_words >> 8) & 0xFF),
        (REG_INDIRECT_DATA, mode.frame_words & 0xFF),
        (0x8D, 0x1C), (0x8E, 0x80),
        (0xC0, mode.width // 8), (0xC1, mode.height // 8),  # output size, in units of 8 pixels
        (0xC2, 0x0C), (0xC3, 0x69),  # YUV input
    ]


def sensor_start_sequence(mode: SensorMode) -> list[tuple[int, int]]:
    """Sensor writes that select `mode`'s window and output size (YUYV)."""
    return [
        (SENSOR_COM7, mode.com7),
        (0x17, mode.hstart), (0x18, mode.width // 4),  # HSTART, HSIZE (4-pixel units)
        (0x19, mode.vstart), (0x1A, mode.height // 2),  # VSTRT, VSIZE (2-line units)
        (0x29, mode.width // 4), (0x2C, mode.height // 2),  # output width and height
        (0x65, mode.reg65),
        (0x67, 0x00),  # YUV output
    ]


def gain_register(gain: int) -> int:
    """Gain 0..63 -> OV772x GAIN register: bits 5:4 pick how many x2 stages (bits 7:4 of the
    register, filled from bit 4 up), bits 3:0 the fine gain."""
    return (0x00, 0x30, 0x70, 0xF0)[(gain >> 4) & 3] | (gain & 0x0F)


def exposure_registers(exposure: int) -> tuple[int, int]:
    """Exposure 0..255 -> (AECH, AEC): the sensor's 16-bit exposure is twice the control value."""
    value = exposure << 1
    return value >> 8, value & 0xFF


def flip_bits(com3: int, hflip: bool, vflip: bool) -> int:
    """COM3 with the mirror/flip bits for the PS3 Eye, whose sensor is mounted rotated: an upright,
    unmirrored picture needs both bits set."""
    return (com3 & ~0xC0) | (0 if hflip else 0x40) | (0 if vflip else 0x80)


# -- payloads and frames --------------------------------------------------------------------------
class PayloadHeader(NamedTuple):
    length: int
    fid: int
    eof: bool
    error: bool
    pts: int | None


def parse_payload_header(payload) -> PayloadHeader | None:
    """The UVC-style header at the start of one bulk payload (bytes-like, header + data), or None
    when it is malformed: too short, or a length that disagrees with the PTS/SCR flags."""
    n = len(payload)
    if n < 2:
        return None
    length, flags = payload[0], payload[1]
    if length != 2 + (4 if flags & UVC_PTS else 0) + (6 if flags & UVC_SCR else 0) or length > n:
        return None
    pts = int.from_bytes(payload[2:6], "little") if flags & UVC_PTS else None
    return PayloadHeader(length, flags & UVC_FID, bool(flags & UVC_EOF), bool(flags & UVC_ERR), pts)


@dataclass(frozen=True)
class Completed:
    pixels: np.ndarray  # (H, W, 2) uint8 YUYV
    t_first_ns: int  # arrival of the frame's first payload


@dataclass(frozen=True)
class Dropped:
    reason: str  # "short", "long" or "corrupt"
    detail: str


class FrameAssembler:
    """Builds frames from payloads for one stream; knows nothing about USB.

    A frame starts when the frame id toggles (or the PTS changes) and ends with a payload flagged
    end-of-frame. It is kept only when it has exactly the mode's size and no payload of it was bad.
    """

    def __init__(self, width: int, height: int):
        self.shape = (height, width, 2)
        self.frame_bytes = width * height * 2
        self._pixels: np.ndarray | None = None
        self._dst: memoryview | None = None
        self._filled = 0
        self._overflow = False
        self._t_first = 0
        self._in_frame = False
        self._fid: int | None = None
        self._pts: int | None = None
        self._corrupt: str | None = None  # why the frame in progress is bad
        self._corrupt_next: str | None = None  # a bad payload came between frames: spoil the next one

    def poison(self, why: str) -> None:
        """Mark the frame in progress (or, between frames, the next one) as corrupt."""
        if self._in_frame:
            self._corrupt = self._corrupt or why
        else:
            self._corrupt_next = self._corrupt_next or why

    def push(self, header: PayloadHeader | None, payload, t_ns: int) -> list[Completed | Dropped]:
        """Feed one payload (the whole of it, header included) that arrived at `t_ns`."""
        if header is None:
            self.poison("a payload header was malformed")
            return []
        if header.error:
            self.poison("the camera flagged a payload error")
            return []
        events: list[Completed | Dropped] = []
        starts = self._fid is None or header.fid != self._fid or (
            header.pts is not None and self._pts is not None and header.pts != self._pts)
        if starts:
            if self._in_frame:  # the previous frame never saw its end-of-frame payload
                events.append(self._drop("corrupt", self._corrupt) if self._corrupt else self._drop(
                    "short", f"it ended without an end-of-frame payload after {self._filled} of "
                             f"{self.frame_bytes} bytes"))
            self._begin(header, t_ns)
        elif not self._in_frame:
            return events  # a stray payload after end-of-frame: not part of any frame
        self._append(payload[header.length:])
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
        self._corrupt, self._corrupt_next = self._corrupt_next, None

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


# -- configuration, counters, probe ---------------------------------------------------------------
@dataclass(frozen=True)
class PS3EyeControls:
    """Picture controls written to the sensor at start and by the camera's set_* methods."""

    auto_gain: bool = True
    gain: int = 20  # 0..63; takes effect with auto_gain off
    auto_exposure: bool = True
    exposure: int = 120  # 0..255; takes effect with auto_exposure off
    auto_white_balance: bool = True
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.gain <= 63:
            raise ValueError(f"PS3 Eye gain must be 0..63, got {self.gain}")
        if not 0 <= self.exposure <= 255:
            raise ValueError(f"PS3 Eye exposure must be 0..255, got {self.exposure}")


@dataclass(frozen=True)
class PS3EyeConfig:
    """What to open: mode, which camera, start-up controls, and how long silence may last.

    backend: a pyusb backend object (tests pass an emulator); None lets pyusb find libusb.
    """

    width: int = 640
    height: int = 480
    fps: float = 60.0  # the fastest supported rate not above this is used
    index: int = 0  # which PS3 Eye, when several are plugged in
    controls: PS3EyeControls = PS3EyeControls()
    transfer_timeout_ms: int = 100  # one bulk read
    stall_timeout_s: float = 1.0  # no video for this long means the camera is gone
    backend: object | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PS3EyeStats:
    """Counters since the camera object was made (they survive reconnects)."""

    frames: int = 0  # frames delivered
    dropped_short: int = 0  # fewer bytes than the mode (a payload lost, or no end-of-frame)
    dropped_long: int = 0  # more bytes than the mode
    dropped_corrupt: int = 0  # a payload of the frame had a malformed header or an error flag
    bad_payloads: int = 0  # payloads with a malformed header
    transfers: int = 0  # bulk reads that returned data
    bytes: int = 0
    timeouts: int = 0  # bulk reads that returned nothing in time
    transfer_errors: int = 0  # other failed bulk reads (e.g. overflow)

    @property
    def dropped(self) -> int:
        return self.dropped_short + self.dropped_long + self.dropped_corrupt


@dataclass(frozen=True)
class PS3EyeProbe:
    """What `eyefuse sources` shows for the PS3 Eye.

    status: "available" (found and openable), "found" (found, not opened or open failed for another
    reason), "no permission", "not found", or "unavailable (no libusb)".
    """

    status: str
    detail: str


def probe_ps3eye(backend=None, try_open: bool = True) -> PS3EyeProbe:
    """Look for a PS3 Eye without starting it (the camera may be streaming to someone else)."""
    try:
        devices = list(usb.core.find(find_all=True, idVendor=VENDOR_ID, idProduct=PRODUCT_ID, backend=backend))
    except usb.core.NoBackendError:
        return PS3EyeProbe("unavailable (no libusb)", _NO_LIBUSB_HINT)
    if not devices:
        seen = _count_usb_devices(backend)
        return PS3EyeProbe("not found", f"no USB device {VENDOR_ID:04x}:{PRODUCT_ID:04x} among the {seen} pyusb sees")
    dev = devices[0]
    where = _where(dev) + (f" (and {len(devices) - 1} more)" if len(devices) > 1 else "")
    if not try_open:
        return PS3EyeProbe("found", f"PS3 Eye on {where}")
    try:
        held = _kernel_driver_active(dev)
    except usb.core.USBError as exc:
        if usb_error_kind(exc) == "permission":
            return PS3EyeProbe("no permission", f"PS3 Eye on {where} cannot be opened: {_UDEV_HINT}")
        return PS3EyeProbe("found", f"PS3 Eye on {where} cannot be opened: {exc}")
    finally:
        _dispose(dev)
    modes = f"640x480 up to {_VGA_RATES[0].fps} fps, 320x240 up to {_QVGA_RATES[0].fps} fps"
    if held:
        return PS3EyeProbe("available", f"PS3 Eye on {where}, {modes} (the kernel's gspca_ov534 has it; "
                                        f"opening detaches it)")
    return PS3EyeProbe("available", f"PS3 Eye on {where}, {modes}")


_GONE_ERRNOS = (errno.ENODEV, errno.EPIPE, errno.EIO, errno.ESHUTDOWN, errno.ENXIO)


def usb_error_kind(exc: usb.core.USBError) -> str:
    """'timeout', 'gone' (unplugged, or the pipe broke), 'permission', 'busy' or 'other'."""
    code = exc.errno
    if code is None and exc.backend_error_code is not None:
        code = {-1: errno.EIO, -3: errno.EACCES, -4: errno.ENODEV, -6: errno.EBUSY, -7: errno.ETIMEDOUT,
                -9: errno.EPIPE}.get(exc.backend_error_code)  # libusb 1.0 codes, when no errno came
    if isinstance(exc, usb.core.USBTimeoutError) or code == errno.ETIMEDOUT:
        return "timeout"
    if code in _GONE_ERRNOS or "no such device" in str(exc).lower():
        return "gone"
    if code in (errno.EACCES, errno.EPERM):
        return "permission"
    if code == errno.EBUSY:
        return "busy"
    return "other"


# -- the camera -------------------------------------------------------------------------------------
class PS3EyeCamera(Source):
    """A PS3 Eye through pyusb. Frames are YUYV (H, W, 2); `to_bgr8` converts them.

    Not thread-safe for reading (one CaptureWorker thread owns it), but the set_* controls may be
    called from another thread while it streams. clock: what the start-up delays, the silence timeout
    and capture times are read from (tests pass a FakeClock, with the emulator on the same one).
    """

    def __init__(self, config: PS3EyeConfig = PS3EyeConfig(), backend=None, clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.clock = clock
        self.mode = sensor_mode(config.width, config.height)
        self.rate = choose_rate(self.mode, config.fps)
        self._backend = backend if backend is not None else config.backend
        self._controls = config.controls
        self._reg_lock = threading.Lock()  # one bridge/SCCB transaction at a time
        self._dev: usb.core.Device | None = None
        self._ep = None
        self._detached = False
        self._where = ""
        self.sensor_id: int | None = None
        self._seq = 0
        self._counts = dict(dataclasses.asdict(PS3EyeStats()))
        self._buf = usb.util.create_buffer(TRANSFER_SIZE)
        self._view = memoryview(self._buf).cast("B")
        self._pending = (0, 0)  # unparsed part of the last transfer: (offset, end)
        self._transfer_t_ns = 0
        self._last_data = 0.0
        self._assembler = FrameAssembler(self.mode.width, self.mode.height)
        self._name = "ps3eye" if config.index == 0 else f"ps3eye{config.index}"

    # -- Source ----------------------------------------------------------------------------------
    def open(self) -> None:
        if self._dev is not None:
            return
        dev = self._find_device()
        try:
            self._take_interface(dev)
            self._ep = self._bulk_in_endpoint(dev)
            self._dev = dev
            with self._reg_lock:
                self._run_usb(self._init_and_start, "starting the camera")
        except BaseException:
            self._dev = None
            self._release(dev)
            raise
        self._assembler = FrameAssembler(self.mode.width, self.mode.height)
        self._pending = (0, 0)
        self._last_data = self.clock.monotonic()

    def read(self) -> Frame:
        if self._dev is None:
            raise SourceUnavailable("the PS3 Eye is not open: call open() first")
        while True:
            off, end = self._pending
            if off >= end:
                self._read_transfer()
                off, end = self._pending
            stop = min(off + PAYLOAD_SIZE, end)
            self._pending = (stop, end)
            payload = self._view[off:stop]
            header = parse_payload_header(payload)
            if header is None:
                self._counts["bad_payloads"] += 1
            events = self._assembler.push(header, payload, self._transfer_t_ns)
            if events:
                frame = self._take(events)
                if frame is not None:
                    return frame

    def close(self) -> None:
        with self._reg_lock:  # a control being set from another thread finishes first
            dev, self._dev = self._dev, None
            if dev is None:
                return
            try:
                self._bridge_write_on(dev, REG_STREAM, 0x09)
                self._set_led_on(dev, False)
            except usb.core.USBError:
                pass  # the camera may already be gone; nothing to stop then
        self._release(dev)

    def describe(self) -> SourceInfo:
        detail = f"OV534 bridge, OV772x sensor, {self._where}" if self._dev is not None else "not open"
        if self.rate.fps != self.config.fps:
            detail += f"; {self.config.fps:g} fps asked, {self.rate.fps} fps is the nearest rate at or below"
        return SourceInfo(self._name, "ps3eye", self.mode.width, self.mode.height, float(self.rate.fps),
                          PixelFormat.YUYV, detail)

    def stats(self) -> PS3EyeStats:
        return PS3EyeStats(**self._counts)

    # -- controls --------------------------------------------------------------------------------
    @property
    def controls(self) -> PS3EyeControls:
        return self._controls

    def set_exposure(self, exposure: int) -> None:
        """Manual exposure 0..255; turns auto exposure off (the sensor would overwrite it)."""
        self._update(exposure=exposure, auto_exposure=False)

    def set_auto_exposure(self, on: bool) -> None:
        self._update(auto_exposure=bool(on))

    def set_gain(self, gain: int) -> None:
        """Manual gain 0..63; turns auto gain off (the sensor would overwrite it)."""
        self._update(gain=gain, auto_gain=False)

    def set_auto_gain(self, on: bool) -> None:
        self._update(auto_gain=bool(on))

    def set_auto_white_balance(self, on: bool) -> None:
        self._update(auto_white_balance=bool(on))

    def set_flip(self, hflip: bool | None = None, vflip: bool | None = None) -> None:
        """Mirror left-right (hflip) and/or upside down (vflip); None keeps the current setting."""
        self._update(hflip=self._controls.hflip if hflip is None else bool(hflip),
                     vflip=self._controls.vflip if vflip is None else bool(vflip))

    def _update(self, **changes) -> None:
        controls = dataclasses.replace(self._controls, **changes)  # validates ranges
        with self._reg_lock:
            self._controls = controls
            if self._dev is not None:  # otherwise they are written at open()
                self._run_usb(lambda: self._write_controls(controls), "setting a control")

    def _write_controls(self, c: PS3EyeControls) -> None:
        com8 = self._sccb_read(SENSOR_COM8)
        com8 = _with_bits(com8, COM8_AGC, c.auto_gain)
        com8 = _with_bits(com8, COM8_AWB, c.auto_white_balance)
        com8 = _with_bits(com8, COM8_AEC, c.auto_exposure)
        self._sccb_write(SENSOR_COM8, com8)
        self._sccb_write(SENSOR_DSP_CTRL1, _with_bits(self._sccb_read(SENSOR_DSP_CTRL1), 0x03, c.auto_gain))
        self._sccb_write(SENSOR_AWB_CTRL0, _with_bits(self._sccb_read(SENSOR_AWB_CTRL0), 0xC0, c.auto_white_balance))
        self._sccb_write(SENSOR_GAIN, gain_register(c.gain))
        aech, aec = exposure_registers(c.exposure)
        self._sccb_write(SENSOR_AECH, aech)
        self._sccb_write(SENSOR_AEC, aec)
        self._sccb_write(SENSOR_COM3, flip_bits(self._sccb_read(SENSOR_COM3), c.hflip, c.vflip))

    # -- opening ---------------------------------------------------------------------------------
    def _find_device(self) -> usb.core.Device:
        try:
            devices = list(usb.core.find(find_all=True, idVendor=VENDOR_ID, idProduct=PRODUCT_ID,
                                         backend=self._backend))
        except usb.core.NoBackendError as exc:  # a set-up problem that retrying will not fix
            raise SourceInvalid(f"cannot look for the PS3 Eye: {_NO_LIBUSB_HINT}") from exc
        if len(devices) > self.config.index:
            return devices[self.config.index]
        if devices:
            raise SourceUnavailable(
                f"PS3 Eye #{self.config.index} asked for, but only {len(devices)} PS3 Eye(s) are plugged in "
                f"(USB {VENDOR_ID:04x}:{PRODUCT_ID:04x}); index them from 0"
            )
        seen = _count_usb_devices(self._backend)
        if seen:
            found = (f"pyusb sees {seen} other USB device(s) but none with vendor 0x{VENDOR_ID:04x}, "
                     f"product 0x{PRODUCT_ID:04x}")
            hint = "Plug the camera into a USB 2.0 port (not an unpowered hub) and check that `lsusb` lists 1415:2000"
        else:
            found = "pyusb sees no USB devices at all"
            hint = ("If this runs in a container or a VM, pass the USB bus through (e.g. docker --device "
                    "/dev/bus/usb); otherwise plug the camera in")
        raise SourceUnavailable(f"no PS3 Eye found: {found}. {hint}; `eyefuse sources` shows what can be opened.")

    def _take_interface(self, dev: usb.core.Device) -> None:
        self._where = _where(dev)
        self._detached = False
        try:
            held = _kernel_driver_active(dev)
        except usb.core.USBError as exc:
            raise self._open_error(exc, "opening it") from exc
        if held:
            try:
                dev.detach_kernel_driver(VIDEO_INTERFACE)
            except usb.core.USBError as exc:
                raise SourceUnavailable(
                    f"the kernel's gspca_ov534 driver holds the PS3 Eye on {self._where} and could not be "
                    f"detached ({exc}): {_KERNEL_DRIVER_HINT}"
                ) from exc
            self._detached = True
        try:
            try:
                dev.get_active_configuration()
            except usb.core.USBError as exc:
                if usb_error_kind(exc) != "other":
                    raise
                dev.set_configuration()  # the device is unconfigured: take its only configuration
            usb.util.claim_interface(dev, VIDEO_INTERFACE)
        except usb.core.USBError as exc:
            raise self._open_error(exc, "claiming its video interface") from exc

    def _bulk_in_endpoint(self, dev: usb.core.Device):
        cfg = dev.get_active_configuration()
        intf = usb.util.find_descriptor(cfg, bInterfaceNumber=VIDEO_INTERFACE, bAlternateSetting=0)
        ep = None if intf is None else usb.util.find_descriptor(
            intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
            and usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK)
        if ep is None:
            raise SourceInvalid(
                f"the USB device {VENDOR_ID:04x}:{PRODUCT_ID:04x} on {self._where} has no bulk IN endpoint on "
                f"interface {VIDEO_INTERFACE}, so it is not a PS3 Eye as this driver knows it"
            )
        try:
            dev.clear_halt(ep.bEndpointAddress)  # a previous program may have left it stalled
        except usb.core.USBError:
            pass
        return ep

    def _open_error(self, exc: usb.core.USBError, doing: str) -> SourceUnavailable:
        kind = usb_error_kind(exc)
        if kind == "permission":
            return SourceUnavailable(f"no permission to open the PS3 Eye on {self._where} ({exc}). {_UDEV_HINT}")
        if kind == "busy":
            return SourceUnavailable(
                f"the PS3 Eye on {self._where} is busy ({exc}): another program or driver has it; close "
                f"other camera programs, or {_KERNEL_DRIVER_HINT}"
            )
        if kind == "gone":
            return SourceUnavailable(f"the PS3 Eye on {self._where} went away while {doing} ({exc}); plug it back in")
        return SourceUnavailable(f"could not open the PS3 Eye on {self._where} while {doing}: {exc}")

    def _run_usb(self, fn, doing: str):
        """Run register traffic, turning USB errors into errors that say what to do."""
        try:
            return fn()
        except usb.core.USBError as exc:
            if usb_error_kind(exc) == "gone":
                raise DeviceDisconnected(f"the PS3 Eye on {self._where} went away while {doing} ({exc})") from exc
            raise self._open_error(exc, doing) from exc

    def _init_and_start(self) -> None:
        self._bridge_write(0xE7, 0x3A)
        self._bridge_write(REG_STREAM, 0x08)  # hold the video path in reset
        self.clock.sleep(0.1)  # the kernel driver gives the bridge this long
        self._bridge_write(REG_SCCB_ADDRESS, OV772X_SCCB_ADDRESS)
        self._sccb_write(SENSOR_COM7, 0x80)  # reset every sensor register
        self.clock.sleep(0.01)
        self.sensor_id = self._read_sensor_id()
        for reg, value in _BRIDGE_INIT:
            self._bridge_write(reg, value)
        for reg, value in _SENSOR_INIT:
            self._sccb_write(reg, value)
        for reg, value in bridge_start_sequence(self.mode):
            self._bridge_write(reg, value)
        for reg, value in sensor_start_sequence(self.mode):
            self._sccb_write(reg, value)
        self._sccb_write(SENSOR_CLKRC, self.rate.clkrc)
        self._sccb_write(SENSOR_COM4, self.rate.com4)
        self._bridge_write(REG_CAMERA_CLOCK, self.rate.camera_clock)
        self._write_controls(self._controls)
        self._set_led_on(self._dev, True)
        self._bridge_write(REG_STREAM, 0x00)  # go

    def _read_sensor_id(self) -> int:
        # As the kernel driver does, read each ID register twice and keep the second answer.
        self._sccb_read(SENSOR_PID)
        pid = self._sccb_read(SENSOR_PID)
        self._sccb_read(SENSOR_VER)
        sensor_id = pid << 8 | self._sccb_read(SENSOR_VER)
        if pid == 0x77:
            return sensor_id
        if sensor_id in (0x0000, 0xFFFF):
            raise SourceUnavailable(
                f"the PS3 Eye's sensor on {self._where} gave no ID (read 0x{sensor_id:04x}); unplug and replug it")
        if sensor_id & 0xFFF0 == 0x7670:
            raise SourceInvalid(
                f"the OV534 camera on {self._where} has an OV767x sensor (ID 0x{sensor_id:04x}), which sends "
                f"JPEG; this driver handles the PS3 Eye's OV772x only")
        raise SourceInvalid(f"the OV534 camera on {self._where} has an unknown sensor (ID 0x{sensor_id:04x}); "
                            f"this driver handles the PS3 Eye's OV772x only")

    def _release(self, dev: usb.core.Device) -> None:
        try:
            usb.util.release_interface(dev, VIDEO_INTERFACE)
        except (usb.core.USBError, ValueError):
            pass  # a device that is gone cannot be released; libusb forgets it anyway
        if self._detached:
            try:
                dev.attach_kernel_driver(VIDEO_INTERFACE)  # give /dev/video back to the system
            except (usb.core.USBError, NotImplementedError):
                pass
            self._detached = False
        _dispose(dev)

    # -- registers -------------------------------------------------------------------------------
    def _bridge_write(self, reg: int, value: int) -> None:
        self._bridge_write_on(self._dev, reg, value)

    @staticmethod
    def _bridge_write_on(dev: usb.core.Device, reg: int, value: int) -> None:
        dev.ctrl_transfer(_CTRL_OUT, _REQUEST, 0, reg, bytes((value,)), _CTRL_TIMEOUT_MS)

    @staticmethod
    def _bridge_read_on(dev: usb.core.Device, reg: int) -> int:
        data = dev.ctrl_transfer(_CTRL_IN, _REQUEST, 0, reg, 1, _CTRL_TIMEOUT_MS)
        if len(data) != 1:
            raise usb.core.USBError(f"bridge register 0x{reg:02x} read returned {len(data)} bytes, not 1")
        return data[0]

    def _bridge_read(self, reg: int) -> int:
        return self._bridge_read_on(self._dev, reg)

    def _sccb_write(self, reg: int, value: int) -> None:
        self._bridge_write(REG_SCCB_SUBADDR, reg)
        self._bridge_write(REG_SCCB_WRITE, value)
        self._bridge_write(REG_SCCB_OPERATION, SCCB_OP_WRITE_3)
        self._sccb_wait(f"writing sensor register 0x{reg:02x}")

    def _sccb_read(self, reg: int) -> int:
        self._bridge_write(REG_SCCB_SUBADDR, reg)
        self._bridge_write(REG_SCCB_OPERATION, SCCB_OP_WRITE_2)
        self._sccb_wait(f"addressing sensor register 0x{reg:02x}")
        self._bridge_write(REG_SCCB_OPERATION, SCCB_OP_READ_2)
        self._sccb_wait(f"reading sensor register 0x{reg:02x}")
        return self._bridge_read(REG_SCCB_READ)

    def _sccb_wait(self, doing: str) -> None:
        status = None
        for attempt in range(6):
            status = self._bridge_read(REG_SCCB_STATUS)
            if status == SCCB_OK:
                return
            if status == SCCB_NACK:
                break
            self.clock.sleep(0.001 * 2 ** attempt)  # busy: the kernel driver waits 10-20 ms between polls
        raise SourceUnavailable(
            f"the PS3 Eye's sensor did not answer while {doing} (SCCB status 0x{status:02x}); "
            f"unplug and replug the camera"
        )

    def _set_led_on(self, dev: usb.core.Device, on: bool) -> None:
        # Bit 7 of 0x21 makes the LED pin an output, bit 7 of 0x23 drives it.
        self._bridge_write_on(dev, REG_LED_DIRECTION, self._bridge_read_on(dev, REG_LED_DIRECTION) | 0x80)
        self._bridge_write_on(dev, REG_LED_OUTPUT, _with_bits(self._bridge_read_on(dev, REG_LED_OUTPUT), 0x80, on))
        if not on:
            self._bridge_write_on(dev, REG_LED_DIRECTION, self._bridge_read_on(dev, REG_LED_DIRECTION) & ~0x80)

    # -- streaming -------------------------------------------------------------------------------
    def _read_transfer(self) -> None:
        """One bulk read into the transfer buffer; DeviceDisconnected when the camera is gone or silent."""
        while True:
            try:
                n = self._ep.read(self._buf, self.config.transfer_timeout_ms)
            except usb.core.USBError as exc:
                kind = usb_error_kind(exc)
                if kind == "gone":
                    raise DeviceDisconnected(f"the PS3 Eye on {self._where} went away mid-stream ({exc})") from exc
                if kind == "timeout":
                    self._counts["timeouts"] += 1
                else:  # e.g. an overflow: the data in flight is lost, so is the frame it belonged to
                    self._counts["transfer_errors"] += 1
                    self._assembler.poison(f"a bulk read failed ({exc})")
                silent = self.clock.monotonic() - self._last_data
                if silent > self.config.stall_timeout_s:
                    raise DeviceDisconnected(
                        f"no video from the PS3 Eye on {self._where} for {silent:.1f} s (last error: {exc}); "
                        f"it may have hung or lost power"
                    ) from exc
                continue
            if n:
                self._transfer_t_ns = self.clock.monotonic_ns()
                self._last_data = self.clock.monotonic()
                self._counts["transfers"] += 1
                self._counts["bytes"] += n
                self._pending = (0, n)
                return

    def _take(self, events: list[Completed | Dropped]) -> Frame | None:
        """Count what the assembler reported; the completed frame, else FrameDecodeError for a drop."""
        completed = dropped = None
        for ev in events:
            if isinstance(ev, Completed):
                completed = ev
            else:
                self._counts[f"dropped_{ev.reason}"] += 1
                dropped = ev
        if completed is not None:
            frame = Frame(completed.pixels, self._seq, completed.t_first_ns, self._name, PixelFormat.YUYV)
            self._seq += 1
            self._counts["frames"] += 1
            return frame
        raise FrameDecodeError(f"PS3 Eye frame dropped ({dropped.reason}): {dropped.detail}")


def _with_bits(value: int, bits: int, on: bool) -> int:
    return (value | bits) if on else (value & ~bits & 0xFF)


def _kernel_driver_active(dev: usb.core.Device) -> bool:
    try:
        return bool(dev.is_kernel_driver_active(VIDEO_INTERFACE))
    except NotImplementedError:  # macOS and Windows have no kernel driver to detach
        return False


def _where(dev: usb.core.Device) -> str:
    return f"USB bus {dev.bus} address {dev.address}"


def _count_usb_devices(backend) -> int:
    try:
        return sum(1 for _ in usb.core.find(find_all=True, backend=backend))
    except (usb.core.USBError, usb.core.NoBackendError):
        return 0


def _dispose(dev: usb.core.Device) -> None:
    try:
        usb.util.dispose_resources(dev)
    except usb.core.USBError:
        pass  # closing a handle to a device that is gone

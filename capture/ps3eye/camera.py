"""The PS3 Eye as a Source: configuration, controls, counters, and the stream from bulk reads to frames.

Video comes on the bulk IN endpoint of interface 0 as payloads of 2048 bytes (payload.py has their
header). Pixels are YUYV, or an 8-bit Bayer mosaic in Bayer mode; the last payload of a frame is
shorter and flagged end-of-frame.

read() returns within PS3EyeConfig.frame_timeout_s (each bulk read's timeout is cut to what is left)
whatever the camera does: a whole frame; FrameDecodeError for a frame that came out short, over-long or with a rejected
payload, or when no whole frame came in time; DeviceDisconnected when the camera is gone, or sent
no video (or no whole frame) for stall_timeout_s. Everything thrown away is counted (`stats()`). A
stalled endpoint is cleared and the stream goes on; only if that fails is it a disconnect.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import usb.core
import usb.util

from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import DeviceDisconnected, FrameDecodeError, SourceUnavailable
from capture.frame import Frame, PixelFormat, RawMeta
from capture.ps3eye.payload import Completed, Dropped, Event, FrameAssembler, Rejected, parse_payload_header
from capture.ps3eye.registers import (
    BRIDGE_INIT,
    COM8_AEC,
    COM8_AGC,
    COM8_AWB,
    MODES,
    OV772X_SCCB_ADDRESS,
    PAYLOAD_SIZE,
    REG_CAMERA_CLOCK,
    REG_SCCB_ADDRESS,
    REG_STREAM,
    SENSOR_AEC,
    SENSOR_AECH,
    SENSOR_AWB_CTRL0,
    SENSOR_CLKRC,
    SENSOR_COM3,
    SENSOR_COM4,
    SENSOR_COM7,
    SENSOR_COM8,
    SENSOR_DSP_CTRL1,
    SENSOR_GAIN,
    SENSOR_INIT,
    SENSOR_PID,
    SENSOR_VER,
    bridge_start_sequence,
    cfa_pattern,
    choose_rate,
    exposure_registers,
    exposure_seconds,
    flip_bits,
    gain_register,
    identify_sensor,
    output_format,
    sensor_mode,
    sensor_start_sequence,
)
from capture.ps3eye.usb_link import (
    NO_LIBUSB_HINT,
    PRODUCT_ID,
    UDEV_HINT,
    VENDOR_ID,
    Bridge,
    bulk_in_endpoint,
    claim_video_interface,
    count_usb_devices,
    dispose,
    find_camera,
    kernel_driver_active,
    open_error,
    release,
    usb_error_kind,
    where,
    with_bits,
)
from capture.source import Source, SourceInfo

TRANSFER_SIZE = 8 * PAYLOAD_SIZE  # one bulk read; the kernel driver's URBs are this size too

# Processed Bayer has been through the sensor's black-level calibration, which subtracts what its
# optical-black rows read, so 0 is black. Not yet checked against a dark frame from a real camera.
BAYER_BLACK_LEVEL = 0.0
BAYER_WHITE_LEVEL = 255


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
    """What to open: mode, pixel format, which camera, start-up controls, and how long to wait.

    pixel_format: YUYV (the camera's picture), or BAYER16: the sensor's 8-bit GRBG mosaic as uint16
        samples 0..255 (not scaled; RawMeta.white_level is 255), for the burst path.
    frame_timeout_s: read() gives up on a frame after this long (the capture worker's stop() waits 1 s).
    stall_timeout_s: no video, or no whole frame, for this long means the camera is gone (reopen it).
    backend: a pyusb backend object (tests pass an emulator); None lets pyusb find libusb.
    """

    width: int = 640
    height: int = 480
    fps: float = 60.0  # the fastest supported rate not above this is used
    index: int = 0  # which PS3 Eye, when several are plugged in
    pixel_format: PixelFormat = PixelFormat.YUYV
    controls: PS3EyeControls = PS3EyeControls()
    transfer_timeout_ms: int = 100  # one bulk read
    frame_timeout_s: float = 0.5
    stall_timeout_s: float = 1.0
    backend: object | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.transfer_timeout_ms < 1:
            raise ValueError(f"transfer_timeout_ms must be >= 1 (0 would wait forever), got {self.transfer_timeout_ms}")
        if not (self.frame_timeout_s > 0 and self.stall_timeout_s > 0):
            raise ValueError(f"frame_timeout_s and stall_timeout_s must be positive, got {self.frame_timeout_s} "
                             f"and {self.stall_timeout_s}")


@dataclass(frozen=True)
class PS3EyeStats:
    """Counters since the camera object was made (they survive reconnects). Every payload, frame and
    bulk read that did not end up in a delivered frame is in one of them."""

    frames: int = 0  # frames delivered
    dropped_short: int = 0  # fewer bytes than the mode (a payload lost, or no end-of-frame)
    dropped_long: int = 0  # more bytes than the mode
    dropped_corrupt: int = 0  # a payload of the frame was rejected, or a bulk read failed inside it
    rejected_bad_header: int = 0  # payloads whose header length byte is not 12, or shorter than that
    rejected_error: int = 0  # payloads the camera flagged as in error
    rejected_no_pts: int = 0  # payloads without a presentation time stamp
    rejected_stray: int = 0  # payloads outside any frame (after its end, before the next one)
    transfers: int = 0  # bulk reads that returned data
    bytes: int = 0
    empty_transfers: int = 0  # bulk reads that returned zero bytes
    timeouts: int = 0  # bulk reads that returned nothing in time
    stalls: int = 0  # bulk reads that found the endpoint halted (cleared, and the stream went on)
    transfer_errors: int = 0  # other failed bulk reads (e.g. overflow)
    frame_timeouts: int = 0  # reads that gave up: no whole frame within frame_timeout_s

    @property
    def dropped(self) -> int:
        return self.dropped_short + self.dropped_long + self.dropped_corrupt

    @property
    def rejected(self) -> int:
        return self.rejected_bad_header + self.rejected_error + self.rejected_no_pts + self.rejected_stray


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
        return PS3EyeProbe("unavailable (no libusb)", NO_LIBUSB_HINT)
    if not devices:
        seen = count_usb_devices(backend)
        return PS3EyeProbe("not found", f"no USB device {VENDOR_ID:04x}:{PRODUCT_ID:04x} among the {seen} pyusb sees")
    dev = devices[0]
    at = where(dev) + (f" (and {len(devices) - 1} more)" if len(devices) > 1 else "")
    if not try_open:
        return PS3EyeProbe("found", f"PS3 Eye on {at}")
    try:
        held = kernel_driver_active(dev)
    except usb.core.USBError as exc:
        if usb_error_kind(exc) == "permission":
            return PS3EyeProbe("no permission", f"PS3 Eye on {at} cannot be opened: {UDEV_HINT}")
        return PS3EyeProbe("found", f"PS3 Eye on {at} cannot be opened: {exc}")
    finally:
        dispose(dev)
    vga, qvga = MODES[(640, 480)].rates[0].fps, MODES[(320, 240)].rates[0].fps
    modes = f"640x480 up to {vga} fps, 320x240 up to {qvga} fps, YUYV or Bayer"
    if held:
        return PS3EyeProbe("available", f"PS3 Eye on {at}, {modes} (the kernel's gspca_ov534 has it; "
                                        f"opening detaches it)")
    return PS3EyeProbe("available", f"PS3 Eye on {at}, {modes}")


# -- the camera -------------------------------------------------------------------------------------
class PS3EyeCamera(Source):
    """A PS3 Eye through pyusb. Frames are YUYV (H, W, 2) uint8 (`to_bgr8` converts them), or in
    Bayer mode (H, W) uint16 mosaics 0..255 with RawMeta.

    Not thread-safe for reading (one CaptureWorker thread owns it), but the set_* controls may be
    called from another thread while it streams. clock: what every deadline (start-up delays, read
    timeouts, silence) and capture times are read from; tests pass a FakeClock, with the emulator on
    the same one.
    """

    def __init__(self, config: PS3EyeConfig = PS3EyeConfig(), backend=None, clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.clock = clock
        self.mode = sensor_mode(config.width, config.height)
        self.format = output_format(config.pixel_format)
        self.rate = choose_rate(self.mode, config.fps)
        self._backend = backend if backend is not None else config.backend
        self._controls = config.controls
        self._reg_lock = threading.Lock()  # one bridge/SCCB transaction at a time
        self._dev: usb.core.Device | None = None
        self._bridge: Bridge | None = None
        self._ep = None
        self._detached = False
        self._where = ""
        self.sensor_id: int | None = None
        self.sensor_name: str | None = None
        self._seq = 0
        self._counts = dict(dataclasses.asdict(PS3EyeStats()))
        self._buf = usb.util.create_buffer(TRANSFER_SIZE)
        self._view = memoryview(self._buf).cast("B")
        self._pending = (0, 0)  # unparsed part of the last transfer: (offset, end)
        self._transfer_t_ns = 0
        self._last_data = self._last_frame = 0.0
        self._assembler = self._new_assembler()
        self._raw_meta: tuple[PS3EyeControls, RawMeta] | None = None
        self._name = "ps3eye" if config.index == 0 else f"ps3eye{config.index}"

    # -- Source ----------------------------------------------------------------------------------
    def open(self) -> None:
        if self._dev is not None:
            return
        dev = find_camera(self._backend, self.config.index)
        self._where = where(dev)
        self._detached = False
        try:
            self._detached = claim_video_interface(dev)
            self._ep = bulk_in_endpoint(dev)
            self._dev, self._bridge = dev, Bridge(dev, self.clock)
            with self._reg_lock:
                self._run_usb(self._init_and_start, "starting the camera")
        except BaseException:
            self._dev = self._bridge = None
            release(dev, self._detached)
            raise
        self._assembler = self._new_assembler()
        self._pending = (0, 0)
        self._last_data = self._last_frame = self.clock.monotonic()

    def read(self) -> Frame:
        if self._dev is None:
            raise SourceUnavailable("the PS3 Eye is not open: call open() first")
        before = dict(self._counts)
        deadline = self.clock.monotonic() + self.config.frame_timeout_s
        while True:
            off, end = self._pending
            if off >= end:
                if not self._read_transfer(deadline):
                    raise self._no_frame(before)
                off, end = self._pending
            stop = min(off + PAYLOAD_SIZE, end)
            self._pending = (stop, end)
            payload = self._view[off:stop]
            events = self._assembler.push(parse_payload_header(payload), payload, self._transfer_t_ns)
            if events:
                frame = self._take(events)
                if frame is not None:
                    return frame

    def close(self) -> None:
        with self._reg_lock:  # a control being set from another thread finishes first
            dev, bridge, self._dev, self._bridge = self._dev, self._bridge, None, None
            if dev is None:
                return
            try:
                bridge.write(REG_STREAM, 0x09)
                bridge.set_led(False)
            except usb.core.USBError:
                pass  # the camera may already be gone; nothing to stop then
        release(dev, self._detached)
        self._detached = False

    def describe(self) -> SourceInfo:
        fmt = "Bayer GRBG 8-bit" if self.format.pixel_format is PixelFormat.BAYER16 else "YUYV"
        if self._dev is not None:
            detail = f"OV534 bridge, {self.sensor_name} sensor (ID 0x{self.sensor_id:04x}), {fmt}, {self._where}"
        else:
            detail = f"{fmt}, not open"
        if self.rate.fps != self.config.fps:
            detail += f"; {self.config.fps:g} fps asked, {self.rate.fps} fps is the nearest rate at or below"
        return SourceInfo(self._name, "ps3eye", self.mode.width, self.mode.height, float(self.rate.fps),
                          self.format.pixel_format, detail)

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
        """Mirror left-right (hflip) and/or upside down (vflip); None keeps the current setting.
        In Bayer mode this changes the frames' CFA pattern too (RawMeta says which)."""
        self._update(hflip=self._controls.hflip if hflip is None else bool(hflip),
                     vflip=self._controls.vflip if vflip is None else bool(vflip))

    def _update(self, **changes) -> None:
        controls = dataclasses.replace(self._controls, **changes)  # validates ranges
        with self._reg_lock:
            self._controls = controls
            if self._dev is not None:  # otherwise they are written at open()
                self._run_usb(lambda: self._write_controls(controls), "setting a control")

    def _write_controls(self, c: PS3EyeControls) -> None:
        b = self._bridge
        com8 = b.sccb_read(SENSOR_COM8)
        com8 = with_bits(com8, COM8_AGC, c.auto_gain)
        com8 = with_bits(com8, COM8_AWB, c.auto_white_balance)
        com8 = with_bits(com8, COM8_AEC, c.auto_exposure)
        b.sccb_write(SENSOR_COM8, com8)
        b.sccb_write(SENSOR_DSP_CTRL1, with_bits(b.sccb_read(SENSOR_DSP_CTRL1), 0x03, c.auto_gain))
        b.sccb_write(SENSOR_AWB_CTRL0, with_bits(b.sccb_read(SENSOR_AWB_CTRL0), 0xC0, c.auto_white_balance))
        b.sccb_write(SENSOR_GAIN, gain_register(c.gain))
        aech, aec = exposure_registers(c.exposure)
        b.sccb_write(SENSOR_AECH, aech)
        b.sccb_write(SENSOR_AEC, aec)
        b.sccb_write(SENSOR_COM3, flip_bits(b.sccb_read(SENSOR_COM3), c.hflip, c.vflip))

    # -- opening ---------------------------------------------------------------------------------
    def _run_usb(self, fn, doing: str):
        """Run register traffic, turning USB errors into errors that say what to do."""
        try:
            return fn()
        except usb.core.USBError as exc:
            if usb_error_kind(exc) == "gone":
                raise DeviceDisconnected(f"the PS3 Eye on {self._where} went away while {doing} ({exc})") from exc
            raise open_error(exc, self._where, doing) from exc

    def _init_and_start(self) -> None:
        b = self._bridge
        b.write(0xE7, 0x3A)
        b.write(REG_STREAM, 0x08)  # hold the video path in reset
        self.clock.sleep(0.1)  # the kernel driver gives the bridge this long
        b.write(REG_SCCB_ADDRESS, OV772X_SCCB_ADDRESS)
        b.sccb_write(SENSOR_COM7, 0x80)  # reset every sensor register
        self.clock.sleep(0.01)
        self._identify_sensor()
        for reg, value in BRIDGE_INIT:
            b.write(reg, value)
        for reg, value in SENSOR_INIT:
            b.sccb_write(reg, value)
        for reg, value in bridge_start_sequence(self.mode, self.format):
            b.write(reg, value)
        for reg, value in sensor_start_sequence(self.mode, self.format):
            b.sccb_write(reg, value)
        b.sccb_write(SENSOR_CLKRC, self.rate.clkrc)
        b.sccb_write(SENSOR_COM4, self.rate.com4)
        b.write(REG_CAMERA_CLOCK, self.rate.camera_clock)
        self._write_controls(self._controls)
        b.set_led(True)
        b.write(REG_STREAM, 0x00)  # go

    def _identify_sensor(self) -> None:
        # As the kernel driver does, read each ID register twice and keep the second answer.
        b = self._bridge
        b.sccb_read(SENSOR_PID)
        pid = b.sccb_read(SENSOR_PID)
        b.sccb_read(SENSOR_VER)
        ver = b.sccb_read(SENSOR_VER)
        self.sensor_name = identify_sensor(pid, ver, self._where)
        self.sensor_id = pid << 8 | ver

    # -- streaming -------------------------------------------------------------------------------
    def _new_assembler(self) -> FrameAssembler:
        m = self.mode
        shape = (m.height, m.width, 2) if self.format.pixel_format is PixelFormat.YUYV else (m.height, m.width)
        return FrameAssembler(shape)

    def _read_transfer(self, deadline: float) -> bool:
        """One bulk read with data into the transfer buffer; False when `deadline` came first.
        DeviceDisconnected when the camera is gone or has been silent for stall_timeout_s."""
        while True:
            now = self.clock.monotonic()
            if now >= deadline:
                return False
            timeout_ms = max(1, min(self.config.transfer_timeout_ms, math.ceil((deadline - now) * 1000)))
            try:
                n = self._ep.read(self._buf, timeout_ms)
            except usb.core.USBError as exc:
                kind = usb_error_kind(exc)
                if kind == "gone":
                    raise DeviceDisconnected(f"the PS3 Eye on {self._where} went away mid-stream ({exc})") from exc
                if kind == "timeout":
                    self._counts["timeouts"] += 1
                elif kind == "stall":
                    self._clear_stall(exc)
                else:  # e.g. an overflow: the data in flight is lost, so is the frame it belonged to
                    self._counts["transfer_errors"] += 1
                    self._assembler.poison(f"a bulk read failed ({exc})")
                self._check_silence(f"last error: {exc}")
                continue
            if n == 0:  # a zero-length packet: the device answered, with nothing
                self._counts["empty_transfers"] += 1
                self._check_silence("its bulk reads return zero bytes")
                continue
            self._transfer_t_ns = self.clock.monotonic_ns()
            self._last_data = self.clock.monotonic()
            self._counts["transfers"] += 1
            self._counts["bytes"] += n
            self._pending = (0, n)
            return True

    def _clear_stall(self, exc: usb.core.USBError) -> None:
        """The endpoint halted: what was in flight is lost (so is its frame); clearing the halt lets
        the stream go on without the reopen and sensor reset a disconnect costs."""
        self._counts["stalls"] += 1
        self._assembler.poison(f"the video endpoint stalled ({exc})")
        try:
            self._dev.clear_halt(self._ep.bEndpointAddress)
        except usb.core.USBError as clear_exc:
            raise DeviceDisconnected(
                f"the PS3 Eye on {self._where} stalled its video endpoint ({exc}) and clearing it failed "
                f"({clear_exc}); reopening it") from clear_exc

    def _check_silence(self, what: str) -> None:
        silent = self.clock.monotonic() - self._last_data
        if silent > self.config.stall_timeout_s:
            raise DeviceDisconnected(
                f"no video from the PS3 Eye on {self._where} for {silent:.1f} s ({what}); it may have hung or "
                f"lost power")

    def _no_frame(self, before: dict[str, int]) -> FrameDecodeError | DeviceDisconnected:
        """The error for a read that reached its deadline without a whole frame, saying what came."""
        self._counts["frame_timeouts"] += 1
        what = _describe_counts({k: self._counts[k] - before[k] for k in before})
        since = self.clock.monotonic() - self._last_frame
        if since >= self.config.stall_timeout_s:
            return DeviceDisconnected(
                f"no whole frame from the PS3 Eye on {self._where} for {since:.1f} s (in the last "
                f"{self.config.frame_timeout_s:g} s: {what}); reopening it")
        return FrameDecodeError(
            f"no whole frame from the PS3 Eye on {self._where} in {self.config.frame_timeout_s:g} s: {what}")

    def _take(self, events: list[Event]) -> Frame | None:
        """Count what the assembler reported; the completed frame, FrameDecodeError for a dropped one,
        None when the payload only added to a frame or was rejected."""
        completed = dropped = None
        for ev in events:
            if isinstance(ev, Completed):
                completed = ev
            elif isinstance(ev, Dropped):
                self._counts[f"dropped_{ev.reason}"] += 1
                dropped = ev
            else:
                self._counts[ev.counter] += 1
        if completed is not None:
            self._last_frame = self.clock.monotonic()
            self._counts["frames"] += 1
            self._seq += 1
            if self.format.pixel_format is PixelFormat.BAYER16:
                return Frame(completed.pixels.astype(np.uint16), self._seq - 1, completed.t_first_ns, self._name,
                             PixelFormat.BAYER16, raw=self._bayer_meta())
            return Frame(completed.pixels, self._seq - 1, completed.t_first_ns, self._name, PixelFormat.YUYV)
        if dropped is not None:
            raise FrameDecodeError(f"PS3 Eye frame dropped ({dropped.reason}): {dropped.detail}")
        return None

    def _bayer_meta(self) -> RawMeta:
        """RawMeta for the current controls. The noise profile is left out: the sensor is not
        characterised and its auto gain changes every frame, so the burst path measures the noise
        from the burst. White balance is left neutral: the AWB gains are not read back per frame.
        The exposure is known only when it is manual."""
        c = self._controls
        if self._raw_meta is None or self._raw_meta[0] is not c:
            exposure = None if c.auto_exposure else exposure_seconds(c.exposure, self.mode, self.rate.fps)
            meta = RawMeta(black_level=(BAYER_BLACK_LEVEL,) * 4, white_level=BAYER_WHITE_LEVEL,
                           cfa_pattern=cfa_pattern(c.hflip, c.vflip), exposure_time_s=exposure, bits_per_sample=8)
            self._raw_meta = (c, meta)
        return self._raw_meta[1]


_COUNT_WORDS = (
    ("transfers", "{} bulk reads brought data"),
    ("rejected_bad_header", "{} payloads rejected for a header length other than 12"),
    ("rejected_error", "{} payloads rejected for the camera's error flag"),
    ("rejected_no_pts", "{} payloads rejected for having no time stamp"),
    ("rejected_stray", "{} payloads outside any frame"),
    ("empty_transfers", "{} bulk reads returned zero bytes"),
    ("timeouts", "{} bulk reads timed out"),
    ("stalls", "the endpoint stalled {} times (cleared)"),
    ("transfer_errors", "{} bulk reads failed"),
)


def _describe_counts(delta: dict[str, int]) -> str:
    parts = [text.format(delta[key]) for key, text in _COUNT_WORDS if delta.get(key)]
    return ", ".join(parts) or "nothing came"

"""A PS3 Eye inside a pyusb backend, so the driver runs unchanged: `usb.core.find(..., backend=emu)`.

What it models:
- USB: the camera's descriptors (video interface 0 with bulk IN endpoint 0x81, audio interfaces 1-2),
  optional other devices on the bus, open/claim/release, kernel-driver attach and detach, and errors
  raised the way pyusb's libusb 1.0 backend raises them (USBError with libusb's code and errno).
- The OV534 bridge: 8-bit registers over vendor request 0x01, the indirect registers behind
  0x1c/0x1d (input format V_FMT, payload size, frame size, UVC headers on), the stream switch 0xe0,
  the LED bits.
- SCCB to the OV772x sensor through bridge registers 0xf1-0xf6: write, set read pointer, read, a
  status register that reports success (or busy for a few polls, or no acknowledge for a wrong bus
  address), a register reset through COM7 bit 7, and the ID registers (PID 0x77, VER as made).
- Video: once 0xe0 says stream, frames of the size the bridge and sensor were set to, in the format
  they were set to: YUYV (COM7 output YUV, DSP_Ctrl4 0, V_FMT 0x40) or an 8-bit Bayer mosaic (COM7
  output processed or raw Bayer, DSP_Ctrl4 RAW8, V_FMT 0x00). The bridge's frame size register
  (indirect 3-5, 4-byte words) is a limit: a frame ends at the sensor's frame end or at that many
  bytes, whichever comes first (the kernel's QVGA value is larger than a QVGA frame). Frames are cut
  into payloads of the programmed size with 12-byte UVC headers (frame id toggling per frame,
  end-of-frame on the last, PTS and SCR), and read with USB packet semantics (a short packet ends a
  read). The picture is a scikit-image photo shifted a little every frame, mirrored as COM3 says; the
  Bayer mosaic is that picture sampled through the colour filters, which sit on the silicon, so
  mirroring the readout changes the pattern (GRBG upright, i.e. with both COM3 bits set).
- Frame rate from the clock registers: fps = base * PLL(COM4) / (CLKRC + 1), base 15 or 25 fps for
  VGA by bridge clock 0xe5 = 4 or 2, and 2.5x that for QVGA. That arithmetic reproduces every row of
  the kernel's tables except the one it labels 137 fps (it gives 167), and the 75 fps VGA row.
  With `fast=True` frames come as fast as they are read.

Faults, per frame: drop_payload, corrupt_header, flag_error, trailing_payload, truncate_frame,
extend_frame. For the stream: set_headers (other header lengths and flags, the error flag on every
payload), zero_length_reads, halt_endpoint (bulk reads stall until clear_halt), stall (no video),
unplug/replug. At open: deny_permission, fail_detach, a sensor of another version (sensor_id).
Anything the driver does that a real camera would not like is recorded in `problems`.
"""
from __future__ import annotations

import array
import collections
import errno
import struct
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np
import usb.backend
import usb.core

from capture.clock import SYSTEM_CLOCK, Clock
from capture.convert import bgr_to_yuyv

VENDOR_ID, PRODUCT_ID = 0x1415, 0x2000
BULK_EP = 0x81
PACKET = 512  # high-speed bulk packet size

# libusb 1.0 error codes, with the errno and text pyusb's libusb1 backend attaches to them.
_ERRORS = {
    "io": (-1, errno.EIO, "Input/output error"),
    "invalid": (-2, errno.EINVAL, "Invalid parameter"),
    "access": (-3, errno.EACCES, "Access denied (insufficient permissions)"),
    "no_device": (-4, errno.ENODEV, "No such device (it may have been disconnected)"),
    "not_found": (-5, errno.ENOENT, "Entity not found"),
    "busy": (-6, errno.EBUSY, "Resource busy"),
    "timeout": (-7, errno.ETIMEDOUT, "Operation timed out"),
    "overflow": (-8, errno.EOVERFLOW, "Overflow"),
    "pipe": (-9, errno.EPIPE, "Pipe error"),
}


def usb_error(kind: str) -> usb.core.USBError:
    code, err, text = _ERRORS[kind]
    cls = usb.core.USBTimeoutError if kind == "timeout" else usb.core.USBError
    return cls(text, code, err)


def _desc(**fields) -> SimpleNamespace:
    return SimpleNamespace(extra_descriptors=[], **fields)


def _interface(number, alt, cls, subclass, endpoints) -> tuple[SimpleNamespace, list[SimpleNamespace]]:
    return (_desc(bLength=9, bDescriptorType=4, bInterfaceNumber=number, bAlternateSetting=alt,
                  bNumEndpoints=len(endpoints), bInterfaceClass=cls, bInterfaceSubClass=subclass,
                  bInterfaceProtocol=0, iInterface=0), endpoints)


def _endpoint(address, attributes, max_packet, interval=0) -> SimpleNamespace:
    return _desc(bLength=7, bDescriptorType=5, bEndpointAddress=address, bmAttributes=attributes,
                 wMaxPacketSize=max_packet, bInterval=interval, bRefresh=0, bSynchAddress=0)


# Interfaces by logical index, each a list of alternate settings: video, audio control, audio stream.
_CAMERA_INTERFACES = [
    [_interface(0, 0, 0xFF, 0x00, [_endpoint(BULK_EP, 0x02, PACKET)])],
    [_interface(1, 0, 0x01, 0x01, [])],
    [_interface(2, 0, 0x01, 0x02, []), _interface(2, 1, 0x01, 0x02, [_endpoint(0x84, 0x05, 0x80, 4)])],
]
_HUB_INTERFACES = [[_interface(0, 0, 0x09, 0x00, [_endpoint(0x81, 0x03, 4, 12)])]]

_STRINGS = {1: "OmniVision Technologies, Inc.", 2: "USB Camera-B4.09.24.1"}

# Sensor power-on values for the registers that matter here (OV7720/OV7725 datasheet defaults).
_SENSOR_DEFAULTS = {0x00: 0x00, 0x08: 0x00, 0x0A: 0x77, 0x0B: 0x21, 0x0C: 0x10, 0x0D: 0x41, 0x10: 0x40,
                    0x11: 0x80, 0x12: 0x00, 0x13: 0xCF, 0x1C: 0x7F, 0x1D: 0xA2, 0x29: 0xA0, 0x2C: 0xF0,
                    0x63: 0xE0, 0x64: 0xFF}
_BRIDGE_DEFAULTS = {0xE0: 0x09, 0xE5: 0x02, 0xC0: 0x50, 0xC1: 0x3C, 0x21: 0x00, 0x23: 0x00, 0xF1: 0x00}
_INDIRECT_DEFAULTS = {0x00: 0x40, 0x01: 0x02, 0x02: 0x00}  # 2048-byte payloads, headers off until set
_SENSOR_READ_ONLY = {0x0A, 0x0B, 0x1C, 0x1D}
UVC_FID, UVC_EOF, UVC_PTS, UVC_SCR, UVC_ERR, UVC_EOH = 0x01, 0x02, 0x04, 0x08, 0x40, 0x80
MICROFRAME_S = 125e-6  # a high-speed bus interval: the least a bulk read that returns nothing takes
UPRIGHT_CFA = "GRBG"  # the Bayer order read out upright (PS3EYEDriver's Bayer mode)
_PLL = {0: 1, 1: 4, 2: 6, 3: 8}  # COM4 bits 7:6
_VGA_BASE_FPS = {0x04: 15.0, 0x02: 25.0}  # by bridge clock 0xe5, for PLL/(CLKRC+1) == 1
_MARGIN_X, _MARGIN_Y = 16, 8  # the scene is this much larger than the frame, for the per-frame shift


@dataclass
class _Fault:
    kind: str  # "drop", "corrupt", "error", "trailing", "truncate", "extend"
    index: int | None = None
    count: int = 0


@dataclass(frozen=True)
class HeaderStyle:
    """How the bridge writes every payload header: its length byte (and that many bytes), and which
    of PTS, SCR and the error flag it sets. The real camera: 12 bytes, PTS and SCR, no error."""

    length: int = 12
    pts: bool = True
    scr: bool = True
    error: bool = False


@dataclass(frozen=True)
class _FrameMeta:
    width: int
    height: int
    hflip: bool
    vflip: bool
    raw8: bool  # an 8-bit Bayer mosaic, not YUYV


class _Handle:
    def __init__(self, generation: int):
        self.generation = generation
        self.closed = False
        self.claimed: set[int] = set()


class PS3EyeEmulator(usb.backend.IBackend):
    """One emulated PS3 Eye (plus `other_devices` (vid, pid) on the bus) as a pyusb backend.

    fast: stream frames as fast as they are read, instead of at the programmed frame rate.
    kernel_driver: gspca_ov534 is bound to the video interface at plug-in (as on Linux).
    sccb_busy_polls: how many status polls report busy before each SCCB transaction completes.
    sensor_id: what the sensor's PID and VER registers hold (0x7721: an OV7725, as in the PS3 Eye).
    clock: what frame times and bulk read timeouts run on. With a FakeClock (the driver on the same one)
    a read that finds no video times out at once in logical time, and paced frames come when due.
    With fast=True, video takes no logical time at all, so a test of a deadline uses fast=False.
    """

    def __init__(self, *, fast: bool = True, scene: str = "astronaut", kernel_driver: bool = False,
                 other_devices: tuple[tuple[int, int], ...] = ((0x1D6B, 0x0002),), sccb_busy_polls: int = 0,
                 plugged: bool = True, sensor_id: int = 0x7721, clock: Clock = SYSTEM_CLOCK):
        self.fast = fast
        self._sensor_defaults = {**_SENSOR_DEFAULTS, 0x0A: sensor_id >> 8, 0x0B: sensor_id & 0xFF}
        self.clock = clock
        self.scene_name = scene
        self.kernel_driver_default = kernel_driver
        self.sccb_busy_polls = sccb_busy_polls
        self._cond = threading.Condition(threading.RLock())
        self._plugged = plugged
        self._generation = 1
        self._address = 5
        self._others = [SimpleNamespace(vid=v, pid=p, address=i + 1) for i, (v, p) in enumerate(other_devices)]
        self._deny = False
        self._detach_error: str | None = None
        self._stalled = False
        self._halted = False
        self._halt_in: int | None = None
        self._halt_clearable = True
        self._zero_length = False
        self._headers = HeaderStyle()
        self._scenes: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._faults: dict[int, list[_Fault]] = collections.defaultdict(list)
        self._meta: collections.OrderedDict[int, _FrameMeta] = collections.OrderedDict()
        self.problems: list[str] = []
        self.bridge_writes: list[tuple[int, int]] = []
        self.sensor_writes: list[tuple[int, int]] = []
        self.frames_started = 0  # frames begun since the emulator was made (never reset)
        self.frames_sent = 0  # frames whose last payload was read
        self.opens = 0
        self.halts_cleared = 0  # clear_halt calls that found the video endpoint halted
        self._power_on()

    # -- inspection ------------------------------------------------------------------------------
    def sensor_reg(self, reg: int) -> int:
        with self._cond:
            return self._sensor[reg]

    def bridge_reg(self, reg: int) -> int:
        with self._cond:
            return self._bridge.get(reg, 0)

    @property
    def kernel_driver_active(self) -> bool:
        return self._kernel_driver

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def led_on(self) -> bool:
        return bool(self.bridge_reg(0x21) & 0x80 and self.bridge_reg(0x23) & 0x80)

    @property
    def payload_size(self) -> int:
        return ((self._indirect.get(1, 0) << 8) | self._indirect.get(2, 0)) * 4

    @property
    def headers_on(self) -> bool:
        return self._indirect.get(0x0A) == 0x08 and self._indirect.get(0x0B) == 0x0E

    @property
    def frame_limit(self) -> int:
        """The bridge's frame size limit in bytes (indirect registers 3-5, in 4-byte words)."""
        with self._cond:
            ind = self._indirect
            return ((ind.get(3, 0) << 16) | (ind.get(4, 0) << 8) | ind.get(5, 0)) * 4

    @property
    def raw8(self) -> bool:
        """Whether the sensor is set to send an 8-bit Bayer mosaic (else YUYV)."""
        with self._cond:
            return self._sensor[0x12] & 0x03 in (0x01, 0x03)

    @property
    def mode(self) -> tuple[int, int]:
        """(width, height) the bridge sends, from its output size registers (units of 8 pixels)."""
        with self._cond:
            return self._bridge.get(0xC0, 0) * 8, self._bridge.get(0xC1, 0) * 8

    @property
    def frame_rate(self) -> float | None:
        """Frames per second the clock registers give, or None for a clock setting it does not know."""
        with self._cond:
            base = _VGA_BASE_FPS.get(self._bridge.get(0xE5))
            if base is None:
                return None
            if self._sensor[0x12] & 0x40:
                base *= 2.5  # QVGA reads a quarter of the pixels per frame in less than half the time
            return base * _PLL[self._sensor[0x0D] >> 6] / ((self._sensor[0x11] & 0x3F) + 1)

    @property
    def stream_first_frame(self) -> int:
        """Number (as in expected_yuyv) of the first frame of the current or last stream."""
        return self._stream_first

    def expected_yuyv(self, n: int) -> np.ndarray:
        """(H, W, 2) uint8: frame n exactly as it was sent in YUYV (or will be, with today's settings)."""
        m = self._meta.get(n) or self._settings()
        dx, dy = self._offsets(n, m.hflip, m.vflip)
        return self._scene(m.width, m.height, m.hflip, m.vflip)[1][dy:dy + m.height, dx:dx + m.width]

    def expected_bgr(self, n: int, hflip: bool | None = None, vflip: bool | None = None) -> np.ndarray:
        """(H, W, 3) uint8: the picture frame n was made from, before YUYV; flips can be overridden."""
        m = self._meta.get(n) or self._settings()
        hf, vf = m.hflip if hflip is None else hflip, m.vflip if vflip is None else vflip
        dx, dy = self._offsets(n, hf, vf)
        return self._scene(m.width, m.height, hf, vf)[0][dy:dy + m.height, dx:dx + m.width]

    def expected_bayer(self, n: int) -> np.ndarray:
        """(H, W) uint8: frame n as an 8-bit Bayer mosaic. The filters sit on the silicon: the upright
        picture is sampled through the upright pattern, then the readout mirrors the mosaic."""
        m = self._meta.get(n) or self._settings()
        mosaic = _mosaic(self.expected_bgr(n, hflip=False, vflip=False), UPRIGHT_CFA)
        return np.ascontiguousarray(_flip(mosaic, m.hflip, m.vflip))

    def expected_cfa(self, n: int) -> str:
        """The Bayer pattern (as RawMeta names it) of frame n's mosaic."""
        m = self._meta.get(n) or self._settings()
        labels = np.array(list(UPRIGHT_CFA)).reshape(2, 2)
        labels = np.tile(labels, (m.height // 2, m.width // 2))
        return "".join(_flip(labels, m.hflip, m.vflip)[:2, :2].ravel())

    def expected_frame(self, n: int) -> np.ndarray:
        """Frame n's pixels in the format it was sent in (YUYV, or the Bayer mosaic)."""
        m = self._meta.get(n) or self._settings()
        return self.expected_bayer(n) if m.raw8 else self.expected_yuyv(n)

    # -- faults ----------------------------------------------------------------------------------
    def drop_payload(self, frame: int | None = None, index: int = 100) -> int:
        """Lose payload `index` (negative counts from the end) of a frame (default: the next one)."""
        return self._add_fault(frame, _Fault("drop", index))

    def corrupt_header(self, frame: int | None = None, index: int = 100) -> int:
        """Garble the header length byte of one payload."""
        return self._add_fault(frame, _Fault("corrupt", index))

    def flag_error(self, frame: int | None = None, index: int = 100) -> int:
        """Set the error flag in the header of one payload."""
        return self._add_fault(frame, _Fault("error", index))

    def trailing_payload(self, frame: int | None = None) -> int:
        """Send one more data payload after a frame's end-of-frame one, with the same frame id and PTS."""
        return self._add_fault(frame, _Fault("trailing"))

    def truncate_frame(self, frame: int | None = None, keep: int = 150) -> int:
        """End a frame after `keep` payloads, the last one flagged end-of-frame (a short frame)."""
        return self._add_fault(frame, _Fault("truncate", count=keep))

    def extend_frame(self, frame: int | None = None, extra: int = 2) -> int:
        """Send `extra` more data payloads before the end-of-frame one (an over-long frame)."""
        return self._add_fault(frame, _Fault("extend", count=extra))

    def set_headers(self, style: HeaderStyle = HeaderStyle()) -> None:
        """Write every payload header from the next frame on this way (HeaderStyle() is the real camera's)."""
        with self._cond:
            self._headers = style

    def zero_length_reads(self, on: bool = True) -> None:
        """Every bulk read returns zero bytes (a zero-length packet each bus interval) while on."""
        with self._cond:
            self._zero_length = on
            self._cond.notify_all()

    def halt_endpoint(self, after_payloads: int = 0, clearable: bool = True) -> None:
        """The video endpoint halts (stalls) once `after_payloads` more payloads have been sent: bulk
        reads fail with a pipe error until the host clears the halt, the read that hits it loses what
        it had (as libusb does), and so does the rest of the frame being sent. clearable=False: the
        clear-halt request fails too (until the camera is powered again)."""
        with self._cond:
            self._halt_clearable = clearable
            self._halt_in = after_payloads
            if not after_payloads:
                self._halt_now()
            self._cond.notify_all()

    def _halt_now(self) -> None:
        self._halted, self._halt_in = True, None
        self._frame_payloads = None

    def stall(self, stalled: bool = True) -> None:
        """The bridge stops (or resumes) sending video while still claiming to stream."""
        with self._cond:
            self._stalled = stalled
            self._cond.notify_all()

    def unplug(self) -> None:
        """Yank the cable: every handle fails with ENODEV and the camera no longer enumerates."""
        with self._cond:
            self._plugged = False
            self._streaming = False
            self._cond.notify_all()

    def replug(self) -> None:
        """Plug it back in: a new device (new address), powered on afresh."""
        with self._cond:
            self._plugged = True
            self._generation += 1
            self._address += 1
            self._power_on()
            self._cond.notify_all()

    def deny_permission(self, deny: bool = True) -> None:
        """Opening fails with LIBUSB_ERROR_ACCESS, as without a udev rule."""
        self._deny = deny

    def fail_detach(self, kind: str | None = "busy") -> None:
        """detach_kernel_driver fails with this libusb error (None: it works)."""
        self._detach_error = kind

    # -- pyusb backend: enumeration and descriptors ----------------------------------------------
    def enumerate_devices(self):
        with self._cond:
            devices = list(self._others)
            if self._plugged:
                devices.append(SimpleNamespace(camera=True, generation=self._generation, address=self._address))
        return iter(devices)

    def get_parent(self, dev):
        return None

    def get_device_descriptor(self, dev):
        camera = getattr(dev, "camera", False)
        return _desc(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200,
            bDeviceClass=0xEF if camera else 0x09, bDeviceSubClass=0x02 if camera else 0,
            bDeviceProtocol=0x01 if camera else 0, bMaxPacketSize0=64,
            idVendor=VENDOR_ID if camera else dev.vid, idProduct=PRODUCT_ID if camera else dev.pid,
            bcdDevice=0x0100, iManufacturer=1 if camera else 0, iProduct=2 if camera else 0, iSerialNumber=0,
            bNumConfigurations=1, address=dev.address, bus=1, port_number=1, port_numbers=(1,), speed=3,
        )

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        interfaces = _CAMERA_INTERFACES if getattr(dev, "camera", False) else _HUB_INTERFACES
        return _desc(bLength=9, bDescriptorType=2, wTotalLength=0x0120, bNumInterfaces=len(interfaces),
                     bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=250)

    def get_interface_descriptor(self, dev, intf, alt, config):
        self.get_configuration_descriptor(dev, config)
        interfaces = _CAMERA_INTERFACES if getattr(dev, "camera", False) else _HUB_INTERFACES
        if intf >= len(interfaces) or alt >= len(interfaces[intf]):
            raise IndexError(f"Invalid interface {intf} alternate {alt}")
        return interfaces[intf][alt][0]

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        self.get_interface_descriptor(dev, intf, alt, config)
        interfaces = _CAMERA_INTERFACES if getattr(dev, "camera", False) else _HUB_INTERFACES
        endpoints = interfaces[intf][alt][1]
        if ep >= len(endpoints):
            raise IndexError(f"Invalid endpoint index {ep}")
        return endpoints[ep]

    # -- pyusb backend: handles ------------------------------------------------------------------
    def open_device(self, dev):
        if not getattr(dev, "camera", False):
            raise usb_error("access")  # we do not emulate the other devices
        with self._cond:
            if not self._plugged or dev.generation != self._generation:
                raise usb_error("no_device")
            if self._deny:
                raise usb_error("access")
            self.opens += 1
            return _Handle(self._generation)

    def close_device(self, dev_handle):
        dev_handle.closed = True  # libusb_close never fails, even for a device that is gone

    def set_configuration(self, dev_handle, config_value):
        with self._cond:
            self._check(dev_handle)
            if self._kernel_driver:
                raise usb_error("busy")
            if config_value not in (0, 1):
                raise usb_error("not_found")
            self._configuration = config_value

    def get_configuration(self, dev_handle):
        with self._cond:
            self._check(dev_handle)
            return self._configuration

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        with self._cond:
            self._check(dev_handle)
            if (intf, altsetting) not in ((0, 0), (1, 0), (2, 0), (2, 1)):
                raise usb_error("not_found")

    def claim_interface(self, dev_handle, intf):
        with self._cond:
            self._check(dev_handle)
            if intf not in (0, 1, 2):
                raise usb_error("not_found")
            if intf == 0 and self._kernel_driver:
                raise usb_error("busy")
            dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle, intf):
        with self._cond:
            self._check(dev_handle)
            dev_handle.claimed.discard(intf)

    def clear_halt(self, dev_handle, ep):
        with self._cond:
            self._check(dev_handle)
            if ep == BULK_EP and self._halted:
                if not self._halt_clearable:
                    raise usb_error("pipe")
                self._halted = False
                self.halts_cleared += 1

    def reset_device(self, dev_handle):
        with self._cond:
            self._check(dev_handle)
            self._power_on()

    def is_kernel_driver_active(self, dev_handle, intf):
        with self._cond:
            self._check(dev_handle)
            return intf == 0 and self._kernel_driver

    def detach_kernel_driver(self, dev_handle, intf):
        with self._cond:
            self._check(dev_handle)
            if intf != 0 or not self._kernel_driver:
                raise usb_error("not_found")
            if self._detach_error:
                raise usb_error(self._detach_error)
            self._kernel_driver = False

    def attach_kernel_driver(self, dev_handle, intf):
        with self._cond:
            self._check(dev_handle)
            if intf != 0 or self._kernel_driver:
                raise usb_error("busy")
            if 0 in dev_handle.claimed:
                raise usb_error("busy")
            self._kernel_driver = True

    # -- pyusb backend: transfers ----------------------------------------------------------------
    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        with self._cond:
            self._check(dev_handle)
            device_to_host = bool(bmRequestType & 0x80)
            if bmRequestType & 0x7F == 0x40 and bRequest == 0x01:  # vendor, to the device: a bridge register
                if len(data) != 1 or wValue != 0:
                    self.problems.append(f"bridge request with wValue {wValue} and {len(data)} data bytes")
                    raise usb_error("pipe")
                if device_to_host:
                    data[0] = self._bridge_read(wIndex)
                else:
                    self._bridge_write(wIndex, data[0])
                return 1
            if bmRequestType == 0x80 and bRequest == 0x06 and wValue >> 8 == 3:  # GET_DESCRIPTOR (string)
                return self._string_descriptor(wValue & 0xFF, data)
            self.problems.append(f"control request type 0x{bmRequestType:02x} request 0x{bRequest:02x} stalled")
            raise usb_error("pipe")

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        out = memoryview(buff).cast("B")
        cap = len(out)
        deadline = None if timeout == 0 else self.clock.monotonic() + timeout / 1000.0
        n = 0
        with self._cond:
            self._check(dev_handle)
            if ep != BULK_EP or intf != 0 or 0 not in dev_handle.claimed:
                self.problems.append(f"bulk read on endpoint 0x{ep:02x} interface {intf} without claiming it")
                raise usb_error("not_found" if ep != BULK_EP else "io")
            if cap % PACKET:
                self.problems.append(f"bulk read of {cap} bytes is not a whole number of {PACKET}-byte packets")
            if self._halted:
                raise usb_error("pipe")
            if self._zero_length and self._streaming:
                self.clock.sleep(MICROFRAME_S)
                return 0
            while n < cap:
                payload = self._current_payload()
                if payload is None:
                    wait = self._seconds_to_next_frame()
                    now = self.clock.monotonic()
                    if deadline is not None and now >= deadline:
                        raise usb_error("timeout")  # pyusb drops any partial data with the error
                    limit = None if deadline is None else deadline - now
                    self.clock.wait(self._cond, limit if wait is None else wait if limit is None else min(wait, limit))
                    self._check(dev_handle)
                    if self._halted:
                        raise usb_error("pipe")
                    if self._zero_length:
                        return n
                    continue
                rest = len(payload) - self._payload_off
                take = min(rest, cap - n)
                if take < rest:
                    take -= take % PACKET  # only whole packets fit in what is left of the buffer
                    if take == 0:
                        if n == 0:
                            raise usb_error("overflow")
                        break
                out[n:n + take] = payload[self._payload_off:self._payload_off + take]
                n += take
                self._payload_off += take
                if self._payload_off == len(payload):
                    self._next_payload()
                    if self._halt_in is not None:
                        self._halt_in -= 1
                        if self._halt_in <= 0:
                            self._halt_now()
                            raise usb_error("pipe")
                    if len(payload) % PACKET:
                        break  # a short packet ends the transfer
        return n

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        raise usb_error("pipe")

    # -- bridge and sensor -----------------------------------------------------------------------
    def _power_on(self) -> None:
        self._bridge = dict(_BRIDGE_DEFAULTS)
        self._indirect = dict(_INDIRECT_DEFAULTS)
        self._indirect_ptr = 0
        self._sensor = bytearray(256)
        for reg, value in self._sensor_defaults.items():
            self._sensor[reg] = value
        self._sccb_ptr = 0
        self._busy_left = 0
        self._kernel_driver = self.kernel_driver_default
        self._configuration = 1
        self._streaming = False
        self._stalled = False
        self._halted = False
        self._halt_in = None
        self._stream_first = self.frames_started
        self._frame_payloads: list[bytes] | None = None

    def _check(self, handle: _Handle) -> None:
        if handle.closed:
            raise usb_error("invalid")
        if not self._plugged or handle.generation != self._generation:
            raise usb_error("no_device")

    def _bridge_read(self, reg: int) -> int:
        if reg == 0xF6 and self._busy_left:
            self._busy_left -= 1
            return 0x03
        return self._bridge.get(reg, 0)

    def _bridge_write(self, reg: int, value: int) -> None:
        self.bridge_writes.append((reg, value))
        if reg == 0x1C:
            self._indirect_ptr = value
        elif reg == 0x1D:
            self._indirect[self._indirect_ptr] = value
            self._indirect_ptr = (self._indirect_ptr + 1) & 0xFF
        elif reg == 0xF4:
            self.problems.append("wrote the read-only SCCB data register 0xf4")
            return
        elif reg == 0xF5:
            self._bridge[reg] = value
            self._sccb_operation(value)
            return
        self._bridge[reg] = value
        if reg == 0xE0:
            self._set_streaming(value & 0x09 == 0)

    def _sccb_operation(self, op: int) -> None:
        self._busy_left = self.sccb_busy_polls
        if self._bridge.get(0xF1) != 0x42:
            self.problems.append(f"SCCB to bus address 0x{self._bridge.get(0xF1, 0):02x}, not the sensor's 0x42")
            self._bridge[0xF6] = 0x04  # nobody acknowledged
            return
        sub = self._bridge.get(0xF2, 0)
        if op == 0x37:
            self._sensor_write(sub, self._bridge.get(0xF3, 0))
        elif op == 0x33:
            self._sccb_ptr = sub
        elif op == 0xF9:
            self._bridge[0xF4] = self._sensor[self._sccb_ptr]
        else:
            self.problems.append(f"unknown SCCB operation 0x{op:02x}")
            self._bridge[0xF6] = 0x04
            return
        self._bridge[0xF6] = 0x00

    def _sensor_write(self, reg: int, value: int) -> None:
        self.sensor_writes.append((reg, value))
        if reg == 0x12 and value & 0x80:  # COM7 reset: every register back to power-on, the bit clears
            self._sensor = bytearray(256)
            for r, v in self._sensor_defaults.items():
                self._sensor[r] = v
            return
        if reg in _SENSOR_READ_ONLY:
            self.problems.append(f"wrote read-only sensor register 0x{reg:02x}")
            return
        self._sensor[reg] = value

    def _string_descriptor(self, index: int, data) -> int:
        if index == 0:
            raw = bytes((4, 3, 0x09, 0x04))  # English (US)
        elif index in _STRINGS:
            text = _STRINGS[index].encode("utf-16-le")
            raw = bytes((len(text) + 2, 3)) + text
        else:
            raise usb_error("pipe")
        n = min(len(raw), len(data))
        data[:n] = array.array("B", raw[:n])
        return n

    # -- video -----------------------------------------------------------------------------------
    def _set_streaming(self, on: bool) -> None:
        if on == self._streaming:
            return
        self._streaming = on
        self._frame_payloads = None
        if on:
            self._stream_t0 = self.clock.monotonic()
            self._stream_index = 0  # frames begun in this stream
            self._stream_first = self.frames_started
            self._fid = 0
            self._pts_base = 0x1000
            problem = self._stream_problem()
            if problem:
                self.problems.append(problem)
            else:  # render the scene now: a real camera does not spend a bulk read loading a photo
                m = self._settings()
                self._scene(m.width, m.height, m.hflip, m.vflip)
        self._cond.notify_all()

    def _stream_problem(self) -> str | None:
        w, h = self.mode
        qvga = bool(self._sensor[0x12] & 0x40)
        out, dsp4, v_fmt = self._sensor[0x12] & 0x03, self._sensor[0x67] & 0x03, self._indirect.get(0)
        if out == 0x02:
            return "sensor COM7 asks for RGB output, which the emulator does not make"
        if out in (0x01, 0x03) and dsp4 != 0x02:
            return f"sensor COM7 asks for Bayer but DSP_Ctrl4 output selection is {dsp4}, not 2 (RAW8)"
        if out == 0x00 and dsp4 != 0x00:
            return f"sensor COM7 asks for YUV but DSP_Ctrl4 output selection is {dsp4}, not 0"
        if v_fmt != (0x00 if out else 0x40):
            sent = "8-bit Bayer" if out else "YUV"
            return f"the sensor sends {sent} but the bridge's V_FMT is {v_fmt if v_fmt is None else hex(v_fmt)}"
        if self.frame_limit == 0:
            return "the bridge's frame size (indirect registers 3-5) is not set"
        if (w, h) not in ((640, 480), (320, 240)):
            return f"bridge output size {w}x{h} is not a PS3 Eye mode"
        if qvga != (w == 320):
            return f"sensor COM7 says {'QVGA' if qvga else 'VGA'} but the bridge sends {w}x{h}"
        if (self._sensor[0x29] * 4, self._sensor[0x2C] * 2) != (w, h):
            return f"sensor output {self._sensor[0x29] * 4}x{self._sensor[0x2C] * 2} differs from the bridge's {w}x{h}"
        if self.frame_rate is None:
            return f"bridge camera clock 0x{self._bridge.get(0xE5, 0):02x} is not one the emulator knows"
        if not self.headers_on:
            return "streaming without UVC payload headers (indirect registers 0x0a-0x0b not set)"
        if self.payload_size < 64:
            return f"payload size {self.payload_size} bytes"
        return None

    def _seconds_to_next_frame(self) -> float | None:
        """How long until the next frame's payloads exist; None while no video is coming."""
        if not self._streaming or self._stalled or self._stream_problem():
            return None
        if self.fast:
            return 0.0
        due = self._stream_t0 + self._stream_index / self.frame_rate
        return max(0.0, due - self.clock.monotonic())

    def _current_payload(self) -> bytes | None:
        if self._frame_payloads is None:
            wait = self._seconds_to_next_frame()
            if wait is None or wait > 0:
                return None
            self._start_frame()
        return self._frame_payloads[self._payload_index]

    def _next_payload(self) -> None:
        self._payload_index += 1
        self._payload_off = 0
        if self._payload_index >= len(self._frame_payloads):
            self._frame_payloads = None
            self.frames_sent += 1

    def _start_frame(self) -> None:
        n = self.frames_started
        self.frames_started += 1
        self._stream_index += 1
        self._meta[n] = self._settings()
        while len(self._meta) > 1024:
            self._meta.popitem(last=False)
        pixels = self.expected_frame(n).tobytes()[:self.frame_limit]
        style = self._headers
        chunk = self.payload_size - style.length
        pieces = [pixels[i:i + chunk] for i in range(0, len(pixels), chunk)]
        faults = self._faults.pop(n, [])
        for f in faults:
            if f.kind == "extend":
                pieces[-1:-1] = [pieces[0]] * f.count
            elif f.kind == "truncate":
                pieces = pieces[:f.count]
        pts = (self._pts_base + self._stream_index * 1000) & 0xFFFFFFFF
        payloads = []
        for i, piece in enumerate(pieces):
            flags = (UVC_EOH | (UVC_PTS if style.pts else 0) | (UVC_SCR if style.scr else 0)
                     | (UVC_ERR if style.error else 0) | self._fid | (UVC_EOF if i == len(pieces) - 1 else 0))
            header = bytes((style.length, flags))
            if style.pts:
                header += struct.pack("<I", pts)
            if style.scr:
                header += struct.pack("<IH", (pts + i * 7) & 0xFFFFFFFF, (i // 8) & 0x7FF)  # STC, SOF counter
            header = header[:style.length].ljust(style.length, b"\0")
            payloads.append(header + piece)
        for f in faults:
            if f.kind == "corrupt":
                payloads[f.index] = bytes((0x5A,)) + payloads[f.index][1:]
            elif f.kind == "error":
                p = payloads[f.index]
                payloads[f.index] = p[:1] + bytes((p[1] | UVC_ERR,)) + p[2:]
            elif f.kind == "trailing":
                p = payloads[0]
                payloads.append(p[:1] + bytes((p[1] & ~UVC_EOF,)) + p[2:])
        drops = sorted({f.index % len(payloads) for f in faults if f.kind == "drop"}, reverse=True)
        for i in drops:
            del payloads[i]
        self._fid ^= 1
        self._frame_payloads = payloads
        self._payload_index = 0
        self._payload_off = 0

    def _add_fault(self, frame: int | None, fault: _Fault) -> int:
        with self._cond:
            n = self.frames_started if frame is None else frame
            self._faults[n].append(fault)
            return n

    def _settings(self) -> _FrameMeta:
        w, h = self.mode
        com3 = self._sensor[0x0C]
        # The mounting: both COM3 bits set is upright.
        return _FrameMeta(w, h, hflip=not com3 & 0x40, vflip=not com3 & 0x80, raw8=self.raw8)

    @staticmethod
    def _offsets(n: int, hflip: bool, vflip: bool) -> tuple[int, int]:
        dx, dy = 2 * (n % 6), n % 4  # even dx keeps YUYV pairs aligned
        return (_MARGIN_X - dx if hflip else dx), (_MARGIN_Y - dy if vflip else dy)

    def _scene(self, w: int, h: int, hflip: bool, vflip: bool) -> tuple[np.ndarray, np.ndarray]:
        """(BGR, YUYV) of the photo at (h + margin, w + margin), flipped as the sensor would."""
        key = (w, h, hflip, vflip)
        if key not in self._scenes:
            import skimage.data

            rgb = getattr(skimage.data, self.scene_name)()
            big_w, big_h = w + _MARGIN_X, h + _MARGIN_Y
            src_h, src_w = rgb.shape[:2]
            crop_w = min(src_w, src_h * big_w // big_h)  # centre-crop to the frame's aspect, then resize
            crop_h = min(src_h, src_w * big_h // big_w)
            y0, x0 = (src_h - crop_h) // 2, (src_w - crop_w) // 2
            rgb = rgb[y0:y0 + crop_h, x0:x0 + crop_w]
            bgr = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), (big_w, big_h), interpolation=cv2.INTER_AREA)
            if hflip:
                bgr = bgr[:, ::-1]
            if vflip:
                bgr = bgr[::-1]
            bgr = np.ascontiguousarray(bgr)
            self._scenes[key] = (bgr, bgr_to_yuyv(bgr))
        return self._scenes[key]


_CHANNEL = {"B": 0, "G": 1, "R": 2}


def _mosaic(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W) uint8: each pixel keeps the one colour its filter in `pattern` (row-major 2x2) passes."""
    out = np.empty(bgr.shape[:2], np.uint8)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = bgr[dy::2, dx::2, _CHANNEL[colour]]
    return out


def _flip(a: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    if hflip:
        a = a[:, ::-1]
    if vflip:
        a = a[::-1]
    return a

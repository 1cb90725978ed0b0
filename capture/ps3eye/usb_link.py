"""The PS3 Eye on the USB bus, through pyusb: finding it, claiming its video interface, the bridge's
registers and the SCCB bus to the sensor behind them, and what each USB error means.

How the camera talks (as the Linux kernel's gspca ov534 driver documents it):
- The OV534 USB bridge has 8-bit registers, read and written with vendor control transfers
  (request 0x01, wIndex = register, one data byte).
- The OV772x sensor sits behind the bridge on SCCB (OmniVision's I2C). The bridge holds the sensor's
  bus address (0xf1), the sensor register (0xf2) and the byte to write (0xf3); writing an operation
  code to 0xf5 runs the transaction, 0xf6 then reports 0x00 done, 0x03 busy or 0x04 no acknowledge,
  and a read leaves its byte in 0xf4.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

import usb.core
import usb.util

from capture.clock import Clock
from capture.errors import SourceInvalid, SourceUnavailable
from capture.ps3eye.registers import (
    REG_LED_DIRECTION,
    REG_LED_OUTPUT,
    REG_SCCB_OPERATION,
    REG_SCCB_READ,
    REG_SCCB_STATUS,
    REG_SCCB_SUBADDR,
    REG_SCCB_WRITE,
    SCCB_NACK,
    SCCB_OK,
    SCCB_OP_READ_2,
    SCCB_OP_WRITE_2,
    SCCB_OP_WRITE_3,
)

VENDOR_ID = 0x1415
PRODUCT_ID = 0x2000
VIDEO_INTERFACE = 0

# Vendor control transfers to the bridge.
_REQUEST = 0x01
_CTRL_OUT = 0x40  # host to device | vendor | device
_CTRL_IN = 0xC0  # device to host | vendor | device
_CTRL_TIMEOUT_MS = 500

UDEV_RULE = 'SUBSYSTEM=="usb", ATTRS{idVendor}=="1415", ATTRS{idProduct}=="2000", MODE="0666"'
UDEV_HINT = (
    "Allow it with a udev rule: put the line\n    " + UDEV_RULE + "\ninto a file in /etc/udev/rules.d/ "
    "(e.g. 99-ps3eye.rules), run `sudo udevadm control --reload`, then unplug and replug the camera."
)
NO_LIBUSB_HINT = (
    "pyusb found no libusb backend: install libusb 1.0 (Debian/Ubuntu: sudo apt install libusb-1.0-0; "
    "macOS: brew install libusb; Windows: the WinUSB driver via Zadig)"
)
KERNEL_DRIVER_HINT = (
    "unload it with `sudo modprobe -r gspca_ov534` (or blacklist it in /etc/modprobe.d/) and try again"
)

_GONE_ERRNOS = (errno.ENODEV, errno.EIO, errno.ESHUTDOWN, errno.ENXIO)


def usb_error_kind(exc: usb.core.USBError) -> str:
    """'timeout', 'stall' (the endpoint halted: clear it and go on), 'gone' (unplugged), 'permission',
    'busy' or 'other'."""
    code = exc.errno
    if code is None and exc.backend_error_code is not None:
        code = {-1: errno.EIO, -3: errno.EACCES, -4: errno.ENODEV, -6: errno.EBUSY, -7: errno.ETIMEDOUT,
                -9: errno.EPIPE}.get(exc.backend_error_code)  # libusb 1.0 codes, when no errno came
    if isinstance(exc, usb.core.USBTimeoutError) or code == errno.ETIMEDOUT:
        return "timeout"
    if code == errno.EPIPE:
        return "stall"
    if code in _GONE_ERRNOS or "no such device" in str(exc).lower():
        return "gone"
    if code in (errno.EACCES, errno.EPERM):
        return "permission"
    if code == errno.EBUSY:
        return "busy"
    return "other"


def where(dev: usb.core.Device) -> str:
    return f"USB bus {dev.bus} address {dev.address}"


def find_cameras(backend) -> list[usb.core.Device]:
    """Every PS3 Eye pyusb sees. SourceInvalid when there is no libusb (retrying will not help)."""
    try:
        return list(usb.core.find(find_all=True, idVendor=VENDOR_ID, idProduct=PRODUCT_ID, backend=backend))
    except usb.core.NoBackendError as exc:
        raise SourceInvalid(f"cannot look for the PS3 Eye: {NO_LIBUSB_HINT}") from exc


def find_camera(backend, index: int) -> usb.core.Device:
    """PS3 Eye number `index`, or SourceUnavailable saying what was probed and what to do."""
    devices = find_cameras(backend)
    if len(devices) > index:
        return devices[index]
    if devices:
        raise SourceUnavailable(
            f"PS3 Eye #{index} asked for, but only {len(devices)} PS3 Eye(s) are plugged in "
            f"(USB {VENDOR_ID:04x}:{PRODUCT_ID:04x}); index them from 0"
        )
    seen = count_usb_devices(backend)
    if seen:
        found = (f"pyusb sees {seen} other USB device(s) but none with vendor 0x{VENDOR_ID:04x}, "
                 f"product 0x{PRODUCT_ID:04x}")
        hint = "Plug the camera into a USB 2.0 port (not an unpowered hub) and check that `lsusb` lists 1415:2000"
    else:
        found = "pyusb sees no USB devices at all"
        hint = ("If this runs in a container or a VM, pass the USB bus through (e.g. docker --device "
                "/dev/bus/usb); otherwise plug the camera in")
    raise SourceUnavailable(f"no PS3 Eye found: {found}. {hint}; `eyefuse sources` shows what can be opened.")


def count_usb_devices(backend) -> int:
    try:
        return sum(1 for _ in usb.core.find(find_all=True, backend=backend))
    except (usb.core.USBError, usb.core.NoBackendError):
        return 0


def kernel_driver_active(dev: usb.core.Device) -> bool:
    try:
        return bool(dev.is_kernel_driver_active(VIDEO_INTERFACE))
    except NotImplementedError:  # macOS and Windows have no kernel driver to detach
        return False


def open_error(exc: usb.core.USBError, at: str, doing: str) -> SourceUnavailable:
    """What to tell the user when opening the camera at `at` failed while `doing`."""
    kind = usb_error_kind(exc)
    if kind == "permission":
        return SourceUnavailable(f"no permission to open the PS3 Eye on {at} ({exc}). {UDEV_HINT}")
    if kind == "busy":
        return SourceUnavailable(
            f"the PS3 Eye on {at} is busy ({exc}): another program or driver has it; close "
            f"other camera programs, or {KERNEL_DRIVER_HINT}"
        )
    if kind == "gone":
        return SourceUnavailable(f"the PS3 Eye on {at} went away while {doing} ({exc}); plug it back in")
    return SourceUnavailable(f"the PS3 Eye on {at} failed while {doing} ({exc}); unplug and replug it if "
                             f"this goes on")


def claim_video_interface(dev: usb.core.Device) -> bool:
    """Take interface 0 from the kernel driver (if it has it) and claim it; True when a kernel driver
    was detached (and should be given back on release)."""
    at = where(dev)
    try:
        held = kernel_driver_active(dev)
    except usb.core.USBError as exc:
        raise open_error(exc, at, "opening it") from exc
    if held:
        try:
            dev.detach_kernel_driver(VIDEO_INTERFACE)
        except usb.core.USBError as exc:
            raise SourceUnavailable(
                f"the kernel's gspca_ov534 driver holds the PS3 Eye on {at} and could not be "
                f"detached ({exc}): {KERNEL_DRIVER_HINT}"
            ) from exc
    try:
        try:
            dev.get_active_configuration()
        except usb.core.USBError as exc:
            if usb_error_kind(exc) != "other":
                raise
            dev.set_configuration()  # the device is unconfigured: take its only configuration
        usb.util.claim_interface(dev, VIDEO_INTERFACE)
    except usb.core.USBError as exc:
        if held:
            _attach_kernel_driver(dev)
        raise open_error(exc, at, "claiming its video interface") from exc
    return held


def bulk_in_endpoint(dev: usb.core.Device):
    """The video endpoint, cleared of any halt a previous program left on it."""
    cfg = dev.get_active_configuration()
    intf = usb.util.find_descriptor(cfg, bInterfaceNumber=VIDEO_INTERFACE, bAlternateSetting=0)
    ep = None if intf is None else usb.util.find_descriptor(
        intf, custom_match=lambda e: usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
        and usb.util.endpoint_type(e.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK)
    if ep is None:
        raise SourceInvalid(
            f"the USB device {VENDOR_ID:04x}:{PRODUCT_ID:04x} on {where(dev)} has no bulk IN endpoint on "
            f"interface {VIDEO_INTERFACE}, so it is not a PS3 Eye as this driver knows it"
        )
    try:
        dev.clear_halt(ep.bEndpointAddress)
    except usb.core.USBError:
        pass
    return ep


def release(dev: usb.core.Device, give_back_to_kernel: bool) -> None:
    try:
        usb.util.release_interface(dev, VIDEO_INTERFACE)
    except (usb.core.USBError, ValueError):
        pass  # a device that is gone cannot be released; libusb forgets it anyway
    if give_back_to_kernel:
        _attach_kernel_driver(dev)
    dispose(dev)


def _attach_kernel_driver(dev: usb.core.Device) -> None:
    try:
        dev.attach_kernel_driver(VIDEO_INTERFACE)  # give /dev/video back to the system
    except (usb.core.USBError, NotImplementedError):
        pass


def dispose(dev: usb.core.Device) -> None:
    try:
        usb.util.dispose_resources(dev)
    except usb.core.USBError:
        pass  # closing a handle to a device that is gone


@dataclass
class Bridge:
    """The OV534's registers on one open device, and SCCB transactions to the sensor through them.
    Raises usb.core.USBError as pyusb does; SourceUnavailable when the sensor does not answer."""

    dev: usb.core.Device
    clock: Clock

    def write(self, reg: int, value: int) -> None:
        self.dev.ctrl_transfer(_CTRL_OUT, _REQUEST, 0, reg, bytes((value,)), _CTRL_TIMEOUT_MS)

    def read(self, reg: int) -> int:
        data = self.dev.ctrl_transfer(_CTRL_IN, _REQUEST, 0, reg, 1, _CTRL_TIMEOUT_MS)
        if len(data) != 1:
            raise usb.core.USBError(f"bridge register 0x{reg:02x} read returned {len(data)} bytes, not 1")
        return data[0]

    def sccb_write(self, reg: int, value: int) -> None:
        self.write(REG_SCCB_SUBADDR, reg)
        self.write(REG_SCCB_WRITE, value)
        self.write(REG_SCCB_OPERATION, SCCB_OP_WRITE_3)
        self._sccb_wait(f"writing sensor register 0x{reg:02x}")

    def sccb_read(self, reg: int) -> int:
        self.write(REG_SCCB_SUBADDR, reg)
        self.write(REG_SCCB_OPERATION, SCCB_OP_WRITE_2)
        self._sccb_wait(f"addressing sensor register 0x{reg:02x}")
        self.write(REG_SCCB_OPERATION, SCCB_OP_READ_2)
        self._sccb_wait(f"reading sensor register 0x{reg:02x}")
        return self.read(REG_SCCB_READ)

    def set_led(self, on: bool) -> None:
        # Bit 7 of 0x21 makes the LED pin an output, bit 7 of 0x23 drives it.
        self.write(REG_LED_DIRECTION, self.read(REG_LED_DIRECTION) | 0x80)
        self.write(REG_LED_OUTPUT, with_bits(self.read(REG_LED_OUTPUT), 0x80, on))
        if not on:
            self.write(REG_LED_DIRECTION, self.read(REG_LED_DIRECTION) & ~0x80)

    def _sccb_wait(self, doing: str) -> None:
        status = None
        for attempt in range(6):
            status = self.read(REG_SCCB_STATUS)
            if status == SCCB_OK:
                return
            if status == SCCB_NACK:
                break
            self.clock.sleep(0.001 * 2 ** attempt)  # busy: the kernel driver waits 10-20 ms between polls
        raise SourceUnavailable(
            f"the PS3 Eye's sensor did not answer while {doing} (SCCB status 0x{status:02x}); "
            f"unplug and replug the camera"
        )


def with_bits(value: int, bits: int, on: bool) -> int:
    return (value | bits) if on else (value & ~bits & 0xFF)

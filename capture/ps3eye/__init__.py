"""PS3 Eye userspace driver over pyusb: the OV534 bridge, the OV772x sensor behind it, the bulk stream.

    registers.py  what the bridge and sensor are told: modes, rates, formats, control encodings
    payload.py    the UVC-style payload header, and payloads into frames (no USB)
    usb_link.py   finding and claiming the camera, bridge registers and SCCB, what USB errors mean
    camera.py     PS3EyeCamera (a Source), its config, controls and counters, and the probe

`eyefuse` reaches it as `--source ps3eye[:WxH@FPS][:bayer]` (capture/sources.py).
"""
from capture.ps3eye.camera import (
    PS3EyeCamera,
    PS3EyeConfig,
    PS3EyeControls,
    PS3EyeProbe,
    PS3EyeStats,
    probe_ps3eye,
)
from capture.ps3eye.payload import FrameAssembler, PayloadHeader, Rejected, parse_payload_header
from capture.ps3eye.registers import FORMATS, KNOWN_SENSORS, MODES, cfa_pattern, choose_rate, sensor_mode
from capture.ps3eye.usb_link import PRODUCT_ID, UDEV_RULE, VENDOR_ID, usb_error_kind

__all__ = [
    "FORMATS", "KNOWN_SENSORS", "MODES", "PRODUCT_ID", "UDEV_RULE", "VENDOR_ID", "FrameAssembler", "PS3EyeCamera",
    "PS3EyeConfig", "PS3EyeControls", "PS3EyeProbe", "PS3EyeStats", "PayloadHeader", "Rejected", "cfa_pattern",
    "choose_rate", "parse_payload_header", "probe_ps3eye", "sensor_mode", "usb_error_kind",
]

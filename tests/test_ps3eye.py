"""The PS3 Eye driver, run unchanged through real pyusb against an emulated camera (tests/ps3eye_emulator.py)."""
import json
import re

import numpy as np
import pytest
import usb.backend.libusb1
import usb.core
import usb.util

from app.cli import main
from capture.clock import FakeClock
from capture.convert import to_bgr8
from capture.dng import read_dng
from capture.errors import DeviceDisconnected, FrameDecodeError, SourceInvalid, SourceUnavailable
from capture.frame import PixelFormat
from capture.ps3eye import (FORMATS, MODES, UDEV_RULE, PayloadHeader, PS3EyeCamera, PS3EyeConfig, PS3EyeControls,
                            Rejected, choose_rate, parse_payload_header, probe_ps3eye)
from capture.ps3eye.registers import BRIDGE_INIT, bridge_start_sequence, sensor_start_sequence
from capture.ps3eye.usb_link import Bridge
from capture.ring_buffer import RingBuffer
from capture.sources import open_source
from capture.worker import CaptureState, CaptureWorker, RetryPolicy
from engine.burst.raw import check_burst, normalise
from tests.conftest import DEADLINE_S, eventually, returns_within_deadline
from tests.ps3eye_emulator import HeaderStyle, PS3EyeEmulator

FAST_RETRY = RetryPolicy(initial_s=0.02, max_s=0.05)
BAYER = PixelFormat.BAYER16


@pytest.fixture(autouse=True)
def _threads_end(no_leaked_threads):
    yield


def _camera(emu, **config) -> PS3EyeCamera:
    return PS3EyeCamera(PS3EyeConfig(backend=emu, **config))


def _retries(message: str) -> int:
    """The attempt number in a retrying worker's message ("... (retry 3)"), 0 when there is none."""
    m = re.search(r"\(retry (\d+)\)", message)
    return int(m.group(1)) if m else 0


def _returns(fn, what: str):
    """fn()'s result, or the exception it raised: a read() that never returns fails the test."""
    return returns_within_deadline(fn, what)


def _paced(clock: FakeClock, **config) -> tuple[PS3EyeEmulator, PS3EyeCamera]:
    """An emulator that sends frames at the programmed rate, and the driver, on one logical clock:
    deadlines can be checked exactly (with fast=True, video would take no logical time at all)."""
    emu = PS3EyeEmulator(fast=False, clock=clock)
    config = {"width": 320, "height": 240, "fps": 60, "transfer_timeout_ms": 50, **config}
    return emu, PS3EyeCamera(PS3EyeConfig(backend=emu, **config), clock=clock)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_streams_300_vga_frames_intact():
    emu = PS3EyeEmulator(fast=True)
    cam = _camera(emu, width=640, height=480, fps=60)
    cam.open()
    try:
        first = emu.stream_first_frame
        frames = [cam.read() for _ in range(300)]
        info = cam.describe()
    finally:
        cam.close()
    for i, f in enumerate(frames):
        assert f.pixel_format is PixelFormat.YUYV and f.pixels.shape == (480, 640, 2)
        assert np.array_equal(f.pixels, emu.expected_yuyv(first + i)), f"frame {i} differs from what was sent"
        if i % 30 == 0:  # and it is the photo, after the YUYV round trip
            assert _psnr(to_bgr8(f), emu.expected_bgr(first + i)) > 30
    assert [f.seq for f in frames] == list(range(300))
    assert all(np.diff([f.t_capture_ns for f in frames]) > 0)
    assert not np.array_equal(frames[0].pixels, frames[1].pixels), "the scene moves between frames"
    st = cam.stats()
    assert (st.frames, st.dropped, st.rejected, st.frame_timeouts) == (300, 0, 0, 0)
    assert (info.kind, info.width, info.height, info.fps) == ("ps3eye", 640, 480, 60.0)
    assert info.pixel_format is PixelFormat.YUYV and "OV7725 sensor (ID 0x7721)" in info.detail
    assert emu.problems == []
    assert not emu.streaming and not emu.led_on, "close() stops the stream and turns the LED off"


@pytest.mark.parametrize("w,h,fps,com7,clkrc,com4,clock,actual", [
    (640, 480, 60, 0x00, 0x01, 0xC1, 0x04, 60),
    (640, 480, 75, 0x00, 0x01, 0x81, 0x02, 75),
    (640, 480, 45, 0x00, 0x02, 0xC1, 0x04, 40),
    (320, 240, 120, 0x40, 0x02, 0xC1, 0x04, 100),
    (320, 240, 187, 0x40, 0x01, 0x81, 0x02, 187),
])
def test_start_writes_mode_and_frame_rate_registers(w, h, fps, com7, clkrc, com4, clock, actual):
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=w, height=h, fps=fps)
    cam.open()
    try:
        assert emu.sensor_writes[0] == (0x12, 0x80), "the sensor is reset before anything else"
        assert (emu.sensor_reg(0x12), emu.sensor_reg(0x11), emu.sensor_reg(0x0D), emu.bridge_reg(0xE5)) == (
            com7, clkrc, com4, clock)
        assert emu.mode == (w, h) and (emu.sensor_reg(0x29) * 4, emu.sensor_reg(0x2C) * 2) == (w, h)
        assert emu.frame_rate == pytest.approx(actual, rel=0.01)
        assert cam.describe().fps == actual and cam.rate.fps == actual
        assert emu.payload_size == 2048 and emu.headers_on and emu.streaming and emu.led_on
        assert emu.frame_limit >= w * h * 2 and not emu.raw8
        assert cam.sensor_id == 0x7721 and cam.sensor_name == "OV7725"
        assert cam.read().pixels.shape == (h, w, 2)
    finally:
        cam.close()
    assert emu.problems == []


def test_controls_write_the_sensor_registers():
    emu = PS3EyeEmulator()
    cam = _camera(emu, controls=PS3EyeControls(auto_gain=False, gain=10))
    cam.set_exposure(50)  # before open: applied at start
    cam.open()
    try:
        assert emu.sensor_reg(0x00) == 0x0A and not emu.sensor_reg(0x13) & 0x04, "start-up gain, auto gain off"
        assert (emu.sensor_reg(0x08), emu.sensor_reg(0x10)) == (0, 100) and not emu.sensor_reg(0x13) & 0x01
        cam.set_exposure(200)
        assert (emu.sensor_reg(0x08), emu.sensor_reg(0x10)) == (1, 0x90)
        cam.set_auto_exposure(True)
        assert emu.sensor_reg(0x13) & 0x01
        cam.set_gain(37)
        assert emu.sensor_reg(0x00) == 0x75
        cam.set_auto_gain(True)
        assert emu.sensor_reg(0x13) & 0x04 and emu.sensor_reg(0x64) & 0x03 == 0x03
        cam.set_auto_white_balance(False)
        assert not emu.sensor_reg(0x13) & 0x02 and not emu.sensor_reg(0x63) & 0xC0
        cam.set_auto_white_balance(True)
        assert emu.sensor_reg(0x13) & 0x02 and emu.sensor_reg(0x63) & 0xC0 == 0xC0
        assert emu.sensor_reg(0x0C) & 0xC0 == 0xC0, "upright and unmirrored needs both COM3 bits"
        cam.set_flip(hflip=True)
        assert emu.sensor_reg(0x0C) & 0xC0 == 0x80
        frame = cam.read()
        n = emu.frames_started - 1
        assert np.array_equal(frame.pixels, emu.expected_yuyv(n))
        unmirrored = emu.expected_bgr(n, hflip=False)
        assert _psnr(to_bgr8(frame), unmirrored[:, ::-1]) > 30, "the picture is mirrored"
        cam.set_flip(vflip=True)
        assert emu.sensor_reg(0x0C) & 0xC0 == 0x00 and cam.controls.hflip and cam.controls.vflip
        with pytest.raises(ValueError, match="gain must be 0..63"):
            cam.set_gain(64)
    finally:
        cam.close()
    assert emu.problems == []


@pytest.mark.parametrize("fault,where,reason", [
    ("drop_payload", 100, "short"),
    ("drop_payload", 0, "short"),
    ("drop_payload", -1, "short"),  # the end-of-frame payload: the next frame id closes it
    ("corrupt_header", 100, "corrupt"),
    ("corrupt_header", 0, "short"),  # before its frame began: the frame misses it
    ("corrupt_header", -1, "corrupt"),
    ("flag_error", 100, "corrupt"),
    ("flag_error", 0, "short"),
    ("flag_error", -1, "corrupt"),
    ("truncate_frame", 150, "short"),
    ("extend_frame", 2, "long"),
])
def test_bad_frames_are_dropped_counted_and_the_stream_recovers(fault, where, reason):
    emu = PS3EyeEmulator()
    cam = _camera(emu)
    cam.open()
    try:
        for _ in range(2):
            cam.read()
        bad = getattr(emu, fault)(None, where)
        with pytest.raises(FrameDecodeError, match=reason):
            cam.read()
        st = cam.stats()
        assert getattr(st, f"dropped_{reason}") == 1 and st.dropped == 1
        after = [cam.read() for _ in range(3)]
        for k, f in enumerate(after):
            assert np.array_equal(f.pixels, emu.expected_yuyv(bad + 1 + k)), "the next good frame comes through"
        assert [f.seq for f in after] == [2, 3, 4]
        st = cam.stats()
        assert st.frames == 5 and st.dropped == 1
        assert st.rejected_bad_header == (fault == "corrupt_header") and st.rejected_error == (fault == "flag_error")
        assert st.rejected == st.rejected_bad_header + st.rejected_error, "nothing else was thrown away"
    finally:
        cam.close()


def test_unplug_mid_stream_is_a_disconnect_and_replug_reopens():
    emu = PS3EyeEmulator()
    cam = _camera(emu)
    cam.open()
    for _ in range(3):
        cam.read()
    emu.unplug()
    with pytest.raises(DeviceDisconnected, match="went away"):
        cam.read()
    cam.close()  # must not raise for a device that is gone
    with pytest.raises(SourceUnavailable, match="no PS3 Eye found"):
        cam.open()
    emu.replug()
    cam.open()
    try:
        first = emu.stream_first_frame
        frames = [cam.read() for _ in range(3)]
    finally:
        cam.close()
    assert [f.seq for f in frames] == [3, 4, 5], "seq carries on across the reconnect"
    assert all(np.array_equal(f.pixels, emu.expected_yuyv(first + i)) for i, f in enumerate(frames))


def test_silence_becomes_a_disconnect():
    clock = FakeClock()  # the camera and the driver on one logical clock: bulk reads time out at once
    emu = PS3EyeEmulator(clock=clock)
    cam = PS3EyeCamera(PS3EyeConfig(backend=emu, transfer_timeout_ms=50, stall_timeout_s=0.3), clock=clock)
    cam.open()
    try:
        cam.read()
        emu.stall()
        t0 = clock.monotonic()
        with pytest.raises(DeviceDisconnected, match="no video"):
            cam.read()
        silent = clock.monotonic() - t0
        assert 0.3 <= silent <= 0.3 + 0.05 + 1e-6, "a disconnect once the silence passes 0.3 s, at the next timeout"
        assert cam.stats().timeouts * 0.05 == pytest.approx(silent, abs=1e-6), "spent in 50 ms reads that timed out"
    finally:
        cam.close()


def test_capture_worker_resumes_after_replug_and_keeps_frames(no_leaked_threads):
    emu = PS3EyeEmulator(fast=False)  # paced at the programmed 60 fps, like the real camera
    cam = _camera(emu, width=320, height=240, fps=60, transfer_timeout_ms=50, stall_timeout_s=0.5)
    ring = RingBuffer(512)
    states = []
    worker = CaptureWorker(cam, ring, retry=FAST_RETRY, on_status=lambda s: states.append(s.state))
    worker.start()
    try:
        eventually(lambda: worker.status().frames >= 15, "15 frames before the unplug")
        before = ring.last(512)
        emu.unplug()
        eventually(lambda: _retries(worker.status().message) >= 3, "two reopen attempts finding nothing")
        emu.replug()
        n_before = worker.status().frames
        eventually(lambda: worker.status().frames >= n_before + 15, "15 frames after the replug")
    finally:
        assert worker.stop(DEADLINE_S), "the capture thread did not stop"
    st = worker.status()
    assert st.reconnects == 1 and st.state is CaptureState.STOPPED
    assert CaptureState.RETRYING in states
    frames = ring.last(512)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), "seq strictly increasing across the reconnect"
    kept = {f.seq: f for f in frames}
    assert all(kept.get(f.seq) is f for f in before), "frames from before the unplug stay in the ring"
    assert frames[-1].t_capture_ns > before[-1].t_capture_ns
    gaps = np.diff([f.t_capture_ns for f in frames[-10:]]) / 1e9
    assert np.median(gaps) == pytest.approx(1 / 60, rel=0.25), "paced at the frame rate"
    assert emu.problems == []


def test_no_device_says_what_was_probed():
    with pytest.raises(SourceUnavailable) as err:
        _camera(PS3EyeEmulator(plugged=False)).open()
    msg = str(err.value)
    assert "0x1415" in msg and "0x2000" in msg and "1 other USB device" in msg and "lsusb" in msg
    with pytest.raises(SourceUnavailable, match="no USB devices at all"):
        _camera(PS3EyeEmulator(plugged=False, other_devices=())).open()
    with pytest.raises(SourceUnavailable, match="only 1 PS3 Eye"):
        _camera(PS3EyeEmulator(), index=1).open()


def test_permission_denied_names_the_udev_rule():
    emu = PS3EyeEmulator()
    emu.deny_permission()
    with pytest.raises(SourceUnavailable) as err:
        _camera(emu).open()
    msg = str(err.value)
    assert UDEV_RULE in msg
    assert 'SUBSYSTEM=="usb", ATTRS{idVendor}=="1415", ATTRS{idProduct}=="2000", MODE="0666"' in msg
    assert "/etc/udev/rules.d/" in msg and "sudo udevadm control --reload" in msg and "replug" in msg


def test_kernel_driver_is_detached_then_given_back():
    emu = PS3EyeEmulator(kernel_driver=True)
    cam = _camera(emu)
    cam.open()
    assert not emu.kernel_driver_active
    cam.read()
    cam.close()
    assert emu.kernel_driver_active, "close() hands the camera back to gspca_ov534"

    emu.fail_detach("busy")
    with pytest.raises(SourceUnavailable, match="gspca_ov534.*could not be detached.*modprobe -r gspca_ov534"):
        cam.open()


def test_sccb_status_is_polled_while_busy():
    emu = PS3EyeEmulator(sccb_busy_polls=1)
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        assert cam.read().pixels.shape == (240, 320, 2)
    finally:
        cam.close()
    assert emu.problems == []


def test_probe_reports_the_device_without_starting_it():
    emu = PS3EyeEmulator()
    probe = probe_ps3eye(backend=emu)
    assert probe.status == "available" and "USB bus 1" in probe.detail
    assert not emu.streaming and emu.bridge_writes == []
    assert "gspca_ov534" in probe_ps3eye(backend=PS3EyeEmulator(kernel_driver=True)).detail
    emu.deny_permission()
    denied = probe_ps3eye(backend=emu)
    assert denied.status == "no permission" and UDEV_RULE in denied.detail
    assert probe_ps3eye(backend=PS3EyeEmulator(plugged=False)).status == "not found"
    assert probe_ps3eye(backend=emu, try_open=False).status == "found"
    # Whatever this machine has, the default probe answers instead of raising.
    assert probe_ps3eye().status in ("available", "found", "no permission", "not found", "unavailable (no libusb)")


def test_qvga_at_187_fps():
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=320, height=240, fps=187)
    cam.open()
    try:
        first = emu.stream_first_frame
        frames = [cam.read() for _ in range(30)]
    finally:
        cam.close()
    assert all(np.array_equal(f.pixels, emu.expected_yuyv(first + i)) for i, f in enumerate(frames))
    assert emu.frame_rate == pytest.approx(187.5) and cam.describe().fps == 187


def test_open_source_builds_the_ps3eye_config():
    src = open_source("ps3eye:320x240@120")
    assert isinstance(src, PS3EyeCamera)
    assert (src.config.width, src.config.height, src.config.fps, src.config.backend) == (320, 240, 120, None)
    info = src.describe()
    assert (info.kind, info.width, info.height, info.fps) == ("ps3eye", 320, 240, 100.0)
    assert "120 fps asked" in info.detail
    emu = PS3EyeEmulator()
    cam = PS3EyeCamera(src.config, backend=emu)  # the same config, on the emulated bus
    cam.open()
    try:
        assert cam.read().pixels.shape == (240, 320, 2)
        assert emu.frame_rate == pytest.approx(100)
    finally:
        cam.close()
    default = open_source("ps3eye")
    assert (default.config.width, default.config.height, default.describe().fps) == (640, 480, 60.0)


def test_modes_and_rates():
    vga, qvga = MODES[(640, 480)], MODES[(320, 240)]
    assert [choose_rate(vga, f).fps for f in (100, 75, 60, 59, 31, 5)] == [75, 75, 60, 50, 30, 15]
    assert [choose_rate(qvga, f).fps for f in (300, 187, 120, 30, 1)] == [187, 187, 100, 30, 30]
    with pytest.raises(SourceInvalid, match="640x480.*320x240"):
        PS3EyeCamera(PS3EyeConfig(width=800, height=600))


def test_payload_header_parsing():
    """As the kernel's gspca ov534 driver checks a header: length byte 12, no error flag, a PTS; the
    SCR bit is not looked at and the pixels always start 12 bytes in."""
    pts = (1234).to_bytes(4, "little")
    full = bytes((12, 0x8C | 0x03)) + pts + bytes(6) + b"data"
    assert parse_payload_header(full) == PayloadHeader(fid=1, eof=True, pts=1234)
    assert parse_payload_header(bytes((12, 0x84)) + pts + bytes(6)) == PayloadHeader(0, False, 1234), "no SCR: fine"
    assert parse_payload_header(bytes((2, 0x80)) + bytes(10)) is Rejected.BAD_HEADER, "length 2, no PTS"
    assert parse_payload_header(bytes((6, 0x84)) + pts + bytes(6)) is Rejected.BAD_HEADER, "length 6, no SCR"
    assert parse_payload_header(bytes((0x5A,)) + full[1:]) is Rejected.BAD_HEADER
    assert parse_payload_header(bytes((12, 0x8C))) is Rejected.BAD_HEADER, "shorter than its header"
    assert parse_payload_header(b"\x0c") is Rejected.BAD_HEADER
    assert parse_payload_header(bytes((12, 0xCC)) + pts + bytes(6)) is Rejected.ERROR
    assert parse_payload_header(bytes((12, 0xC8)) + bytes(10)) is Rejected.ERROR, "the error flag is checked first"
    assert parse_payload_header(bytes((12, 0x88)) + bytes(10)) is Rejected.NO_PTS


def test_without_a_backend_open_explains_itself():
    if probe_ps3eye().status in ("available", "found", "no permission"):
        pytest.skip("a real PS3 Eye is attached to this machine")
    with pytest.raises((SourceInvalid, SourceUnavailable), match="no libusb backend|no PS3 Eye found"):
        PS3EyeCamera().open()


# -- every read() ends, and everything thrown away is counted ----------------------------------------------
def test_12_byte_headers_without_scr_are_accepted():
    """The kernel driver and the libusb drivers take any 12-byte header with a PTS; the SCR bit
    does not change where the pixels start."""
    emu = PS3EyeEmulator()
    emu.set_headers(HeaderStyle(length=12, pts=True, scr=False))
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        first = emu.stream_first_frame
        frames = _returns(lambda: [cam.read() for _ in range(5)], "read() of frames whose headers have no SCR")
    finally:
        cam.close()
    assert all(np.array_equal(f.pixels, emu.expected_yuyv(first + i)) for i, f in enumerate(frames))
    assert cam.stats().rejected == 0 and emu.problems == []


@pytest.mark.parametrize("style", [HeaderStyle(length=2, pts=False, scr=False),
                                   HeaderStyle(length=6, pts=True, scr=False)], ids=["length-2", "length-6"])
def test_headers_shorter_than_12_bytes_are_rejected_and_read_ends_at_its_deadline(style):
    clock = FakeClock()
    emu, cam = _paced(clock, frame_timeout_s=0.2, stall_timeout_s=1.0)
    cam.open()
    try:
        cam.read()
        emu.set_headers(style)
        t0 = clock.monotonic()
        with pytest.raises(FrameDecodeError) as err:
            _returns(cam.read, "read() while every header is short")
        assert 0.2 <= clock.monotonic() - t0 <= 0.2 + 0.001, "at the deadline (plus a rounded-up millisecond)"
        msg = str(err.value)
        assert "no whole frame" in msg and "in 0.2 s" in msg and "header length other than 12" in msg
        st = cam.stats()
        assert st.frames == 1 and st.rejected_bad_header > 0 and st.frame_timeouts == 1
        assert st.rejected == st.rejected_bad_header
        emu.set_headers(HeaderStyle())  # the camera comes right: so does the stream
        assert _returns(cam.read, "read() after the headers came right").pixels.shape == (240, 320, 2)
    finally:
        cam.close()


def test_headers_without_a_pts_are_rejected_and_counted():
    clock = FakeClock()
    emu, cam = _paced(clock, frame_timeout_s=0.2)
    cam.open()
    try:
        emu.set_headers(HeaderStyle(length=12, pts=False, scr=True))
        with pytest.raises(FrameDecodeError, match="no time stamp"):
            _returns(cam.read, "read() while no header has a PTS")
        st = cam.stats()
        assert st.frames == 0 and st.rejected_no_pts > 0 and st.rejected == st.rejected_no_pts
    finally:
        cam.close()


def test_the_error_flag_on_every_payload_ends_each_read_and_then_reopens():
    """Every payload flagged in error: each read ends at frame_timeout_s saying why, and once no whole
    frame has come for stall_timeout_s it is a disconnect (the worker then reopens and resets it)."""
    clock = FakeClock()
    emu, cam = _paced(clock, frame_timeout_s=0.25, stall_timeout_s=0.5)
    cam.open()
    try:
        cam.read()
        emu.set_headers(HeaderStyle(error=True))
        t0 = clock.monotonic()
        with pytest.raises(FrameDecodeError, match="rejected for the camera's error flag"):
            _returns(cam.read, "read() while every payload is flagged in error")
        assert 0.25 <= clock.monotonic() - t0 <= 0.25 + 0.001
        with pytest.raises(DeviceDisconnected, match="no whole frame .* for 0.5 s"):
            _returns(cam.read, "the second read() while every payload is flagged in error")
        st = cam.stats()
        assert st.frames == 1 and st.rejected_error > 0 and st.rejected == st.rejected_error
        assert st.frame_timeouts == 2 and st.transfers > 0
    finally:
        cam.close()


def test_zero_length_reads_are_silence():
    """Bulk reads that keep returning zero bytes are no video: each read() ends at its
    deadline, and past stall_timeout_s of them the camera is declared gone."""
    clock = FakeClock()
    emu, cam = _paced(clock, frame_timeout_s=0.2, stall_timeout_s=0.3)
    cam.open()
    try:
        cam.read()
        emu.zero_length_reads()
        t0 = clock.monotonic()
        with pytest.raises(FrameDecodeError, match="bulk reads returned zero bytes"):
            _returns(cam.read, "read() while every bulk read returns zero bytes")
        assert 0.2 <= clock.monotonic() - t0 <= 0.2 + 0.001
        with pytest.raises(DeviceDisconnected, match="no video .* zero bytes"):
            _returns(cam.read, "the second read() while every bulk read returns zero bytes")
        silent = clock.monotonic() - t0
        assert 0.3 < silent <= 0.3 + 0.001, "declared gone one bus interval past 0.3 s of silence"
        st = cam.stats()
        assert st.empty_transfers > 0 and st.timeouts == 0 and st.frame_timeouts == 1
    finally:
        cam.close()


@pytest.mark.parametrize("fault", ["error flag", "length-2 headers", "zero-length reads", "no SCR"])
def test_the_capture_worker_stops_whatever_the_camera_sends(fault, no_leaked_threads):
    """The thread reading a misbehaving camera gets back to its loop, so stop() ends it."""
    clock = FakeClock()
    emu, cam = _paced(clock)
    if fault == "error flag":
        emu.set_headers(HeaderStyle(error=True))
    elif fault == "length-2 headers":
        emu.set_headers(HeaderStyle(length=2, pts=False, scr=False))
    elif fault == "zero-length reads":
        emu.zero_length_reads()
    else:
        emu.set_headers(HeaderStyle(scr=False))
    worker = CaptureWorker(cam, RingBuffer(16), retry=FAST_RETRY)
    worker.start()
    try:
        if fault == "no SCR":
            eventually(lambda: worker.status().frames >= 3, "3 frames with 12-byte headers without SCR")
        else:
            eventually(lambda: worker.status().decode_errors >= 3, "read() returning to the worker three times")
    finally:
        assert worker.stop(DEADLINE_S), "the capture thread did not stop"
    st = cam.stats()
    assert st.frames >= 3 if fault == "no SCR" else st.frame_timeouts >= 3


@pytest.mark.parametrize("after", [0, 40], ids=["between-frames", "mid-frame"])
def test_a_stalled_endpoint_is_cleared_and_the_stream_goes_on(after):
    """EPIPE on the bulk endpoint is a halt, not an unplug: clear it and carry on, no reopen and no
    sensor reset. A frame the halt cut into is lost and counted."""
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        for _ in range(2):
            cam.read()
        resets = emu.sensor_writes.count((0x12, 0x80))
        emu.halt_endpoint(after_payloads=after)
        cut = emu.frames_started  # the next frame: the halt cuts into it, or comes before it
        if after:
            with pytest.raises(FrameDecodeError, match="corrupt.*stalled"):
                _returns(cam.read, "read() after the endpoint halted")
        first = cut + 1 if after else cut
        frames = [_returns(cam.read, "read() after the halt was cleared") for _ in range(3)]
        assert all(np.array_equal(f.pixels, emu.expected_yuyv(first + i)) for i, f in enumerate(frames))
        assert [f.seq for f in frames] == [2, 3, 4]
        st = cam.stats()
        assert (st.stalls, st.dropped_corrupt, st.frames) == (1, int(after > 0), 5)
        assert emu.halts_cleared == 1 and emu.opens == 1, "cleared in place, not reopened"
        assert emu.sensor_writes.count((0x12, 0x80)) == resets and emu.streaming
    finally:
        cam.close()
    assert emu.problems == []


def test_an_endpoint_that_will_not_clear_is_a_disconnect():
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        cam.read()
        emu.halt_endpoint(clearable=False)
        with pytest.raises(DeviceDisconnected, match="stalled its video endpoint.*clearing it failed"):
            _returns(cam.read, "read() while the endpoint stays halted")
        assert cam.stats().stalls == 1
    finally:
        cam.close()


def test_a_payload_after_the_end_of_frame_is_counted_and_the_frames_are_kept():
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        cam.read()
        n = emu.trailing_payload()
        frames = [cam.read() for _ in range(3)]
    finally:
        cam.close()
    assert all(np.array_equal(f.pixels, emu.expected_yuyv(n + i)) for i, f in enumerate(frames))
    st = cam.stats()
    assert (st.rejected_stray, st.rejected, st.dropped, st.frames) == (1, 1, 0, 4)


@pytest.mark.parametrize("sensor_id,name", [(0x7720, "OV7720"), (0x7721, "OV7725")])
def test_the_sensor_is_named(sensor_id, name):
    emu = PS3EyeEmulator(sensor_id=sensor_id)
    cam = _camera(emu, width=320, height=240)
    cam.open()
    try:
        assert (cam.sensor_id, cam.sensor_name) == (sensor_id, name)
        assert f"{name} sensor (ID 0x{sensor_id:04x})" in cam.describe().detail
    finally:
        cam.close()


@pytest.mark.parametrize("sensor_id,says", [
    (0x7730, "OV772x-family sensor of version 0x30 \\(ID 0x7730\\).*OV7720 \\(0x7720\\) or OV7725 \\(0x7721\\)"),
    (0x7673, "OV767x"),
    (0x1234, "unknown sensor \\(ID 0x1234\\)"),
])
def test_a_sensor_of_another_version_is_refused(sensor_id, says):
    emu = PS3EyeEmulator(sensor_id=sensor_id)
    cam = _camera(emu)
    with pytest.raises(SourceInvalid, match=says):
        cam.open()
    assert not emu.streaming and not emu.sensor_writes[1:], "nothing written after the reset and the ID read"
    cam.close()


# -- eyefuse capture --------------------------------------------------------------------------------------
@pytest.fixture
def usb_bus(monkeypatch):
    """Put an emulated bus where pyusb looks for libusb, so code that passes no backend (the
    command line) finds the emulator: the library boundary, not our code."""
    def plug(emu: PS3EyeEmulator) -> PS3EyeEmulator:
        monkeypatch.setattr(usb.backend.libusb1, "get_backend", lambda *a, **k: emu)
        return emu
    return plug


@pytest.mark.parametrize("camera,says", [
    ("unplugged", ["no PS3 Eye found", "vendor 0x1415, product 0x2000", "1 other USB device", "lsusb"]),
    ("no permission", ["no permission to open the PS3 Eye", UDEV_RULE]),
])
def test_capture_without_a_camera_says_what_was_probed_and_exits(camera, says, usb_bus, tmp_path, capsys):
    emu = usb_bus(PS3EyeEmulator(plugged=camera != "unplugged"))
    emu.deny_permission(camera == "no permission")
    out = tmp_path / "frames"
    rc = _returns(lambda: main(["capture", "--source", "ps3eye", "--frames", "3", "--out", str(out), "--wait", "1"]),
                  "eyefuse capture --source ps3eye with no usable camera")
    err = capsys.readouterr().err
    assert rc == 1
    assert "waiting up to 1 s for ps3eye" in err and "error: no frame from ps3eye" in err
    assert all(text in err for text in says), err
    assert err.count("waiting up to") == 1, "said once, not at every retry"
    assert not list(out.glob("frame_*")) and not (out / "frames.json").exists()


def test_capture_saves_bayer_frames_as_dng(usb_bus, tmp_path, capsys):
    emu = usb_bus(PS3EyeEmulator())
    out = tmp_path / "frames"
    rc = _returns(lambda: main(["capture", "--source", "ps3eye:320x240@60:bayer", "--frames", "3", "--out",
                                str(out)]), "eyefuse capture --source ps3eye:320x240@60:bayer")
    assert rc == 0, capsys.readouterr().err
    side = json.loads((out / "frames.json").read_text())
    assert [r["pixel_format"] for r in side["frames"]] == ["BAYER16"] * 3
    first = emu.stream_first_frame
    for r in side["frames"]:
        frame = read_dng(out / r["file"])
        assert frame.raw.cfa_pattern == "GRBG" and frame.raw.white_level == 255
        assert np.array_equal(frame.pixels, emu.expected_bayer(first + r["seq"]))


# -- Bayer mode ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("w,h", [(640, 480), (320, 240)])
def test_bayer_mode_streams_the_mosaic_with_raw_meta(w, h):
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=w, height=h, fps=60, pixel_format=BAYER)
    cam.open()
    try:
        assert emu.raw8 and emu.sensor_reg(0x12) & 0x03 == 0x01 and emu.sensor_reg(0x67) == 0x02
        assert emu.frame_limit == w * h, "the bridge's frame size is one 8-bit frame"
        assert (emu.bridge_reg(0xC2), emu.bridge_reg(0xC3)) == (0x01, 0x01), "PS3EYEDriver's 8-bit input"
        assert not emu.sensor_reg(0x64) & 0x1C, "no gamma, interpolation or colour matrix: linear samples"
        first = emu.stream_first_frame
        frames = [cam.read() for _ in range(5)]
        info = cam.describe()
    finally:
        cam.close()
    for i, f in enumerate(frames):
        assert f.pixel_format is BAYER and f.pixels.shape == (h, w) and f.pixels.dtype == np.uint16
        assert np.array_equal(f.pixels, emu.expected_bayer(first + i)), "the 8-bit values, not scaled"
        assert f.raw.cfa_pattern == emu.expected_cfa(first + i) == "GRBG"
        assert (f.raw.white_level, f.raw.black_level, f.raw.bits_per_sample) == (255, (0.0,) * 4, 8)
        assert f.raw.exposure_time_s is None and f.raw.noise_profile is None, "auto exposure: not known"
    assert info.pixel_format is BAYER and "Bayer GRBG" in info.detail
    assert cam.stats().frames == 5 and emu.problems == []


def test_bayer_pattern_follows_the_flips():
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=320, height=240, pixel_format=BAYER)
    cam.open()
    try:
        seen = {}
        for hflip in (False, True):
            for vflip in (False, True):
                cam.set_flip(hflip, vflip)
                f = cam.read()
                n = emu.frames_started - 1
                assert np.array_equal(f.pixels, emu.expected_bayer(n))
                assert f.raw.cfa_pattern == emu.expected_cfa(n)
                seen[hflip, vflip] = f.raw.cfa_pattern
    finally:
        cam.close()
    assert seen == {(False, False): "GRBG", (True, False): "RGGB", (False, True): "BGGR", (True, True): "GBRG"}


def test_bayer_manual_exposure_is_in_the_raw_meta():
    emu = PS3EyeEmulator()
    cam = _camera(emu, width=640, height=480, fps=60, pixel_format=BAYER,
                  controls=PS3EyeControls(auto_exposure=False, exposure=255))
    cam.open()
    try:
        assert cam.read().raw.exposure_time_s == pytest.approx(1 / 60), "510 rows: the whole 510-row frame"
        cam.set_exposure(60)
        assert cam.read().raw.exposure_time_s == pytest.approx(120 / 510 / 60)
        cam.set_auto_exposure(True)
        assert cam.read().raw.exposure_time_s is None
    finally:
        cam.close()


def test_bayer_frames_feed_the_burst_path():
    emu = PS3EyeEmulator()
    cam = open_source("ps3eye:320x240@60:bayer")
    cam = PS3EyeCamera(cam.config, backend=emu)
    cam.open()
    try:
        burst = [cam.read() for _ in range(4)]
    finally:
        cam.close()
    assert check_burst(burst, ref=3) == []
    planes = normalise(burst[-1].pixels, burst[-1].raw)
    assert planes.shape == (4, 120, 160) and 0.0 <= planes.min() and planes.max() <= 1.0


def test_open_source_parses_the_bayer_mode():
    for spec, size in (("ps3eye:bayer", (640, 480)), ("ps3eye:640x480@60:bayer", (640, 480)),
                       ("ps3eye:bayer:320x240@100", (320, 240))):
        cfg = open_source(spec).config
        assert cfg.pixel_format is BAYER and (cfg.width, cfg.height) == size
    assert open_source("ps3eye:320x240").config.pixel_format is PixelFormat.YUYV
    with pytest.raises(SourceInvalid, match="WIDTHxHEIGHT"):
        open_source("ps3eye:raw")
    with pytest.raises(SourceInvalid, match="YUYV or raw Bayer"):
        PS3EyeCamera(PS3EyeConfig(pixel_format=PixelFormat.BGR8))


# -- the emulator: what it sends follows the registers and the faults set -----------------------------------
def _start_raw(emu: PS3EyeEmulator, size=(320, 240), pixel_format=PixelFormat.YUYV) -> tuple[usb.core.Device, Bridge]:
    """Program the emulated camera as the driver's register tables say and start it, leaving the bulk
    stream to the test."""
    dev = usb.core.find(idVendor=0x1415, idProduct=0x2000, backend=emu)
    usb.util.claim_interface(dev, 0)
    bridge = Bridge(dev, emu.clock)
    bridge.write(0xF1, 0x42)
    mode, fmt = MODES[size], FORMATS[pixel_format]
    for reg, value in (*BRIDGE_INIT, *bridge_start_sequence(mode, fmt)):
        bridge.write(reg, value)
    for reg, value in sensor_start_sequence(mode, fmt):
        bridge.sccb_write(reg, value)
    bridge.write(0xE0, 0x00)
    return dev, bridge


def _raw_frame(dev: usb.core.Device) -> list[bytes]:
    """The payloads of the next frame, as they come off the bulk endpoint (up to its end-of-frame)."""
    payloads: list[bytes] = []
    while True:
        data = bytes(dev.read(0x81, 16384, 1000))
        for off in range(0, len(data), 2048):
            payloads.append(data[off:off + 2048])
            if payloads[-1][1] & 0x02:
                return payloads


def _pixels(payloads: list[bytes]) -> bytes:
    return b"".join(p[p[0]:] for p in payloads)


def test_emulator_sends_the_format_and_size_the_registers_say():
    emu = PS3EyeEmulator()
    dev, bridge = _start_raw(emu, (320, 240), PixelFormat.YUYV)
    payloads = _raw_frame(dev)
    assert all(p[0] == 12 and p[1] & 0xFE == 0x8C for p in payloads[:-1]) and payloads[-1][1] & 0xFE == 0x8E
    assert _pixels(payloads) == emu.expected_yuyv(emu.frames_started - 1).tobytes()
    bridge.write(0xE0, 0x09)
    for reg, value in ((0x1C, 0x03), (0x1D, 0x00), (0x1D, 0x10), (0x1D, 0x00)):  # frame limit 4096 words
        bridge.write(reg, value)
    bridge.write(0xE0, 0x00)
    assert len(_pixels(_raw_frame(dev))) == 16384, "the bridge ends a frame at its frame size limit"
    usb.util.dispose_resources(dev)

    emu = PS3EyeEmulator()
    dev, bridge = _start_raw(emu, (320, 240), PixelFormat.BAYER16)
    frame = _pixels(_raw_frame(dev))
    assert frame == emu.expected_bayer(emu.frames_started - 1).tobytes() and len(frame) == 320 * 240
    bridge.write(0xE0, 0x09)
    bridge.sccb_write(0x67, 0x00)  # the sensor sends Bayer, but not through the RAW8 output
    bridge.write(0xE0, 0x00)
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(0x81, 16384, 50)
    assert "DSP_Ctrl4" in emu.problems[-1]
    usb.util.dispose_resources(dev)


def test_emulator_header_styles_and_stream_faults():
    emu = PS3EyeEmulator()
    dev, _ = _start_raw(emu)
    styles = ((HeaderStyle(length=12, scr=False), (12, 0x84)), (HeaderStyle(length=2, pts=False, scr=False), (2, 0x80)),
              (HeaderStyle(length=6, scr=False), (6, 0x84)), (HeaderStyle(error=True), (12, 0xCC)))
    for style, head in styles:
        emu.set_headers(style)
        payloads = _raw_frame(dev)
        assert all((p[0], p[1] & 0xFC) == head for p in payloads), style
        assert _pixels(payloads) == emu.expected_yuyv(emu.frames_started - 1).tobytes()
    emu.set_headers()
    emu.zero_length_reads()
    assert dev.read(0x81, 16384, 1000).tobytes() == b"", "a zero-length read"
    emu.zero_length_reads(False)
    emu.halt_endpoint()
    with pytest.raises(usb.core.USBError) as err:
        dev.read(0x81, 16384, 1000)
    assert err.value.errno == 32, "EPIPE, as libusb reports a halted endpoint"
    with pytest.raises(usb.core.USBError):
        dev.read(0x81, 16384, 1000)
    dev.clear_halt(0x81)
    assert emu.halts_cleared == 1
    assert _raw_frame(dev)[0][0] == 12, "after clear_halt the stream goes on"
    usb.util.dispose_resources(dev)

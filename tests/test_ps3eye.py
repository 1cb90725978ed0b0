"""The PS3 Eye driver, run unchanged through real pyusb against an emulated camera (tests/ps3eye_emulator.py)."""
import re

import numpy as np
import pytest

from capture.clock import FakeClock
from capture.convert import to_bgr8
from capture.errors import DeviceDisconnected, FrameDecodeError, SourceInvalid, SourceUnavailable
from capture.frame import PixelFormat
from capture.ps3eye import (UDEV_RULE, MODES, PS3EyeCamera, PS3EyeConfig, PS3EyeControls, choose_rate,
                            parse_payload_header, probe_ps3eye)
from capture.ring_buffer import RingBuffer
from capture.sources import open_source
from capture.worker import CaptureState, CaptureWorker, RetryPolicy
from tests.conftest import DEADLINE_S, eventually
from tests.ps3eye_emulator import PS3EyeEmulator

FAST_RETRY = RetryPolicy(initial_s=0.02, max_s=0.05)


@pytest.fixture(autouse=True)
def _threads_end(no_leaked_threads):
    yield


def _camera(emu, **config) -> PS3EyeCamera:
    return PS3EyeCamera(PS3EyeConfig(backend=emu, **config))


def _retries(message: str) -> int:
    """The attempt number in a retrying worker's message ("... (retry 3)"), 0 when there is none."""
    m = re.search(r"\(retry (\d+)\)", message)
    return int(m.group(1)) if m else 0


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
    assert (st.frames, st.dropped, st.bad_payloads) == (300, 0, 0)
    info = cam.describe()
    assert (info.kind, info.width, info.height, info.fps) == ("ps3eye", 640, 480, 60.0)
    assert info.pixel_format is PixelFormat.YUYV
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
        assert cam.sensor_id == 0x7721
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
    ("corrupt_header", 0, "corrupt"),
    ("corrupt_header", -1, "corrupt"),
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
        assert cam.stats().frames == 5 and cam.stats().dropped == 1
        assert (cam.stats().bad_payloads == 1) == (fault == "corrupt_header")
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
    full = bytes((12, 0x8C | 0x03)) + (1234).to_bytes(4, "little") + bytes(6) + b"data"
    h = parse_payload_header(full)
    assert (h.length, h.fid, h.eof, h.error, h.pts) == (12, 1, True, False, 1234)
    pts_only = parse_payload_header(bytes((6, 0x84)) + bytes(4))
    assert (pts_only.length, pts_only.fid, pts_only.eof) == (6, 0, False)
    assert parse_payload_header(bytes((2, 0x80))).pts is None
    assert parse_payload_header(bytes((0x5A,)) + full[1:]) is None, "length disagrees with the flags"
    assert parse_payload_header(bytes((12, 0x8C))) is None, "shorter than its header"
    assert parse_payload_header(b"\x0c") is None


def test_without_a_backend_open_explains_itself():
    if probe_ps3eye().status in ("available", "found", "no permission"):
        pytest.skip("a real PS3 Eye is attached to this machine")
    with pytest.raises((SourceInvalid, SourceUnavailable), match="no libusb backend|no PS3 Eye found"):
        PS3EyeCamera().open()

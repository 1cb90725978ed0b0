"""Recorder: real timestamps, side by side, counted drops, full disks at the OS boundary, clean stops."""
from __future__ import annotations

import dataclasses
import errno
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import app.recorder
from app.recorder import (
    Recorder, RecorderConfig, RecorderError, RecorderState, RecordQueue, compose_frame, playable_end_for,
)
from capture.clock import FakeClock
from capture.ring_buffer import RingBuffer
from engine.metrics import psnr
from engine.processor import BicubicProcessor, Result
from engine.worker import EngineWorker, WorkerConfig
from tests.conftest import DEADLINE_S, eventually, make_bgr_frame
from tests.media import decode_all

W, H = 160, 120  # input; outputs are 2x


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield


def scene(i: int, w: int = W, h: int = H) -> np.ndarray:
    """A smooth moving gradient (compresses well, so decoded frames can be compared)."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (x + 3 * i) % 256
    img[..., 1] = (y + 0 * x + 2 * i) % 256
    img[..., 2] = 128
    return img


def result(i: int, t_ns: int) -> Result:
    before = scene(i)
    after = cv2.resize(before, (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    return Result((), before, after, i, t_ns, t_ns, t_ns, {}, "test")


def capture_times(n: int, fps: float = 30.0, gaps: dict[int, float] | None = None, t0: int = 10**12) -> list[int]:
    """Capture times in ns at `fps`, with extra seconds of silence before frame k for k in gaps."""
    out, t = [], float(t0)
    for k in range(n):
        t += (gaps or {}).get(k, 0.0) * 1e9
        out.append(int(t))
        t += 1e9 / fps
    return out


def decode(path: Path) -> tuple[list[float], list[np.ndarray], float]:
    """(frame times in s, BGR frames, container duration in s) of a recording."""
    with av.open(str(path)) as c:
        times, frames = [], []
        for f in c.decode(video=0):
            times.append(float(f.pts * f.time_base))
            frames.append(f.to_ndarray(format="bgr24"))
        return times, frames, c.duration / 1e6 if c.duration else float("nan")


def record(results, config: RecorderConfig, opener=None) -> Recorder:
    # On a FakeClock that nothing moves, stop() drains the whole queue however slowly this machine
    # encodes (the drain's time limit has a test of its own).
    rec = Recorder(config, opener=opener, clock=FakeClock())
    rec.start()
    for r in results:
        rec.queue.put(r)  # blocking put: these tests want every frame written
    rec.stop(timeout=DEADLINE_S)
    return rec


def test_h264_mp4_plays_at_capture_speed(tmp_path):
    n = 90
    times = capture_times(n, gaps={45: 0.5})  # the camera stalled half a second mid-way
    rec = record([result(i, t) for i, t in enumerate(times)], RecorderConfig(tmp_path / "a.mp4"))
    st = rec.status()
    assert st.state is RecorderState.FINISHED and st.message is None
    assert (st.frames, st.dropped, st.codec, st.size) == (n, 0, "h264", (2 * W, 2 * H))
    assert st.bytes == (tmp_path / "a.mp4").stat().st_size > 0
    decoded_t, frames, duration = decode(tmp_path / "a.mp4")
    assert len(frames) == n, "every frame is in the file"
    expected = [(t - times[0]) / 1e9 for t in times]
    assert np.allclose(decoded_t, expected, atol=1e-3), "PTS are the capture times"
    assert duration == pytest.approx(expected[-1] + 1 / 30, abs=0.05)
    assert st.elapsed_s == pytest.approx(expected[-1], abs=1e-6)
    for i in (0, 44, 45, 89):
        assert psnr(frames[i], result(i, 0).output) > 30, f"frame {i} decodes to what was recorded"


def test_side_by_side_puts_the_upscaled_input_left_of_the_output(tmp_path):
    r = result(3, 0)
    sbs = compose_frame(r, side_by_side=True)
    assert sbs.shape == (2 * H, 4 * W, 3)
    assert np.array_equal(sbs[:, : 2 * W], r.input_bgr.repeat(2, 0).repeat(2, 1)), "nearest: pixel for pixel"
    assert np.array_equal(sbs[:, 2 * W :], r.output)
    rec = record([result(i, t) for i, t in enumerate(capture_times(5))],
                 RecorderConfig(tmp_path / "sbs.mp4", side_by_side=True))
    assert rec.status().size == (4 * W, 2 * H)
    _, frames, _ = decode(tmp_path / "sbs.mp4")
    assert len(frames) == 5 and frames[0].shape == (2 * H, 4 * W, 3)


def test_mjpeg_mkv_when_asked(tmp_path):
    rec = record([result(i, t) for i, t in enumerate(capture_times(10))],
                 RecorderConfig(tmp_path / "m.mp4", codec="mjpeg"))
    st = rec.status()
    assert st.path == tmp_path / "m.mkv" and st.codec == "mjpeg" and st.frames == 10
    t, frames, _ = decode(st.path)
    assert len(frames) == 10 and psnr(frames[9], result(9, 0).output) > 30
    assert t[-1] == pytest.approx(9 / 30, abs=2e-3)


def test_auto_falls_back_to_mjpeg_without_an_h264_encoder(tmp_path, monkeypatch):
    real = av.codec.Codec

    def no_x264(name, mode="r"):
        if name in ("libx264", "h264") and mode == "w":
            raise av.error.FFmpegError(-1, f"Unknown encoder '{name}'")  # what a build without it says
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", no_x264)
    rec = Recorder(RecorderConfig(tmp_path / "x.mp4"))
    assert rec.codec == "mjpeg" and rec.path.suffix == ".mkv"
    assert "no H.264 encoder" in rec.status().message
    rec.stop()


def test_frames_the_recorder_could_not_keep_up_with_are_counted(tmp_path):
    rec = Recorder(RecorderConfig(tmp_path / "d.mp4", queue_size=4))
    times = capture_times(10)
    for i, t in enumerate(times):  # the recorder thread is not running yet: it cannot keep up at all
        rec.offer(result(i, t))  # never blocks
    assert rec.status().dropped == 6
    rec.start()
    st = rec.stop(timeout=DEADLINE_S)
    assert (st.frames, st.dropped) == (4, 6)
    t, frames, _ = decode(st.path)
    assert len(frames) == 4
    assert t == pytest.approx([(x - times[6]) / 1e9 for x in times[6:]], abs=1e-3), "the newest four were kept"


def test_engine_feeds_the_record_queue_without_waiting(tmp_path):
    """The engine's record queue is the recorder's: its drop-oldest put never blocks the engine."""
    ring = RingBuffer(8)
    q = RecordQueue(3)
    worker = EngineWorker(ring, BicubicProcessor(), record_queue=q, config=WorkerConfig(poll_s=0.02))
    worker.start()
    try:
        for seq in range(12):
            ring.put(make_bgr_frame(seq, 16, 16))
            eventually(lambda: worker.stats().processed + worker.stats().skipped >= seq + 1,
                       f"the engine taking or skipping frame {seq}")
    finally:
        assert worker.stop(DEADLINE_S)
    processed = worker.stats().processed
    assert q.qsize() == 3 and q.dropped == processed - 3


class _FillingFile(io.FileIO):
    """A real file on a disk that fills up: writes past `capacity` bytes fail with ENOSPC, as write(2) does."""

    def __init__(self, path, capacity: int):
        super().__init__(path, "w+")
        self.capacity = capacity

    def write(self, b):
        end = self.tell() + len(b)
        if end > self.capacity:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def test_a_disk_that_fills_mid_recording_stops_it_with_a_message(tmp_path):
    statuses = []
    rec = Recorder(RecorderConfig(tmp_path / "full.mp4", keyframe_s=0.2),
                   opener=lambda p: _FillingFile(p, 60_000), on_status=statuses.append)
    rec.start()
    times = capture_times(300)
    for i, t in enumerate(times):
        if not rec.alive:
            break
        rec.queue.put(result(i, t), timeout=DEADLINE_S)
    assert rec.stop(timeout=DEADLINE_S).state is RecorderState.FAILED
    st = rec.status()
    assert "disk is full" in st.message and str(rec.path) in st.message and "free some space" in st.message.lower()
    assert 0 < st.frames < 300
    assert statuses[-1].state is RecorderState.FAILED
    rec.offer(result(0, times[-1]))  # a producer that has not noticed yet is not hurt
    assert rec.queue.qsize() == 0
    _, frames, _ = decode(rec.path)  # fragmented MP4: what reached the disk still plays
    assert len(frames) >= 1


def test_dev_full_stops_recording_at_the_first_write(tmp_path):
    rec = Recorder(RecorderConfig(Path("/dev/full")))
    rec.start()  # opening /dev/full works; writing to it fails with ENOSPC, as on a full disk
    times = capture_times(60)
    for i, t in enumerate(times):
        rec.offer(result(i, t))
        if not rec.alive:
            break
        time.sleep(0.005)
    st = rec.stop(timeout=DEADLINE_S)
    assert st.state is RecorderState.FAILED and "disk is full" in st.message


def test_stop_while_frames_keep_coming_leaves_a_complete_file(tmp_path):
    rec = Recorder(RecorderConfig(tmp_path / "s.mp4"))
    rec.start()
    stop_feeding = threading.Event()
    offered = []

    def feed():
        i = 0
        while not stop_feeding.is_set():
            rec.offer(result(i, time.monotonic_ns()))
            offered.append(i)
            i += 1
            time.sleep(1 / 60)

    feeder = threading.Thread(target=feed, name="test-feeder")
    feeder.start()
    try:
        eventually(lambda: rec.status().frames >= 20 or not rec.alive, "the recorder writing 20 frames")
        st = rec.stop(timeout=DEADLINE_S)  # frames are still arriving
    finally:
        stop_feeding.set()
        feeder.join(DEADLINE_S)
    assert not feeder.is_alive()
    assert st.state is RecorderState.FINISHED
    _, frames, duration = decode(st.path)
    assert len(frames) == st.frames >= 20
    assert st.frames + st.dropped <= len(offered), "every frame is written or counted, none twice"
    assert duration > 0


@pytest.mark.parametrize("code,says", [
    (errno.EACCES, "cannot record.*Permission denied.*choose a writable folder"),
    (errno.EROFS, "cannot record.*Read-only file system.*choose a writable folder"),
    (errno.ENOSPC, "cannot record.*the disk is full.*No space left on device.*Free some space"),
])
def test_a_file_the_os_refuses_is_refused_at_start_with_what_to_do(tmp_path, monkeypatch, code, says):
    """A folder we may not write, a read-only disk, a full disk: the OS refuses to create the file.

    The refusal is injected where the recorder's default opener asks the OS for the file (its open()),
    as open(2) reports it, so the test runs the same for any user, root included (root may write to a
    folder without write permission, so a real chmod cannot stand in for one)."""
    path = tmp_path / "rec" / "x.mp4"
    asked = []

    def refusing_open(file, mode="r", *args, **kwargs):
        asked.append((Path(file), mode))
        raise OSError(code, os.strerror(code), str(file))

    monkeypatch.setattr(app.recorder, "open", refusing_open, raising=False)
    rec = Recorder(RecorderConfig(path))
    with pytest.raises(RecorderError, match=says):
        rec.start()
    assert asked == [(path, "w+b")], "the default opener creates the file for writing and reading back"
    assert not rec.alive and rec.status().state is RecorderState.IDLE
    assert rec.stop().state is RecorderState.FINISHED and not path.exists()


def test_drain_at_stop_gives_up_after_its_time_and_counts_the_rest(tmp_path):
    """stop() encodes what is queued for drain_timeout_s of the recorder's clock, then drops the rest,
    counted, so a slow disk cannot hold up the app's exit for ever. Each frame here takes a second of
    that clock to write, so three of the ten queued fit in the three seconds."""
    clock = FakeClock()

    class SlowDisk(Recorder):
        def _write(self, result):
            super()._write(result)
            clock.advance(1.0)

    rec = SlowDisk(RecorderConfig(tmp_path / "slow.mp4", drain_timeout_s=3.0, queue_size=16), clock=clock)
    times = capture_times(10)
    for i, t in enumerate(times):
        rec.offer(result(i, t))  # all ten are queued before the thread runs
    rec._stop.set()  # stop asked before the thread starts: it goes straight to draining, all ten at once
    rec.start()
    st = rec.stop(timeout=DEADLINE_S)
    assert st.state is RecorderState.FINISHED
    assert (st.frames, st.dropped) == (3, 7), "3 s of a 1 s-per-frame drain, the other 7 counted"
    t, frames, _ = decode(st.path)
    assert len(frames) == 3 and t == pytest.approx([(x - times[0]) / 1e9 for x in times[:3]], abs=1e-3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is a Linux feature")
def test_the_recorder_thread_runs_below_the_display_path(tmp_path):
    """Its nice value (and so its encoder threads') is raised by config.nice; the caller's is not."""

    def nice_here() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = []  # (state, nice) of on_status calls made from the recorder thread
    me = threading.get_native_id()

    def on_status(st):
        if threading.get_native_id() != me:
            seen.append((st.state, nice_here()))

    mine = nice_here()
    rec = Recorder(RecorderConfig(tmp_path / "n.mp4", nice=5), on_status=on_status)
    rec.start()
    rec.offer(result(0, 10**12))
    assert rec.stop(timeout=DEADLINE_S).frames == 1
    assert seen and all(n == min(19, mine + 5) for _, n in seen), seen
    assert nice_here() == mine


# -- a recording stays playable to its last complete fragment, whatever stops it -------------------
def noisy(i: int, t_ns: int, rng: np.random.Generator) -> Result:
    """A result whose picture is noise: it barely compresses, so a few frames fill a small disk and
    each fragment is large enough that the disk fills in the middle of one."""
    return dataclasses.replace(result(i, t_ns), output=rng.integers(0, 256, (2 * H, 2 * W, 3), dtype=np.uint8))


class _DiskWithRoom(io.FileIO):
    """A real file on a disk with `room` bytes free, failing as write(2) does on a filling disk: the
    write that reaches the end takes what fits and returns that short count, the next raises ENOSPC."""

    def __init__(self, path, room: int):
        super().__init__(path, "w+")
        self.room = room

    def write(self, b):
        left = self.room - self.tell()
        if left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(memoryview(b)[:left])


def fill_until_failed(rec: Recorder, seed: int = 0) -> int:
    """Feed noise frames until the recorder gives up; how many were offered."""
    rng = np.random.default_rng(seed)
    rec.start()
    for i, t in enumerate(capture_times(3000)):
        if not rec.alive:
            return i
        rec.queue.put(noisy(i, t, rng), timeout=DEADLINE_S)
    pytest.fail("the recorder never ran out of room")


@pytest.mark.parametrize("codec", ["h264", "mjpeg"])
def test_a_disk_that_fills_mid_fragment_leaves_a_file_that_decodes_to_its_last_frame(tmp_path, codec):
    """ENOSPC injected at the OS boundary (the recorder's file object, as write(2) reports it), so it
    runs for any user and anywhere. The file left behind decodes frame by frame without an error,
    and holds exactly the frames the status says were written."""
    rec = Recorder(RecorderConfig(tmp_path / "full.mp4", codec=codec, keyframe_s=0.2),
                   opener=lambda p: _DiskWithRoom(p, 1_000_000), clock=FakeClock())
    offered = fill_until_failed(rec)
    st = rec.stop(timeout=DEADLINE_S)
    assert st.state is RecorderState.FAILED and "disk is full" in st.message
    assert st.bytes == st.path.stat().st_size <= 1_000_000
    assert 0 < st.frames < offered
    assert decode_all(st.path) == st.frames, "every frame the status counts decodes, and nothing after it"
    assert st.frames + st.dropped <= offered


def test_a_real_full_disk_leaves_a_file_that_decodes_to_its_last_frame(tmp_path):
    """The same on a real 3 MiB tmpfs, where the kernel decides how much of the last write fits."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here; the injected-ENOSPC test covers a full disk")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the injected-ENOSPC test "
                    f"covers a full disk")
    try:
        rec = Recorder(RecorderConfig(disk / "full.mp4"), clock=FakeClock())
        offered = fill_until_failed(rec)
        st = rec.stop(timeout=DEADLINE_S)
        assert st.state is RecorderState.FAILED and "disk is full" in st.message
        assert 0 < st.frames < offered
        assert decode_all(st.path) == st.frames
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("codec,header", [("h264", "moov"), ("mjpeg", "Tracks")])
def test_the_playable_end_is_found_however_the_writes_are_cut(tmp_path, codec, header):
    """PlayableEnd follows the container's top-level units from any chunking of the bytes: fed any
    prefix of a recording in odd pieces, it ends at the last unit end within it (found byte by byte),
    and each prefix it calls playable decodes without an error."""
    rec = record([result(i, t) for i, t in enumerate(capture_times(40))],
                 RecorderConfig(tmp_path / "p.mp4", codec=codec, keyframe_s=0.2))
    data = rec.path.read_bytes()
    walker, unit_ends = playable_end_for(codec), []
    for i in range(len(data)):
        walker.feed(data[i:i + 1])
        if walker.end and (not unit_ends or walker.end != unit_ends[-1]):
            unit_ends.append(walker.end)
    assert not walker.lost and unit_ends[-1] == len(data)
    assert len(unit_ends) >= 5, f"fragments after the {header}: a playable end after each"
    rng = np.random.default_rng(1)
    for k in rng.integers(1, len(data), 20):
        walker = playable_end_for(codec)
        cuts = np.sort(rng.integers(0, k, 7))
        for a, b in zip([0, *cuts], [*cuts, k]):
            walker.feed(data[a:b])
        assert walker.end == max([0] + [e for e in unit_ends if e <= k]), f"the first {k} bytes"
    for end in unit_ends[2:: max(1, len(unit_ends) // 6)]:  # after the header: each with frames
        prefix = tmp_path / f"prefix{rec.path.suffix}"
        prefix.write_bytes(data[:end])
        assert decode_all(prefix) > 0, f"the first {end} bytes"


def test_a_recording_that_got_no_frame_leaves_no_empty_file(tmp_path):
    """A processor that failed every frame gives the recorder nothing to encode: the stop says so
    and removes the empty file rather than leaving a 0-byte .mp4 that plays nothing."""
    rec = Recorder(RecorderConfig(tmp_path / "none.mp4"), clock=FakeClock())
    rec.start()
    assert (tmp_path / "none.mp4").exists(), "the file is made at start, so a bad path is refused at once"
    error = Result((), scene(0), None, 0, 10**12, 10**12, 10**12, {}, "test", error="failed")
    rec.queue.put(error)
    st = rec.stop(timeout=DEADLINE_S)
    assert st.state is RecorderState.FINISHED and st.frames == 0
    assert "nothing was recorded" in st.message and "removed" in st.message
    assert not (tmp_path / "none.mp4").exists()

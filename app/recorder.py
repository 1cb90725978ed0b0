"""Recorder: enhanced video to a file on its own thread, fed through a bounded drop-oldest queue.

    engine thread --put_nowait--> RecordQueue (bounded; full: drop the oldest, count it) --> recorder thread
                                                                                         encode -> mux -> file

H.264 in MP4 through PyAV (libx264, ultrafast, zero-latency), or MJPEG in MKV where no H.264 encoder
exists. Timestamps come from capture times (PTS = capture time - first capture time, 1/90000 s), so
playback runs at the speed things happened, whatever rate the engine managed. `stop()` drains what is
queued, flushes the encoder and closes the file properly.

The file is playable up to its last complete fragment whatever ends the recording. The MP4 is
fragmented (a moof+mdat per keyframe, one a second), the MKV is a run of clusters, and every byte goes
through a `PlayableFile` that follows the container's top-level structure as it is written: when a
write fails (a full disk: ENOSPC, possibly after a short write), the file is cut back to the end of
the last complete fragment, so a player or decoder reads every frame in it and no half fragment after.

Nothing is lost silently: frames dropped because the recorder fell behind, and frames still queued
when a stop had to give up waiting, are counted in `RecorderStatus.dropped`; after a failure `frames`
is what the file holds. A write error ends the recording with a message in FAILED state; whoever
feeds the queue keeps running. No Qt here: the window polls `status()` or passes `on_status`.
"""
from __future__ import annotations

import enum
import errno
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable

import cv2
import numpy as np

from capture.clock import SYSTEM_CLOCK, Clock
from engine.processor import Result

TIME_BASE = Fraction(1, 90000)  # the usual video clock: capture times keep sub-millisecond precision
_FRAGMENTED_MP4 = "frag_keyframe+empty_moov+default_base_moof"


class RecorderState(str, enum.Enum):
    IDLE = "idle"  # made, not started
    RECORDING = "recording"
    STOPPING = "stopping"  # draining the queue and closing the file
    FINISHED = "finished"  # the file is complete
    FAILED = "failed"  # a write or encode error ended the recording; `message` says why


@dataclass(frozen=True)
class RecorderConfig:
    """path: the file to write (its suffix is changed to .mkv when MJPEG is used).
    side_by_side: record the input (upscaled, nearest) beside the output instead of the output alone.
    codec: "auto" (H.264/MP4 when available, else MJPEG/MKV), "h264" or "mjpeg".
    queue_size: results waiting for the encoder; when full the oldest is dropped and counted.
    crf / preset: H.264 quality and speed (ultrafast leaves the CPU to the engine).
    keyframe_s: a keyframe (and an MP4 fragment) this often.
    encoder_threads: threads the encoder may use (0: FFmpeg decides, usually one per core and more).
    drain_timeout_s: how long stop() keeps encoding what is queued before counting the rest dropped.
    nice: how much lower than the app the recorder thread (and the encoder threads it starts) runs
        on Linux, so the capture -> engine -> display path gets the cores first when both want them;
        the queue absorbs the wait, and the encoder still has every idle cycle. 0 leaves it equal.
    """

    path: Path
    side_by_side: bool = False
    codec: str = "auto"
    queue_size: int = 64
    crf: int = 23
    preset: str = "ultrafast"
    keyframe_s: float = 1.0
    fps_hint: float = 30.0
    # One: x264 ultrafast keeps up at 1280x960 on one core (about 12 ms a frame), and two sliced
    # threads took both cores at once from the engine: p99 capture-to-display 59.6 -> 55.2 ms in
    # 60 s live runs with one. 0 lets FFmpeg pick (more).
    encoder_threads: int = 1
    drain_timeout_s: float = 3.0
    nice: int = 5


@dataclass(frozen=True)
class RecorderStatus:
    """frames: frames written (after a failed write: the frames the file holds). dropped: frames
    offered but never written (the recorder fell behind, or they were still queued when a stop gave
    up). bytes: file size so far. elapsed_s: capture-time span of the recording (what playback will
    last). message: why it failed, or a note (a fallback; nothing recorded, when no frame came: the
    empty file is then removed)."""

    state: RecorderState
    path: Path
    codec: str
    frames: int
    dropped: int
    bytes: int
    elapsed_s: float
    size: tuple[int, int] | None  # (width, height) of the video
    message: str | None


class RecorderError(Exception):
    """The recording could not start (bad path, no encoder); the message says what to do."""


class RecordQueue(queue.Queue):
    """A bounded queue whose non-blocking put never fails: when full it drops the oldest item and
    counts it, so a producer that must not wait (the engine thread) can always hand over the newest.
    After close(), puts are ignored (the recording is over; those frames were never part of it)."""

    def __init__(self, maxsize: int):
        if maxsize <= 0:
            raise ValueError(f"RecordQueue must be bounded, got maxsize={maxsize}")
        super().__init__(maxsize)
        self.dropped = 0
        self.closed = False

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """block=False (put_nowait): never waits, drops the oldest when full. block=True: waits for
        room like queue.Queue (raising queue.Full after `timeout`). Either way a no-op once closed."""
        with self.not_full:
            if block:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._qsize() >= self.maxsize and not self.closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise queue.Full
                    self.not_full.wait(remaining)
            if self.closed:
                return
            if self._qsize() >= self.maxsize:
                self._get()  # the oldest goes; its task is done as far as join() is concerned
                self.unfinished_tasks -= 1
                self.dropped += 1
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def close(self) -> int:
        """Refuse further items and discard the queued ones; returns how many were discarded."""
        with self.mutex:
            self.closed = True
            n = self._qsize()
            self.queue.clear()
            self.unfinished_tasks = max(0, self.unfinished_tasks - n)
            self.all_tasks_done.notify_all()
            self.not_full.notify_all()
            return n


# -- pure helpers -----------------------------------------------------------------------------
def lower_thread_priority(steps: int) -> None:
    """Raise the calling thread's nice value by `steps` (Linux: nice is per thread, and threads it
    starts inherit it). Lowering one's own priority needs no privilege; where the OS has no
    per-thread nice this does nothing."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except (AttributeError, OSError):
        pass


def h264_available() -> bool:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return True
    except Exception:
        return False


def choose_codec(requested: str, path: Path) -> tuple[str, Path, str | None]:
    """('h264' | 'mjpeg', the path to write, a note for the user or None).

    "auto" takes H.264 in MP4 when libx264 is there, else MJPEG in MKV (and says so)."""
    if requested not in ("auto", "h264", "mjpeg"):
        raise RecorderError(f"recording codec {requested!r} is not 'auto', 'h264' or 'mjpeg'")
    if requested in ("auto", "h264") and h264_available():
        return "h264", path, None
    if requested == "h264":
        raise RecorderError("this PyAV/FFmpeg build has no H.264 encoder (libx264); record with codec 'mjpeg' "
                            "(MKV) or install an FFmpeg with libx264")
    mkv = path.with_suffix(".mkv")
    note = None if requested == "mjpeg" else f"no H.264 encoder here: recording MJPEG to {mkv.name}"
    return "mjpeg", mkv, note


def compose_frame(result: Result, side_by_side: bool) -> np.ndarray:
    """The picture to record: result.output (sH, sW, 3), or [input upscaled nearest | output]
    as (sH, 2 sW, 3) uint8 BGR when side_by_side."""
    out = result.output
    if not side_by_side or result.input_bgr is None:
        return out
    h, w = out.shape[:2]
    before = result.input_bgr
    if before.shape[:2] != (h, w):
        before = cv2.resize(before, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.hstack([before, out])


def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> (height, width, 3) for size (width, height): unchanged if it already fits, else
    resized (a processor or source switched mid-recording; the video keeps its size)."""
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def even_size(width: int, height: int) -> tuple[int, int]:
    """4:2:0 video needs even sizes: round down to even (at least 2)."""
    return max(2, width - width % 2), max(2, height - height % 2)


def describe_os_error(exc: OSError, path: Path) -> str:
    """A message for a write failure that says what happened and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"recording stopped: the disk is full writing {path} ({exc.strerror or exc}). "
                f"Free some space or record to another disk; the preview keeps running.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"recording stopped: cannot write {path} ({exc.strerror or exc}); choose a writable folder."
    return f"recording stopped: writing {path} failed: {exc}"


# -- where the playable part of a file ends --------------------------------------------------------
# A header parser returns (element name, header length, total length) once `buf` holds a whole
# header, None while it needs more bytes; total length None: a container whose children follow as
# units of their own (MKV's Segment). It raises ValueError for a structure it cannot follow.
HeaderParser = Callable[[bytes], "tuple[str, int, int | None] | None"]

_EBML_NAMES = {0x1A45DFA3: "EBML", 0x18538067: "Segment", 0x1654AE6B: "Tracks", 0x1F43B675: "Cluster"}


def mp4_box_header(buf: bytes) -> tuple[str, int, int | None] | None:
    """An ISO-BMFF box header: 32-bit size and a four-letter type (size 1: a 64-bit size follows)."""
    if len(buf) < 8:
        return None
    size, kind = int.from_bytes(buf[:4], "big"), buf[4:8].decode("latin-1")
    if size == 1:
        if len(buf) < 16:
            return None
        size, header = int.from_bytes(buf[8:16], "big"), 16
    else:
        header = 8
    if size < header:  # 0 means "to the end of the file": no end to follow
        raise ValueError(f"MP4 box {kind!r} has size {size}")
    return kind, header, size


def _ebml_vint(buf: bytes, at: int, max_len: int, keep_marker: bool) -> tuple[int, int, bool] | None:
    """(value, length, all value bits set) of the EBML variable-length integer at buf[at], or None."""
    if at >= len(buf):
        return None
    first = buf[at]
    length = next((n for n in range(1, max_len + 1) if first & (0x80 >> (n - 1))), None)
    if length is None:
        raise ValueError(f"EBML integer starting with byte {first:#04x} is longer than {max_len} bytes")
    if at + length > len(buf):
        return None
    value = int.from_bytes(buf[at:at + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length, value == (1 << (7 * length)) - 1


def mkv_element_header(buf: bytes) -> tuple[str, int, int | None] | None:
    """A Matroska (EBML) element header: an ID and a size, each a variable-length integer. The
    Segment's children are followed as units; an element of unknown size cannot be followed."""
    ident = _ebml_vint(buf, 0, 4, keep_marker=True)
    if ident is None:
        return None
    size = _ebml_vint(buf, ident[1], 8, keep_marker=False)
    if size is None:
        return None
    name = _EBML_NAMES.get(ident[0], f"{ident[0]:#x}")
    header = ident[1] + size[1]
    if name == "Segment":
        return name, header, None
    if size[2]:
        raise ValueError(f"Matroska element {name} has an unknown size")
    return name, header, header + size[0]


class PlayableEnd:
    """Follows the top-level units of a file written front to back and knows where the last complete
    one ended, once the stream header (MP4 moov, MKV Tracks) is complete: everything up to
    `end` plays, as the fragments (moof+mdat) and clusters after the header each stand alone.
    `leads`: units that do not end a fragment (an MP4 moof describes the mdat that follows it)."""

    def __init__(self, parse_header: HeaderParser, header_unit: str, leads: tuple[str, ...] = ()):
        self._parse, self._header_unit, self._leads = parse_header, header_unit, leads
        self.end = 0  # bytes from the start that form a playable file (0: not even the header yet)
        self.fed = 0  # bytes seen
        self.lost = False  # a structure it could not follow: `end` stays where it was
        self._playable = False
        self._head = bytearray()  # the header being read
        self._unit_end: int | None = None  # where the unit being written ends
        self._name = ""  # the unit being written

    def feed(self, data: bytes) -> None:
        view, i = memoryview(data), 0
        while i < len(view) and not self.lost:
            if self._unit_end is None:
                take = min(len(view) - i, 16 - len(self._head))  # no header is longer than 16 bytes
                self._head += view[i:i + take]
                try:
                    parsed = self._parse(bytes(self._head))
                except ValueError:
                    self.lost = True
                    return
                if parsed is None:
                    i += take
                    self.fed += take
                    continue
                name, header_len, total = parsed
                used = header_len - (len(self._head) - take)  # header bytes that came from this chunk
                start = self.fed - (len(self._head) - take)
                self._head.clear()
                i += used
                self.fed += used
                if total is None:  # a container: its children are the units
                    continue
                self._name, self._unit_end = name, start + total
            else:
                take = min(len(view) - i, self._unit_end - self.fed)
                i += take
                self.fed += take
            if self.fed == self._unit_end:
                self._unit_end = None
                self._playable = self._playable or self._name == self._header_unit
                if self._playable and self._name not in self._leads:
                    self.end = self.fed


def playable_end_for(codec: str) -> PlayableEnd:
    """The PlayableEnd for the container a codec is recorded in (H.264: MP4; MJPEG: MKV)."""
    if codec == "h264":
        return PlayableEnd(mp4_box_header, "moov", leads=("moof",))
    return PlayableEnd(mkv_element_header, "Tracks")


class PlayableFile:
    """The recorder's file: writes go to `raw` whole (short writes are continued, as write(2) may stop
    early on a filling disk), and `playable` follows what was appended. After a write fails,
    `cut_to_playable()` truncates the file to the end of its last complete fragment. Reads, seeks and
    the rest go straight to `raw` (the muxer seeks back to patch headers at the end)."""

    def __init__(self, raw: BinaryIO, playable: PlayableEnd):
        self.raw, self.playable = raw, playable
        self.failed = False
        self._appended = 0  # the file's length as written so far

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        at = self.raw.tell()
        done = 0
        try:
            while done < len(data):
                n = self.raw.write(data[done:])
                if n is None:  # a file-like that does not count: it took it all
                    n = len(data) - done
                if n <= 0:  # a file that took nothing: the disk gave out without saying so
                    raise OSError(errno.ENOSPC, "No space left on device (the write took no bytes)")
                self._follow(at + done, data[done:done + n])
                done += n
        except OSError:
            self.failed = True  # what comes after a failed write is not followed
            raise
        return done

    def _follow(self, at: int, chunk) -> None:
        if at == self._appended:  # appended at the end (not a patch to a header written before)
            if not self.failed:
                self.playable.feed(chunk)
            self._appended += len(chunk)
        elif at + len(chunk) > self._appended:  # past the end from elsewhere: no longer followed
            self.playable.lost = True
            self._appended = at + len(chunk)

    def cut_to_playable(self) -> int | None:
        """Truncate the file after its last complete fragment; the new length, or None when the
        structure was lost or the file cannot be truncated (a device)."""
        if self.playable.lost:
            return None
        try:
            self.raw.truncate(self.playable.end)
            self.raw.seek(self.playable.end)
        except (OSError, ValueError, AttributeError):
            return None
        return self.playable.end

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def seekable(self) -> bool:
        return self.raw.seekable() if hasattr(self.raw, "seekable") else True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return self.raw.readable() if hasattr(self.raw, "readable") else False

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


def read_back(path: Path) -> tuple[int, float] | None:
    """(video frames, seconds from the first to the last) of the recording at `path`, read from the
    file itself; None when it cannot be read back."""
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            time_base = stream.time_base
            pts = [p.pts for p in c.demux(stream) if p.size and p.pts is not None]
    except (OSError, av.error.FFmpegError, ValueError, IndexError):
        return None
    return len(pts), float((max(pts) - min(pts)) * time_base) if pts else 0.0


# -- the recorder ------------------------------------------------------------------------------
class Recorder:
    """One recording: start(), feed `queue` (or offer()), stop(). A Recorder runs once.

    opener: how the file is opened, (path) -> a binary, seekable file object; the recorder writes
    through it (wrapped in a PlayableFile) and closes it. Default: open(path, "w+b", buffering=0).
    on_status: called from the recorder thread when the state changes (keep it quick).
    clock: what stop()'s drain_timeout_s is counted on. Video times and elapsed_s are not read from
    it: they are the frames' capture times, on the clock of the source that stamped them.
    """

    def __init__(self, config: RecorderConfig, opener: Callable[[Path], BinaryIO] | None = None,
                 on_status: Callable[[RecorderStatus], None] | None = None, clock: Clock = SYSTEM_CLOCK):
        if config.queue_size <= 0:
            raise RecorderError(f"queue_size must be positive, got {config.queue_size}")
        self.config = config
        self.codec, self.path, self._note = choose_codec(config.codec, Path(config.path))
        self.queue = RecordQueue(config.queue_size)
        # Unbuffered: a short write on a filling disk reaches PlayableFile as such, not hidden in a buffer.
        self._opener = opener or (lambda p: open(p, "w+b", buffering=0))
        self._on_status = on_status
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = RecorderState.IDLE
        self._message: str | None = self._note
        self._frames = 0
        self._discarded = 0  # queued at a stop that gave up, or after a failure
        self._bytes = 0
        self._t0_ns: int | None = None
        self._t_last_ns: int | None = None
        self._last_pts = -1
        self._size: tuple[int, int] | None = None
        self._file: PlayableFile | None = None
        self._container = None
        self._stream = None

    # -- control (any thread) -------------------------------------------------------------------
    def start(self) -> None:
        """Open the file and start the thread. Raises RecorderError if the file cannot be created."""
        if self._thread is not None:
            raise RuntimeError("Recorder.start() called twice; make a new Recorder for a new recording")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = PlayableFile(self._opener(self.path), playable_end_for(self.codec))
        except OSError as exc:
            raise RecorderError(describe_os_error(exc, self.path).replace("recording stopped", "cannot record")) from exc
        self._set_state(RecorderState.RECORDING)
        self._thread = threading.Thread(target=self._run, name="eyefuse-recorder", daemon=True)
        self._thread.start()

    def offer(self, result: Result) -> None:
        """Hand over a result without waiting (drops the oldest queued one when full)."""
        self.queue.put_nowait(result)

    def stop(self, timeout: float | None = None) -> RecorderStatus:
        """Finish: encode what is queued (for up to drain_timeout_s), flush, close the file.
        Returns the final status. Safe to call more than once and from any thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.config.drain_timeout_s + 5.0)
        elif self._state is RecorderState.IDLE:
            self._discard_queue()
            self._set_state(RecorderState.FINISHED, self._message)
        return self.status()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> RecorderStatus:
        with self._lock:
            elapsed = 0.0
            if self._t0_ns is not None and self._t_last_ns is not None:
                elapsed = (self._t_last_ns - self._t0_ns) / 1e9
            return RecorderStatus(self._state, self.path, self.codec, self._frames,
                                  self.queue.dropped + self._discarded, self._bytes, elapsed, self._size,
                                  self._message)

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        lower_thread_priority(self.config.nice)
        try:
            while True:
                if self._stop.is_set():
                    self._drain()
                    break
                try:
                    result = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._write(result)
                self.queue.task_done()
            self._close_container(flush=True)
            if self._size is None:  # no frame came, so no video was started: an empty file plays nothing
                self._close_file()
                self._message = self._remove_empty_file()
            self._set_state(RecorderState.FINISHED, self._message)
        except OSError as exc:
            self._fail(describe_os_error(exc, self.path))
        except Exception as exc:  # an encoder or library error: a state with a message, not a dead thread
            self._fail(f"recording stopped: {type(exc).__name__}: {exc}")
        finally:
            self._close_file()

    def _remove_empty_file(self) -> str:
        what = "nothing was recorded: no enhanced frame reached the recorder"
        try:
            if self.path.is_file() and self.path.stat().st_size == 0:
                self.path.unlink()
                return f"{what}, so the empty {self.path} was removed"
        except OSError:
            pass
        return what

    def _drain(self) -> None:
        self._set_state(RecorderState.STOPPING, self._message)
        deadline = self._clock.monotonic() + self.config.drain_timeout_s
        while self._clock.monotonic() < deadline:
            try:
                result = self.queue.get_nowait()
            except queue.Empty:
                break
            self._write(result)
            self.queue.task_done()
        self._discard_queue()

    def _discard_queue(self) -> None:
        n = self.queue.close()
        with self._lock:
            self._discarded += n

    def _write(self, result: Result) -> None:
        if result.output is None:  # an error result carries no enhanced picture
            return
        image = compose_frame(result, self.config.side_by_side)
        if self._container is None:
            self._open_container(*even_size(image.shape[1], image.shape[0]))
        image = fit_to(image, self._size)
        import av

        # BT.601 limited-range 4:2:0 by OpenCV: what swscale would make, in half the time. The frame
        # wraps OpenCV's buffer instead of copying it (0.7 ms less per 1280x960 frame); the encoder
        # copies what it keeps, and the frame holds the array until then.
        frame = av.VideoFrame.from_numpy_buffer(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        if self._t0_ns is None:
            self._t0_ns = result.t_capture_ns
        pts = round((result.t_capture_ns - self._t0_ns) * TIME_BASE.denominator / 1e9)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the clock did
        frame.pts, frame.time_base = pts, TIME_BASE
        self._last_pts = pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        with self._lock:
            self._frames += 1
            self._t_last_ns = max(self._t_last_ns or result.t_capture_ns, result.t_capture_ns)
            self._bytes = max(self._bytes, self._tell())

    def _open_container(self, width: int, height: int) -> None:
        import av

        if self.codec == "h264":
            container = av.open(self._file, "w", format="mp4", options={"movflags": _FRAGMENTED_MP4})
            stream = container.add_stream("libx264", rate=round(self.config.fps_hint))
            stream.pix_fmt = "yuv420p"
            stream.codec_context.options = {"preset": self.config.preset, "tune": "zerolatency",
                                            "crf": str(self.config.crf)}
        else:
            container = av.open(self._file, "w", format="matroska")
            stream = container.add_stream("mjpeg", rate=round(self.config.fps_hint))
            stream.pix_fmt = "yuvj420p"
            stream.codec_context.options = {"q:v": "3"}
        stream.width, stream.height = width, height
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.codec_context.gop_size = max(1, round(self.config.keyframe_s * self.config.fps_hint))
        stream.codec_context.thread_count = max(0, int(self.config.encoder_threads))
        self._container, self._stream, self._size = container, stream, (width, height)

    def _close_container(self, flush: bool) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            if flush:
                for packet in self._stream.encode(None):
                    container.mux(packet)
        finally:
            container.close()
        with self._lock:
            self._bytes = max(self._bytes, self._tell())

    def _tell(self) -> int:
        try:
            return int(self._file.tell())
        except (OSError, ValueError, AttributeError):
            return self._bytes

    def _fail(self, message: str) -> None:
        n = self.queue.close()  # the recording is over: later results are not part of it
        with self._lock:
            self._discarded += n  # queued for this recording but never written
        try:
            self._close_container(flush=False)  # a trailer, if the disk still takes one
        except Exception:
            pass
        if self._file is not None and self._file.failed:
            try:
                self._cut_to_playable()
            except Exception:  # the file stays as the disk left it; the state must still say FAILED
                pass
        self._set_state(RecorderState.FAILED, message)

    def _cut_to_playable(self) -> None:
        """After a failed write: end the file at its last complete fragment, and count what it holds."""
        size = self._file.cut_to_playable()
        if size is None:
            return
        kept = read_back(self.path) if size else (0, 0.0)
        with self._lock:
            self._bytes = size
            if kept is not None:  # frames encoded but cut with the last fragment are lost: dropped
                frames, span = kept
                self._discarded += max(0, self._frames - frames)
                self._frames = frames
                if self._t0_ns is not None:
                    self._t_last_ns = self._t0_ns + round(span * 1e9)

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            try:
                os.fsync(f.fileno())
            except (OSError, AttributeError, ValueError):
                pass  # not a real file, or a device that cannot sync
        except OSError as exc:
            if self._state is not RecorderState.FAILED:
                self._set_state(RecorderState.FAILED, describe_os_error(exc, self.path))
        finally:
            try:
                f.close()
            except OSError:
                pass

    def _set_state(self, state: RecorderState, message: str | None = None) -> None:
        with self._lock:
            changed = (state, message) != (self._state, self._message)
            self._state, self._message = state, message
        if changed and self._on_status is not None:
            try:
                self._on_status(self.status())
            except Exception:  # a broken callback must not end the recording
                pass

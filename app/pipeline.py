"""The live pipeline without any GUI: source -> CaptureWorker -> RingBuffer -> EngineWorker -> ResultSlot.

The Qt window and the headless `eyefuse live --headless` both drive this one object, so what the
benchmark measures headless is what the window runs. Both end an unattended run the same ways: the
frames or seconds asked for, the source ending (`LivePipeline.drained`), or a processor that has
failed on every frame for a while (`FailureWatch`), which would otherwise leave a run that waits for
frames to show waiting for ever.
"""
from __future__ import annotations

import collections
import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from capture.atomic import atomic_write_bytes
from capture.clock import SYSTEM_CLOCK, Clock
from capture.ring_buffer import RingBuffer
from capture.source import Source
from capture.sources import SourceOptions, open_source
from capture.worker import CaptureState, CaptureStatus, CaptureWorker, Outage
from engine.processor import Processor, Result
from engine.registry import make_processor
from engine.worker import EngineStats, EngineWorker, ResultSlot


@dataclass(frozen=True)
class PipelineConfig:
    source: str = "simulated"
    source_options: SourceOptions = field(default_factory=SourceOptions)
    processor: str = "student_sr"
    ring_capacity: int = 16  # >= the longest burst a processor may ask for
    record_queue_size: int = 64
    steps: int | None = None  # the processor's step count, for processors that have one (None: its default)


class LatencyWindow:
    """Capture-to-display latencies (ms) of the last `seconds`, for median and p99 overlays."""

    def __init__(self, seconds: float = 1.0):
        self.seconds = seconds
        self._items: collections.deque[tuple[int, float]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, t_capture_ns: int, t_display_ns: int) -> None:
        with self._lock:
            self._items.append((t_display_ns, (t_display_ns - t_capture_ns) / 1e6))
            cutoff = t_display_ns - int(self.seconds * 1e9)
            while self._items and self._items[0][0] < cutoff:
                self._items.popleft()

    def summary(self) -> tuple[float, float, float]:
        """(median ms, p99 ms, displays per second) over the window; NaNs when empty."""
        with self._lock:
            items = list(self._items)
        if not items:
            return float("nan"), float("nan"), 0.0
        lat = np.array([v for _, v in items])
        span = (items[-1][0] - items[0][0]) / 1e9
        rate = (len(items) - 1) / span if span > 0 else 0.0
        return float(np.median(lat)), float(np.percentile(lat, 99)), rate


# Turns a --source spec into a Source (not yet opened); tests pass one that knows emulated devices.
SourceOpener = Callable[[str, SourceOptions], Source]


@dataclass
class FailureWatch:
    """Says when the processor has failed on every frame it was given for `limit_s` of the run's
    clock. Fed the engine's counters (frames processed, frames failed) as the run goes; a frame
    processed starts the count again."""

    limit_s: float = 5.0
    _processed: int = 0
    _errors: int = 0
    _since: float | None = None  # when the current run of failures was first seen

    def update(self, now: float, processed: int, errors: int) -> bool:
        """True once only failures have come for limit_s."""
        if processed != self._processed:
            self._since = None
        elif errors != self._errors and self._since is None:
            self._since = now
        self._processed, self._errors = processed, errors
        return self._since is not None and now - self._since >= self.limit_s


def failing_message(eng: EngineStats, limit_s: float) -> str:
    """Why a run stopped on a processor that fails every frame, and what to do."""
    return (f"stopped: {eng.processor} failed on every frame for {limit_s:g} s ({eng.errors} frames, none "
            f"enhanced). Last error: {eng.error}. Choose a processor (--model) that takes this source, or a "
            f"source it takes")


class LivePipeline:
    """Owns the ring, the capture worker and the engine worker; swaps sources and processors live.

    `opener` makes a Source from a spec (default: capture.sources.open_source). `clock`: what the
    capture and engine workers time their waits and outages on (tests pass a FakeClock, and an
    opener whose sources run on it).
    """

    def __init__(self, config: PipelineConfig = PipelineConfig(), opener: SourceOpener = open_source,
                 clock: Clock = SYSTEM_CLOCK):
        self.config = config
        self.opener = opener
        self.clock = clock
        self.ring = RingBuffer(config.ring_capacity)
        self.slot = ResultSlot()
        self.capture: CaptureWorker | None = None
        self.engine: EngineWorker | None = None
        self.source_spec = config.source
        self.t0 = clock.monotonic()  # the run's start on `clock`; outage times are counted from it
        self._past_outages: list[Outage] = []  # of the sources switched away from

    def start(self, processor: Processor | None = None) -> None:
        """Start capture and engine. The processor is made from the config unless one is given
        (its load errors propagate: the caller decides whether to fall back)."""
        proc = processor or make_processor(self.config.processor)
        if self.config.steps is not None:
            proc.steps = self.config.steps  # StepsNotSupported (with its reason) propagates to the caller
        self.t0 = self.clock.monotonic()
        self.engine = EngineWorker(self.ring, proc, self.slot, clock=self.clock)
        self.engine.start()
        self._start_capture(self.source_spec)

    def _start_capture(self, spec: str) -> None:
        source = self.opener(spec, self.config.source_options)
        self.capture = CaptureWorker(source, self.ring, close_ring_on_exit=False, clock=self.clock)
        self.capture.start()
        self.source_spec = spec

    def switch_source(self, spec: str) -> None:
        """Stop the current source and start `spec`; raises (keeping the old one) if spec is invalid."""
        source = self.opener(spec, self.config.source_options)  # validate before stopping the old one
        if self.capture is not None:
            self.capture.stop()
            self._past_outages += self.capture.status().outages
        self.capture = CaptureWorker(source, self.ring, close_ring_on_exit=False, clock=self.clock)
        self.capture.start()
        self.source_spec = spec

    def outages(self) -> list[dict]:
        """Every outage of this run's sources, oldest first, start_s counted from the run's start."""
        current = self.capture.status().outages if self.capture is not None else ()
        return [o.as_dict(self.t0) for o in (*self._past_outages, *current)]

    def drained(self) -> bool:
        """True when the source has ended (or failed for good) and the engine has taken every frame it
        will take: no more results will come."""
        cap = self.capture
        if cap is None or cap.alive or cap.status().state not in (CaptureState.ENDED, CaptureState.ERROR):
            return False
        newest = self.ring.latest()
        if newest is None:
            return True
        proc = self.engine.processor if self.engine is not None else None
        if proc is not None and self.ring.stats().pushed < proc.frames_needed:
            return True  # never enough frames for one burst
        done = self.slot.peek()
        return done is not None and done.seq >= newest.seq

    def switch_processor(self, name_or_processor: str | Processor) -> None:
        proc = make_processor(name_or_processor) if isinstance(name_or_processor, str) else name_or_processor
        self.engine.set_processor(proc)

    def set_record_queue(self, q: queue.Queue | None) -> None:
        self.engine.set_record_queue(q)

    def stop(self, timeout: float = 1.0) -> bool:
        ok = True
        if self.capture is not None:
            ok &= self.capture.stop(timeout)
        if self.engine is not None:
            ok &= self.engine.stop(timeout)
        self.ring.close()
        return ok

    def capture_status(self) -> CaptureStatus | None:
        return self.capture.status() if self.capture else None

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine else None

    def next_result(self, timeout: float) -> Result | None:
        try:
            return self.slot.get(timeout)
        except TimeoutError:
            return None


@dataclass(frozen=True)
class RunEnd:
    """Why a live run ended. reason: "frames", "seconds", "source ended", "source failed",
    "processor failed", "terminated" (SIGTERM), "interrupted" (Ctrl-C), "closed" (the window) or
    "error". failed: the run did not do what it was asked, and its command exits non-zero."""

    reason: str
    message: str
    failed: bool = False


def signal_end(exc: BaseException) -> RunEnd:
    """The RunEnd for Ctrl-C (KeyboardInterrupt) or SIGTERM (app.cli.Terminated)."""
    # By name: under `python -m app.cli` the raising module is __main__, a second copy of app.cli
    if any(cls.__name__ == "Terminated" for cls in type(exc).__mro__):
        return RunEnd("terminated", "terminated (SIGTERM); the recording and the figures were finalised", True)
    return RunEnd("interrupted", "interrupted (Ctrl-C); the recording and the figures were finalised", True)


def record_summary(st) -> dict | None:
    """A RecorderStatus, for a stats file."""
    if st is None:
        return None
    return {"path": str(st.path), "state": st.state.value, "codec": st.codec, "frames": st.frames,
            "dropped": st.dropped, "bytes": st.bytes, "elapsed_s": st.elapsed_s, "message": st.message}


def write_stats(path: Path, stats: dict) -> None:
    """The figures as JSON, written whole or not at all (a stop in the middle leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(stats, indent=1, default=str) + "\n").encode())


@dataclass
class _Tally:
    """What run_headless counts as it goes."""

    t0: float
    shown: int = 0
    errors: int = 0
    latency_ms: list[float] = field(default_factory=list)


def run_headless(config: PipelineConfig, frames: int | None = None, seconds: float | None = None,
                 report_every_s: float = 1.0, printer=print, *, record=None, stats: Path | None = None,
                 opener: SourceOpener = open_source, processor: Processor | None = None,
                 clock: Clock = SYSTEM_CLOCK, fail_after_s: float = 5.0) -> dict:
    """Run the pipeline, taking results as a display would, until `frames` results or `seconds`, the
    source ends, or the processor has failed on every frame for `fail_after_s`. Returns the final
    figures; "ended" and "end_message" say why it stopped, "failed" whether that was a failure.

    Prints one line of live figures every `report_every_s`. record: a RecorderConfig to record the
    enhanced video with (a recording that cannot start raises RecorderError before the run). stats:
    write the final figures there. Both are finished however the run ends: on Ctrl-C or SIGTERM
    (app.cli.Terminated) the recording is finalised and the figures written, then the interrupt goes
    on unwinding. opener, processor, clock: for tests; the run's times are counted on `clock`.
    """
    from app.recorder import Recorder  # not for every headless run: it brings PyAV

    recorder = None
    if record is not None:
        recorder = Recorder(record)
        recorder.start()
    pipe = LivePipeline(config, opener=opener, clock=clock)
    tally = _Tally(clock.monotonic())
    try:
        end = _headless_loop(pipe, processor, recorder, tally, frames, seconds, report_every_s, printer,
                             fail_after_s)
    except BaseException as exc:  # finish the files, then let it go on unwinding
        if isinstance(exc, KeyboardInterrupt):
            end = signal_end(exc)
        else:
            end = RunEnd("error", f"the run stopped: {type(exc).__name__}: {exc}", True)
        _finish_headless(pipe, recorder, tally, end, stats)
        raise
    return _finish_headless(pipe, recorder, tally, end, stats)


def _headless_loop(pipe: LivePipeline, processor: Processor | None, recorder, tally: _Tally, frames: int | None,
                   seconds: float | None, report_every_s: float, printer, fail_after_s: float) -> RunEnd:
    clock = pipe.clock
    window = LatencyWindow(1.0)
    watch = FailureWatch(fail_after_s)
    pipe.start(processor)
    if recorder is not None:
        pipe.set_record_queue(recorder.queue)
    next_report = tally.t0 + report_every_s
    record_failure_told = False
    while True:
        if frames is not None and tally.shown >= frames:
            return RunEnd("frames", f"{tally.shown} frames shown")
        if seconds is not None and clock.monotonic() - tally.t0 >= seconds:
            return RunEnd("seconds", f"ran {seconds:g} s")
        result = pipe.next_result(timeout=0.2)
        if result is None and pipe.drained():
            result = pipe.next_result(timeout=0)  # the last one, published just before the check
            if result is None:
                return source_end(pipe.capture_status(), tally.shown, frames)
        now_ns = clock.monotonic_ns()
        if result is not None:
            if result.ok:
                tally.shown += 1
                window.add(result.t_capture_ns, now_ns)
                tally.latency_ms.append((now_ns - result.t_capture_ns) / 1e6)
            else:
                tally.errors += 1
        eng = pipe.engine_stats()
        if watch.update(clock.monotonic(), eng.processed, eng.errors):
            return RunEnd("processor failed", failing_message(eng, fail_after_s), True)
        if recorder is not None and not record_failure_told and recorder.status().state.value == "failed":
            printer(recorder.status().message)  # the figures go on, as the window's preview does
            record_failure_told = True
        if clock.monotonic() >= next_report:
            next_report += report_every_s
            printer(_status_line(pipe, window))


def source_end(cap: CaptureStatus | None, shown: int, frames: int | None) -> RunEnd:
    """How a run ends whose source has no more frames: ended (a file played to its end), or failed
    (the source cannot work: the capture gave up)."""
    what = cap.message if cap is not None and cap.message else "no more frames"
    asked = f" of the {frames} asked for" if frames is not None else ""
    if cap is not None and cap.state is CaptureState.ERROR:
        return RunEnd("source failed", f"the source failed ({what}) after {shown} frames shown{asked}", True)
    return RunEnd("source ended", f"the source ended ({what}) after {shown} frames shown{asked}")


def _finish_headless(pipe: LivePipeline, recorder, tally: _Tally, end: RunEnd, stats: Path | None) -> dict:
    """Stop everything, finalise the recording, gather the figures and write them to `stats`
    (whatever ended the run)."""
    eng = pipe.engine_stats()  # before stop(): stopping closes the processor
    if pipe.engine is not None:
        pipe.set_record_queue(None)
    cap = pipe.capture_status()
    outages = pipe.outages()
    pipe.stop()
    rec = recorder.stop() if recorder is not None else None
    if rec is not None and (rec.state.value == "failed" or rec.frames == 0):
        end = RunEnd(end.reason, f"{end.message}; {rec.message}", True)
    ring = pipe.ring.stats()
    lat = np.array(tally.latency_ms) if tally.latency_ms else np.array([float("nan")])
    elapsed = pipe.clock.monotonic() - tally.t0
    summary = {
        "source": pipe.source_spec, "processor": eng.processor if eng else None,
        "steps": eng.steps if eng else None,  # the step count in force at the end (None: the processor has none)
        "frames_shown": tally.shown, "errors": tally.errors,
        "seconds": elapsed, "display_fps": tally.shown / elapsed if elapsed > 0 else 0.0,
        "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
        "engine_stage_median_ms": eng.stage_median_ms if eng else {}, "engine_skipped": eng.skipped if eng else 0,
        "ring_lost": ring.overwritten_unread, "captured": ring.pushed, "last_error": eng.error if eng else None,
        "capture_state": cap.state.value if cap else None, "capture_outages": outages,
        "record": record_summary(rec),
        "ended": end.reason, "end_message": end.message, "failed": end.failed,
    }
    if stats is not None:
        write_stats(stats, summary)
    return summary


def capture_text(cap: CaptureStatus) -> str:
    """The capture part of a status line: its rate while frames come; once they have stopped, also
    its state, how long since the last frame, and why."""
    text = f"capture {cap.fps:5.1f} fps"
    stalled = bool(cap.outages) and not cap.outages[-1].recovered
    if cap.state is not CaptureState.RUNNING or stalled:
        since = "no frame yet" if cap.since_frame_s is None else f"no frame for {cap.since_frame_s:.1f} s"
        why = cap.message or (cap.outages[-1].reason if stalled else "")
        text += f" ({cap.state.value}, {since}{': ' + why if why else ''})"
    return text


def _status_line(pipe: LivePipeline, window: LatencyWindow) -> str:
    cap, eng = pipe.capture_status(), pipe.engine_stats()
    med, p99, disp = window.summary()
    stages = " ".join(f"{k} {v:.1f}" for k, v in eng.stage_median_ms.items())
    line = (f"{capture_text(cap)} | engine {eng.fps:5.1f} fps [{eng.processor}: {stages} ms] | "
            f"display {disp:5.1f} fps | latency median {med:5.1f} ms p99 {p99:5.1f} ms | "
            f"skipped {eng.skipped} lost {pipe.ring.stats().overwritten_unread}")
    if eng.error:
        line += f" | ERROR {eng.error}"
    return line

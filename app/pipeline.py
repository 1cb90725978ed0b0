"""The live pipeline without any GUI: source -> CaptureWorker -> RingBuffer -> EngineWorker -> ResultSlot.

The Qt window and the headless `eyefuse live --headless` both drive this one object, so what the
benchmark measures headless is what the window runs.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from capture.ring_buffer import RingBuffer
from capture.source import Source
from capture.sources import SourceOptions, open_source
from capture.worker import CaptureStatus, CaptureWorker
from engine.processor import Processor, Result, make_processor
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


class LivePipeline:
    """Owns the ring, the capture worker and the engine worker; swaps sources and processors live.

    `opener` makes a Source from a spec (default: capture.sources.open_source).
    """

    def __init__(self, config: PipelineConfig = PipelineConfig(), opener: SourceOpener = open_source):
        self.config = config
        self.opener = opener
        self.ring = RingBuffer(config.ring_capacity)
        self.slot = ResultSlot()
        self.capture: CaptureWorker | None = None
        self.engine: EngineWorker | None = None
        self.source_spec = config.source

    def start(self, processor: Processor | None = None) -> None:
        """Start capture and engine. The processor is made from the config unless one is given
        (its load errors propagate: the caller decides whether to fall back)."""
        proc = processor or make_processor(self.config.processor)
        if self.config.steps is not None:
            proc.steps = self.config.steps  # StepsNotSupported (with its reason) propagates to the caller
        self.engine = EngineWorker(self.ring, proc, self.slot)
        self.engine.start()
        self._start_capture(self.source_spec)

    def _start_capture(self, spec: str) -> None:
        source = self.opener(spec, self.config.source_options)
        self.capture = CaptureWorker(source, self.ring, close_ring_on_exit=False)
        self.capture.start()
        self.source_spec = spec

    def switch_source(self, spec: str) -> None:
        """Stop the current source and start `spec`; raises (keeping the old one) if spec is invalid."""
        source = self.opener(spec, self.config.source_options)  # validate before stopping the old one
        if self.capture is not None:
            self.capture.stop()
        self.capture = CaptureWorker(source, self.ring, close_ring_on_exit=False)
        self.capture.start()
        self.source_spec = spec

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


def run_headless(config: PipelineConfig, frames: int | None = None, seconds: float | None = None,
                 report_every_s: float = 1.0, printer=print) -> dict:
    """Run the pipeline, taking results as a display would, until `frames` results or `seconds` pass.

    Prints one line of live figures every `report_every_s`; returns the final figures.
    """
    pipe = LivePipeline(config)
    pipe.start()
    window = LatencyWindow(1.0)
    all_latency: list[float] = []
    shown = errors = 0
    t0 = time.monotonic()
    next_report = t0 + report_every_s
    try:
        while (frames is None or shown < frames) and (seconds is None or time.monotonic() - t0 < seconds):
            result = pipe.next_result(timeout=0.2)
            now_ns = time.monotonic_ns()
            if result is not None:
                if result.ok:
                    shown += 1
                    window.add(result.t_capture_ns, now_ns)
                    all_latency.append((now_ns - result.t_capture_ns) / 1e6)
                else:
                    errors += 1
            cap = pipe.capture_status()
            if cap is not None and not pipe.capture.alive and cap.state.value in ("ended", "error") and result is None:
                printer(f"capture {cap.state.value}: {cap.message}")
                break
            if time.monotonic() >= next_report:
                next_report += report_every_s
                printer(_status_line(pipe, window))
    finally:
        eng = pipe.engine_stats()  # before stop(): stopping closes the processor
        pipe.stop()
    ring = pipe.ring.stats()
    lat = np.array(all_latency) if all_latency else np.array([float("nan")])
    elapsed = time.monotonic() - t0
    return {
        "source": config.source, "processor": eng.processor, "frames_shown": shown, "errors": errors,
        "seconds": elapsed, "display_fps": shown / elapsed if elapsed else 0.0,
        "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
        "engine_stage_median_ms": eng.stage_median_ms, "engine_skipped": eng.skipped,
        "ring_lost": ring.overwritten_unread, "captured": ring.pushed, "last_error": eng.error,
    }


def _status_line(pipe: LivePipeline, window: LatencyWindow) -> str:
    cap, eng = pipe.capture_status(), pipe.engine_stats()
    med, p99, disp = window.summary()
    stages = " ".join(f"{k} {v:.1f}" for k, v in eng.stage_median_ms.items())
    line = (f"capture {cap.fps:5.1f} fps | engine {eng.fps:5.1f} fps [{eng.processor}: {stages} ms] | "
            f"display {disp:5.1f} fps | latency median {med:5.1f} ms p99 {p99:5.1f} ms | "
            f"skipped {eng.skipped} lost {pipe.ring.stats().overwritten_unread}")
    if eng.error:
        line += f" | ERROR {eng.error}"
    if cap.state.value != "running":
        line += f" | capture {cap.state.value}: {cap.message}"
    return line

"""What the live window measures: `DisplayLog` (every displayed frame, when and how late), the
figures of one refresh (`live_snapshot`, for the stats panel and the overlay) and of the whole run
(`run_figures`, for --stats and the live benchmark), and a source's own counters.

Read on the GUI thread; the counters they read from the pipeline's workers are thread-safe.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import time

import numpy as np
from PyQt6.QtGui import QGuiApplication

from app.pipeline import LatencyWindow, LivePipeline, RunEnd, record_summary
from app.recorder import RecorderStatus
from app.stats_panel import StatsSnapshot
from engine.processor import Result
from engine.worker import EngineStats, WorkerState

# A displayed frame's row in the stats timeline: when it was shown, and where its latency went.
TIMELINE_COLUMNS = ("shown_s", "latency_ms", "wait_ms", "engine_ms", "to_screen_ms")
# A processor's notice stays up this long after the last frame that carried it: a fallback taken for
# one burst would otherwise be gone before anyone could read it.
NOTICE_HOLD_S = 3.0


class DisplayLog:
    """Every displayed frame: its capture-to-display latency and the parts of it, and the notice of
    the last frame that had one. Times count from `restart()` (the window's start)."""

    def __init__(self) -> None:
        self.latency = LatencyWindow(1.0)
        # (display time s from start, latency ms, and its parts: waiting for the engine, in the engine,
        # result to screen, ms) of every displayed frame, for --stats and the benchmark; bounded (2 h at
        # 30 fps, ~50 MB) so a window left running for days does not grow without end.
        self.timeline: collections.deque[tuple[float, ...]] = collections.deque(maxlen=216_000)
        self.shown = 0
        self.restart()
        self._notice: tuple[str, int] | None = None  # (text, display time ns of the last frame with it)

    def restart(self) -> None:
        self.t0, self.t0_ns = time.monotonic(), time.monotonic_ns()

    def add(self, r: Result, t_ns: int) -> tuple[float, float]:
        """Log result `r` drawn at `t_ns` (time.monotonic_ns()). Returns (seconds since start, latency ms)."""
        self.latency.add(r.t_capture_ns, t_ns)
        t_s = (t_ns - self.t0_ns) / 1e9
        lat = (t_ns - r.t_capture_ns) / 1e6
        self.timeline.append((t_s, lat, (r.t_start_ns - r.t_capture_ns) / 1e6,
                              (r.t_done_ns - r.t_start_ns) / 1e6, (t_ns - r.t_done_ns) / 1e6))
        self.shown += 1
        if r.notice:
            self._notice = (r.notice, t_ns)
        return t_s, lat

    def seconds(self) -> float:
        """Seconds since the start."""
        return (time.monotonic_ns() - self.t0_ns) / 1e9

    def display_summary(self) -> tuple[float, float, float]:
        """(median ms, p99 ms, displays per second) over the last second; no rate if nothing was
        displayed in it."""
        med, p99, disp = self.latency.summary()
        if self.shown and self.timeline and time.monotonic_ns() - self.t0_ns - self.timeline[-1][0] * 1e9 > 1e9:
            disp = 0.0
        return med, p99, disp

    def notice(self) -> str | None:
        """The last notice a displayed frame carried, for NOTICE_HOLD_S after that frame."""
        if self._notice is None or time.monotonic_ns() - self._notice[1] > NOTICE_HOLD_S * 1e9:
            return None
        return self._notice[0]

    @property
    def last_notice(self) -> str | None:
        """The last notice a displayed frame carried, however long ago."""
        return self._notice[0] if self._notice is not None else None


def source_counters(source) -> tuple[tuple[str, int], ...] | None:
    """The counters of a source that keeps them (a `stats()` giving a dataclass or a dict of counts:
    the PS3 Eye's rejected payloads, stalls, ...), as (name, count) in their order; None for a source
    that has none. A source's stats() must be cheap and safe to call from another thread."""
    stats = getattr(source, "stats", None)
    if not callable(stats):
        return None
    try:
        found = stats()
    except Exception:  # figures are no reason to disturb the capture
        return None
    if dataclasses.is_dataclass(found) and not isinstance(found, type):
        found = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
    if not isinstance(found, dict):
        return None
    return tuple((str(k), v) for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool))


def _capture_counters(pipe: LivePipeline) -> tuple[tuple[str, int], ...] | None:
    cap = pipe.capture
    return source_counters(cap.source) if cap is not None else None


def live_snapshot(pipe: LivePipeline, log: DisplayLog, current: Result | None, pump_replaced: int) -> StatsSnapshot:
    """The figures of one refresh. current: the result on the screen."""
    cap = pipe.capture_status()
    eng = pipe.engine_stats()
    med, p99, disp = log.display_summary()
    r = current
    proc = pipe.engine.processor if pipe.engine is not None else None
    outages = cap.outages if cap else ()
    return StatsSnapshot(
        source=pipe.source_spec, capture_state=cap.state.value if cap else "",
        capture_fps=cap.fps if cap else 0.0, since_frame_s=cap.since_frame_s if cap else None,
        capture_stalled=bool(outages) and not outages[-1].recovered, outages=len(outages),
        outage_s=sum(o.duration_s for o in outages), engine_fps=eng.fps if eng else 0.0, display_fps=disp,
        latency_median_ms=med, latency_p99_ms=p99,
        stage_ms=dict(eng.stage_median_ms) if eng else {}, engine_ms=eng.latency_median_ms if eng else math.nan,
        ring_lost=pipe.ring.stats().overwritten_unread, engine_skipped=eng.skipped if eng else 0,
        display_missed=pipe.slot.overwritten + pump_replaced,
        processor=(eng.processor or "") if eng else "", steps=eng.steps if eng else None,
        frames_needed=proc.frames_needed if proc is not None else 1,
        input_size=(r.input_bgr.shape[1], r.input_bgr.shape[0]) if r is not None and r.input_bgr is not None else None,
        output_size=(r.output.shape[1], r.output.shape[0]) if r is not None and r.output is not None else None,
        paused=eng is not None and eng.state is WorkerState.PAUSED,
        frame_stages_ms=dict(r.stages) if r is not None and r.ok else {},
        frame_steps=r.steps if r is not None and r.ok else None,
        psnr_vs_truth=r.psnr_vs_truth if r is not None and r.ok else None,
        notice=log.notice(), source_counters=_capture_counters(pipe),
    )


def run_figures(pipe: LivePipeline, log: DisplayLog, eng: EngineStats | None, *, wanted: str,
                load_error: str | None, record: RecorderStatus | None, record_error: str | None,
                end: RunEnd | None, problems: list[str], pump_replaced: int) -> dict:
    """Everything measured in the run (the whole run, not just the last second)."""
    wall = time.monotonic() - log.t0
    lat = np.array([row[1] for row in log.timeline]) if log.timeline else np.array([math.nan])
    times = np.array([row[0] for row in log.timeline])
    per_second = []
    if len(times):
        bins = np.arange(math.floor(times[0]), math.ceil(times[-1]) + 1)
        per_second = np.histogram(times, bins)[0].tolist() if len(bins) > 1 else [len(times)]
    cpu = os.times()
    cap = pipe.capture_status()
    eng = eng or pipe.engine_stats()
    counters = _capture_counters(pipe)
    from app.bench.report import peak_rss_mib

    return {
        "source": pipe.source_spec, "wanted_processor": wanted,
        "processor": eng.processor if eng else None, "steps": eng.steps if eng else None,
        "load_error": load_error, "notice": log.last_notice, "frames_shown": log.shown, "seconds": wall,
        "display_fps": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0,
        "display_fps_per_second": per_second,
        "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
        "capture_frames": cap.frames if cap else 0, "capture_fps": cap.fps if cap else 0.0,
        "source_counters": dict(counters) if counters is not None else None,
        "engine_fps": eng.fps if eng else 0.0, "engine_processed": eng.processed if eng else 0,
        "engine_stage_median_ms": eng.stage_median_ms if eng else {},
        "engine_skipped": eng.skipped if eng else 0, "engine_errors": eng.errors if eng else 0,
        "ring_lost": pipe.ring.stats().overwritten_unread,
        "display_missed": pipe.slot.overwritten + pump_replaced,
        "record": record_summary(record), "record_error": record_error,
        "capture_state": cap.state.value if cap else None, "capture_outages": pipe.outages(),
        "ended": end.reason if end else None, "end_message": end.message if end else None,
        "failed": bool(end and end.failed) or record_error is not None,
        "problems": problems,
        "cpu_seconds": cpu.user + cpu.system, "cpu_percent": 100 * (cpu.user + cpu.system) / wall if wall else 0.0,
        "peak_rss_mib": peak_rss_mib(), "qt_platform": QGuiApplication.platformName(),
        "timeline_columns": list(TIMELINE_COLUMNS),
        "timeline": [[round(v, 4 if i == 0 else 3) for i, v in enumerate(row)] for row in log.timeline],
    }

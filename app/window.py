"""The live window: before/after video, live figures, model and step controls, recording.

Threads (the GUI thread only draws):

    capture thread -> ring -> engine thread -> ResultSlot -> result pump thread --signal--> GUI: viewer.set_frame
                                            \\-> RecordQueue -> recorder thread -> .mp4
    control thread (one, jobs in order): start, load a processor (+ warm-up), switch source,
                                         start/stop recording, write snapshots
    GUI thread: slots that set fields and call update(); a 4 Hz timer that reads counters

Anything that may take longer than a frame (opening a model, stopping a camera, closing a video
file) is a job on the control thread; its outcome comes back as a callable run on the GUI thread.
While a model loads, the engine keeps running the old one, so the picture never stops.

`run_window(config, args)` is `eyefuse live` (and, with --offscreen, its test/benchmark mode).
"""
from __future__ import annotations

import collections
import concurrent.futures
import datetime as _dt
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PyQt6.QtCore import QObject, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QGuiApplication, QKeySequence
from PyQt6.QtWidgets import (
    QApplication, QComboBox, QDockWidget, QFileDialog, QFrame, QHBoxLayout, QLabel, QMainWindow, QMenu, QPushButton,
    QSpinBox, QToolBar, QToolButton, QVBoxLayout, QWidget,
)

from app.cli import Terminated
from app.pipeline import (
    FailureWatch, LatencyWindow, LivePipeline, PipelineConfig, RunEnd, failing_message, record_summary, signal_end,
    source_end, write_stats,
)
from app.recorder import Recorder, RecorderConfig, RecorderError, RecorderState, RecorderStatus
from app.stats_panel import RecordIndicator, StatsPanel, StatsSnapshot, overlay_lines
from app.viewer import BeforeAfterViewer, ViewMode, display_image
from capture.atomic import atomic_write_bytes
from capture.clock import SYSTEM_CLOCK, Clock
from capture.sources import open_source
from capture.worker import CaptureState
from engine.processor import Processor, Result, StepsNotSupported
from engine.registry import BUILTIN, make_processor, processor_names
from engine.worker import ResultSlot, WorkerState

RUNS_DIR = Path("runs")
STEP_CHOICES = (0, 1, 2, 4)  # 0: the processor's learned refinement off (BurstFusion: the merge alone)
# A displayed frame's row in the stats timeline: when it was shown, and where its latency went.
TIMELINE_COLUMNS = ("shown_s", "latency_ms", "wait_ms", "engine_ms", "to_screen_ms")
SOURCE_CHOICES = ("simulated", "simulated:bayer", "ps3eye", "0")
LABELS = {
    "student_sr": "StudentSR",
    "student_sr_int8": "StudentSR int8",
    # the reference StudentSRs: better, far slower than the frame rate (README: "What +2 dB costs")
    "student_sr_medium": "StudentSR medium (7x compute, not real time)",
    "student_sr_large": "StudentSR large (180x compute, about 1 s a frame)",
    "burst_fusion": "BurstFusion",
    "bicubic": "Bicubic (baseline)",
    "passthrough": "Passthrough (input only)",
}


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowOptions:
    """How the window behaves. weights_dir: None is the repository's weights/.
    load_retry_s: how often a processor that failed to load is tried again, when its weights
    folder changed (so the real weights are picked up when training writes them).
    fail_after_s: an unattended run (RunPlan.frames/seconds) stops, failed, once the processor has
    failed on every frame for this long (on the window's clock)."""

    weights_dir: Path | None = None
    record_dir: Path = RUNS_DIR / "recordings"
    snapshot_dir: Path = RUNS_DIR / "snapshots"
    record_side_by_side: bool = False
    record_codec: str = "auto"
    burst_length: int = 8
    steps: int | None = None
    fallback_processor: str = "bicubic"
    stats_interval_ms: int = 250
    load_retry_s: float = 5.0
    fail_after_s: float = 5.0
    size: tuple[int, int] = (1400, 860)


@dataclass(frozen=True)
class RunPlan:
    """What an unattended run does (--frames/--seconds/--record/--screenshot/--stats): stop after
    `frames` displayed frames or `seconds`, recording to `record` from the start, then save the
    window to `screenshot` and the figures to `stats`. All None: run until the user closes it.
    An unattended run (frames or seconds) also ends when the source ends or the processor keeps
    failing; the figures say why it ended."""

    frames: int | None = None
    seconds: float | None = None
    record: Path | None = None
    screenshot: Path | None = None
    stats: Path | None = None

    @property
    def unattended(self) -> bool:
        return self.frames is not None or self.seconds is not None


@dataclass(frozen=True)
class ProcessorSettings:
    """What a processor is made with, besides its name."""

    burst_length: int = 8
    weights_dir: Path | None = None


ProcessorFactory = Callable[[str, ProcessorSettings], Processor]


def make_window_processor(name: str, settings: ProcessorSettings) -> Processor:
    """A built-in (BurstFusion made with the burst length) or a manifest model. Raises with the reason."""
    if name in BUILTIN:
        factory = BUILTIN[name]
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        for key in ("burst_length", "frames_needed", "frames", "burst"):
            if key in params:
                return factory(**{key: settings.burst_length})
        proc = factory()
        if proc.frames_needed > 1 and proc.frames_needed != settings.burst_length:
            proc.frames_needed = settings.burst_length  # burst processors read it per frame
        return proc
    return make_processor(name, settings.weights_dir)


def processor_choices(weights_dir: Path | None = None) -> list[str]:
    """StudentSR and its int8 variant first (listed even before their weights exist, so choosing one
    says what is missing), BurstFusion when built in, then the other built-ins and models."""
    names = ["student_sr", "student_sr_int8"]
    if "burst_fusion" in BUILTIN:
        names.append("burst_fusion")
    try:
        found = processor_names(weights_dir)
    except Exception:  # an unreadable manifest: the load itself will say why
        found = list(BUILTIN)
    return names + [n for n in found if n not in names]


def label(name: str) -> str:
    return LABELS.get(name, name)


def weights_fingerprint(weights_dir: Path | None) -> tuple:
    """Names, sizes and times of the files in the weights folder: changes when weights are written."""
    from engine.manifest import WEIGHTS_DIR

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)))
    except OSError:
        return ()


def guarded_slot(method):
    """An exception escaping a PyQt slot aborts the process; in the window it becomes a banner instead."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Exception as exc:
            try:
                self._set_problem("gui", f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")
            except Exception:
                print(f"eyefuse: {method.__name__} failed: {exc!r}", file=sys.stderr)

    return wrapper


# -- threads that talk to the GUI ------------------------------------------------------------------
class _Bridge(QObject):
    """Signals emitted from worker threads; Qt queues them to the GUI thread."""

    call = pyqtSignal(object)  # a callable to run on the GUI thread
    result_ready = pyqtSignal()


class ResultPump:
    """A thread that waits on the engine's ResultSlot, readies its pictures for the screen
    (`display_image`, here rather than on the GUI thread) and tells the GUI a new result is there.

    At most one notification is in flight: the GUI takes the newest result when it gets to it, so a
    busy GUI shows fewer frames instead of older ones. `replaced` counts results never taken."""

    def __init__(self, slot: ResultSlot, notify: Callable[[], None]):
        self.slot, self._notify = slot, notify
        self._lock = threading.Lock()
        self._latest: tuple[Result, np.ndarray | None, np.ndarray | None] | None = None
        self._signalled = False
        self.replaced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eyefuse-display-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def take(self) -> tuple[Result, np.ndarray | None, np.ndarray | None] | None:
        """(newest result, its input and output ready for the viewer) or None."""
        with self._lock:
            r, self._latest, self._signalled = self._latest, None, False
            return r

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.slot.get(timeout=0.1)
            except TimeoutError:
                continue
            shown = tuple(None if a is None else display_image(a) for a in (r.input_bgr, r.output))
            with self._lock:
                if self._latest is not None:
                    self.replaced += 1
                self._latest = (r, *shown)
                notify, self._signalled = not self._signalled, True
            if notify:
                self._notify()


# -- widgets ------------------------------------------------------------------------------------
class Banner(QFrame):
    """Messages about what is wrong (camera gone, weights missing, engine or recorder error)."""

    dismissed = pyqtSignal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setStyleSheet("Banner { background: #7a1f1a; } QLabel { color: white; } "
                           "QPushButton { color: white; border: none; font-weight: bold; }")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("✕")
        close.setToolTip("Dismiss (messages whose cause remains come back)")
        close.setFixedWidth(28)
        close.clicked.connect(self.dismissed.emit)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.setVisible(False)

    def show_messages(self, messages: list[str]) -> None:
        text = "\n".join(messages)
        if text != self.label.text():
            self.label.setText(text)
        self.setVisible(bool(messages))

    @property
    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""


@dataclass
class _Shortcut:
    action: QAction
    keys: str
    what: str


# -- the window ---------------------------------------------------------------------------------
class MainWindow(QMainWindow):
    """The live window over one LivePipeline. Call start() once shown; close() stops everything."""

    finished = pyqtSignal()

    def __init__(self, config: PipelineConfig = PipelineConfig(), options: WindowOptions = WindowOptions(),
                 plan: RunPlan = RunPlan(), opener=open_source,
                 processor_factory: ProcessorFactory = make_window_processor,
                 choices: list[str] | None = None, clock: Clock = SYSTEM_CLOCK):
        super().__init__()
        self.config, self.options, self.plan = config, options, plan
        self.setWindowTitle("EyeFuse")
        self.resize(*options.size)
        self._clock = clock  # the pipeline's: capture, engine, outages, and the failure watch
        self.pipeline = LivePipeline(config, opener=opener, clock=clock)
        self._watch = FailureWatch(options.fail_after_s)
        self._end: RunEnd | None = None  # why the run ended (the first reason given)
        self._record_failure: str | None = None  # why the last recording failed or was refused
        self._factory = processor_factory
        self._bridge = _Bridge()
        self._bridge.call.connect(self._run_posted)
        self._bridge.result_ready.connect(self._on_result_ready)
        self._pump = ResultPump(self.pipeline.slot, self._bridge.result_ready.emit)
        self._control = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eyefuse-control")
        self._lock = threading.Lock()
        self._closing = False
        self._started = False
        self._problems: dict[str, str] = {}
        self._latency = LatencyWindow(1.0)
        # (display time s from start, latency ms, and its parts: waiting for the engine, in the engine,
        # result to screen, ms) of every displayed frame, for --stats and the benchmark; bounded (2 h at
        # 30 fps, ~50 MB) so a window left running for days does not grow without end.
        self._timeline: collections.deque[tuple[float, ...]] = collections.deque(maxlen=216_000)
        self._t0 = time.monotonic()
        self._t0_ns = time.monotonic_ns()
        self._shown = 0
        self._current: Result | None = None
        self._wanted = config.processor
        self._running_name: str | None = None
        self._load_gen = 0
        self._load_failed_fp: tuple | None = None  # weights folder when the wanted processor failed
        self._next_retry = math.inf
        self._load_error: str | None = None
        self._recorder: Recorder | None = None
        self._open_recorders: set[Recorder] = set()  # started and not yet stopped (finalised at close)
        self._finishing = False
        self._record_busy = False
        self._last_record: RecorderStatus | None = None
        self._final_stats: dict | None = None
        self._choices = choices if choices is not None else processor_choices(options.weights_dir)
        if self._wanted not in self._choices:
            self._choices.insert(0, self._wanted)

        self.viewer = BeforeAfterViewer()
        self.viewer.painted.connect(self._on_painted)
        self.banner = Banner()
        self.banner.dismissed.connect(self._dismiss_banner)
        central = QWidget()
        col = QVBoxLayout(central)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(0)
        col.addWidget(self.banner)
        col.addWidget(self.viewer, 1)
        self.setCentralWidget(central)
        self.stats_panel = StatsPanel()
        dock = QDockWidget("Stats", self)
        dock.setWidget(self.stats_panel)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.record_indicator = RecordIndicator()
        self.statusBar().addPermanentWidget(self.record_indicator)
        self._build_controls()
        self._stats_timer = QTimer(self)
        self._stats_timer.timeout.connect(self._refresh)
        self._stats_timer.start(options.stats_interval_ms)
        self.viewer.set_help(None)

    # -- building the controls --------------------------------------------------------------------
    def _build_controls(self) -> None:
        bar = QToolBar("Controls")
        bar.setMovable(False)
        self.addToolBar(bar)
        self.source_box = QComboBox()
        self.source_box.setEditable(True)
        self.source_box.setMinimumContentsLength(14)
        for spec in dict.fromkeys([self.config.source, *SOURCE_CHOICES]):
            self.source_box.addItem(spec)
        self.source_box.setToolTip("Source: simulated, ps3eye, a camera index, a video file or 'burst/*.dng' "
                                   "(type one and press Enter)")
        self.source_box.activated.connect(lambda _i: self.request_source(self.source_box.currentText()))
        bar.addWidget(QLabel(" Source "))
        bar.addWidget(self.source_box)

        self.processor_box = QComboBox()
        for name in self._choices:
            self.processor_box.addItem(label(name), name)
        self.processor_box.setCurrentIndex(self._choices.index(self._wanted))
        self.processor_box.setToolTip("Processor (M: next)")
        self.processor_box.activated.connect(lambda i: self.request_processor(self.processor_box.itemData(i)))
        bar.addWidget(QLabel("  Processor "))
        bar.addWidget(self.processor_box)

        self.burst_box = QSpinBox()
        self.burst_box.setRange(2, self.config.ring_capacity)
        self.burst_box.setValue(min(max(2, self.options.burst_length), self.config.ring_capacity))
        self.burst_box.setToolTip("Burst length: frames fused per output ([ and ])")
        self.burst_box.setKeyboardTracking(False)
        self.burst_box.valueChanged.connect(self._on_burst_changed)
        bar.addWidget(QLabel("  Burst "))
        bar.addWidget(self.burst_box)

        self.steps_box = QComboBox()
        for k in STEP_CHOICES:
            self.steps_box.addItem(str(k) if k else "off", k)
        self.steps_box.activated.connect(lambda i: self.request_steps(self.steps_box.itemData(i)))
        bar.addWidget(QLabel("  Steps "))
        bar.addWidget(self.steps_box)
        bar.addSeparator()

        self._shortcuts: list[_Shortcut] = []

        def action(text: str, keys: list[str], what: str, slot, checkable: bool = False, toolbar: bool = True) -> QAction:
            a = QAction(text, self)
            a.setShortcuts([QKeySequence(k) for k in keys])
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.setCheckable(checkable)
            a.setToolTip(f"{what} ({', '.join(keys)})")
            (a.toggled if checkable else a.triggered).connect(slot)
            self.addAction(a)
            if toolbar:
                bar.addAction(a)
            self._shortcuts.append(_Shortcut(a, ", ".join(keys), what))
            return a

        self.pause_action = action("Pause", ["Space"], "pause / resume the engine", self.set_paused, True)
        self.snapshot_action = action("Snapshot", ["S"], "save the before and after images", self.snapshot)
        self.record_action = action("● Record", ["R"], "start / stop recording the enhanced video",
                                    self.set_recording, True)
        self.record_sbs_action = action("Record side by side", ["Shift+R"],
                                        "the next recording holds before | after, not just after",
                                        lambda on: None, True, toolbar=False)
        self.record_sbs_action.setChecked(self.options.record_side_by_side)
        record_button = bar.widgetForAction(self.record_action)
        if isinstance(record_button, QToolButton):  # Record ▾ -> side by side
            menu = QMenu(record_button)
            menu.addAction(self.record_sbs_action)
            record_button.setMenu(menu)
            record_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        bar.addSeparator()
        self.side_action = action("Side by side", ["B"], "wipe ↔ side by side", self._on_side_toggled, True)
        self.fit_action = action("Fit", ["F"], "fit the picture to the window", self.viewer.fit_to_window)
        self.actual_action = action("1:1", ["1"], "zoom to 1:1 (one output pixel per screen pixel)",
                                    self.viewer.zoom_actual)
        self.help_action = action("Help", ["H", "F1", "?"], "show / hide this help", self.toggle_help)
        action("Zoom in", ["+", "="], "zoom in", lambda: self.viewer.zoom_by(1.25), toolbar=False)
        action("Zoom out", ["-"], "zoom out", lambda: self.viewer.zoom_by(0.8), toolbar=False)
        for key, dx, dy in (("Left", 60, 0), ("Right", -60, 0), ("Up", 0, 60), ("Down", 0, -60)):
            a = QAction(self)
            a.setShortcut(QKeySequence(key))
            a.triggered.connect(lambda _=False, dx=dx, dy=dy: self.viewer.pan_by(dx, dy))
            self.addAction(a)
        self._shortcuts.append(_Shortcut(QAction(self), "Arrows, drag", "pan (drag the divider to wipe)"))
        action("Next processor", ["M"], "next processor", lambda: self._cycle_processor(1), toolbar=False)
        action("Previous processor", ["Shift+M"], "previous processor", lambda: self._cycle_processor(-1),
               toolbar=False)
        action("Steps", ["K"], "next step count (processors with steps)", self._cycle_steps, toolbar=False)
        action("Shorter burst", ["["], "shorter burst (BurstFusion)", lambda: self.burst_box.stepBy(-1), toolbar=False)
        action("Longer burst", ["]"], "longer burst (BurstFusion)", lambda: self.burst_box.stepBy(1), toolbar=False)
        action("Source", ["O"], "pick a source", self._pick_source, toolbar=False)
        action("Open file", ["Ctrl+O"], "open a video file or DNG burst", self._open_file, toolbar=False)
        action("Close help", ["Esc"], "close this help", lambda: self.viewer.set_help(None), toolbar=False)
        action("Quit", ["Ctrl+Q"], "quit (finishes the recording first)", self.close, toolbar=False)
        self._update_step_control(None, 1)

    def help_rows(self) -> list[tuple[str, str]]:
        return [(s.keys, s.what) for s in self._shortcuts]

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline (on the control thread) and the display pump. Once."""
        if self._started:
            return
        self._started = True
        self._t0, self._t0_ns = time.monotonic(), time.monotonic_ns()
        self._pump.start()
        self.viewer.clear(f"starting {label(self._wanted)} on {self.config.source}…")
        gen = self._load_gen = self._load_gen + 1
        settings = self._settings()
        wanted = self._wanted

        def job():
            proc, error = None, None
            try:
                proc = self._factory(wanted, settings)
            except Exception as exc:
                error = str(exc)
                proc = self._factory(self.options.fallback_processor, settings)
            try:
                self.pipeline.start(proc)
            except Exception as exc:
                message = f"cannot open source {self.config.source!r}: {exc}"  # exc is gone after the block
                self._post(lambda: self._set_problem("source", message))
            name, steps, burst = proc.name, proc.steps, proc.frames_needed
            self._post(lambda: self._on_loaded(wanted if error is None else None, name, steps, burst, gen, error))

        self._submit(job)
        if self.plan.record is not None:
            self.set_recording(True)
        if self.plan.seconds is not None:
            seconds = self.plan.seconds
            QTimer.singleShot(int(seconds * 1000), lambda: self.end_run(RunEnd("seconds", f"ran {seconds:g} s")))

    def shutdown(self) -> None:
        """Stop everything: finish the recording (a valid file), stop the threads. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._stats_timer.stop()
        self._pump.stop()
        self._control.shutdown(wait=True, cancel_futures=True)  # a model being loaded is finished, then closed
        eng = self.pipeline.engine_stats()
        if self.pipeline.engine is not None:
            self.pipeline.set_record_queue(None)
        for rec in list(self._open_recorders):  # also one whose stop job was cancelled above
            st = rec.stop()
            if rec is self._recorder or self._last_record is None or self._last_record.path == st.path:
                self._last_record = st
            self._open_recorders.discard(rec)
        self._recorder = None
        self.pipeline.stop()
        if self._end is None:
            self._end = RunEnd("closed", "the window was closed")
        rec = self._last_record
        if self.plan.record is not None and self._record_failure is None and (rec is None or rec.frames == 0):
            self._record_failure = rec.message if rec is not None and rec.message else "nothing was recorded"
        self._final_stats = self.run_stats(eng)
        if self.plan.stats is not None:
            write_stats(self.plan.stats, self._final_stats)
        self.finished.emit()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def end_run(self, end: RunEnd) -> None:
        """End an unattended run for `end`'s reason (the first reason given is the one kept); a
        failure is also put in the banner, so the screenshot shows it."""
        if self._end is None:
            self._end = end
        if end.failed:
            self._set_problem("run", end.message)
        QTimer.singleShot(0, self.finish)

    @property
    def run_end(self) -> RunEnd | None:
        return self._end

    def finish(self) -> None:
        """End an unattended run: screenshot, then close (which finalises recording and stats)."""
        if self._closing or self._finishing:
            return
        self._finishing = True
        if self.plan.screenshot is not None:
            try:
                self.save_screenshot(self.plan.screenshot)
            except OSError as exc:
                print(f"eyefuse live: {exc}", file=sys.stderr)
        self.close()

    def save_screenshot(self, path: Path) -> Path:
        """The window as the screen shows it (from the X server under Xvfb), or as rendered offscreen."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixmap = None
        if QGuiApplication.platformName() not in ("offscreen", "minimal"):
            screen = self.screen() or QGuiApplication.primaryScreen()
            if screen is not None:
                pixmap = screen.grabWindow(int(self.winId()))
        if pixmap is None or pixmap.isNull():
            pixmap = self.grab()
        if not pixmap.save(str(path)):
            raise OSError(f"could not write the screenshot to {path}")
        return path

    # -- plumbing --------------------------------------------------------------------------------
    @guarded_slot
    def _run_posted(self, fn: Callable[[], None]) -> None:
        if not self._closing:
            fn()

    def _post(self, fn: Callable[[], None]) -> None:
        """Run fn on the GUI thread (from any thread)."""
        if not self._closing:
            self._bridge.call.emit(fn)

    def _submit(self, job: Callable[[], None]) -> None:
        """Run job on the control thread, after the jobs before it."""
        if self._closing:
            return

        def guarded():
            try:
                job()
            except Exception as exc:  # a job must never die silently
                message = f"{type(exc).__name__}: {exc}"
                self._post(lambda: self._set_problem("control", message))

        try:
            self._control.submit(guarded)
        except RuntimeError:  # shut down meanwhile
            pass

    def _settings(self) -> ProcessorSettings:
        return ProcessorSettings(self.burst_box.value(), self.options.weights_dir)

    def _set_problem(self, key: str, message: str | None) -> None:
        if message:
            self._problems[key] = message
        else:
            self._problems.pop(key, None)
        self.banner.show_messages(list(self._problems.values()))

    def _dismiss_banner(self) -> None:
        self._problems.clear()  # conditions that remain (camera, engine) come back on the next refresh
        self.banner.show_messages([])

    # -- frames ----------------------------------------------------------------------------------
    @guarded_slot
    def _on_result_ready(self) -> None:
        taken = self._pump.take()
        if taken is None or self._closing:
            return
        r, before, after = taken
        self._current = r
        self.viewer.set_frame(before, after, token=r)

    @guarded_slot
    def _on_painted(self, token, t_ns: int) -> None:
        if not isinstance(token, Result) or not token.ok:
            return
        self._latency.add(token.t_capture_ns, t_ns)
        t_s = (t_ns - self._t0_ns) / 1e9
        lat = (t_ns - token.t_capture_ns) / 1e6
        self._timeline.append((t_s, lat, (token.t_start_ns - token.t_capture_ns) / 1e6,
                               (token.t_done_ns - token.t_start_ns) / 1e6, (t_ns - token.t_done_ns) / 1e6))
        self.stats_panel.plot.add(t_s, lat)
        self._shown += 1
        if self.plan.frames is not None and self._shown >= self.plan.frames and self._end is None:
            self.end_run(RunEnd("frames", f"{self._shown} frames shown"))

    @property
    def frames_shown(self) -> int:
        return self._shown

    # -- controls --------------------------------------------------------------------------------
    def request_source(self, spec: str) -> None:
        spec = spec.strip()
        if not spec:
            return
        self.statusBar().showMessage(f"opening {spec}…", 3000)

        def job():
            try:
                if self.pipeline.capture is None and self.pipeline.engine is None:
                    return  # not started: start() opens config.source
                self.pipeline.switch_source(spec)
            except Exception as exc:
                message = f"cannot open source {spec!r}: {exc}"
                self._post(lambda: self._set_problem("source", message))
                return
            self._post(lambda: (self._set_problem("source", None), self.statusBar().showMessage(f"source: {spec}", 3000)))

        self._submit(job)

    def request_processor(self, name: str) -> None:
        """Load `name` off the GUI thread and switch to it; the old one runs until then."""
        self._wanted = name
        if self.processor_box.currentData() != name and name in self._choices:
            self.processor_box.setCurrentIndex(self._choices.index(name))
        self._load_gen += 1
        gen = self._load_gen
        settings = self._settings()
        # until it is running or has failed: a first BurstFusion compiles its kernels (about 45 s)
        self.statusBar().showMessage(f"loading {label(name)}…")

        def job():
            try:
                proc = self._factory(name, settings)
            except Exception as exc:
                message = str(exc)
                self._post(lambda: self._on_load_failed(name, gen, message))
                return
            if gen != self._load_gen or self._closing:
                proc.close()  # superseded by a later choice
                return
            self._warm_up(proc)
            if self.pipeline.engine is None:
                proc.close()
                return
            self.pipeline.switch_processor(proc)  # the engine swaps it in between frames and owns it
            p_name, steps, burst = proc.name, proc.steps, proc.frames_needed
            self._post(lambda: self._on_loaded(name, p_name, steps, burst, gen, None))

        self._submit(job)

    def _warm_up(self, proc: Processor) -> None:
        """Run the new processor once on recent frames here, so its first live frame is not slow
        (sessions allocate on first run). Failures are left for the engine to report."""
        frames = self.pipeline.ring.last(max(1, proc.frames_needed))
        if frames:
            try:
                proc.process(frames)
            except Exception:
                pass

    def _on_loaded(self, wanted: str | None, name: str, steps: int | None, burst: int, gen: int,
                   error: str | None) -> None:
        self._running_name = name
        if error is not None:  # the start-up choice failed; the fallback runs
            self._on_load_failed(self._wanted, gen, error)
        elif gen == self._load_gen:
            self._set_problem("load", None)
            self._load_error, self._load_failed_fp, self._next_retry = None, None, math.inf
            self.statusBar().showMessage(f"running {label(name)}", 3000)
        if steps is not None and self.options.steps is not None and self.options.steps != steps:
            self.request_steps(self.options.steps)
            steps = self.options.steps
        self._update_step_control(steps, burst)

    def _on_load_failed(self, name: str, gen: int, message: str) -> None:
        if gen != self._load_gen:
            return
        self.statusBar().clearMessage()  # the banner says what happened
        running = label(self._running_name) if self._running_name else "nothing"
        self._load_error = message
        self._set_problem("load", f"could not load {label(name)}: {message} — running {running} instead; "
                                  f"it is tried again when its weights change.")
        self._load_failed_fp = weights_fingerprint(self.options.weights_dir)
        self._next_retry = time.monotonic() + self.options.load_retry_s

    def _retry_load(self) -> None:
        """Try the wanted processor again if its weights folder changed since it failed."""
        if time.monotonic() < self._next_retry:
            return
        self._next_retry = time.monotonic() + self.options.load_retry_s
        if weights_fingerprint(self.options.weights_dir) != self._load_failed_fp:
            self.request_processor(self._wanted)

    def request_steps(self, steps: int) -> None:
        engine = self.pipeline.engine
        if engine is None:
            return
        try:
            engine.set_steps(int(steps))  # takes effect between frames; cheap
        except (StepsNotSupported, ValueError) as exc:
            self.statusBar().showMessage(str(exc), 4000)
            return
        if self.steps_box.currentData() != steps and steps in STEP_CHOICES:
            self.steps_box.setCurrentIndex(STEP_CHOICES.index(steps))

    def _update_step_control(self, steps: int | None, burst: int) -> None:
        has = steps is not None
        self.steps_box.setEnabled(has)
        if has:
            self.steps_box.setToolTip("Learned refinement's sampler steps: off (the merge alone), 1, 2 or 4; "
                                      "more is slower (K: next)")
            if steps in STEP_CHOICES and self.steps_box.currentData() != steps:
                self.steps_box.setCurrentIndex(STEP_CHOICES.index(steps))
        else:
            name = label(self._running_name) if self._running_name else "this processor"
            self.steps_box.setToolTip(f"{name} has no step count: only iterative processors (BurstFusion) have steps")
        is_burst = burst > 1 or self._wanted == "burst_fusion"
        self.burst_box.setEnabled(is_burst)
        self.burst_box.setToolTip("Burst length: frames fused per output ([ and ])" if is_burst else
                                  "Burst length applies to burst processors (BurstFusion) only")

    def _on_burst_changed(self, value: int) -> None:
        engine = self.pipeline.engine
        proc = engine.processor if engine is not None else None
        if (proc is not None and proc.frames_needed > 1) or self._wanted == "burst_fusion":
            self.request_processor(self._wanted)

    def _cycle_processor(self, step: int) -> None:
        i = (self._choices.index(self._wanted) + step) % len(self._choices) if self._wanted in self._choices else 0
        self.request_processor(self._choices[i])

    def _cycle_steps(self) -> None:
        if not self.steps_box.isEnabled():
            self.statusBar().showMessage(self.steps_box.toolTip(), 3000)
            return
        i = (self.steps_box.currentIndex() + 1) % len(STEP_CHOICES)
        self.request_steps(STEP_CHOICES[i])

    def set_paused(self, paused: bool) -> None:
        engine = self.pipeline.engine
        if self.pause_action.isChecked() != paused:
            self.pause_action.setChecked(paused)  # re-enters with the same value
            return
        if engine is not None:
            engine.pause() if paused else engine.resume()
        self.pause_action.setText("Resume" if paused else "Pause")

    def _on_side_toggled(self, side: bool) -> None:
        self.viewer.set_mode(ViewMode.SIDE if side else ViewMode.WIPE)

    def toggle_help(self) -> None:
        self.viewer.set_help(None if self.viewer.help_visible else self.help_rows())

    def _pick_source(self) -> None:
        self.source_box.setFocus()
        self.source_box.showPopup()

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video or a DNG of a burst", "",
                                              "Video or DNG (*.mp4 *.mkv *.avi *.mov *.dng);;All files (*)")
        if path:
            spec = str(Path(path).parent / "*.dng") if path.lower().endswith(".dng") else path
            self.source_box.setEditText(spec)
            self.request_source(spec)

    def snapshot(self) -> None:
        """Save the shown before and after pictures as PNGs (written on the control thread)."""
        r = self._current
        if r is None or r.input_bgr is None:
            self.statusBar().showMessage("nothing to save yet", 3000)
            return
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
        folder = self.options.snapshot_dir

        def job():
            paths = []
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for name, image in (("before", r.input_bgr), ("after", r.output)):
                    if image is None:
                        continue
                    ok, png = cv2.imencode(".png", image)
                    if not ok:
                        raise OSError(f"PNG encoding of the {name} image failed")
                    path = folder / f"eyefuse_{stamp}_{name}.png"
                    atomic_write_bytes(path, png.tobytes())
                    paths.append(path)
            except OSError as exc:
                message = f"snapshot not saved to {folder}: {exc}"
                self._post(lambda: self._set_problem("snapshot", message))
                return
            self.last_snapshot = paths
            self._post(lambda: self.statusBar().showMessage("saved " + ", ".join(str(p) for p in paths), 5000))

        self._submit(job)

    # -- recording -------------------------------------------------------------------------------
    def set_recording(self, on: bool) -> None:
        if self.record_action.isChecked() != on:
            self.record_action.setChecked(on)  # re-enters through toggled
            return
        if on and self._recorder is None and not self._record_busy:
            self._start_recording()
        elif not on and self._recorder is not None:
            self._stop_recording()

    def _start_recording(self) -> None:
        path = self.plan.record if self.plan.record is not None else \
            self.options.record_dir / f"eyefuse_{_dt.datetime.now():%Y%m%d-%H%M%S}.mp4"
        cfg = RecorderConfig(Path(path), side_by_side=self.record_sbs_action.isChecked(),
                             codec=self.options.record_codec, queue_size=self.config.record_queue_size)
        try:
            rec = Recorder(cfg, on_status=self._on_recorder_status)
        except RecorderError as exc:
            self._record_refused(str(exc))
            return
        self._recorder, self._record_busy = rec, True
        self._open_recorders.add(rec)
        self._set_problem("recorder", None)

        def job():
            try:
                rec.start()
            except RecorderError as exc:
                message = str(exc)
                self._post(lambda: self._record_refused(message, rec))
                return
            if self.pipeline.engine is not None:
                self.pipeline.set_record_queue(rec.queue)
            self._post(self._record_started)

        self._submit(job)

    def _record_started(self) -> None:
        self._record_busy = False
        rec = self._recorder
        self.statusBar().showMessage(f"recording to {rec.path}" if rec else "", 4000)

    def _record_refused(self, message: str, rec: Recorder | None = None) -> None:
        if rec is not None and self._recorder is rec:
            self._recorder = None
        self._open_recorders.discard(rec)
        self._record_busy = False
        self._record_failure = message
        self._set_problem("recorder", message)
        self.record_action.setChecked(False)

    def _stop_recording(self) -> None:
        rec, self._recorder = self._recorder, None
        self._record_busy = True

        def job():
            if self.pipeline.engine is not None:
                self.pipeline.set_record_queue(None)
            st = rec.stop()
            self._open_recorders.discard(rec)
            self._post(lambda: self._record_stopped(st))

        self._submit(job)

    def _record_stopped(self, st: RecorderStatus) -> None:
        self._record_busy = False
        self._last_record = st
        self.record_indicator.setVisible(False)
        if st.state is RecorderState.FINISHED and st.frames == 0:
            self.statusBar().showMessage(st.message or "nothing was recorded", 8000)
        elif st.state is RecorderState.FINISHED:
            self.statusBar().showMessage(f"saved {st.path}: {st.frames} frames, {st.elapsed_s:.1f} s, "
                                         f"{st.bytes / 1e6:.1f} MB, {st.dropped} dropped", 8000)

    def _on_recorder_status(self, st: RecorderStatus) -> None:
        """From the recorder thread. A failure (a full disk) stops the recording; the preview goes on."""
        if st.state is RecorderState.FAILED:
            self._post(lambda: self._recording_failed(st))

    def _recording_failed(self, st: RecorderStatus) -> None:
        self._set_problem("recorder", st.message)
        self._record_failure = st.message
        self._last_record = st
        if self._recorder is not None and self._recorder.path == st.path:
            self.record_action.setChecked(False)  # -> _stop_recording: detach and join the ended thread

    @property
    def recorder(self) -> Recorder | None:
        return self._recorder

    @property
    def last_recording(self) -> RecorderStatus | None:
        return self._last_record

    # -- the periodic refresh --------------------------------------------------------------------
    def snapshot_stats(self) -> StatsSnapshot:
        pipe = self.pipeline
        cap = pipe.capture_status()
        eng = pipe.engine_stats()
        med, p99, disp = self._latency.summary()
        if self._shown and self._timeline and time.monotonic_ns() - self._t0_ns - self._timeline[-1][0] * 1e9 > 1e9:
            disp = 0.0  # nothing displayed in the last second
        r = self._current
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
            display_missed=pipe.slot.overwritten + self._pump.replaced,
            processor=(eng.processor or "") if eng else "", steps=eng.steps if eng else None,
            frames_needed=proc.frames_needed if proc is not None else 1,
            input_size=(r.input_bgr.shape[1], r.input_bgr.shape[0]) if r is not None and r.input_bgr is not None else None,
            output_size=(r.output.shape[1], r.output.shape[0]) if r is not None and r.output is not None else None,
            paused=eng is not None and eng.state is WorkerState.PAUSED,
        )

    @guarded_slot
    def _refresh(self) -> None:
        if self._closing:
            return
        s = self.snapshot_stats()
        self.stats_panel.show_snapshot(s)
        self.stats_panel.plot.advance((time.monotonic_ns() - self._t0_ns) / 1e9)
        self.viewer.set_overlay(overlay_lines(s))
        cap, eng = self.pipeline.capture_status(), self.pipeline.engine_stats()
        if cap is not None and cap.state in (CaptureState.RETRYING, CaptureState.ERROR, CaptureState.ENDED):
            what = {"retrying": "camera lost, reconnecting", "error": "camera error", "ended": "source ended"}
            since = "" if cap.since_frame_s is None else f" (no frame for {cap.since_frame_s:.1f} s)"
            self._set_problem("capture", f"{what[cap.state.value]} ({self.pipeline.source_spec}): {cap.message}{since}")
        elif "capture" in self._problems:
            self._set_problem("capture", None)
        if eng is not None and eng.state is WorkerState.ERROR and eng.error:
            self._set_problem("engine", f"engine: {eng.error}")
        elif "engine" in self._problems:
            self._set_problem("engine", None)
        if eng is not None and self._running_name != eng.processor and eng.processor:
            self._running_name = eng.processor
        if eng is not None:
            self._update_step_control(eng.steps, s.frames_needed)
        rec = self._recorder
        if rec is not None:
            st = rec.status()
            self.record_indicator.show_status(st.elapsed_s, st.bytes, st.dropped, st.state is RecorderState.STOPPING)
        if self._load_failed_fp is not None:
            self._retry_load()
        if self.plan.unattended and self._end is None:
            self._check_run_end(eng)

    def _check_run_end(self, eng) -> None:
        """An unattended run waits for frames that may never come: end it when the processor has
        failed on every frame for options.fail_after_s, or when the source has ended and its last
        result is on the screen."""
        if eng is not None and self._watch.update(self._clock.monotonic(), eng.processed, eng.errors):
            self.end_run(RunEnd("processor failed", failing_message(eng, self._watch.limit_s), True))
        elif self.pipeline.drained() and self._current is self.pipeline.slot.peek():
            self.end_run(source_end(self.pipeline.capture_status(), self._shown, self.plan.frames))

    # -- figures for --stats and the benchmark ---------------------------------------------------
    def run_stats(self, eng=None) -> dict:
        """Everything measured in this run (the whole run, not just the last second)."""
        wall = time.monotonic() - self._t0
        lat = np.array([row[1] for row in self._timeline]) if self._timeline else np.array([math.nan])
        times = np.array([row[0] for row in self._timeline])
        per_second = []
        if len(times):
            bins = np.arange(math.floor(times[0]), math.ceil(times[-1]) + 1)
            per_second = np.histogram(times, bins)[0].tolist() if len(bins) > 1 else [len(times)]
        cpu = os.times()
        cap = self.pipeline.capture_status()
        eng = eng or self.pipeline.engine_stats()
        rec = self._last_record
        from app.bench.report import peak_rss_mib

        return {
            "source": self.pipeline.source_spec, "wanted_processor": self._wanted,
            "processor": eng.processor if eng else None, "steps": eng.steps if eng else None,
            "load_error": self._load_error, "frames_shown": self._shown, "seconds": wall,
            "display_fps": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0,
            "display_fps_per_second": per_second,
            "latency_ms_median": float(np.median(lat)), "latency_ms_p99": float(np.percentile(lat, 99)),
            "capture_frames": cap.frames if cap else 0, "capture_fps": cap.fps if cap else 0.0,
            "engine_fps": eng.fps if eng else 0.0, "engine_processed": eng.processed if eng else 0,
            "engine_stage_median_ms": eng.stage_median_ms if eng else {},
            "engine_skipped": eng.skipped if eng else 0, "engine_errors": eng.errors if eng else 0,
            "ring_lost": self.pipeline.ring.stats().overwritten_unread,
            "display_missed": self.pipeline.slot.overwritten + self._pump.replaced,
            "record": record_summary(rec), "record_error": self._record_failure,
            "capture_state": cap.state.value if cap else None, "capture_outages": self.pipeline.outages(),
            "ended": self._end.reason if self._end else None, "end_message": self._end.message if self._end else None,
            "failed": bool(self._end and self._end.failed) or self._record_failure is not None,
            "problems": list(self._problems.values()),
            "cpu_seconds": cpu.user + cpu.system, "cpu_percent": 100 * (cpu.user + cpu.system) / wall if wall else 0.0,
            "peak_rss_mib": peak_rss_mib(), "qt_platform": QGuiApplication.platformName(),
            "timeline_columns": list(TIMELINE_COLUMNS),
            "timeline": [[round(v, 4 if i == 0 else 3) for i, v in enumerate(row)] for row in self._timeline],
        }

    @property
    def final_stats(self) -> dict | None:
        return self._final_stats


# -- the command --------------------------------------------------------------------------------
def window_options_from_args(args) -> tuple[WindowOptions, RunPlan]:
    def opt(name, default=None):
        return getattr(args, name, default)

    options = WindowOptions(
        weights_dir=Path(opt("weights_dir")) if opt("weights_dir") else None,
        record_side_by_side=bool(opt("record_side_by_side", False)),
        burst_length=int(opt("burst") or WindowOptions.burst_length),
        steps=opt("steps"),
    )
    plan = RunPlan(
        frames=opt("frames"), seconds=opt("seconds"),
        record=Path(opt("record")) if opt("record") else None,
        screenshot=Path(opt("screenshot")) if opt("screenshot") else None,
        stats=Path(opt("stats")) if opt("stats") else None,
    )
    return options, plan


def _quiet_qt_messages():
    """Drop the offscreen platform's per-resize "does not support propagateSizeHints()" notice;
    everything else Qt says still goes to stderr. Returns the handler it replaced."""
    from PyQt6.QtCore import qInstallMessageHandler

    def handler(mode, context, message):
        if "propagateSizeHints" not in message:
            print(message, file=sys.stderr)

    return qInstallMessageHandler(handler)


def run_window(config: PipelineConfig, args) -> int:
    """`eyefuse live` with a window (or --offscreen: the same window without a display)."""
    if getattr(args, "offscreen", False):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    elif sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM") and \
            not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("eyefuse live: no display (DISPLAY and WAYLAND_DISPLAY are unset). Run it on a desktop, under "
              "`xvfb-run`, or with --offscreen (the window without a screen) or --headless (no window).",
              file=sys.stderr)
        return 2
    options, plan = window_options_from_args(args)
    previous_handler = _quiet_qt_messages()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    # The window's `finished` ends the run. Qt's own quit on the last window closing would post a Quit
    # event that app.exec() has already returned before: handled later by anyone else's processEvents(),
    # it makes every event loop in the process return at once. So it is off for the run.
    quit_on_last_closed = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    window = MainWindow(config, options, plan)
    # Ctrl+C and SIGTERM close the window properly (the recording finalised, the figures written), and
    # then go on as the signal would have: the handler they had (app.cli turns SIGTERM into Terminated)
    # runs after the window is shut, here, not inside a Qt slot, where its exception would abort the
    # process and leave the recording and the figures unwritten.
    caught: list[int] = []

    def on_signal(signum, _frame) -> None:
        if not caught:
            caught.append(signum)
            end = signal_end(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
            QTimer.singleShot(0, lambda: window.end_run(end))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    window.show()
    window.start()
    ticker = QTimer()
    ticker.timeout.connect(lambda: None)  # let Python run its signal handlers while Qt waits
    ticker.start(200)
    done = threading.Event()
    window.finished.connect(done.set)
    window.finished.connect(app.quit)
    try:
        if not done.is_set():
            app.exec()
    finally:
        ticker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        window.shutdown()
        app.setQuitOnLastWindowClosed(quit_on_last_closed)
        from PyQt6.QtCore import qInstallMessageHandler

        qInstallMessageHandler(previous_handler)
    stats = window.final_stats or {}
    summary = {k: v for k, v in stats.items() if k != "timeline"}
    print(json.dumps(summary, indent=1, default=str))
    end = window.run_end
    if end is not None and end.reason not in ("frames", "seconds", "closed"):
        print(f"eyefuse live: {end.message}", file=sys.stderr)
    if stats.get("record_error"):
        print(f"eyefuse live: the recording failed: {stats['record_error']}", file=sys.stderr)
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)  # raises (Terminated, KeyboardInterrupt) for the caller to unwind
        return 128 + caught[0]
    return 1 if stats.get("failed") or not stats.get("frames_shown") else 0

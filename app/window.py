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

This module wires the window together and lays it out; its parts live beside it: the threads
(app/gui_threads.py), loading processors (app/model_loading.py), recording (app/recording_control.py),
the toolbar and shortcuts (app/controls.py), the figures (app/live_figures.py) and how they are
shown (app/stats_panel.py).

`run_window(config, args)` is `eyefuse live` (and, with --offscreen, its test/benchmark mode).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
from PyQt6.QtCore import Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QGuiApplication
from PyQt6.QtWidgets import (
    QApplication, QDockWidget, QFrame, QHBoxLayout, QLabel, QMainWindow, QPushButton, QVBoxLayout, QWidget,
)

from app.cli import Terminated
from app.controls import Controls
from app.gui_threads import Bridge, ControlThread, ResultPump, guarded_slot
from app.live_figures import DisplayLog, live_snapshot, run_figures
from app.model_loading import ProcessorFactory, ProcessorLoader, ProcessorSettings, label, make_window_processor, \
    processor_choices
from app.pipeline import FailureWatch, LivePipeline, PipelineConfig, RunEnd, failing_message, signal_end, source_end, \
    write_stats
from app.recorder import Recorder, RecorderStatus
from app.recording_control import RecordingControl
from app.stats_panel import RecordIndicator, StatsPanel, StatsSnapshot, overlay_lines
from app.viewer import BeforeAfterViewer
from capture.atomic import atomic_write_bytes
from capture.clock import SYSTEM_CLOCK, Clock
from capture.sources import open_source
from capture.worker import CaptureState
from engine.processor import Result, StepsNotSupported
from engine.worker import WorkerState

RUNS_DIR = Path("runs")


# -- configuration ------------------------------------------------------------------------------
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
        self._bridge = Bridge()
        self._bridge.call.connect(self._run_posted)
        self._bridge.result_ready.connect(self._on_result_ready)
        self._pump = ResultPump(self.pipeline.slot, self._bridge.result_ready.emit)
        self._control = ControlThread(self._bridge, lambda: self._closing,
                                      lambda message: self._set_problem("control", message))
        self._closing = False
        self._started = False
        self._problems: dict[str, str] = {}
        self.display_log = DisplayLog()
        self._current: Result | None = None
        self._finishing = False
        self._final_stats: dict | None = None
        choices = choices if choices is not None else processor_choices(options.weights_dir)
        if config.processor not in choices:
            choices.insert(0, config.processor)
        self.loader = ProcessorLoader(self.pipeline, processor_factory, config.processor, self._control,
                                      self._set_problem, self.statusBar(), self._settings, self._on_running,
                                      fallback=options.fallback_processor, weights_dir=options.weights_dir,
                                      retry_s=options.load_retry_s)

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
        c = self.controls = Controls(self, choices)
        # the controls the window acts on (and its tests reach)
        self.source_box, self.processor_box, self.burst_box, self.steps_box = \
            c.source_box, c.processor_box, c.burst_box, c.steps_box
        self.pause_action, self.snapshot_action, self.record_action, self.side_action = \
            c.pause_action, c.snapshot_action, c.record_action, c.side_action
        self.recording = RecordingControl(self.pipeline, c.record_action, c.record_sbs_action.isChecked,
                                          self.record_indicator, self.statusBar(), self._control, self._set_problem,
                                          path=plan.record, folder=options.record_dir, codec=options.record_codec,
                                          queue_size=config.record_queue_size)
        self._stats_timer = QTimer(self)
        self._stats_timer.timeout.connect(self._refresh)
        self._stats_timer.start(options.stats_interval_ms)
        self.viewer.set_help(None)

    def help_rows(self) -> list[tuple[str, str]]:
        return self.controls.help_rows()

    def toggle_help(self) -> None:
        self.controls.toggle_help()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline (on the control thread) and the display pump. Once."""
        if self._started:
            return
        self._started = True
        self.display_log.restart()
        self._pump.start()
        self.viewer.clear(f"starting {label(self.loader.wanted)} on {self.config.source}…")
        self.loader.start_pipeline(self.config.source)
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
        self._control.shutdown()  # a model being loaded is finished, then closed
        eng = self.pipeline.engine_stats()
        self.recording.close(planned=self.plan.record is not None)
        self.pipeline.stop()
        if self._end is None:
            self._end = RunEnd("closed", "the window was closed")
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
        t_s, lat = self.display_log.add(token, t_ns)
        self.stats_panel.plot.add(t_s, lat)
        shown = self.display_log.shown
        if self.plan.frames is not None and shown >= self.plan.frames and self._end is None:
            self.end_run(RunEnd("frames", f"{shown} frames shown"))

    @property
    def frames_shown(self) -> int:
        return self.display_log.shown

    # -- what the controls ask for -----------------------------------------------------------------
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
                self._control.post(lambda: self._set_problem("source", message))
                return
            self._control.post(lambda: (self._set_problem("source", None),
                                        self.statusBar().showMessage(f"source: {spec}", 3000)))

        self._control.submit(job)

    def request_processor(self, name: str) -> None:
        """Load `name` off the GUI thread and switch to it; the old one runs until then."""
        self.controls.show_processor(name)
        self.loader.request(name)

    def _on_running(self, steps: int | None, burst: int) -> None:
        """A processor has started running: apply --steps to it, and show what it has."""
        if steps is not None and self.options.steps is not None and self.options.steps != steps:
            self.request_steps(self.options.steps)
            steps = self.options.steps
        self.controls.show_running(steps, burst)

    def request_steps(self, steps: int) -> None:
        engine = self.pipeline.engine
        if engine is None:
            return
        try:
            engine.set_steps(int(steps))  # takes effect between frames; cheap
        except (StepsNotSupported, ValueError) as exc:
            self.statusBar().showMessage(str(exc), 4000)
            return
        self.controls.show_steps(steps)

    def set_paused(self, paused: bool) -> None:
        engine = self.pipeline.engine
        if self.pause_action.isChecked() != paused:
            self.pause_action.setChecked(paused)  # re-enters with the same value
            return
        if engine is not None:
            engine.pause() if paused else engine.resume()
        self.pause_action.setText("Resume" if paused else "Pause")

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
                self._control.post(lambda: self._set_problem("snapshot", message))
                return
            self.last_snapshot = paths
            self._control.post(lambda: self.statusBar().showMessage("saved " + ", ".join(str(p) for p in paths), 5000))

        self._control.submit(job)

    def set_recording(self, on: bool) -> None:
        self.recording.set(on)

    @property
    def recorder(self) -> Recorder | None:
        return self.recording.recorder

    @property
    def last_recording(self) -> RecorderStatus | None:
        return self.recording.last

    # -- the periodic refresh --------------------------------------------------------------------
    def snapshot_stats(self) -> StatsSnapshot:
        return live_snapshot(self.pipeline, self.display_log, self._current, self._pump.replaced)

    @guarded_slot
    def _refresh(self) -> None:
        if self._closing:
            return
        s = self.snapshot_stats()
        self.stats_panel.show_snapshot(s)
        self.stats_panel.plot.advance(self.display_log.seconds())
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
        if eng is not None and self.loader.running_name != eng.processor and eng.processor:
            self.loader.running_name = eng.processor
        if eng is not None:
            self.controls.show_running(eng.steps, s.frames_needed)
        self.recording.refresh()
        self.loader.retry_if_due()
        if self.plan.unattended and self._end is None:
            self._check_run_end(eng)

    def _check_run_end(self, eng) -> None:
        """An unattended run waits for frames that may never come: end it when the processor has
        failed on every frame for options.fail_after_s, or when the source has ended and its last
        result is on the screen."""
        if eng is not None and self._watch.update(self._clock.monotonic(), eng.processed, eng.errors):
            self.end_run(RunEnd("processor failed", failing_message(eng, self._watch.limit_s), True))
        elif self.pipeline.drained() and self._current is self.pipeline.slot.peek():
            self.end_run(source_end(self.pipeline.capture_status(), self.frames_shown, self.plan.frames))

    # -- figures for --stats and the benchmark ---------------------------------------------------
    def run_stats(self, eng=None) -> dict:
        """Everything measured in this run (the whole run, not just the last second)."""
        return run_figures(self.pipeline, self.display_log, eng, wanted=self.loader.wanted,
                           load_error=self.loader.load_error, record=self.recording.last,
                           record_error=self.recording.failure, end=self._end,
                           problems=list(self._problems.values()), pump_replaced=self._pump.replaced)

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

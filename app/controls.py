"""The window's controls: the toolbar (source, processor, burst length, steps, pause, snapshot,
record, view), every keyboard shortcut, and the help that lists them.

A control only asks: what it asks for, the window does (its request_*, set_* and snapshot methods,
which hand slow work to the control thread). What the controls show of the running processor (its
steps, whether it takes a burst) is set by `show_running`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PyQt6.QtCore import Qt
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import QComboBox, QFileDialog, QLabel, QMenu, QSpinBox, QToolBar, QToolButton

from app.model_loading import label
from app.viewer import ViewMode

if TYPE_CHECKING:
    from app.window import MainWindow

STEP_CHOICES = (0, 1, 2, 4)  # 0: the processor's learned refinement off (BurstFusion: the merge alone)
SOURCE_CHOICES = ("simulated", "simulated:bayer", "ps3eye", "0")


@dataclass
class Shortcut:
    action: QAction
    keys: str
    what: str


class Controls:
    """Builds the toolbar and the shortcuts into `window` and keeps its widgets and actions.

    choices: the processors offered, in order; the window's loader says which is wanted and running."""

    def __init__(self, window: MainWindow, choices: list[str]):
        self.window, self.choices = window, choices
        config, options, viewer = window.config, window.options, window.viewer
        bar = QToolBar("Controls")
        bar.setMovable(False)
        window.addToolBar(bar)
        self.source_box = QComboBox()
        self.source_box.setEditable(True)
        self.source_box.setMinimumContentsLength(14)
        for spec in dict.fromkeys([config.source, *SOURCE_CHOICES]):
            self.source_box.addItem(spec)
        self.source_box.setToolTip("Source: simulated, ps3eye, a camera index, a video file or 'burst/*.dng' "
                                   "(type one and press Enter)")
        self.source_box.activated.connect(lambda _i: window.request_source(self.source_box.currentText()))
        bar.addWidget(QLabel(" Source "))
        bar.addWidget(self.source_box)

        self.processor_box = QComboBox()
        for name in choices:
            self.processor_box.addItem(label(name), name)
        self.processor_box.setCurrentIndex(choices.index(window.loader.wanted))
        self.processor_box.setToolTip("Processor (M: next)")
        self.processor_box.activated.connect(lambda i: window.request_processor(self.processor_box.itemData(i)))
        bar.addWidget(QLabel("  Processor "))
        bar.addWidget(self.processor_box)

        self.burst_box = QSpinBox()
        self.burst_box.setRange(2, config.ring_capacity)
        self.burst_box.setValue(min(max(2, options.burst_length), config.ring_capacity))
        self.burst_box.setToolTip("Burst length: frames fused per output ([ and ])")
        self.burst_box.setKeyboardTracking(False)
        self.burst_box.valueChanged.connect(self._on_burst_changed)
        bar.addWidget(QLabel("  Burst "))
        bar.addWidget(self.burst_box)

        self.steps_box = QComboBox()
        for k in STEP_CHOICES:
            self.steps_box.addItem(str(k) if k else "off", k)
        self.steps_box.activated.connect(lambda i: window.request_steps(self.steps_box.itemData(i)))
        bar.addWidget(QLabel("  Steps "))
        bar.addWidget(self.steps_box)
        bar.addSeparator()

        self.shortcuts: list[Shortcut] = []

        def action(text: str, keys: list[str], what: str, slot, checkable: bool = False, toolbar: bool = True) -> QAction:
            a = QAction(text, window)
            a.setShortcuts([QKeySequence(k) for k in keys])
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            a.setCheckable(checkable)
            a.setToolTip(f"{what} ({', '.join(keys)})")
            (a.toggled if checkable else a.triggered).connect(slot)
            window.addAction(a)
            if toolbar:
                bar.addAction(a)
            self.shortcuts.append(Shortcut(a, ", ".join(keys), what))
            return a

        self.pause_action = action("Pause", ["Space"], "pause / resume the engine", window.set_paused, True)
        self.snapshot_action = action("Snapshot", ["S"], "save the before and after images", window.snapshot)
        self.record_action = action("● Record", ["R"], "start / stop recording the enhanced video",
                                    window.set_recording, True)
        self.record_sbs_action = action("Record side by side", ["Shift+R"],
                                        "the next recording holds before | after, not just after",
                                        lambda on: None, True, toolbar=False)
        self.record_sbs_action.setChecked(options.record_side_by_side)
        record_button = bar.widgetForAction(self.record_action)
        if isinstance(record_button, QToolButton):  # Record ▾ -> side by side
            menu = QMenu(record_button)
            menu.addAction(self.record_sbs_action)
            record_button.setMenu(menu)
            record_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        bar.addSeparator()
        self.side_action = action("Side by side", ["B"], "wipe ↔ side by side", self._on_side_toggled, True)
        self.fit_action = action("Fit", ["F"], "fit the picture to the window", viewer.fit_to_window)
        self.actual_action = action("1:1", ["1"], "zoom to 1:1 (one output pixel per screen pixel)",
                                    viewer.zoom_actual)
        self.help_action = action("Help", ["H", "F1", "?"], "show / hide this help", self.toggle_help)
        action("Zoom in", ["+", "="], "zoom in", lambda: viewer.zoom_by(1.25), toolbar=False)
        action("Zoom out", ["-"], "zoom out", lambda: viewer.zoom_by(0.8), toolbar=False)
        for key, dx, dy in (("Left", 60, 0), ("Right", -60, 0), ("Up", 0, 60), ("Down", 0, -60)):
            a = QAction(window)
            a.setShortcut(QKeySequence(key))
            a.triggered.connect(lambda _=False, dx=dx, dy=dy: viewer.pan_by(dx, dy))
            window.addAction(a)
        self.shortcuts.append(Shortcut(QAction(window), "Arrows, drag", "pan (drag the divider to wipe)"))
        action("Next processor", ["M"], "next processor", lambda: self._cycle_processor(1), toolbar=False)
        action("Previous processor", ["Shift+M"], "previous processor", lambda: self._cycle_processor(-1),
               toolbar=False)
        action("Steps", ["K"], "next step count (processors with steps)", self._cycle_steps, toolbar=False)
        action("Shorter burst", ["["], "shorter burst (BurstFusion)", lambda: self.burst_box.stepBy(-1), toolbar=False)
        action("Longer burst", ["]"], "longer burst (BurstFusion)", lambda: self.burst_box.stepBy(1), toolbar=False)
        action("Source", ["O"], "pick a source", self._pick_source, toolbar=False)
        action("Open file", ["Ctrl+O"], "open a video file or DNG burst", self._open_file, toolbar=False)
        action("Close help", ["Esc"], "close this help", lambda: viewer.set_help(None), toolbar=False)
        action("Quit", ["Ctrl+Q"], "quit (finishes the recording first)", window.close, toolbar=False)
        self.show_running(None, 1)

    def help_rows(self) -> list[tuple[str, str]]:
        return [(s.keys, s.what) for s in self.shortcuts]

    def toggle_help(self) -> None:
        viewer = self.window.viewer
        viewer.set_help(None if viewer.help_visible else self.help_rows())

    def show_processor(self, name: str) -> None:
        if self.processor_box.currentData() != name and name in self.choices:
            self.processor_box.setCurrentIndex(self.choices.index(name))

    def show_steps(self, steps: int) -> None:
        if self.steps_box.currentData() != steps and steps in STEP_CHOICES:
            self.steps_box.setCurrentIndex(STEP_CHOICES.index(steps))

    def show_running(self, steps: int | None, burst: int) -> None:
        """Enable the steps and burst controls for a processor that has them, and say why not otherwise."""
        loader = self.window.loader
        has = steps is not None
        self.steps_box.setEnabled(has)
        if has:
            self.steps_box.setToolTip("Learned refinement's sampler steps: off (the merge alone), 1, 2 or 4; "
                                      "more is slower (K: next)")
            self.show_steps(steps)
        else:
            name = label(loader.running_name) if loader.running_name else "this processor"
            self.steps_box.setToolTip(f"{name} has no step count: only iterative processors (BurstFusion) have steps")
        is_burst = burst > 1 or loader.wanted == "burst_fusion"
        self.burst_box.setEnabled(is_burst)
        self.burst_box.setToolTip("Burst length: frames fused per output ([ and ])" if is_burst else
                                  "Burst length applies to burst processors (BurstFusion) only")

    def _on_burst_changed(self, value: int) -> None:
        window = self.window
        engine = window.pipeline.engine
        proc = engine.processor if engine is not None else None
        if (proc is not None and proc.frames_needed > 1) or window.loader.wanted == "burst_fusion":
            window.request_processor(window.loader.wanted)

    def _cycle_processor(self, step: int) -> None:
        wanted = self.window.loader.wanted
        i = (self.choices.index(wanted) + step) % len(self.choices) if wanted in self.choices else 0
        self.window.request_processor(self.choices[i])

    def _cycle_steps(self) -> None:
        if not self.steps_box.isEnabled():
            self.window.statusBar().showMessage(self.steps_box.toolTip(), 3000)
            return
        i = (self.steps_box.currentIndex() + 1) % len(STEP_CHOICES)
        self.window.request_steps(STEP_CHOICES[i])

    def _on_side_toggled(self, side: bool) -> None:
        self.window.viewer.set_mode(ViewMode.SIDE if side else ViewMode.WIPE)

    def _pick_source(self) -> None:
        self.source_box.setFocus()
        self.source_box.showPopup()

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open a video or a DNG of a burst", "",
                                              "Video or DNG (*.mp4 *.mkv *.avi *.mov *.dng);;All files (*)")
        if path:
            spec = str(Path(path).parent / "*.dng") if path.lower().endswith(".dng") else path
            self.source_box.setEditText(spec)
            self.window.request_source(spec)

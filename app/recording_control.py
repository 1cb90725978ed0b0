"""Recording from the window: `RecordingControl` starts and stops the Recorder behind the Record
action, off the GUI thread (opening an encoder and finalising a file take longer than a frame),
keeps the REC indicator up to date, and puts a recording that failed (a full disk) or was refused in
the banner while the preview goes on.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable

from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QStatusBar

from app.gui_threads import ControlThread
from app.pipeline import LivePipeline
from app.recorder import Recorder, RecorderConfig, RecorderError, RecorderState, RecorderStatus
from app.stats_panel import RecordIndicator


class RecordingControl:
    """The window's recording, behind `action` (checkable: checked while recording).

    recorder: the one recording now (None while stopped). last: the status of the last recording that
    ended or failed. failure: why the last recording failed or was refused (the run then counts as
    failed). Recorders started and not yet stopped are finalised by close(), so a window closed
    mid-recording leaves a valid file.

    path: the file to record to (None: a new time-stamped file in `folder`). side_by_side: whether
    the next recording holds before | after. Its methods run on the GUI thread, its jobs on
    `control`'s thread; the recorder's status comes from the recorder's thread.
    """

    def __init__(self, pipeline: LivePipeline, action: QAction, side_by_side: Callable[[], bool],
                 indicator: RecordIndicator, status: QStatusBar, control: ControlThread,
                 set_problem: Callable[[str, str | None], None], *, path: Path | None, folder: Path, codec: str,
                 queue_size: int):
        self.pipeline, self._action, self._side_by_side = pipeline, action, side_by_side
        self._indicator, self._status, self._control, self._set_problem = indicator, status, control, set_problem
        self._path, self._folder, self._codec, self._queue_size = path, folder, codec, queue_size
        self.recorder: Recorder | None = None
        self.last: RecorderStatus | None = None
        self.failure: str | None = None
        self._open: set[Recorder] = set()  # started and not yet stopped (finalised at close)
        self._busy = False

    def set(self, on: bool) -> None:
        """Start or stop recording (what the action's toggle does)."""
        if self._action.isChecked() != on:
            self._action.setChecked(on)  # re-enters through toggled
            return
        if on and self.recorder is None and not self._busy:
            self._start()
        elif not on and self.recorder is not None:
            self._stop()

    def refresh(self) -> None:
        """Bring the REC indicator up to date (the window's periodic refresh)."""
        rec = self.recorder
        if rec is not None:
            st = rec.status()
            self._indicator.show_status(st.elapsed_s, st.bytes, st.dropped, st.state is RecorderState.STOPPING)

    def close(self, planned: bool) -> None:
        """Finalise every recorder still open (also one whose stop job was cancelled), detached from
        the engine first. planned: a recording was asked for from the start (--record), so one that
        got no frame is a failure."""
        if self.pipeline.engine is not None:
            self.pipeline.set_record_queue(None)
        for rec in list(self._open):
            st = rec.stop()
            if rec is self.recorder or self.last is None or self.last.path == st.path:
                self.last = st
            self._open.discard(rec)
        self.recorder = None
        rec = self.last
        if planned and self.failure is None and (rec is None or rec.frames == 0):
            self.failure = rec.message if rec is not None and rec.message else "nothing was recorded"

    def _start(self) -> None:
        path = self._path if self._path is not None else \
            self._folder / f"eyefuse_{_dt.datetime.now():%Y%m%d-%H%M%S}.mp4"
        cfg = RecorderConfig(Path(path), side_by_side=self._side_by_side(), codec=self._codec,
                             queue_size=self._queue_size)
        try:
            rec = Recorder(cfg, on_status=self._on_recorder_status)
        except RecorderError as exc:
            self._refused(str(exc))
            return
        self.recorder, self._busy = rec, True
        self._open.add(rec)
        self._set_problem("recorder", None)

        def job():
            try:
                rec.start()
            except RecorderError as exc:
                message = str(exc)
                self._control.post(lambda: self._refused(message, rec))
                return
            if self.pipeline.engine is not None:
                self.pipeline.set_record_queue(rec.queue)
            self._control.post(self._started)

        self._control.submit(job)

    def _started(self) -> None:
        self._busy = False
        rec = self.recorder
        self._status.showMessage(f"recording to {rec.path}" if rec else "", 4000)

    def _refused(self, message: str, rec: Recorder | None = None) -> None:
        if rec is not None and self.recorder is rec:
            self.recorder = None
        self._open.discard(rec)
        self._busy = False
        self.failure = message
        self._set_problem("recorder", message)
        self._action.setChecked(False)

    def _stop(self) -> None:
        rec, self.recorder = self.recorder, None
        self._busy = True

        def job():
            if self.pipeline.engine is not None:
                self.pipeline.set_record_queue(None)
            st = rec.stop()
            self._open.discard(rec)
            self._control.post(lambda: self._stopped(st))

        self._control.submit(job)

    def _stopped(self, st: RecorderStatus) -> None:
        self._busy = False
        self.last = st
        self._indicator.setVisible(False)
        if st.state is RecorderState.FINISHED and st.frames == 0:
            self._status.showMessage(st.message or "nothing was recorded", 8000)
        elif st.state is RecorderState.FINISHED:
            self._status.showMessage(f"saved {st.path}: {st.frames} frames, {st.elapsed_s:.1f} s, "
                                     f"{st.bytes / 1e6:.1f} MB, {st.dropped} dropped", 8000)

    def _on_recorder_status(self, st: RecorderStatus) -> None:
        """From the recorder thread. A failure (a full disk) stops the recording; the preview goes on."""
        if st.state is RecorderState.FAILED:
            self._control.post(lambda: self._failed(st))

    def _failed(self, st: RecorderStatus) -> None:
        self._set_problem("recorder", st.message)
        self.failure = st.message
        self.last = st
        if self.recorder is not None and self.recorder.path == st.path:
            self._action.setChecked(False)  # -> set(False): detach and join the ended thread

"""The live window, offscreen: frames flow, controls switch things while running, recording,
a camera unplugged and plugged back, weights that fail and come back, closing mid-recording.

Every test makes its own window and its own test processors (the `processors` fixture), so the tests
run in any order. They wait for what they need to see (frames shown, a processor entering a frame, a
load starting) with a generous deadline, never for a fixed time.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, Qt  # noqa: E402
from PyQt6.QtGui import QImage  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.model_loading import make_window_processor  # noqa: E402
from app.pipeline import PipelineConfig  # noqa: E402
from app.recorder import RecorderState, RecordQueue  # noqa: E402
from app.stats_panel import StatsSnapshot, overlay_lines, panel_rows  # noqa: E402
from app.viewer import (  # noqa: E402
    BeforeAfterViewer, Rect, ViewMode, bgr_qimage, clamp_center, fit_scale, image_rect, widget_to_image, zoom_about,
)
from app.window import MainWindow, RunPlan, WindowOptions, run_window  # noqa: E402
from capture.clock import SYSTEM_CLOCK, FakeClock  # noqa: E402
from capture.convert import to_bgr8  # noqa: E402
from capture.simulated import SimulatedCamera, SimulatedConfig  # noqa: E402
from capture.sources import SourceOptions, open_source  # noqa: E402
from engine.processor import BicubicProcessor, Processor, ProcessingError, StageTimer  # noqa: E402
from tests.conftest import DEADLINE_S  # noqa: E402
from tests.onnx_models import make_weights_dir  # noqa: E402

SMALL = "simulated:160x120@30"  # 2x output: 320x240, cheap enough for a busy 2-core machine
WAIT_MS = int(DEADLINE_S * 1000)  # qtbot deadlines: a wait ends as soon as its condition holds


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads):
    yield


class FakeSteps(Processor):
    """2x nearest, repeated `steps` times (one "step" stage each): a processor with a step count."""

    name = "fake_steps"

    def __init__(self):
        self._steps = 1

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        if value not in (1, 2, 4):
            raise ValueError(f"fake_steps takes 1, 2 or 4 steps, not {value}")
        self._steps = value

    def enhance(self, frames, timer: StageTimer):
        bgr = to_bgr8(frames[-1])
        for _ in range(self._steps):
            with timer.stage("step"):
                out = cv2.resize(bgr, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        return bgr, out


class FakeBurst(FakeSteps):
    """A burst processor (the newest `frames_needed` frames) with steps, standing in for BurstFusion."""

    name = "fake_burst"

    def __init__(self, frames_needed: int):
        super().__init__()
        self.frames_needed = frames_needed


class FakeReporting(FakeSteps):
    """A burst-like processor with 2 steps whose results carry a notice and a PSNR against the truth,
    as BurstFusion's do when its refinement is off and the simulated Bayer camera knows the truth."""

    name = "fake_reporting"
    NOTICE = "the learned refinement is off: fake weights are missing (this is a test)"
    PSNR = 31.25

    def __init__(self):
        super().__init__()
        self._steps = 2

    def enhance(self, frames, timer: StageTimer):
        bgr = to_bgr8(frames[-1])
        for stage in ("raw", "align", "noise", "merge", f"refine ({self._steps} steps, guard)"):
            with timer.stage(stage):
                pass
        with timer.stage("finish"):
            out = cv2.resize(bgr, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        return bgr, out

    def take_report(self):
        return self.NOTICE, self.PSNR


@dataclass
class ProcessorSwitches:
    """The test's processors and the switches that steer them, made afresh for every test.

    slow_load: loading it waits until `load_done` is set (a model that takes as long to load as the
        test says); `loading` is set once its load has begun.
    flaky: bicubic that fails while `broken` is set.
    held: bicubic that, while `hold` is set, stops inside each frame until the test lets it through
        (`let_through`); `entered` gets the seq of each frame it stops in. `calls` counts its frames.
    """

    load_done: threading.Event = field(default_factory=threading.Event)
    loading: threading.Event = field(default_factory=threading.Event)
    broken: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event = field(default_factory=threading.Event)
    entered: queue.Queue = field(default_factory=queue.Queue)
    calls: int = 0
    _through: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def let_through(self) -> None:
        self._through.release()

    def wait_entered(self) -> int:
        try:
            return self.entered.get(timeout=DEADLINE_S)
        except queue.Empty:
            pytest.fail("the held processor never got a frame")

    def make(self, name: str, settings) -> Processor:
        """The window's processor factory."""
        if name == "fake_steps":
            return FakeSteps()
        if name == "slow_load":
            self.loading.set()
            if not self.load_done.wait(DEADLINE_S):
                raise RuntimeError("slow_load: the test never let the load finish")
            p = BicubicProcessor(2)
            p.name = "slow_load"
            return p
        if name == "flaky":
            return _Flaky(self)
        if name == "held":
            return _Held(self)
        if name == "fake_burst":
            return FakeBurst(settings.burst_length)
        if name == "fake_reporting":
            return FakeReporting()
        return make_window_processor(name, settings)


class _Flaky(BicubicProcessor):
    """Bicubic that fails while its test's `broken` is set (an engine error the window must show and
    recover from)."""

    def __init__(self, switches: ProcessorSwitches):
        super().__init__(2)
        self.name, self._switches = "flaky", switches

    def enhance(self, frames, timer):
        if self._switches.broken.is_set():
            raise ProcessingError("flaky: the model ran out of luck")
        return super().enhance(frames, timer)


class _Held(BicubicProcessor):
    """Bicubic that stops in its frames while its test's `hold` is set (see ProcessorSwitches)."""

    def __init__(self, switches: ProcessorSwitches):
        super().__init__(2)
        self.name, self._switches = "held", switches

    def enhance(self, frames, timer):
        sw = self._switches
        sw.calls += 1
        if sw.hold.is_set():
            sw.entered.put(frames[-1].seq)
            if not sw._through.acquire(timeout=DEADLINE_S):
                raise ProcessingError("held: the test never let the frame through")
        return super().enhance(frames, timer)


@pytest.fixture
def processors() -> ProcessorSwitches:
    return ProcessorSwitches()


@pytest.fixture
def open_window(qtbot, tmp_path, processors):
    windows = []

    def make(source=SMALL, processor="bicubic", opener=open_source, choices=None, plan=RunPlan(),
             clock=SYSTEM_CLOCK, **options):
        opts = WindowOptions(record_dir=tmp_path / "rec", snapshot_dir=tmp_path / "snap", size=(900, 600),
                             stats_interval_ms=100, **options)
        w = MainWindow(PipelineConfig(source=source, processor=processor), opts, plan, opener=opener,
                       processor_factory=processors.make,
                       choices=choices or ["bicubic", "fake_steps", "fake_burst", "fake_reporting", "slow_load",
                                           "flaky", "held", "passthrough"], clock=clock)
        qtbot.addWidget(w)
        windows.append(w)
        w.show()
        w.start()
        return w

    yield make
    processors.load_done.set()  # nothing may stay waiting on the test's switches
    processors.hold.clear()
    for _ in range(2):  # the threads that may be held in a frame: the engine's, and a warm-up's
        processors.let_through()
    for w in windows:
        w.close()  # stops every thread before no_leaked_threads looks
    for w in windows:
        assert "gui" not in w._problems, w._problems["gui"]  # no slot raised
        assert "control" not in w._problems, w._problems["control"]  # no job raised


def wait_frames(qtbot, w: MainWindow, n: int, timeout: int = WAIT_MS) -> None:
    target = w.frames_shown + n
    qtbot.waitUntil(lambda: w.frames_shown >= target, timeout=timeout)


def choose(box, data) -> None:
    """Pick an item of a combo box the way a user does (activated fires only for user choices)."""
    i = box.findData(data)
    assert i >= 0, f"{data!r} is not offered"
    box.setCurrentIndex(i)
    box.activated.emit(i)


def indicator_seconds(w: MainWindow) -> int:
    """The recording time the REC indicator shows ("REC mm:ss ..."), in seconds."""
    minutes, seconds = w.record_indicator.text.text().split()[1].split(":")
    return 60 * int(minutes) + int(seconds)


def decode(path: Path):
    with av.open(str(path)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
        return times, (c.duration / 1e6 if c.duration else float("nan"))


# -- the viewer alone -------------------------------------------------------------------------------
def test_view_geometry_is_pure_arithmetic():
    assert fit_scale(1280, 960, 640, 600) == 0.5
    assert clamp_center(0, 0, 1280, 960, 640, 480, 1.0) == (320, 240), "no panning past the top-left"
    assert clamp_center(5000, 0, 1280, 960, 2000, 480, 1.0) == (640, 240), "smaller than the view: centred"
    r = image_rect(1280, 960, Rect(0, 0, 640, 480), 1.0, 320, 240)
    assert (r.x, r.y, r.w, r.h) == (0, 0, 1280, 960)
    assert widget_to_image(10, 20, r, 1280, 960) == (10, 20)
    assert zoom_about(100, 100, 1.0, 2.0, 50, 50) == (75, 75), "the point under the cursor stays put"


def test_qimage_wraps_the_frame_without_copying():
    a = np.zeros((4, 6, 3), np.uint8)
    a[..., 2] = 255
    a.setflags(write=False)  # frames are read-only
    img, kept = bgr_qimage(a)
    assert kept is a and int(img.constBits()) == a.ctypes.data
    assert img.pixelColor(0, 0).name() == "#ff0000"
    with pytest.raises(ValueError, match="uint8 BGR"):
        bgr_qimage(np.zeros((4, 6), np.uint8))


def test_wipe_side_by_side_zoom_and_divider_drag(qtbot):
    v = BeforeAfterViewer()
    qtbot.addWidget(v)
    v.resize(640, 480)
    v.show()
    before = np.zeros((120, 160, 3), np.uint8)
    before[..., 0] = 255  # blue
    after = np.zeros((240, 320, 3), np.uint8)
    after[..., 2] = 255  # red
    painted = []
    v.painted.connect(lambda token, t: painted.append(token))
    v.set_frame(before, after, token="f1")
    qtbot.waitUntil(lambda: painted == ["f1"])
    assert v.image_size == (320, 240), "both drawn in the output grid"
    assert v.scale == pytest.approx(2.0), "fit to 640x480"
    img = v.grab().toImage()
    assert img.pixelColor(100, 240).name() == "#0000ff" and img.pixelColor(540, 240).name() == "#ff0000"
    x = round(v.divider_x())
    qtbot.mousePress(v, Qt.MouseButton.LeftButton, pos=QPoint(x, 240))
    qtbot.mouseMove(v, QPoint(160, 240))
    qtbot.mouseRelease(v, Qt.MouseButton.LeftButton, pos=QPoint(160, 240))
    assert v.divider == pytest.approx(0.25, abs=0.01)
    img = v.grab().toImage()
    assert img.pixelColor(300, 240).name() == "#ff0000", "after shows right of the moved divider"
    v.zoom_actual()
    assert v.scale == 1.0 and not v.fitted
    v.fit_to_window()
    assert v.fitted and v.scale == pytest.approx(2.0)
    v.set_mode(ViewMode.SIDE)
    img = v.grab().toImage()
    assert img.pixelColor(150, 240).name() == "#0000ff" and img.pixelColor(490, 240).name() == "#ff0000"
    assert v.scale == pytest.approx(318 / 320, abs=0.01), "each pane fits the picture"


# -- the window -----------------------------------------------------------------------------------
def test_frames_flow_with_figures_overlay_and_help(open_window, qtbot):
    w = open_window()
    wait_frames(qtbot, w, 15)
    qtbot.waitUntil(lambda: w.stats_panel.value("capture") not in ("", "0.0 fps"), timeout=WAIT_MS)
    s = w.snapshot_stats()
    assert s.input_size == (160, 120) and s.output_size == (320, 240)
    # capture to display, in ms: more than nothing, and no more than the window has been running
    assert 0 < s.latency_median_ms <= (time.monotonic_ns() - w.display_log.t0_ns) / 1e6
    assert s.processor == "bicubic"
    assert set(s.stage_ms) == {"convert", "resize"}
    assert w.stats_panel.value("model") == "bicubic"
    assert "capture→display" in w.viewer._overlay[1]
    assert not w.steps_box.isEnabled() and "no step count" in w.steps_box.toolTip()
    assert not w.burst_box.isEnabled()
    w.toggle_help()
    keys = dict(w.help_rows())
    for k in ("Space", "S", "R", "B", "F", "1", "H, F1, ?", "M", "K", "O"):
        assert k in keys, f"shortcut {k} missing from the help"
    assert w.viewer.help_visible
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=WAIT_MS)
    qtbot.keyClick(w.viewer, Qt.Key.Key_H)  # the shortcuts are real keys
    assert not w.viewer.help_visible
    qtbot.keyClick(w.viewer, Qt.Key.Key_B)
    assert w.viewer.mode is ViewMode.SIDE and w.side_action.isChecked()
    qtbot.keyClick(w.viewer, Qt.Key.Key_1)
    assert w.viewer.scale == 1.0
    qtbot.keyClick(w.viewer, Qt.Key.Key_F)
    assert w.viewer.fitted
    assert not w.banner.isVisible()


def test_switch_processor_and_steps_while_running(open_window, qtbot, processors):
    w = open_window()
    wait_frames(qtbot, w, 5)
    choose(w.processor_box, "fake_steps")
    qtbot.waitUntil(lambda: w.snapshot_stats().processor == "fake_steps" and w.steps_box.isEnabled(),
                    timeout=WAIT_MS)
    choose(w.steps_box, 4)
    qtbot.waitUntil(lambda: w._current is not None and w._current.steps == 4, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: w.snapshot_stats().stage_ms.get("step") is not None, timeout=WAIT_MS)

    # A model that loads until the test says so: the picture keeps coming from the old one meanwhile.
    choose(w.processor_box, "slow_load")
    assert processors.loading.wait(DEADLINE_S), "the load never started"
    wait_frames(qtbot, w, 5)  # the video did not wait for the load
    assert w.snapshot_stats().processor == "fake_steps", "still loading: the old processor runs"
    processors.load_done.set()
    qtbot.waitUntil(lambda: w.snapshot_stats().processor == "slow_load", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.steps_box.isEnabled(), timeout=WAIT_MS)
    assert "slow_load has no step count" in w.steps_box.toolTip()


def test_the_overlay_shows_the_steps_stage_times_psnr_and_notice_of_the_shown_frame(open_window, qtbot):
    w = open_window(processor="fake_reporting")
    qtbot.waitUntil(lambda: any(line.startswith("PSNR vs truth") for line in w.viewer._overlay), timeout=WAIT_MS)
    overlay = "\n".join(w.viewer._overlay)
    assert "PSNR vs truth 31.25 dB" in overlay
    assert "frame, 2 steps: raw " in overlay, overlay
    for stage in ("align", "noise", "merge", "refine (2 steps, guard)", "finish"):
        assert f"{stage} " in overlay, f"{stage} missing from the overlay:\n{overlay}"
    notice = " ".join(line.strip() for line in w.viewer._overlay if line.startswith(("note: ", "  ")))
    assert "note: the learned refinement is off: fake weights are missing (this is a test)" in notice
    assert "fake_reporting, 2 steps" in overlay
    assert w.stats_panel.value("PSNR vs truth") == "31.25 dB"
    assert not w.banner.isVisible(), "a notice is information, not an error"
    w.close()
    assert w.final_stats["notice"] == FakeReporting.NOTICE


def test_the_overlay_wraps_long_stage_lists_and_notices():
    s = StatsSnapshot(processor="burst_fusion", frames_needed=8, steps=4, frame_steps=4, psnr_vs_truth=33.456,
                      frame_stages_ms={"raw": 1.04, "align": 3.4, "noise": 0.5, "merge": 6.0,
                                       "refine (4 steps, guard)": 20.12, "finish": 2.0},
                      notice="the consistency refinement gave 12 NaN/Inf values: the merge is shown for this "
                             "burst instead")
    lines = overlay_lines(s)
    assert "burst_fusion, burst 8, 4 steps" in lines[2]
    psnr = lines.index("PSNR vs truth 33.46 dB")
    frame = lines[3:psnr]
    assert len(frame) == 2 and frame[0] == "frame, 4 steps: raw 1.0  align 3.4  noise 0.5  merge 6.0"
    assert frame[1] == "  refine (4 steps, guard) 20.1  finish 2.0 ms", "a stage name is never broken"
    notice = lines[psnr + 1:]
    assert notice[0].startswith("note: the consistency refinement gave 12 NaN/Inf") and len(notice) == 2
    assert all(len(line) <= 64 for line in lines[3:]), lines
    off = overlay_lines(StatsSnapshot(processor="burst_fusion", steps=0, frame_steps=0, frame_stages_ms={"merge": 6.0}))
    assert "burst_fusion, steps off" in off[2] and off[3] == "frame, steps off: merge 6.0 ms"
    assert not any("note" in line or "PSNR" in line or "frame" in line for line in overlay_lines(StatsSnapshot()))
    assert dict(panel_rows(s))["PSNR vs truth"] == "33.46 dB"
    assert "PSNR vs truth" not in dict(panel_rows(StatsSnapshot()))


def test_burst_length_reloads_a_burst_processor(open_window, qtbot):
    w = open_window(burst_length=3)
    wait_frames(qtbot, w, 3)
    assert not w.burst_box.isEnabled() and "burst processors" in w.burst_box.toolTip()
    choose(w.processor_box, "fake_burst")
    qtbot.waitUntil(lambda: w._current is not None and len(w._current.frames) == 3, timeout=WAIT_MS)
    assert w.burst_box.isEnabled() and w.steps_box.isEnabled()
    qtbot.waitUntil(lambda: "burst 3" in w.stats_panel.value("model"), timeout=WAIT_MS)  # at the next refresh
    w.burst_box.setValue(5)  # what the spin box and the ] key do
    qtbot.waitUntil(lambda: w._current is not None and len(w._current.frames) == 5, timeout=WAIT_MS)
    wait_frames(qtbot, w, 3)


def test_pause_resume_and_snapshot(open_window, qtbot, tmp_path, processors):
    w = open_window(processor="held")
    wait_frames(qtbot, w, 5)
    # Pause while the engine is inside a frame, known by number, so that frame is the last one.
    processors.hold.set()
    last = processors.wait_entered()
    w.pause_action.trigger()
    qtbot.waitUntil(lambda: w.snapshot_stats().paused, timeout=WAIT_MS)
    processors.hold.clear()
    processors.let_through()
    qtbot.waitUntil(lambda: w._current is not None and w._current.seq == last and w.viewer._token_painted,
                    timeout=WAIT_MS)
    n, calls, captured = w.frames_shown, processors.calls, w.pipeline.ring.stats().pushed
    # The camera keeps going: ten more frames come in while paused, and the engine takes none of them.
    qtbot.waitUntil(lambda: w.pipeline.ring.stats().pushed >= captured + 10, timeout=WAIT_MS)
    assert processors.calls == calls, "paused: the engine took a frame"
    assert w.frames_shown == n and w._current.seq == last, "paused: the last picture stays"
    assert w.viewer.image_size == (320, 240)
    w.snapshot_action.trigger()
    qtbot.waitUntil(lambda: len(list((tmp_path / "snap").glob("*.png"))) == 2, timeout=WAIT_MS)
    before = cv2.imread(str(next((tmp_path / "snap").glob("*_before.png"))))
    after = cv2.imread(str(next((tmp_path / "snap").glob("*_after.png"))))
    assert before.shape == (120, 160, 3) and after.shape == (240, 320, 3)
    w.pause_action.trigger()
    wait_frames(qtbot, w, 5)
    assert processors.calls > calls and w._current.seq > last


def test_record_three_seconds(open_window, qtbot, monkeypatch):
    # Count what the engine hands the recorder: RecordQueue._put runs once for every item it accepts.
    accepted = []
    monkeypatch.setattr(RecordQueue, "_put", lambda q, item: (accepted.append(item.seq), q.queue.append(item)))
    w = open_window()
    wait_frames(qtbot, w, 5)
    w.record_action.trigger()
    qtbot.waitUntil(lambda: w.recorder is not None and w.recorder.status().frames > 0, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: w.record_indicator.isVisible(), timeout=WAIT_MS)
    assert w.record_indicator.text.text().startswith("REC 00:0")
    # three seconds of capture time in the file, by the recorder's own figure
    qtbot.waitUntil(lambda: w.recorder.status().elapsed_s >= 3.0 and w.recorder.status().frames >= 20,
                    timeout=WAIT_MS)
    qtbot.waitUntil(lambda: indicator_seconds(w) >= 3, timeout=WAIT_MS)  # and the indicator says so
    w.record_action.trigger()
    qtbot.waitUntil(lambda: w.last_recording is not None, timeout=WAIT_MS)
    st = w.last_recording
    assert st.state is RecorderState.FINISHED and st.path.suffix == ".mp4"
    times, duration = decode(st.path)
    assert len(times) == st.frames >= 20, "every frame written decodes"
    assert st.elapsed_s >= 3.0, "the three seconds recorded"
    assert st.elapsed_s == pytest.approx(times[-1] - times[0], abs=2e-5), "elapsed is the file's own time span"
    assert duration == pytest.approx(st.elapsed_s, abs=0.2), "plays as long as it was captured"
    assert all(b > a for a, b in zip(times, times[1:]))
    assert st.frames + st.dropped == len(accepted), "every frame handed to the recorder is written or counted"
    assert w.final_stats is None
    assert not w.record_indicator.isVisible()


def test_close_mid_recording_leaves_a_valid_file(open_window, qtbot):
    w = open_window()
    w.record_action.trigger()
    qtbot.waitUntil(lambda: w.recorder is not None and w.recorder.status().frames >= 10, timeout=WAIT_MS)
    w.close()
    st = w.last_recording
    assert st.state is RecorderState.FINISHED
    times, duration = decode(st.path)
    assert len(times) == st.frames >= 10 and duration > 0


def test_a_full_disk_stops_recording_with_a_banner_and_the_preview_goes_on(open_window, qtbot):
    # /dev/full: opening works, every write fails with ENOSPC, as on a full disk.
    w = open_window(plan=RunPlan(record=Path("/dev/full")))
    qtbot.waitUntil(lambda: "disk is full" in w.banner.text, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.record_action.isChecked() and w.recorder is None, timeout=WAIT_MS)
    assert w.last_recording is not None and w.last_recording.state is RecorderState.FAILED
    wait_frames(qtbot, w, 10)  # the preview never stopped
    assert not w.record_indicator.isVisible()
    w.close()
    assert "disk is full" in w.final_stats["record_error"] and w.final_stats["failed"], "the figures say so too"


def test_a_recording_that_failed_makes_the_command_exit_non_zero(tmp_path, capsys):
    # The real `eyefuse live` entry point: it says so at the end and exits 1, though frames were shown.
    args = SimpleNamespace(offscreen=True, frames=10, seconds=None, record="/dev/full", record_side_by_side=False,
                           screenshot=None, stats=str(tmp_path / "s.json"), burst=None, steps=None, weights_dir=None)
    assert run_window(PipelineConfig(source=SMALL, processor="bicubic"), args) == 1
    assert "the recording failed" in capsys.readouterr().err
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames_shown"] >= 10 and stats["record"]["state"] == "failed" and stats["failed"]


def test_headless_mode_runs_without_qt(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from app.cli import main; "
            f"rc = main(['live', '--headless', '--frames', '5', '--model', 'bicubic', '--source', '{SMALL}']); "
            "assert 'PyQt6' not in sys.modules, 'headless imported Qt'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=4 * DEADLINE_S,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"frames_shown": 5' in r.stdout


def test_unplugged_ps3eye_shows_a_banner_and_recovers(open_window, qtbot):
    from capture.ps3eye import PS3EyeCamera, PS3EyeConfig
    from tests.ps3eye_emulator import PS3EyeEmulator

    emu = PS3EyeEmulator(fast=False)

    def opener(spec, options: SourceOptions):
        if spec == "ps3eye":
            return PS3EyeCamera(PS3EyeConfig(width=320, height=240, fps=30, backend=emu, stall_timeout_s=0.5))
        return open_source(spec, options)

    w = open_window(source="ps3eye", opener=opener)
    wait_frames(qtbot, w, 5)
    assert w.snapshot_stats().input_size == (320, 240)
    emu.unplug()
    qtbot.waitUntil(lambda: "camera lost" in w.banner.text, timeout=WAIT_MS)
    assert "ps3eye" in w.banner.text
    n = w.frames_shown
    emu.replug()
    qtbot.waitUntil(lambda: not w.banner.isVisible(), timeout=WAIT_MS)
    wait_frames(qtbot, w, 5)
    assert w.frames_shown > n
    assert w.pipeline.capture_status().reconnects == 1


def test_the_ps3eye_counters_are_in_the_stats_panel(open_window, qtbot, tmp_path):
    from capture.ps3eye import PS3EyeCamera, PS3EyeConfig
    from tests.ps3eye_emulator import PS3EyeEmulator

    emu = PS3EyeEmulator(fast=False)

    def opener(spec, options: SourceOptions):
        if spec == "ps3eye":
            return PS3EyeCamera(PS3EyeConfig(width=320, height=240, fps=30, backend=emu))
        return open_source(spec, options)

    w = open_window(source="ps3eye", opener=opener, plan=RunPlan(stats=tmp_path / "s.json"))
    wait_frames(qtbot, w, 3)
    qtbot.waitUntil(lambda: w.stats_panel.value("source counters").startswith("frames "), timeout=WAIT_MS)
    assert "rejected" not in w.stats_panel.value("source counters"), "only the counters that are not zero"
    bad = emu.frames_started + 2  # frames not begun yet, so the whole of each fault lands
    emu.corrupt_header(bad, index=40)  # a payload in the middle of the frame (QVGA: 76 of them)
    emu.flag_error(bad + 2, index=40)
    qtbot.waitUntil(lambda: "rejected error 1" in w.stats_panel.value("source counters"), timeout=WAIT_MS)
    counters = w.stats_panel.value("source counters").splitlines()
    assert "rejected bad header 1" in counters and "dropped corrupt 2" in counters, counters
    wait_frames(qtbot, w, 3)  # the stream went on
    w.close()
    import json

    figures = json.loads((tmp_path / "s.json").read_text())["source_counters"]
    assert figures["rejected_bad_header"] == 1 and figures["rejected_error"] == 1 and figures["dropped_corrupt"] == 2


def test_source_counters_come_from_a_source_stats_if_it_has_one():
    from app.live_figures import source_counters
    from capture.ps3eye.camera import PS3EyeStats

    assert source_counters(SimulatedCamera(SimulatedConfig())) is None, "the simulated camera counts nothing"
    counted = source_counters(SimpleNamespace(stats=lambda: PS3EyeStats(frames=9, stalls=2)))
    assert counted[0] == ("frames", 9) and ("stalls", 2) in counted and ("rejected_stray", 0) in counted
    assert source_counters(SimpleNamespace(stats=lambda: {"reads": 3, "ok": True, "name": "x"})) == (("reads", 3),)
    broken = SimpleNamespace(stats=lambda: 1 / 0)
    assert source_counters(broken) is None, "a source whose stats fail shows none, and the window goes on"
    rows = dict(panel_rows(StatsSnapshot(source_counters=counted)))
    assert rows["source counters"] == "frames 9\nstalls 2"
    assert rows["outages"] == "none" and "source counters" not in dict(panel_rows(StatsSnapshot()))
    assert dict(panel_rows(StatsSnapshot(source_counters=(("stalls", 0),))))["source counters"] == "none"


def test_weights_that_fail_to_load_fall_back_and_recover(open_window, qtbot, tmp_path):
    weights = make_weights_dir(tmp_path / "w", names=("nearest",))
    good = (weights / "nearest.onnx").read_bytes()
    (weights / "nearest.onnx").write_bytes(b"\0" * len(good))  # same size, wrong contents
    w = open_window(processor="nearest", weights_dir=weights, load_retry_s=0.2,
                    choices=["nearest", "bicubic", "fake_steps"])
    qtbot.waitUntil(lambda: "could not load nearest" in w.banner.text, timeout=WAIT_MS)
    assert "nearest.onnx" in w.banner.text and "running Bicubic (baseline) instead" in w.banner.text
    wait_frames(qtbot, w, 5)
    assert w.snapshot_stats().processor == "bicubic"
    (weights / "nearest.onnx").write_bytes(good)  # training finished: the weights are back
    qtbot.waitUntil(lambda: w.snapshot_stats().processor == "nearest", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not w.banner.isVisible(), timeout=WAIT_MS)
    wait_frames(qtbot, w, 3)


def test_a_failed_load_clears_its_loading_message(open_window, qtbot):
    w = open_window()
    wait_frames(qtbot, w, 3)
    w.request_processor("no_such_model")
    assert w.statusBar().currentMessage().startswith("loading")  # shown until it runs or fails
    qtbot.waitUntil(lambda: "could not load" in w.banner.text, timeout=WAIT_MS)
    assert not w.statusBar().currentMessage().startswith("loading")
    wait_frames(qtbot, w, 3)  # the old processor kept running


def test_engine_error_is_a_banner_until_it_goes(open_window, qtbot, processors):
    w = open_window(processor="flaky")
    wait_frames(qtbot, w, 3)
    processors.broken.set()
    qtbot.waitUntil(lambda: "ran out of luck" in w.banner.text, timeout=WAIT_MS)
    assert w.viewer.image_size == (320, 240), "the input is still shown under the banner"
    processors.broken.clear()
    qtbot.waitUntil(lambda: not w.banner.isVisible(), timeout=WAIT_MS)
    wait_frames(qtbot, w, 3)


def test_an_invalid_source_is_reported_and_the_old_one_kept(open_window, qtbot):
    w = open_window()
    wait_frames(qtbot, w, 3)
    w.source_box.setEditText("no/such/clip.mp4")  # typed, then Enter
    w.source_box.activated.emit(w.source_box.currentIndex())
    qtbot.waitUntil(lambda: "cannot open source 'no/such/clip.mp4'" in w.banner.text, timeout=WAIT_MS)
    wait_frames(qtbot, w, 3)
    assert w.pipeline.source_spec == SMALL


def test_offscreen_command_records_screenshots_and_writes_stats(qtbot, tmp_path, open_window):
    # The real `eyefuse live` entry point (run_window, app.exec) inside the test process.
    args = SimpleNamespace(offscreen=True, frames=20, seconds=None, record=str(tmp_path / "o.mp4"),
                           record_side_by_side=True, screenshot=str(tmp_path / "s.png"),
                           stats=str(tmp_path / "s.json"), burst=None, steps=None, weights_dir=None)
    config = PipelineConfig(source=SMALL, processor="bicubic")
    assert run_window(config, args) == 0
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames_shown"] >= 20 and stats["processor"] == "bicubic"
    assert stats["latency_ms_median"] > 0 and len(stats["timeline"]) == stats["frames_shown"]
    assert stats["record"]["state"] == "finished"
    times, _ = decode(tmp_path / "o.mp4")
    assert len(times) == stats["record"]["frames"]
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (640, 240), "side by side"
    shot = cv2.imread(str(tmp_path / "s.png"))
    assert shot is not None and shot.shape[0] > 300 and shot.shape[1] > 600
    # The run leaves the application usable: events handled after it (as pytest-qt handles them
    # between tests) do not stop the event loops of windows that come later.
    QApplication.processEvents()
    w = open_window()
    wait_frames(qtbot, w, 3)


def test_display_images_are_32_bit_copies_that_draw_the_same_colours():
    # (the window's own tests draw them: its result pump hands the viewer display_image frames)
    from app.viewer import display_image

    a = np.zeros((4, 6, 3), np.uint8)
    a[..., 2] = 255  # red
    a[1, 2] = (255, 0, 0)  # one blue pixel
    shown = display_image(a)
    img, kept = bgr_qimage(shown)
    assert kept is shown and img.format() == QImage.Format.Format_RGB32
    assert img.pixelColor(0, 0).name() == "#ff0000" and img.pixelColor(2, 1).name() == "#0000ff"
    grey = np.zeros((4, 6), np.uint8)
    assert display_image(grey) is grey  # not a BGR frame: left for the viewer to refuse



# -- unattended runs that end on their own, and outages ---------------------------------------------
def test_an_unattended_run_ends_when_its_source_ends(open_window, qtbot, tmp_path):
    from tests.media import write_clip

    clip = write_clip(tmp_path / "short.mp4", 12)
    w = open_window(source=str(clip), plan=RunPlan(frames=100, stats=tmp_path / "s.json"))
    qtbot.waitUntil(lambda: w.final_stats is not None, timeout=WAIT_MS)  # the run ended by itself
    assert w.run_end.reason == "source ended" and not w.run_end.failed
    assert "ended after 12 frames" in w.run_end.message and "of the 100 asked for" in w.run_end.message
    assert 0 < w.frames_shown <= 12
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["ended"] == "source ended" and stats["capture_state"] == "ended" and not stats["failed"]


def test_an_unattended_run_stops_when_the_processor_fails_every_frame(open_window, qtbot, tmp_path, processors):
    """On a FakeClock that the simulated camera moves: 3 s of its frames all failing stop the run,
    failed, with the reason in the banner and the figures; the recording that got no frame leaves
    no empty file."""
    clock = FakeClock()
    t0 = clock.monotonic()
    processors.broken.set()
    w = open_window(processor="flaky", clock=clock, fail_after_s=3.0,
                    opener=lambda spec, options: SimulatedCamera(SimulatedConfig(width=160, height=120), clock=clock),
                    plan=RunPlan(frames=10, record=tmp_path / "r.mp4", stats=tmp_path / "s.json"))
    qtbot.waitUntil(lambda: w.final_stats is not None, timeout=WAIT_MS)
    assert w.run_end.reason == "processor failed" and w.run_end.failed
    assert "flaky failed on every frame for 3 s" in w.run_end.message and "ran out of luck" in w.run_end.message
    assert clock.monotonic() - t0 >= 3.0, "3 s of the run's (logical) time went by first"
    assert "failed on every frame" in w.banner.label.text(), "the banner said so (the window is closed now)"
    import json

    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["ended"] == "processor failed" and stats["failed"] and stats["frames_shown"] == 0
    assert "nothing was recorded" in stats["record_error"] and not (tmp_path / "r.mp4").exists()


def test_a_camera_outage_shows_live_and_is_kept_in_the_figures(open_window, qtbot, tmp_path):
    from tests.fakes import Unpluggable

    cam = Unpluggable(SYSTEM_CLOCK)
    cam.stream(1 / 30)
    w = open_window(source="unpluggable", plan=RunPlan(stats=tmp_path / "s.json"),
                    opener=lambda spec, options: cam if spec == "unpluggable" else open_source(spec, options))
    wait_frames(qtbot, w, 5)
    assert w.stats_panel.value("outages") in ("", "none")
    cam.unplug()
    # no rate while nothing comes (not the last one it had), and how long it has been
    qtbot.waitUntil(lambda: w.stats_panel.value("capture") == "0.0 fps", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: any(line.startswith("capture retrying: no frame for") for line in w.viewer._overlay),
                    timeout=WAIT_MS)
    assert "camera lost" in w.banner.text and "no frame for" in w.banner.text
    assert w.stats_panel.value("last frame").endswith(" s ago")
    assert w.stats_panel.value("outages").startswith("1 (")
    cam.plug()
    wait_frames(qtbot, w, 5)
    qtbot.waitUntil(lambda: not any(line.startswith("capture ") and "no frame" in line for line in w.viewer._overlay),
                    timeout=WAIT_MS)
    w.close()
    import json

    outages = json.loads((tmp_path / "s.json").read_text())["capture_outages"]
    assert len(outages) == 1 and outages[0]["reason"] == "cable pulled; reconnecting" and outages[0]["recovered"]
    assert outages[0]["duration_s"] > 0 and outages[0]["start_s"] >= 0


def test_the_overlay_and_panel_say_when_frames_stopped():
    lost = StatsSnapshot(capture_state="retrying", capture_fps=0.0, since_frame_s=3.3, outages=1, outage_s=3.3)
    assert "capture retrying: no frame for 3.3 s" in overlay_lines(lost)
    rows = dict(panel_rows(lost))
    assert rows["last frame"] == "3.3 s ago" and rows["outages"] == "1 (3.3 s)" and rows["capture"] == "0.0 fps"
    fine = StatsSnapshot(capture_state="running", capture_fps=30.0, since_frame_s=0.01)
    assert not any("no frame" in line for line in overlay_lines(fine))
    stalled = StatsSnapshot(capture_state="running", capture_stalled=True, since_frame_s=2.0)
    assert "capture running: no frame for 2.0 s" in overlay_lines(stalled)

"""`eyefuse live` runs that must end on their own and leave their files whole: headless recording,
a source shorter than --frames, a processor that fails every frame, a recording that fails, a camera
outage in the figures, and SIGTERM (headless and in the window) finalising the recording and the stats.

Processor failures are timed on a FakeClock that the simulated camera moves, so "failed for 3 s" is
logical time; runs that could hang run in a thread with a generous deadline, so a hang fails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

import app.live_cmd
from app.cli import build_parser
from app.pipeline import PipelineConfig, capture_text, run_headless
from capture.clock import FakeClock
from capture.errors import SourceInvalid, SourceUnavailable
from capture.simulated import SimulatedCamera, SimulatedConfig
from capture.worker import CaptureState, CaptureStatus, Outage
from engine.processor import BicubicProcessor, ProcessingError
from tests.conftest import DEADLINE_S, returns_within_deadline
from tests.fakes import ScriptedCamera
from tests.media import decode_all, write_clip

REPO = Path(__file__).resolve().parents[1]
SMALL = "simulated:160x120@30"


@pytest.fixture(autouse=True)
def _no_leaks(no_leaked_threads, monkeypatch):
    # gc.freeze() is for the real command: here it would keep the test process's garbage for good
    monkeypatch.setattr(app.live_cmd, "freeze_startup_objects", lambda: None)
    yield





def live(*argv: str) -> int:
    """`eyefuse live ARGV` in this process (without app.cli.main, which would take over SIGTERM)."""
    args = build_parser().parse_args(["live", *argv])
    return args.run(args)


class AlwaysFails(BicubicProcessor):
    """A processor that fails on every frame (as burst_fusion does on a BGR camera)."""

    def __init__(self):
        super().__init__(2)
        self.name = "always_fails"

    def enhance(self, frames, timer):
        raise ProcessingError("always_fails: this source is not for me")


def simulated_on(clock: FakeClock):
    """An opener whose simulated camera paces and stamps its frames on `clock`."""
    return lambda spec, options: SimulatedCamera(SimulatedConfig(width=160, height=120, fps=30), clock=clock)


def within_deadline(fn):
    """fn() on a thread; fails the test if it has not returned within DEADLINE_S (it would hang)."""
    return returns_within_deadline(fn, "the run")


# -- headless -------------------------------------------------------------------------------------
def test_headless_records_the_enhanced_video(tmp_path, capsys):
    out, stats = tmp_path / "h.mp4", tmp_path / "h.json"
    assert live("--headless", "--frames", "20", "--model", "bicubic", "--source", SMALL,
                "--record", str(out), "--stats", str(stats)) == 0
    figures = json.loads(stats.read_text())
    rec = figures["record"]
    assert rec is not None and rec["state"] == "finished" and rec["path"] == str(out)
    assert figures["frames_shown"] == 20 and rec["frames"] >= 1
    assert decode_all(out) == rec["frames"]
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (320, 240), "the enhanced (2x) video"
    printed = capsys.readouterr().out  # status lines (one a second), then the figures
    assert json.loads(printed[printed.index("{"):])["record"]["frames"] == rec["frames"]


def test_headless_recording_that_fails_exits_non_zero_and_says_why(tmp_path, capsys):
    # /dev/full: opening works, every write fails with ENOSPC, as on a full disk
    rc = live("--headless", "--frames", "20", "--model", "bicubic", "--source", SMALL, "--record", "/dev/full")
    err = capsys.readouterr().err
    assert rc == 1
    assert "disk is full" in err and "/dev/full" in err


def test_headless_ends_when_a_source_shorter_than_frames_ends(tmp_path, capsys):
    clip = write_clip(tmp_path / "short.mp4", 12)
    stats = tmp_path / "s.json"
    rc = within_deadline(lambda: live("--headless", "--frames", "100", "--model", "bicubic", "--source", str(clip),
                                      "--stats", str(stats)))
    err = capsys.readouterr().err
    assert rc == 0, "a source that ends is not a failure"
    assert "the source ended" in err and "ended after 12 frames" in err and "of the 100 asked for" in err
    figures = json.loads(stats.read_text())
    assert figures["ended"] == "source ended" and not figures["failed"]
    assert 0 < figures["frames_shown"] <= 12


def test_headless_ends_failed_when_the_source_cannot_work():
    cam = ScriptedCamera([], open_script=[SourceInvalid("no camera at index 7")])
    summary = within_deadline(lambda: run_headless(
        PipelineConfig(source="7", processor="bicubic"), frames=10, printer=lambda line: None,
        opener=lambda spec, options: cam))
    assert summary["ended"] == "source failed" and summary["failed"]
    assert "no camera at index 7" in summary["end_message"] and summary["capture_state"] == "error"


def test_headless_stops_when_the_processor_fails_every_frame(tmp_path):
    clock = FakeClock()
    t0 = clock.monotonic()
    summary = within_deadline(lambda: run_headless(
        PipelineConfig(source=SMALL), frames=10, printer=lambda line: None, opener=simulated_on(clock),
        processor=AlwaysFails(), clock=clock, fail_after_s=3.0, stats=tmp_path / "s.json"))
    assert summary["ended"] == "processor failed" and summary["failed"]
    assert "always_fails failed on every frame for 3 s" in summary["end_message"]
    assert "this source is not for me" in summary["end_message"], "the last error, which says why"
    assert summary["frames_shown"] == 0 and summary["errors"] > 0
    assert clock.monotonic() - t0 >= 3.0, "3 s of the run's (logical) time went by first"
    assert json.loads((tmp_path / "s.json").read_text())["ended"] == "processor failed"


def test_the_command_exits_non_zero_when_the_processor_fails_every_frame(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(app.live_cmd, "run_headless", lambda *a, **kw: run_headless(
        *a, **kw, opener=simulated_on(clock), processor=AlwaysFails(), clock=clock, fail_after_s=3.0))
    stats = tmp_path / "s.json"
    rc = within_deadline(lambda: live("--headless", "--frames", "10", "--model", "bicubic", "--stats", str(stats)))
    assert rc == 1
    assert "failed on every frame" in capsys.readouterr().err
    assert json.loads(stats.read_text())["failed"] is True


def test_headless_figures_keep_a_camera_outage(tmp_path):
    """Unplugged after 5 frames, two failed reopenings, back for 5 frames: the figures hold the
    outage with its start (from the run's start), duration and reason, to the nanosecond of the
    FakeClock."""
    clock = FakeClock(1000.0)
    cam = ScriptedCamera(["frame"] * 5 + ["unplug"] + ["frame"] * 5 + ["end"],
                         open_script=[None, SourceUnavailable("busy"), SourceUnavailable("busy")],
                         period_s=0.1, clock=clock)
    summary = within_deadline(lambda: run_headless(
        PipelineConfig(source="scripted", processor="bicubic"), frames=100, printer=lambda line: None,
        opener=lambda spec, options: cam, clock=clock))
    assert summary["ended"] == "source ended"
    assert summary["capture_outages"] == [
        {"start_s": 0.5, "duration_s": 1.6, "reason": "cable pulled; reconnecting", "recovered": True}]


def test_the_status_line_shows_an_outage_not_the_last_frame_rate():
    running = CaptureStatus(CaptureState.RUNNING, "", 300, 0, 0, 30.0, 0.01, ())
    assert capture_text(running) == "capture  30.0 fps"
    lost = CaptureStatus(CaptureState.RETRYING, "cable pulled; reconnecting (retry 3)", 300, 0, 0, 0.0, 3.3,
                         (Outage(1000.0, 3.3, "cable pulled; reconnecting", False),))
    assert capture_text(lost) == "capture   0.0 fps (retrying, no frame for 3.3 s: cable pulled; reconnecting (retry 3))"
    stalled = CaptureStatus(CaptureState.RUNNING, "", 300, 0, 0, 0.0, 2.0,
                            (Outage(1000.0, 2.0, "no frame for 2.0 s", False),))
    assert capture_text(stalled) == "capture   0.0 fps (running, no frame for 2.0 s: no frame for 2.0 s)"


# -- SIGTERM: the recording and the figures are finalised, whichever way the command runs -----------
def sigterm_while_recording(tmp_path: Path, *mode: str) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """Run `eyefuse live MODE --record --stats` on the simulated camera until its recording has begun,
    then send SIGTERM; (the ended process, the recording, the figures)."""
    out, stats = tmp_path / "t.mp4", tmp_path / "t.json"
    cmd = [sys.executable, "-m", "app.cli", "live", *mode, "--model", "bicubic", "--source", SMALL,
           "--record", str(out), "--stats", str(stats)]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 4 * DEADLINE_S  # starting Python, Qt and the models is slow on a busy machine
        while not (out.exists() and out.stat().st_size > 0) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()[1][-2000:]}"
        assert out.exists() and out.stat().st_size > 0, "the recording never began"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=4 * DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert stats.exists(), f"no figures written: {stderr[-2000:]}"
    return done, out, json.loads(stats.read_text())


@pytest.mark.parametrize("mode", [("--headless",), ("--offscreen",)], ids=["headless", "window"])
def test_sigterm_finalises_the_recording_and_writes_the_figures(tmp_path, mode):
    done, out, figures = sigterm_while_recording(tmp_path, *mode)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "terminated" in done.stderr
    assert figures["ended"] == "terminated"
    rec = figures["record"]
    assert rec["state"] == "finished" and rec["frames"] > 0
    assert decode_all(out) == rec["frames"], "every frame recorded decodes"


def test_headless_figures_report_the_step_count_in_force(tmp_path):
    stats = tmp_path / "s.json"
    assert live("--headless", "--frames", "6", "--model", "burst_fusion", "--source", "simulated:bayer:160x96@30",
                "--steps", "0", "--stats", str(stats)) == 0
    assert json.loads(stats.read_text())["steps"] == 0
    assert live("--headless", "--frames", "3", "--model", "bicubic", "--source", SMALL, "--stats", str(stats)) == 0
    assert json.loads(stats.read_text())["steps"] is None  # bicubic has no step count

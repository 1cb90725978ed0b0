import json
import os

import cv2
import pytest

from app.cli import main
from capture.errors import SourceInvalid
from capture.sources import open_source, parse_mode
from capture.video_file import VideoFileSource
from tests.media import write_clip


def test_parse_mode():
    assert parse_mode("640x480@60") == (640, 480, 60.0)
    assert parse_mode("320x240") == (320, 240, None)
    with pytest.raises(SourceInvalid, match="WIDTHxHEIGHT"):
        parse_mode("640by480")


def test_open_source_kinds(tmp_path):
    clip = tmp_path / "c.mp4"
    write_clip(clip, n=3, fps=24, size=(64, 48))
    assert isinstance(open_source(str(clip)), VideoFileSource)
    with pytest.raises(SourceInvalid, match="eyefuse sources"):
        open_source(str(tmp_path / "nothing-here.mp4"))


def test_capture_command_saves_frames_and_sidecar(tmp_path, capsys):
    clip = tmp_path / "c.mp4"
    write_clip(clip, n=10, fps=24, size=(64, 48))
    out = tmp_path / "frames"
    assert main(["capture", "--source", str(clip), "--frames", "6", "--out", str(out), "--fast"]) == 0
    side = json.loads((out / "frames.json").read_text())
    assert [r["file"] for r in side["frames"]] == [f"frame_{i:06d}.png" for i in range(6)]
    assert all(r["t_capture_ns"] > 0 for r in side["frames"])
    img = cv2.imread(str(out / "frame_000000.png"))
    assert img.shape == (48, 64, 3)
    assert not list(out.glob(".*tmp*")), "no temporary files left behind"


def test_capture_command_reports_a_source_that_ends_early(tmp_path, capsys):
    clip = tmp_path / "c.mp4"
    write_clip(clip, n=4, fps=24, size=(64, 48))
    out = tmp_path / "frames"
    assert main(["capture", "--source", str(clip), "--frames", "10", "--out", str(out), "--fast"]) == 1
    assert "ended after 4 frames" in capsys.readouterr().err
    assert len(json.loads((out / "frames.json").read_text())["frames"]) == 4, "what was captured is kept"


def test_capture_command_stops_cleanly_on_a_full_disk(tmp_path, capsys, monkeypatch):
    """/dev/full answers every write with ENOSPC; the third frame is written there."""
    clip = tmp_path / "c.mp4"
    write_clip(clip, n=10, fps=24, size=(64, 48))
    out = tmp_path / "frames"
    out.mkdir()
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_full_disk(*a, prefix="", **kw):  # at the OS boundary: the file lands on a full device
        fd, name = real_mkstemp(*a, prefix=prefix, **kw)
        if prefix.startswith(".frame_000002"):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
    assert main(["capture", "--source", str(clip), "--frames", "5", "--out", str(out), "--fast"]) == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "the failed temp file is removed"
    assert "stopped writing" in capsys.readouterr().err
    side = json.loads((out / "frames.json").read_text())
    assert [r["file"] for r in side["frames"]] == ["frame_000000.png", "frame_000001.png"], "earlier frames kept"
    assert not (out / "frame_000002.png").exists()


def test_sources_lists_the_simulated_camera(capsys):
    assert main(["sources", "--no-open"]) == 0
    out = capsys.readouterr().out
    assert "simulated" in out and "ps3eye" in out

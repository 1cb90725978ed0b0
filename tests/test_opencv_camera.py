"""OpenCVCamera through real cv2.VideoCapture: a file stands in for the device (VideoCapture reads
both the same way), and a device index that does not exist for a missing camera."""
import numpy as np
import pytest

from capture.errors import DeviceDisconnected, SourceUnavailable
from capture.opencv_camera import OpenCVCamera, OpenCVCameraConfig
from tests.media import write_clip


def test_reads_frames_then_reports_disconnect_when_they_stop(tmp_path):
    path = tmp_path / "cam.mp4"
    write_clip(path, n=6, fps=24, size=(64, 48))
    cam = OpenCVCamera(OpenCVCameraConfig(device=str(path), read_failures_before_disconnect=2))
    cam.open()
    frames = [cam.read() for _ in range(6)]
    assert [f.seq for f in frames] == list(range(6))
    assert frames[0].pixels.shape == (48, 64, 3) and frames[0].pixels.dtype == np.uint8
    with pytest.raises(DeviceDisconnected, match="stopped delivering frames"):
        cam.read()
    cam.close()


def test_missing_camera_names_what_was_probed():
    cam = OpenCVCamera(OpenCVCameraConfig(device=97))
    with pytest.raises(SourceUnavailable, match=r"cannot open camera 97 \(video devices found: .*\)"):
        cam.open()

"""SIGTERM to an eyefuse command unwinds like Ctrl-C: nothing half-written is left behind."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_during_enhance_leaves_no_part_file(tmp_path):
    src = tmp_path / "long.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(src), "w") as c:
        st = c.add_stream("mpeg4", rate=30)
        st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
        for _ in range(600):
            c.mux(st.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
                                                      format="rgb24")))
        c.mux(st.encode(None))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "enhance", str(src), "-o", str(out / "o.mp4"),
                             "--model", "bicubic", "--no-progress"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # until the output's temporary file exists: the job is under way
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be interrupted: make the input longer"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    assert list(out.iterdir()) == []

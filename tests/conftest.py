import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not SHARED_DATA.exists():  # CI checks out a fresh clone with shared/ beside it
    SHARED_DATA = Path(os.environ.get("EYEFUSE_SHARED_DATA", "/work/shared/data"))


def make_bgr_frame(seq: int, h: int = 8, w: int = 8, value: int | None = None):
    from capture.frame import Frame, PixelFormat

    pixels = np.full((h, w, 3), seq % 256 if value is None else value, np.uint8)
    return Frame(pixels, seq, time.monotonic_ns(), "test", PixelFormat.BGR8)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.02)
    pytest.fail(f"threads outlived the test: {[t.name for t in leaked]}")

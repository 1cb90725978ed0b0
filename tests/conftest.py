import os
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# How long a test waits for another thread to get somewhere before it fails. Generous, because a busy
# 2-core machine can hold a thread back for seconds; a healthy test never waits anywhere near this
# long, since every wait ends as soon as its condition holds. Tests never assert that something took
# less than some time: pacing and timeouts are checked on logical time (capture.clock.FakeClock).
DEADLINE_S = 30.0


def eventually(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait until `predicate()` holds; fail the test saying `what` did not happen if `timeout` s pass first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.002)


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
    deadline = time.monotonic() + DEADLINE_S  # threads that are ending go as soon as they can
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.02)
    pytest.fail(f"threads outlived the test: {[t.name for t in leaked]}")


def returns_within_deadline(fn, what: str = "the call"):
    """fn()'s result, or the exception it raised, from a thread given DEADLINE_S to return: a call
    that never returns fails the test saying so instead of hanging it."""
    import pytest

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"test-call: {what}", daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {DEADLINE_S:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]

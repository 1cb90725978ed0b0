"""The window's threads that talk to the GUI thread, which only draws:

    result pump thread: engine's ResultSlot -> pictures readied for the screen --signal--> GUI
    control thread (one, jobs in order): anything that may take longer than a frame; its outcome
                                         comes back as a callable posted to the GUI thread

`guarded_slot` keeps an exception in a slot from aborting the process.
"""
from __future__ import annotations

import concurrent.futures
import functools
import sys
import threading
from typing import Callable

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal

from app.viewer import display_image
from engine.processor import Result
from engine.worker import ResultSlot


def guarded_slot(method):
    """An exception escaping a PyQt slot aborts the process; in the window it becomes a banner instead
    (through the instance's `_set_problem`)."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except Exception as exc:
            try:
                self._set_problem("gui", f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")
            except Exception:
                print(f"eyefuse: {method.__name__} failed: {exc!r}", file=sys.stderr)

    return wrapper


class Bridge(QObject):
    """Signals emitted from worker threads; Qt queues them to the GUI thread."""

    call = pyqtSignal(object)  # a callable to run on the GUI thread
    result_ready = pyqtSignal()


class ControlThread:
    """One thread that runs the window's slow jobs in order (start, load a processor, switch source,
    start/stop recording, write snapshots), and `post`, the way back to the GUI thread.

    bridge.call must be connected to a GUI-thread slot that runs the callable it carries.
    closing: True once the window is closing (nothing more is posted or submitted then).
    on_error: told (on the GUI thread) what a job raised: a job must never die silently."""

    def __init__(self, bridge: Bridge, closing: Callable[[], bool], on_error: Callable[[str], None]):
        self._bridge, self._closing, self._on_error = bridge, closing, on_error
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eyefuse-control")

    @property
    def closing(self) -> bool:
        return self._closing()

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the GUI thread (from any thread)."""
        if not self._closing():
            self._bridge.call.emit(fn)

    def submit(self, job: Callable[[], None]) -> None:
        """Run job on the control thread, after the jobs before it."""
        if self._closing():
            return

        def guarded():
            try:
                job()
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self.post(lambda: self._on_error(message))

        try:
            self._executor.submit(guarded)
        except RuntimeError:  # shut down meanwhile
            pass

    def shutdown(self) -> None:
        """Finish the job running (a model being loaded is finished, then closed), drop the rest."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ResultPump:
    """A thread that waits on the engine's ResultSlot, readies its pictures for the screen
    (`display_image`, here rather than on the GUI thread) and tells the GUI a new result is there.

    At most one notification is in flight: the GUI takes the newest result when it gets to it, so a
    busy GUI shows fewer frames instead of older ones. `replaced` counts results never taken."""

    def __init__(self, slot: ResultSlot, notify: Callable[[], None]):
        self.slot, self._notify = slot, notify
        self._lock = threading.Lock()
        self._latest: tuple[Result, np.ndarray | None, np.ndarray | None] | None = None
        self._signalled = False
        self.replaced = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eyefuse-display-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def take(self) -> tuple[Result, np.ndarray | None, np.ndarray | None] | None:
        """(newest result, its input and output ready for the viewer) or None."""
        with self._lock:
            r, self._latest, self._signalled = self._latest, None, False
            return r

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.slot.get(timeout=0.1)
            except TimeoutError:
                continue
            shown = tuple(None if a is None else display_image(a) for a in (r.input_bgr, r.output))
            with self._lock:
                if self._latest is not None:
                    self.replaced += 1
                self._latest = (r, *shown)
                notify, self._signalled = not self._signalled, True
            if notify:
                self._notify()

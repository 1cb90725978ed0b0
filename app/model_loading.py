"""Which processor the window runs: the choices and their labels, making one, and `ProcessorLoader`,
which loads one off the GUI thread (a model may take seconds to open; a first BurstFusion compiles its
kernels), warms it up, and hands it to the running engine, so the picture never stops while a model
loads. A processor that cannot load leaves the fallback (or the one before) running, and is tried
again when its weights folder changes, so weights that training writes are picked up.
"""
from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PyQt6.QtWidgets import QStatusBar

from app.gui_threads import ControlThread
from app.pipeline import LivePipeline
from engine.processor import Processor
from engine.registry import BUILTIN, make_processor, processor_names

LABELS = {
    "student_sr": "StudentSR",
    "student_sr_int8": "StudentSR int8",
    # the reference StudentSRs: better, far slower than the frame rate (README: "What +2 dB costs")
    "student_sr_medium": "StudentSR medium (7x compute, not real time)",
    "student_sr_large": "StudentSR large (180x compute, about 1 s a frame)",
    "burst_fusion": "BurstFusion",
    "bicubic": "Bicubic (baseline)",
    "passthrough": "Passthrough (input only)",
}


@dataclass(frozen=True)
class ProcessorSettings:
    """What a processor is made with, besides its name."""

    burst_length: int = 8
    weights_dir: Path | None = None


ProcessorFactory = Callable[[str, ProcessorSettings], Processor]


def make_window_processor(name: str, settings: ProcessorSettings) -> Processor:
    """A built-in (BurstFusion made with the burst length) or a manifest model. Raises with the reason."""
    if name in BUILTIN:
        factory = BUILTIN[name]
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        for key in ("burst_length", "frames_needed", "frames", "burst"):
            if key in params:
                return factory(**{key: settings.burst_length})
        proc = factory()
        if proc.frames_needed > 1 and proc.frames_needed != settings.burst_length:
            proc.frames_needed = settings.burst_length  # burst processors read it per frame
        return proc
    return make_processor(name, settings.weights_dir)


def processor_choices(weights_dir: Path | None = None) -> list[str]:
    """StudentSR and its int8 variant first (listed even before their weights exist, so choosing one
    says what is missing), BurstFusion when built in, then the other built-ins and models."""
    names = ["student_sr", "student_sr_int8"]
    if "burst_fusion" in BUILTIN:
        names.append("burst_fusion")
    try:
        found = processor_names(weights_dir)
    except Exception:  # an unreadable manifest: the load itself will say why
        found = list(BUILTIN)
    return names + [n for n in found if n not in names]


def label(name: str) -> str:
    return LABELS.get(name, name)


def weights_fingerprint(weights_dir: Path | None) -> tuple:
    """Names, sizes and times of the files in the weights folder: changes when weights are written."""
    from engine.manifest import WEIGHTS_DIR

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)))
    except OSError:
        return ()


class ProcessorLoader:
    """Loads the processor the user wants on the control thread and swaps it into the engine.

    wanted: the processor asked for; running_name: the one the engine runs (the fallback, or the one
    before, while the wanted one loads or when it failed); load_error: why the wanted one last failed.
    Every load has a generation: a load that a later choice superseded is dropped.

    settings: what the next processor is made with (the burst length shown now). on_running(steps,
    burst): told, on the GUI thread, each time a processor has started running. Its methods run on
    the GUI thread, its jobs on `control`'s thread.
    """

    def __init__(self, pipeline: LivePipeline, factory: ProcessorFactory, wanted: str, control: ControlThread,
                 set_problem: Callable[[str, str | None], None], status: QStatusBar,
                 settings: Callable[[], ProcessorSettings], on_running: Callable[[int | None, int], None], *,
                 fallback: str, weights_dir: Path | None, retry_s: float):
        self.pipeline, self._factory, self._control = pipeline, factory, control
        self._set_problem, self._status, self._settings, self._on_running = set_problem, status, settings, on_running
        self.fallback, self.weights_dir, self.retry_s = fallback, weights_dir, retry_s
        self.wanted = wanted
        self.running_name: str | None = None
        self.load_error: str | None = None
        self._gen = 0
        self._failed_fp: tuple | None = None  # weights folder when the wanted processor failed
        self._next_retry = math.inf

    def start_pipeline(self, source: str) -> None:
        """Make the wanted processor (the fallback if it cannot load) and start the pipeline with it."""
        gen = self._gen = self._gen + 1
        settings = self._settings()
        wanted = self.wanted

        def job():
            proc, error = None, None
            try:
                proc = self._factory(wanted, settings)
            except Exception as exc:
                error = str(exc)
                proc = self._factory(self.fallback, settings)
            try:
                self.pipeline.start(proc)
            except Exception as exc:
                message = f"cannot open source {source!r}: {exc}"  # exc is gone after the block
                self._control.post(lambda: self._set_problem("source", message))
            name, steps, burst = proc.name, proc.steps, proc.frames_needed
            self._control.post(lambda: self._loaded(wanted if error is None else None, name, steps, burst, gen, error))

        self._control.submit(job)

    def request(self, name: str) -> None:
        """Load `name` off the GUI thread and switch to it; the old one runs until then."""
        self.wanted = name
        self._gen += 1
        gen = self._gen
        settings = self._settings()
        # until it is running or has failed: a first BurstFusion compiles its kernels (about 45 s)
        self._status.showMessage(f"loading {label(name)}…")

        def job():
            try:
                proc = self._factory(name, settings)
            except Exception as exc:
                message = str(exc)
                self._control.post(lambda: self._load_failed(name, gen, message))
                return
            if gen != self._gen or self._control.closing:
                proc.close()  # superseded by a later choice
                return
            self._warm_up(proc)
            if self.pipeline.engine is None:
                proc.close()
                return
            self.pipeline.switch_processor(proc)  # the engine swaps it in between frames and owns it
            p_name, steps, burst = proc.name, proc.steps, proc.frames_needed
            self._control.post(lambda: self._loaded(name, p_name, steps, burst, gen, None))

        self._control.submit(job)

    def retry_if_due(self) -> None:
        """After a failed load: try the wanted processor again if its weights folder changed since."""
        if self._failed_fp is None or time.monotonic() < self._next_retry:
            return
        self._next_retry = time.monotonic() + self.retry_s
        if weights_fingerprint(self.weights_dir) != self._failed_fp:
            self.request(self.wanted)

    def _warm_up(self, proc: Processor) -> None:
        """Run the new processor once on recent frames here, so its first live frame is not slow
        (sessions allocate on first run). Failures are left for the engine to report."""
        frames = self.pipeline.ring.last(max(1, proc.frames_needed))
        if frames:
            try:
                proc.process(frames)
            except Exception:
                pass

    def _loaded(self, wanted: str | None, name: str, steps: int | None, burst: int, gen: int,
                error: str | None) -> None:
        self.running_name = name
        if error is not None:  # the start-up choice failed; the fallback runs
            self._load_failed(self.wanted, gen, error)
        elif gen == self._gen:
            self._set_problem("load", None)
            self.load_error, self._failed_fp, self._next_retry = None, None, math.inf
            self._status.showMessage(f"running {label(name)}", 3000)
        self._on_running(steps, burst)

    def _load_failed(self, name: str, gen: int, message: str) -> None:
        if gen != self._gen:
            return
        self._status.clearMessage()  # the banner says what happened
        running = label(self.running_name) if self.running_name else "nothing"
        self.load_error = message
        self._set_problem("load", f"could not load {label(name)}: {message} — running {running} instead; "
                                  f"it is tried again when its weights change.")
        self._failed_fp = weights_fingerprint(self.weights_dir)
        self._next_retry = time.monotonic() + self.retry_s

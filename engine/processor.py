"""What the engine runs on frames: the Processor interface, its Result, and the simple baselines.

A Processor turns the newest frame (or the newest N frames, for bursts) into an enhanced BGR image,
timing each of its stages. `process` is the same call live (EngineWorker) and offline (`eyefuse
enhance`), so the two can never drift apart.
"""
from __future__ import annotations

import abc
import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

from capture.convert import to_bgr8
from capture.frame import Frame

class ProcessingError(Exception):
    """A processor could not enhance a frame. The message says which and why."""


class FrameFormatError(ProcessingError):
    """A frame a processor cannot take (size, format); the message says what it needs."""


class ModelError(ProcessingError):
    """A model ran but its output is unusable (wrong shape or dtype, NaN/Inf), or it failed to run."""


class StepsNotSupported(ValueError):
    """The processor has no step count (only iterative ones, such as BurstFusion, have one)."""


@dataclass(frozen=True)
class Result:
    """One enhanced frame and how it was made.

    frames: the input frames, oldest first; frames[-1] is the newest (the burst reference or the frame).
    input_bgr: (H, W, 3) uint8 BGR the processor worked on (the "before" picture); on an error result,
        frames[-1] converted to BGR, or None if even that failed.
    output: (sH, sW, 3) uint8 BGR, or None when `error` is set.
    seq, t_capture_ns: of frames[-1]. t_start_ns, t_done_ns: time.monotonic_ns() around `process`,
        the same clock as capture, so t_done_ns - t_capture_ns is the capture-to-result latency.
    stages: stage name -> milliseconds, in the order the stages ran.
    skipped: frames the engine skipped so far because it was busy (0 offline).
    """

    frames: tuple[Frame, ...]
    input_bgr: np.ndarray | None
    output: np.ndarray | None
    seq: int
    t_capture_ns: int
    t_start_ns: int
    t_done_ns: int
    stages: dict[str, float]
    processor: str
    steps: int | None = None
    skipped: int = 0
    error: str | None = None
    notice: str | None = None  # something the processor wants shown (a fallback it took, a part that is off)
    psnr_vs_truth: float | None = None  # where the source knows the truth

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        """Capture to result, in ms."""
        return (self.t_done_ns - self.t_capture_ns) / 1e6

    @property
    def process_ms(self) -> float:
        return (self.t_done_ns - self.t_start_ns) / 1e6


class StageTimer:
    """Records how long named stages take, in the order they run (repeated names add up)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter_ns() - t0) / 1e6


class Processor(abc.ABC):
    """Enhances frames. Not thread-safe: one thread (the engine worker) calls it at a time.

    Subclasses set `name` and `frames_needed`, and implement `enhance`. Processors with an iteration
    count (BurstFusion's sampler steps) override the `steps` property and setter.
    """

    name: str = "processor"
    frames_needed: int = 1  # 1 for single-frame processors, N for a burst of the newest N frames

    @property
    def steps(self) -> int | None:
        """The step count, or None for processors that have none."""
        return None

    @steps.setter
    def steps(self, value: int) -> None:
        raise StepsNotSupported(f"processor {self.name!r} has no step count; it cannot be set to {value}")

    @abc.abstractmethod
    def enhance(self, frames: Sequence[Frame], timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        """frames (oldest first, 1..frames_needed of them) -> (input_bgr (H, W, 3), output (sH, sW, 3)),
        both uint8 BGR. Times its stages with `timer.stage(name)`. Raises ProcessingError subclasses."""

    def process(self, frames: Sequence[Frame]) -> Result:
        """Enhance `frames` (oldest first; the last one is the frame being shown). At the start of a
        stream a burst processor may get fewer than frames_needed. Raises ProcessingError."""
        if not frames:
            raise FrameFormatError(f"{self.name}: process() needs at least one frame, got none")
        frames = tuple(frames)
        timer = StageTimer()
        t_start = time.monotonic_ns()
        input_bgr, output = self.enhance(frames, timer)
        t_done = time.monotonic_ns()
        check_bgr8(output, f"{self.name} output")
        ref = frames[-1]
        notice, psnr = self.take_report()
        return Result(frames, input_bgr, output, ref.seq, ref.t_capture_ns, t_start, t_done,
                      timer.stages, self.name, self.steps, notice=notice, psnr_vs_truth=psnr)

    def take_report(self) -> tuple[str | None, float | None]:
        """(notice, PSNR against the truth) about the frame just enhanced: a processor that can
        fall back or score itself overrides this."""
        return None, None

    def close(self) -> None:
        """Release what the processor holds (sessions, buffers). Idempotent."""

    def __enter__(self) -> "Processor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_bgr8(image: np.ndarray, what: str) -> None:
    """Raise ModelError unless `image` is (H, W, 3) uint8."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ModelError(f"{what} must be (H, W, 3) uint8 BGR, got {desc}")


class Passthrough(Processor):
    """The input converted to BGR, unchanged in size: the viewer's "off" with no upscaling."""

    name = "passthrough"
    scale = 1

    def enhance(self, frames: Sequence[Frame], timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        with timer.stage("convert"):
            bgr = to_bgr8(frames[-1])
        return bgr, bgr


class BicubicProcessor(Processor):
    """Bicubic upscaling by `scale`: the baseline every model must beat, and "off" at model size."""

    def __init__(self, scale: int = 2):
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        self.scale = scale
        self.name = "bicubic" if scale == 2 else f"bicubic_x{scale}"

    def enhance(self, frames: Sequence[Frame], timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        with timer.stage("convert"):
            bgr = to_bgr8(frames[-1])
        with timer.stage("resize"):
            h, w = bgr.shape[:2]
            out = cv2.resize(bgr, (w * self.scale, h * self.scale), interpolation=cv2.INTER_CUBIC)
        return bgr, out

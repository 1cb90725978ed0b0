"""StudentSRProcessor: any single-frame "sr" model from the manifest, run through ONNX Runtime.

The engine's I/O convention, shared with trainers/ export: input "input" uint8 (1, H, W, 3) BGR
NHWC, output uint8 (1, sH, sW, 3) BGR NHWC with s the manifest's scale; the graph does its own
casting and normalisation. A float32 output (0..255 BGR) is accepted too, and checked for NaN/Inf.
A model whose manifest says residual_over "bilinear" takes a second input, "base" uint8
(1, sH, sW, 3): OpenCV's bilinear upscale of the input (filtered first with the manifest's
base_filter when it has one), made here, to which the graph adds its correction.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from capture.convert import to_bgr8
from capture.frame import Frame
from engine.manifest import WEIGHTS_DIR, WeightsError
from engine.processor import FrameFormatError, ModelError, ProcessingError, Processor, StageTimer
from engine.runtime import LoadedModel, SessionConfig, load_model

# Pad sizes to this multiple: covers pixel-unshuffle by 2, 4 or 8. Camera sizes (640x480, 320x240)
# are already multiples, so only odd-sized files pay for the (at most 7-pixel) reflect padding.
DEFAULT_MULTIPLE = 8


def pad_to_multiple(bgr: np.ndarray, multiple: int) -> np.ndarray:
    """(H, W, 3) -> (H', W', 3) with H', W' the next multiples of `multiple`, reflect-padded at the
    bottom and right (edge-replicated when the image is too small to reflect)."""
    h, w = bgr.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return bgr
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(bgr, ((0, ph), (0, pw), (0, 0)), mode=mode)


def bilinear_base(bgr: np.ndarray, scale: int, prefilter: Callable[[np.ndarray], np.ndarray] | None = None
                  ) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, sH, sW, 3) uint8: OpenCV's bilinear upscale (half-pixel centres, as
    torch's align_corners=False), the "base" input of residual models, of the input passed through
    `prefilter` first when given (see prefilter_for)."""
    h, w = bgr.shape[:2]
    if prefilter is not None:
        bgr = prefilter(bgr)
    return cv2.resize(bgr, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)[None]


def prefilter_for(kernel: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """(k, k) kernel -> the fastest OpenCV pass that filters a uint8 image with it (each channel,
    borders reflected without repeating the edge, as torch's "reflect" padding): GaussianBlur when
    it is a Gaussian (fixed point, within one level of exact), two 1-D passes when it is separable,
    else filter2D. At 640x480 they take about 0.7, 1.2 and 4.4 ms."""
    k = np.asarray(kernel, np.float64)
    border = cv2.BORDER_REFLECT_101
    u, sv, vt = np.linalg.svd(k)
    if sv[0] <= 0 or sv[1:].sum() > 1e-6 * sv[0]:
        return functools.partial(cv2.filter2D, ddepth=-1, kernel=k.astype(np.float32), borderType=border)
    col, row = u[:, 0] * np.sqrt(sv[0]), vt[0] * np.sqrt(sv[0])  # rank one: column x row
    if col.sum() < 0:
        col, row = -col, -row
    n, r = len(col), len(col) // 2
    if n > 1 and np.allclose(col, row, atol=1e-7) and 0 < col[r - 1] < col[r]:
        sigma = float(np.sqrt(-0.5 / np.log(col[r - 1] / col[r])))
        if np.allclose(cv2.getGaussianKernel(n, sigma, cv2.CV_64F).ravel(), col, atol=1e-6):
            return functools.partial(cv2.GaussianBlur, ksize=(n, n), sigmaX=sigma, sigmaY=sigma, borderType=border)
    return functools.partial(cv2.sepFilter2D, ddepth=-1, kernelX=row.astype(np.float32),
                             kernelY=col.astype(np.float32), borderType=border)


def base_prefilter(entry) -> Callable[[np.ndarray], np.ndarray] | None:
    """The manifest entry's base_filter as a prefilter (prefilter_for), None if it has none;
    WeightsError if it is not a small odd square of finite numbers."""
    if entry.base_filter is None:
        return None
    try:
        k = np.array(entry.base_filter, dtype=np.float64)
    except (TypeError, ValueError):
        k = np.zeros((0,))
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or not 1 <= k.shape[0] <= 9 \
            or not np.all(np.isfinite(k)):
        raise WeightsError(f"model {entry.name!r}: base_filter must be an odd square kernel of at most 9x9 finite "
                           f"numbers, got {np.shape(entry.base_filter)}; re-export the model")
    return prefilter_for(k)


class StudentSRProcessor(Processor):
    """Runs a LoadedModel of kind "sr" on the newest frame.

    odd_sizes: "pad" reflect-pads to `multiple` and crops the output back; "refuse" raises
    FrameFormatError for sizes that are not multiples.
    """

    def __init__(self, model: LoadedModel, multiple: int = DEFAULT_MULTIPLE, odd_sizes: str = "pad"):
        if odd_sizes not in ("pad", "refuse"):
            raise ValueError(f"odd_sizes must be 'pad' or 'refuse', got {odd_sizes!r}")
        entry = model.entry
        spec_in, spec_out = entry.inputs[0], entry.outputs[0]
        base = entry.residual_over == "bilinear"
        extra_ok = (len(entry.inputs) == 2 and entry.inputs[1].name == "base" and entry.inputs[1].dtype == "uint8"
                    if base else len(entry.inputs) == 1)
        if not extra_ok or len(entry.outputs) != 1 or spec_in.dtype != "uint8" or len(spec_in.shape) != 4 \
                or spec_out.dtype not in ("uint8", "float32") or len(spec_out.shape) != 4:
            raise WeightsError(
                f"model {entry.name!r} ({model.path}) does not follow the engine's I/O convention: input "
                f"uint8 (1, H, W, 3)" + (" and input \"base\" uint8 (1, sH, sW, 3)" if base else " only")
                + f", and one output uint8 or float32 (1, sH, sW, 3); the manifest says inputs "
                f"{[(s.name, s.dtype, s.shape) for s in entry.inputs]}, outputs "
                f"{[(s.name, s.dtype, s.shape) for s in entry.outputs]}. Re-export it with trainers' exporter."
            )
        self._model: LoadedModel | None = model
        self.name = entry.name
        self.scale = entry.scale
        self.multiple = max(1, int(multiple))
        self.odd_sizes = odd_sizes
        if entry.residual_over not in (None, "bilinear"):
            raise WeightsError(f"model {entry.name!r}: residual_over {entry.residual_over!r} is not known to this "
                               f"engine (it knows 'bilinear'); update EyeFuse or re-export the model")
        self.residual_over = entry.residual_over
        self.base_prefilter = base_prefilter(entry)

    @classmethod
    def from_name(cls, name: str, weights_dir: Path | str = WEIGHTS_DIR, cfg: SessionConfig | None = None,
                  **kwargs) -> "StudentSRProcessor":
        """Load manifest model `name` (verified; WeightsError if it cannot be used)."""
        model = load_model(name, weights_dir, cfg)
        if model.entry.kind != "sr":
            raise WeightsError(f"model {name!r} is of kind {model.entry.kind!r}; StudentSRProcessor needs an \"sr\" model")
        return cls(model, **kwargs)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise ProcessingError(f"processor {self.name!r} is closed; make a new one")
        return self._model

    def enhance(self, frames: Sequence[Frame], timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        frame = frames[-1]
        with timer.stage("convert"):
            try:
                bgr = to_bgr8(frame)
            except (ValueError, TypeError) as exc:
                raise FrameFormatError(f"{self.name}: cannot convert frame {frame.seq} "
                                       f"({frame.pixel_format}, {frame.pixels.shape}) to BGR: {exc}") from exc
            h, w = bgr.shape[:2]
            if (h % self.multiple or w % self.multiple) and self.odd_sizes == "refuse":
                raise FrameFormatError(
                    f"{self.name}: frame {frame.seq} is {w}x{h}; this model needs width and height that are "
                    f"multiples of {self.multiple}. Crop or resize the input, or use padding (odd_sizes='pad')."
                )
            x = np.ascontiguousarray(pad_to_multiple(bgr, self.multiple))[None]
        more = {}
        if self.residual_over == "bilinear":
            with timer.stage("bilinear"):
                more["base"] = bilinear_base(x[0], self.scale, self.base_prefilter)
        with timer.stage("infer"):
            try:
                y = model.run(x, **more)
            except Exception as exc:  # ORT's own exception classes; keep the first line, it says the op
                reason = str(exc).strip().splitlines()[0][:300]
                raise ModelError(f"{self.name} ({model.path.name}) failed on a {w}x{h} frame (seq {frame.seq}): "
                                 f"{reason}") from exc
        with timer.stage("post"):
            out = self._check_output(y, x.shape, frame.seq)
            out = out[: h * self.scale, : w * self.scale]
        return bgr, np.ascontiguousarray(out)

    def _check_output(self, y: np.ndarray, in_shape: tuple[int, ...], seq: int) -> np.ndarray:
        """(1, sH', sW', 3) model output -> (sH', sW', 3) uint8, or ModelError saying what is wrong."""
        s = self.scale
        want = (1, in_shape[1] * s, in_shape[2] * s, 3)
        where = f"{self.name} ({self.model.path.name}) on frame {seq}"
        if not isinstance(y, np.ndarray) or y.shape != want:
            got = y.shape if isinstance(y, np.ndarray) else type(y).__name__
            raise ModelError(f"{where}: output shape {got}, expected {want} (scale {s}). "
                             f"The model does not match its manifest entry; re-export it.")
        if y.dtype == np.uint8:
            return y[0]
        if y.dtype not in (np.float32, np.float16, np.float64):
            raise ModelError(f"{where}: output dtype {y.dtype}, expected uint8 (or float32 0..255)")
        finite = np.isfinite(y)
        if not finite.all():
            bad = int(y.size - np.count_nonzero(finite))
            raise ModelError(f"{where}: output has {bad} NaN/Inf values of {y.size}; the model is numerically "
                             f"broken for this input (check the export, or the int8 calibration)")
        return np.clip(y[0] + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._model = None  # drops the session; ORT frees it when the last reference goes

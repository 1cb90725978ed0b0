"""StudentSRProcessor: any single-frame "sr" model from the manifest, run through ONNX Runtime.

The engine's I/O convention, shared with trainers/ export: input "input" uint8 (1, H, W, 3) BGR
NHWC, output uint8 (1, sH, sW, 3) BGR NHWC with s the manifest's scale; the graph does its own
casting and normalisation. A float32 output (0..255 BGR) is accepted too, and checked for NaN/Inf.
A model whose manifest says residual_over "bilinear" takes a second input, "base" uint8
(1, sH, sW, 3): OpenCV's bilinear upscale of the input, made here, to which the graph adds its
correction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def bilinear_base(bgr: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, sH, sW, 3) uint8: OpenCV's bilinear upscale (half-pixel centres, as
    torch's align_corners=False), the "base" input of residual models."""
    h, w = bgr.shape[:2]
    return cv2.resize(bgr, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)[None]


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
                more["base"] = bilinear_base(x[0], self.scale)
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

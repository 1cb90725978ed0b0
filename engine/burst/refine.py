"""Refine stage: the merged planes improved by a learned model in a RAW latent space (ONNX only).

    refiner = BurstRefiner(RefineConfig(model="teacher", steps=50))
    planes = refiner.refine(fused)            (4, h, w) -> (4, h, w), the merge where it cannot

Three models (trainers/train_diffusion.py, trainers/train_consistency.py; exported by
trainers/export_refine.py):

    regressor     one graph: the merge's latent through the network once, decoded over the merge
    teacher       the latent diffusion teacher, offline: the merge's latent plus kappa x seeded
                  noise, `steps` deterministic steps of the ResShift sampler (each one ONNX run of
                  burst_teacher_step), then the decoder over the merge
    consistency   the few-step student, live: `steps` in (1, 2, 4), each count one graph
                  (burst_consistency_K: encoder, K steps, decoder), deterministic (no start noise)

Then the hallucination guard (engine/burst/guard.py) holds the result to what the burst shows,
unless RefineConfig.guard is off.

    z0_hat = F(z_t, t);  eps = (z_t - z0_hat - eta(t) (z_m - z0_hat)) / (kappa sqrt(eta(t)))
    z_s = z0_hat + eta(s) (z_m - z0_hat) + kappa sqrt(eta(s)) eps,   eta(t) = sin^2(pi t / 2)

Planes of any size are padded (reflected) to multiples of 8, the latent grid, and cropped back. A
model output that is not finite gives back the merge for that burst, with a note saying so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.burst.guard import guard
from engine.burst.lens import LensModel
from engine.burst.refine_inputs import LATENT_FACTOR, condition_maps
from engine.manifest import WEIGHTS_DIR, WeightsError

REFINE_MODELS = ("regressor", "teacher", "consistency")
CONSISTENCY_STEPS = (1, 2, 4)


def graphs_for(model: str, steps: int) -> tuple[str, ...]:
    """The manifest models a refinement runs."""
    if model == "regressor":
        return ("burst_regressor",)
    if model == "teacher":
        return ("burst_raw_encoder", "burst_teacher_step", "burst_raw_decoder")
    return (f"burst_consistency_{steps}",)


@dataclass(frozen=True)
class RefineConfig:
    """model: "regressor", "teacher" or "consistency"; steps: the teacher's sampler steps, or the
    consistency student's (1, 2 or 4); seed: the teacher's start noise; guard: the hallucination
    guard after the model."""

    model: str = "regressor"
    steps: int = 50
    seed: int = 0
    guard: bool = True

    def __post_init__(self) -> None:
        if self.model not in REFINE_MODELS:
            raise ValueError(f"refine model must be one of {REFINE_MODELS}, got {self.model!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"refine steps must be a positive integer, got {self.steps!r}")
        if self.model == "consistency" and self.steps not in CONSISTENCY_STEPS:
            raise ValueError(f"the consistency refinement runs {CONSISTENCY_STEPS} steps, not {self.steps}")


def eta(t: float) -> float:
    return math.sin(0.5 * math.pi * t) ** 2


def pad_to_latent(planes: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(4, h, w) -> ((4, H, W) reflected to multiples of LATENT_FACTOR, (h, w)) to crop back to."""
    import cv2

    _, h, w = planes.shape
    eh, ew = -h % LATENT_FACTOR, -w % LATENT_FACTOR
    if not eh and not ew:
        return np.ascontiguousarray(planes, np.float32), (h, w)
    out = np.stack([cv2.copyMakeBorder(np.ascontiguousarray(p, np.float32), 0, eh, 0, ew, cv2.BORDER_REFLECT101)
                    for p in planes])
    return out, (h, w)


def burst_confidence(fused) -> np.ndarray:
    """(ny, nx) the alignment's mean confidence over the non-reference frames (ones for a lone frame)."""
    alignment = fused.alignment
    if alignment is None or alignment.confidence.shape[0] < 2:
        return np.ones((1, 1), np.float32)
    others = [i for i in range(alignment.confidence.shape[0]) if i != alignment.ref]
    return alignment.confidence[others].mean(axis=0)


def guard_refinement(refined: np.ndarray, merged: np.ndarray, confidence: np.ndarray, noise, frames: int) -> np.ndarray:
    """The hallucination guard with the merge's remaining noise taken as one frame's over the frames merged."""
    return guard(refined, merged, noise.variance(np.ascontiguousarray(merged)) / max(frames, 1), confidence)


class BurstRefiner:
    """The ONNX sessions of one refinement model. One caller at a time (the engine thread): `refine`
    leaves its notice in `last_note`."""

    def __init__(self, cfg: RefineConfig = RefineConfig(), weights_dir: Path | str = WEIGHTS_DIR):
        from engine.runtime import load_model

        self.config = cfg
        self.models = {}
        for name in graphs_for(cfg.model, cfg.steps):
            try:
                self.models[name] = load_model(name, weights_dir)
            except WeightsError as exc:
                raise WeightsError(f"the burst refinement '{cfg.model}' needs {name}: {exc} "
                                   f"(train it with trainers/train_burst_refine.sh)") from exc
        if cfg.model == "teacher":
            self.kappa = float(self.models["burst_teacher_step"].entry.training["kappa"])
        self.last_note: str | None = None

    def refine(self, fused) -> np.ndarray:
        """FusedBurst -> (4, h, w) float32 refined planes (the merge itself when the model fails)."""
        lens = fused.lens if fused.lens is not None else LensModel()
        return self.refine_planes(fused.planes, burst_confidence(fused), fused.noise, len(fused.used), lens,
                                  fused.meta.cfa_pattern)

    def refine_planes(self, merged: np.ndarray, confidence: np.ndarray, noise, frames: int, lens: LensModel,
                      pattern: str) -> np.ndarray:
        padded, (h, w) = pad_to_latent(merged)
        cond = condition_maps(padded, confidence, noise, frames, lens, pattern)[None]
        x = padded[None]
        if self.config.model == "teacher":
            out = self._sample(x, cond)
        else:
            (name,) = graphs_for(self.config.model, self.config.steps)
            out = self.models[name].session.run(None, {"merged": x, "cond": cond})[0]
        out = out[0]
        self.last_note = None
        if not np.isfinite(out[:, :h, :w]).all():
            bad = int(np.count_nonzero(~np.isfinite(out[:, :h, :w])))
            self.last_note = (f"the {self.config.model} refinement gave {bad} NaN/Inf values: the merge is shown "
                              f"for this burst instead")
            return np.ascontiguousarray(merged, np.float32)
        if self.config.guard:  # on the padded planes, so its whole patches reach every edge
            out = guard_refinement(np.ascontiguousarray(out, np.float32), padded, confidence, noise, frames)
        return np.ascontiguousarray(out[:, :h, :w], np.float32)

    def _sample(self, x: np.ndarray, cond: np.ndarray) -> np.ndarray:
        enc, step, dec = (self.models[n].session for n in graphs_for("teacher", self.config.steps))
        zm = enc.run(None, {"planes": x})[0]
        rng = np.random.default_rng(self.config.seed)
        z = zm + self.kappa * rng.standard_normal(zm.shape, dtype=np.float32)
        ts = np.linspace(1.0, 0.0, self.config.steps + 1)
        for i in range(self.config.steps):
            z0 = step.run(None, {"z_t": z, "z_merge": zm, "cond": cond, "t": np.float32([ts[i]])})[0]
            e_t, e_s = eta(ts[i]), eta(ts[i + 1])
            eps = (z - z0 - e_t * (zm - z0)) / (self.kappa * max(math.sqrt(e_t), 1e-4))
            z = (z0 + e_s * (zm - z0) + self.kappa * math.sqrt(e_s) * eps).astype(np.float32)
        return dec.run(None, {"latent": z, "merged": x})[0]

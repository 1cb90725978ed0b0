"""What the burst-refinement trainers share: the data in memory, batches, losses, checkpoints, logs.

A checkpoint holds everything a run needs to go on exactly where it stopped: the model, the
optimiser, the EMA weights, the step, the RNG states (torch and the batch sampler's), and the
options it was started with (`kind` names the trainer; a checkpoint of another kind or shape is
refused naming the file). It is written to a temporary file and renamed, so a run killed while
saving keeps the previous one. The log is the CSV trainers.plot_metrics reads (one row per
evaluation, "epoch" counting them), plus the trainer's own columns.
"""
from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from capture.atomic import atomic_output

LOG_COLUMNS = ("epoch", "step", "train_l1", "val_l1", "train_psnr", "val_psnr", "lr", "seconds")


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from; the message names the file and says why."""


@dataclass
class RefineData:
    """Samples of trainers.burst_refine_data in memory (float16), as torch tensors."""

    clean: torch.Tensor  # (N, 4, C, C)
    merged: torch.Tensor  # (N, 4, C, C)
    cond: torch.Tensor  # (N, C_MAPS, C/8, C/8)
    gain: torch.Tensor  # (N,)

    @staticmethod
    def load(folder: Path, split: str) -> "RefineData":
        from trainers.burst_refine_data import load_split

        arrays = load_split(folder, split)
        return RefineData(*(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("clean", "merged", "cond", "gain")))

    def __len__(self) -> int:
        return self.clean.shape[0]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean, merged, cond, globals) float32 for the samples `idx`."""
        i = torch.from_numpy(idx)
        return (self.clean[i].float(), self.merged[i].float(), self.cond[i].float(), globals_from(self.cond[i].float()))


def globals_from(cond: torch.Tensor) -> torch.Tensor:
    """(B, 3) per-sample scalars from the conditioning maps: log noise variance of one frame and of
    the merge at the mean level, and the variance ratio (frames merged, as the merge reduced it)."""
    one = cond[:, 1].mean(dim=(1, 2)).clamp_min(1e-6)
    merged = cond[:, 2].mean(dim=(1, 2)).clamp_min(1e-6)
    return torch.stack([2 * one.log() / 10 + 1, 2 * merged.log() / 10 + 1, (one / merged) ** 2 / 8], dim=1)


def perceptual_space(x: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for gamma: sqrt(x + 0.01) - 0.1 (x below -0.01 as -0.01), so losses weigh
    dark detail as the eye (and the gamma PSNR) does, without gamma's infinite slope at black."""
    return (x.clamp_min(-0.0099) + 0.01).sqrt() - 0.1


def restoration_loss(out: torch.Tensor, clean: torch.Tensor, gradient_weight: float = 0.5) -> torch.Tensor:
    """L1 in the perceptual space plus `gradient_weight` x L1 of its horizontal and vertical
    differences (the perceptual term: no pretrained network can be downloaded here; image gradients
    keep edges and fine texture from being averaged away)."""
    a, b = perceptual_space(out), perceptual_space(clean)
    loss = F.l1_loss(a, b)
    if gradient_weight:
        loss = loss + gradient_weight * (F.l1_loss(a.diff(dim=-1), b.diff(dim=-1)) + F.l1_loss(a.diff(dim=-2), b.diff(dim=-2)))
    return loss


def psnr_gamma(out: torch.Tensor, clean: torch.Tensor, border: int = 4) -> float:
    """Mean PSNR (dB) after gamma 1/2.2 on [0, 1], per sample, `border` plane pixels ignored (the
    burst benchmark's KPN-style score)."""
    a = out.clamp(0, 1) ** (1 / 2.2)
    b = clean.clamp(0, 1) ** (1 / 2.2)
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((-10 * mse.log10()).mean())


class Ema:
    """An exponential moving average of a model's weights (the weights a run exports)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            else:
                e.copy_(p)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename: a kill mid-save keeps the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, kind: str) -> dict:
    """A checkpoint saved by a trainer of `kind`, loaded as data (weights_only: never as code to run)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
                              f"delete it to start afresh, or pass another one") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is a {got!r} checkpoint, not a {kind!r} one")
    return state


def load_weights(model: nn.Module, weights: dict, path: Path) -> None:
    """Load a state dict strictly, naming the file and the keys or shapes that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing {missing[:4]}, unexpected "
                              f"{extra[:4]}, shapes {shapes[:4]} (another architecture or width?)")
    model.load_state_dict(weights)


class Sampler:
    """Random batches without replacement within an epoch, resumable: its state is the RNG's state
    and the position in the current permutation."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        if self.pos + self.batch > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self.order.copy()), "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy()
        self.pos = int(state["pos"])


class CsvLog:
    """Append rows of LOG_COLUMNS + extra columns; plots beside it after every row."""

    def __init__(self, path: Path, extra: tuple[str, ...] = ()):
        self.path, self.columns = path, LOG_COLUMNS + extra
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.columns})
        try:
            from trainers.plot_metrics import plot

            plot(self.path)
        except Exception as exc:  # noqa: BLE001 - a plot must never stop a training run
            print(f"(plots not updated: {exc})", flush=True)

    def truncate_after(self, epoch: int) -> None:
        """Drop rows logged after `epoch` (a resumed run repeats what followed its checkpoint)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if float(r["epoch"]) <= epoch]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in self.columns})


def cosine_lr(step: int, steps: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


class Clock:
    """Wall time of a run across resumes: the seconds before this process, plus this process's."""

    def __init__(self, before: float = 0.0):
        self.before, self.t0 = before, time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.t0


class Run:
    """A resumable training run's persistent state: the modules (by checkpoint key), the optimiser,
    the batch sampler, the torch RNG, the step, the evaluation count and the wall time so far.

    `resume()` picks up `checkpoint` (unless `fresh`, which drops the old log), loading everything
    strictly, and returns the extra values the run saved (`save(**extra)`) so a trainer can restore
    its own constants; raises CheckpointError naming the file."""

    def __init__(self, kind: str, checkpoint: Path, log: CsvLog, modules: dict[str, nn.Module],
                 opt: torch.optim.Optimizer, sampler: Sampler, args):
        self.kind, self.checkpoint, self.log = kind, checkpoint, log
        self.modules, self.opt, self.sampler, self.args = modules, opt, sampler, args
        self.step, self.epoch = 0, 0
        self.clock = Clock()

    def resume(self, fresh: bool) -> dict:
        if fresh or not self.checkpoint.exists():
            if fresh and self.log.path.exists():
                self.log.path.unlink()
            return {}
        state = load_checkpoint(self.checkpoint, self.kind)
        for key, module in self.modules.items():
            load_weights(module, state[key], self.checkpoint)
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.restore(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.clock = Clock(state["seconds"])
        self.log.truncate_after(self.epoch)
        print(f"resumed {self.checkpoint} at step {self.step}", flush=True)
        return state.get("extra", {})

    def save(self, **extra) -> None:
        save_checkpoint(self.checkpoint, {
            "kind": self.kind, **{k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.opt.state_dict(), "sampler": self.sampler.state(), "torch_rng": torch.get_rng_state(),
            "step": self.step, "epoch": self.epoch, "seconds": self.clock.seconds(), "extra": extra,
            "args": {k: str(v) for k, v in vars(self.args).items()}})

"""Knowledge distillation for train_student (--distill-from): a trained network's output on each
training input is a second L1 target beside the clean one. (Distilling the offline teacher pipeline
into pairs on disk is `--targets teacher`, trainers/student_data.py.)
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.registry import build
from trainers.student_data import TrainingDataError


def load_distillation_teacher(checkpoint: Path) -> nn.Module:
    """The network a trainer checkpoint holds (its best-validation weights), frozen, in eval mode."""
    try:
        # weights_only: a file named on the command line is read as data, never run as pickled code
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net = build(state["arch"], **state["model_kwargs"])
        best = state.get("best") or {}
        net.load_state_dict(best.get("state") or state["model"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise TrainingDataError(f"--distill-from {checkpoint}: not a train_student checkpoint ({exc}); pass the "
                                f".ckpt a finished train_student run wrote") from exc
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def distillation_loss(out: torch.Tensor, inputs: torch.Tensor, clean_l1: torch.Tensor, teacher: nn.Module,
                      weight: float) -> torch.Tensor:
    """(1 - weight) x the L1 to the clean target + weight x the L1 to the teacher's output on the
    same inputs (no gradient flows into the teacher)."""
    with torch.no_grad():
        soft = teacher(inputs)
    return (1 - weight) * clean_l1 + weight * F.l1_loss(out, soft)

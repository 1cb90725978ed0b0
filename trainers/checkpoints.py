"""Loading published PyTorch checkpoints (BasicSR layout) into our architectures, strictly.

BasicSR saves {'params': state_dict} and/or {'params_ema': state_dict}; others save a bare state
dict or {'state_dict': ...}, sometimes with DataParallel's 'module.' prefix. A checkpoint for
another architecture or width is refused with the keys and shapes that do not fit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")  # EMA weights are the better ones


class CheckpointMismatch(Exception):
    """The checkpoint does not fit the model; the message lists what differs."""


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object, without any 'module.' prefix."""
    if isinstance(obj, Mapping):
        for key in PREFERRED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointMismatch(f"{source} holds no state dict (found {keys}); expected a bare state dict "
                                 f"or one under {', '.join(PREFERRED_KEYS)}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, checkpoint: str | Path | Mapping, strict: bool = True) -> nn.Module:
    """Load `checkpoint` (a path or an already loaded object) into `model`, refusing any mismatch."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated file, not a torch file, pickled code we refuse to run
            raise CheckpointMismatch(f"cannot read {source}: {exc}") from exc
    state = extract_state_dict(checkpoint, source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if (missing or unexpected) and strict or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_few(shapes)})")
        raise CheckpointMismatch(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(parts) +
            ". Is it for another architecture, width or depth? Build the model with the checkpoint's configuration."
        )
    model.load_state_dict(state, strict=strict)
    return model


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")

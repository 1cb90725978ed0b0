"""The single-frame architectures train_student trains, by the name a checkpoint and --arch give."""
from __future__ import annotations

from torch import nn

from trainers.models.espcn import ESPCN
from trainers.models.fsrcnn import FSRCNN
from trainers.models.student import StudentConfig, StudentSR

ARCHITECTURES = {"student_sr": StudentSR, "espcn": ESPCN, "fsrcnn": FSRCNN}


def build(arch: str, **kwargs) -> nn.Module:
    """A fresh network by architecture name; kwargs go to its config."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if arch == "student_sr":
        return StudentSR(StudentConfig(**kwargs))
    return ARCHITECTURES[arch](**kwargs)

"""ESPCN (Shi et al. 2016), a classic baseline StudentSR is measured against."""
from __future__ import annotations

import torch
from torch import nn


class ESPCN(nn.Module):
    """Shi et al. 2016: 5x5 conv c1 -> 3x3 conv c2 -> 3x3 conv 3s^2 -> pixel shuffle, at input
    size; the paper's widths are c1 = 64, c2 = 32."""

    def __init__(self, scale: int = 2, c1: int = 64, c2: int = 32):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 5, padding=2), nn.Tanh(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.Tanh(),
            nn.Conv2d(c2, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

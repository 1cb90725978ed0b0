"""FSRCNN (Dong et al. 2016), a classic baseline StudentSR is measured against."""
from __future__ import annotations

import torch
from torch import nn


class FSRCNN(nn.Module):
    """Dong et al. 2016, FSRCNN(d=56, s=12, m=4): feature 5x5, shrink 1x1, m mapping 3x3, expand
    1x1, then a 9x9 transposed convolution with stride `scale`."""

    def __init__(self, scale: int = 2, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))

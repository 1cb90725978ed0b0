"""The latent U-Net of the learned burst refinement: the diffusion teacher, the regressor control and
(later) the consistency student share it.

    LatentUNet(z_t, z_merge, cond, t, globals) -> z0 estimate, (B, LATENT, h, w)

z_t: the noisy latent; z_merge: the merge's latent (scaled); cond: (B, C_MAPS, h, w) conditioning
maps (engine/burst/refine_inputs.py); t: (B,) diffusion time in [0, 1]; globals: (B, 3) log shot
variance, log read variance, frames merged / 8. Two levels at 32 and 64 channels, two residual
blocks each way (GELU, group norm, the time and globals as a per-block scale and shift), about
0.18 GMAC per step at a 640x480 frame's 30x40 latent. The output layer starts at zero and the
network predicts the clean latent as z_merge plus its output, so an untrained model returns the
merge.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainers.models.raw_vae import LATENT

C_MAPS = 6
GLOBALS = 3
# the conditioning maps brought to about a unit: confidence, noise std x2, vignette, CA R, CA B
COND_SCALE = (1.0, 20.0, 40.0, 1.0, 10.0, 10.0)


def time_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sinusoids at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """(B, c, h, w) + (B, e) embedding -> (B, c, h, w): norm, scale/shift by the embedding, GELU, conv, twice."""

    def __init__(self, c: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c)
        self.norm2 = nn.GroupNorm(8, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(self.act(self.norm1(x) * (1 + scale) + shift))
        return x + self.conv2(self.act(self.norm2(h)))


class LatentUNet(nn.Module):
    def __init__(self, c1: int = 32, c2: int = 64, emb: int = 64):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(32 + GLOBALS, emb), nn.GELU(), nn.Linear(emb, emb))
        self.register_buffer("cond_scale", torch.tensor(COND_SCALE).view(1, -1, 1, 1))
        self.stem = nn.Conv2d(2 * LATENT + C_MAPS, c1, 3, padding=1)
        self.enc = nn.ModuleList([ResBlock(c1, emb), ResBlock(c1, emb)])
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(c2, emb), ResBlock(c2, emb)])
        self.up = nn.Sequential(nn.Conv2d(c2, 4 * c1, 1), nn.PixelShuffle(2))
        self.merge_skip = nn.Conv2d(2 * c1, c1, 1)
        self.dec = nn.ModuleList([ResBlock(c1, emb), ResBlock(c1, emb)])
        self.out = nn.Sequential(nn.GroupNorm(8, c1), nn.GELU(), nn.Conv2d(c1, LATENT, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t: torch.Tensor, z_merge: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                globals_: torch.Tensor) -> torch.Tensor:
        e = self.embed(torch.cat([time_embedding(t), globals_], dim=1))
        x = self.stem(torch.cat([z_t, z_merge, cond * self.cond_scale], dim=1))
        for block in self.enc:
            x = block(x, e)
        skip = x
        x = self.down(x)
        for block in self.mid:
            x = block(x, e)
        x = self.up(x)[..., : skip.shape[2], : skip.shape[3]]
        x = self.merge_skip(torch.cat([x, skip], dim=1))
        for block in self.dec:
            x = block(x, e)
        return z_merge + self.out(x)

"""NAFSSR (Chu et al., "NAFSSR: Stereo Image Super-Resolution Using NAFNet", CVPRW 2022).

A stereo network: the input is the left and right views stacked on channels (B, 6, H, W) and the
output both views upscaled (B, 6, sH, sW). For a single frame the same view goes to both branches,
as the seed project did (`upscale_single`). Names follow the published checkpoints (NAFSSR-L_4x:
width 128, 128 blocks) so their state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.nafnet import LayerNorm2d, NAFBlock


class SCAM(nn.Module):
    """Stereo cross-attention: each row of one view attends along the same row of the other."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = c**-0.5
        self.norm_l, self.norm_r = LayerNorm2d(c), LayerNorm2d(c)
        self.l_proj1, self.r_proj1 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.l_proj2, self.r_proj2 = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x_l: torch.Tensor, x_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_l = self.l_proj1(self.norm_l(x_l)).permute(0, 2, 3, 1)  # (B, H, W, c)
        q_r_t = self.r_proj1(self.norm_r(x_r)).permute(0, 2, 1, 3)  # (B, H, c, W)
        v_l = self.l_proj2(x_l).permute(0, 2, 3, 1)
        v_r = self.r_proj2(x_r).permute(0, 2, 3, 1)
        attention = torch.matmul(q_l, q_r_t) * self.scale  # (B, H, W, W)
        r2l = torch.matmul(torch.softmax(attention, dim=-1), v_r).permute(0, 3, 1, 2)
        l2r = torch.matmul(torch.softmax(attention.transpose(2, 3), dim=-1), v_l).permute(0, 3, 1, 2)
        return x_l + r2l * self.beta, x_r + l2r * self.gamma


class NAFBlockSR(nn.Module):
    """One NAFBlock shared by both views, then (optionally) cross-view fusion."""

    def __init__(self, c: int, fusion: bool = False, drop_out_rate: float = 0.0):
        super().__init__()
        self.blk = NAFBlock(c, drop_out_rate=drop_out_rate)
        self.fusion = SCAM(c) if fusion else None

    def forward(self, *feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = tuple(self.blk(x) for x in feats)
        return self.fusion(*feats) if self.fusion is not None else feats


class DropPath(nn.Module):
    """Stochastic depth over a multi-input block (skipped with probability drop_rate in training)."""

    def __init__(self, drop_rate: float, module: nn.Module):
        super().__init__()
        self.drop_rate, self.module = drop_rate, module

    def forward(self, *feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.training and torch.rand(()) < self.drop_rate:
            return feats
        new = self.module(*feats)
        if self.training and self.drop_rate > 0:
            factor = 1.0 / (1 - self.drop_rate)
            new = tuple(x + factor * (n - x) for x, n in zip(feats, new))
        return new


class NAFSSR(nn.Module):
    """(B, 6, H, W) stereo pair -> (B, 6, up_scale*H, up_scale*W), residual over bilinear upscaling."""

    def __init__(self, up_scale: int = 4, width: int = 48, num_blks: int = 16, img_channel: int = 3,
                 drop_path_rate: float = 0.0, drop_out_rate: float = 0.0, fusion_from: int = -1, fusion_to: int = 1000):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.body = nn.ModuleList(
            DropPath(drop_path_rate, NAFBlockSR(width, fusion=fusion_from <= i <= fusion_to, drop_out_rate=drop_out_rate))
            for i in range(num_blks)
        )
        self.up = nn.Sequential(nn.Conv2d(width, img_channel * up_scale**2, 3, padding=1), nn.PixelShuffle(up_scale))
        self.up_scale = up_scale

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        inp_hr = F.interpolate(inp, scale_factor=self.up_scale, mode="bilinear")
        feats = tuple(self.intro(x) for x in inp.chunk(2, dim=1))
        for block in self.body:
            feats = block(*feats)
        return torch.cat([self.up(x) for x in feats], dim=1) + inp_hr

    def upscale_single(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) one view -> (B, 3, sH, sW): the view fed to both branches, left output kept."""
        return self(torch.cat([x, x], dim=1))[:, :3]

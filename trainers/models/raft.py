"""RAFT-small (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", 2020),
the learned reference the burst aligner is measured against, written from the paper's small
configuration (as torchvision's raft_small lays it out):

    feature encoder  7x7/2 stem (32), bottleneck blocks 32 -> 64/2 -> 96/2, 1x1 to 128; instance norm
    context encoder  the same with 160 outputs and no norm: 96 for the GRU's state (tanh), 64 context (relu)
    correlation      all pairs at 1/8 size, dot products / sqrt(128), 4 average-pooled levels,
                     each looked up in a 7x7 window (radius 3) around the current match
    update, x12      motion encoder (1x1 196 -> 96; 7x7 2 -> 64, 3x3 64 -> 32; 3x3 128 -> 80, plus the flow),
                     one 3x3 ConvGRU (state 96, input 82 + 64), flow head 3x3 96 -> 128 -> 2
    output           the 1/8-size flow upsampled bilinearly (x8)

We have no RAFT weights and cannot download them; this module exists to measure what RAFT costs
on this CPU, which depends on the architecture and the input size only (`eyefuse bench burst`).
Its flows are meaningless until it is trained.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_relu(cin: int, cout: int, k: int, stride: int = 1, norm: bool = False, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 at a quarter of the width, plus a (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: bool):
        super().__init__()
        mid = cout // 4
        self.body = nn.Sequential(conv_norm_relu(cin, mid, 1, norm=norm), conv_norm_relu(mid, mid, 3, stride, norm),
                                  conv_norm_relu(mid, cout, 1, norm=norm))
        self.short = nn.Identity() if stride == 1 else conv_norm_relu(cin, cout, 1, stride, norm, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.short(x) + self.body(x))


class Encoder(nn.Module):
    """(N, 3, H, W) -> (N, out, H/8, W/8)."""

    def __init__(self, out: int, norm: bool, widths: tuple[int, int, int, int] = (32, 32, 64, 96)):
        super().__init__()
        w0, w1, w2, w3 = widths
        blocks = []
        for cin, cout, stride in ((w0, w1, 1), (w1, w2, 2), (w2, w3, 2)):
            blocks += [Bottleneck(cin, cout, stride, norm), Bottleneck(cout, cout, 1, norm)]
        self.net = nn.Sequential(conv_norm_relu(3, w0, 7, 2, norm), *blocks, nn.Conv2d(w3, out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def correlation_pyramid(f1: torch.Tensor, f2: torch.Tensor, levels: int = 4) -> list[torch.Tensor]:
    """(N, C, h, w) feature maps -> [(N h w, 1, h / 2^k, w / 2^k)]: every pixel of f1 against all of f2."""
    n, c, h, w = f1.shape
    corr = torch.matmul(f1.flatten(2).transpose(1, 2), f2.flatten(2)) / c**0.5  # (N, hw, hw)
    pyramid = [corr.reshape(n * h * w, 1, h, w)]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, 2))
    return pyramid


def look_up(pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """(N, 2, h, w) match positions (x, y, in 1/8-size pixels) -> (N, levels (2r+1)^2, h, w): the
    correlations in a (2r+1)^2 window around each match, at every pyramid level (bilinear)."""
    n, _, h, w = coords.shape
    d = torch.arange(-radius, radius + 1, dtype=coords.dtype)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    window = torch.stack([dx, dy], dim=-1)[None]  # (1, 2r+1, 2r+1, 2) as (x, y)
    centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
    out = []
    for level, corr in enumerate(pyramid):
        pts = centre / 2**level + window
        hh, ww = corr.shape[-2:]
        grid = torch.stack([2 * pts[..., 0] / max(ww - 1, 1) - 1, 2 * pts[..., 1] / max(hh - 1, 1) - 1], dim=-1)
        out.append(F.grid_sample(corr, grid, align_corners=True).view(n, h, w, -1))
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2)


class ConvGRU(nn.Module):
    def __init__(self, hidden: int, inp: int):
        super().__init__()
        self.z = nn.Conv2d(hidden + inp, hidden, 3, padding=1)
        self.r = nn.Conv2d(hidden + inp, hidden, 3, padding=1)
        self.q = nn.Conv2d(hidden + inp, hidden, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.z(hx)), torch.sigmoid(self.r(hx))
        q = torch.tanh(self.q(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RaftSmall(nn.Module):
    """(N, 3, H, W) image pair in [-1, 1], H and W multiples of 8 -> (N, 2, H, W) flow, after
    `updates` refinements (12 is RAFT's default)."""

    def __init__(self, levels: int = 4, radius: int = 3, hidden: int = 96, context: int = 64):
        super().__init__()
        self.levels, self.radius, self.hidden = levels, radius, hidden
        self.fnet = Encoder(128, norm=True)
        self.cnet = Encoder(hidden + context, norm=False)
        corr_channels = levels * (2 * radius + 1) ** 2
        self.conv_corr = conv_norm_relu(corr_channels, 96, 1)
        self.conv_flow = nn.Sequential(conv_norm_relu(2, 64, 7), conv_norm_relu(64, 32, 3))
        self.conv_motion = conv_norm_relu(96 + 32, 80, 3)
        self.gru = ConvGRU(hidden, 80 + 2 + context)
        self.head = nn.Sequential(conv_norm_relu(hidden, 128, 3), nn.Conv2d(128, 2, 3, padding=1))

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, updates: int = 12) -> torch.Tensor:
        n, _, hh, ww = image1.shape
        if hh % 8 or ww % 8:
            raise ValueError(f"RAFT needs sizes that are multiples of 8, got {ww}x{hh}")
        f1, f2 = self.fnet(torch.cat([image1, image2])).chunk(2)
        pyramid = correlation_pyramid(f1, f2, self.levels)
        h_state, ctx = self.cnet(image1).split([self.hidden, self.cnet.net[-1].out_channels - self.hidden], dim=1)
        h_state, ctx = torch.tanh(h_state), F.relu(ctx)
        h, w = f1.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=f1.dtype), torch.arange(w, dtype=f1.dtype), indexing="ij")
        coords0 = torch.stack([xs, ys])[None].expand(n, 2, h, w)
        coords1 = coords0.clone()
        for _ in range(updates):
            flow = coords1 - coords0
            corr = self.conv_corr(look_up(pyramid, coords1, self.radius))
            motion = torch.cat([self.conv_motion(torch.cat([corr, self.conv_flow(flow)], dim=1)), flow], dim=1)
            h_state = self.gru(h_state, torch.cat([ctx, motion], dim=1))
            coords1 = coords1 + self.head(h_state)
        return 8 * F.interpolate(coords1 - coords0, size=(hh, ww), mode="bilinear", align_corners=True)

"""Running a network over an image in overlapping tiles, so memory stays bounded at any image size."""
from __future__ import annotations

from typing import Callable

import torch


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _ramp(n: int, overlap: int, device) -> torch.Tensor:
    """(n,) blend weights: linear ramps over `overlap` pixels at both ends, never zero."""
    w = torch.ones(n, device=device)
    if overlap > 0 and n > 2 * overlap:
        r = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        w[:overlap], w[-overlap:] = r, r.flip(0)
    return w


@torch.no_grad()
def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int = 1,
              tile: int = 256, overlap: int = 32) -> torch.Tensor:
    """Apply fn ((1, C, h, w) -> (1, C', s*h, s*w)) to (1, C, H, W) x in tiles of `tile` px
    overlapping by `overlap`, blending overlaps with linear ramps. Returns (1, C', s*H, s*W)."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    _, _, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    out = weight = None
    step = tile - overlap
    for y0 in _starts(h, tile, step):
        for x0 in _starts(w, tile, step):
            patch = x[:, :, y0 : y0 + tile, x0 : x0 + tile]
            y = fn(patch)
            if out is None:
                out = torch.zeros((1, y.shape[1], h * scale, w * scale), dtype=y.dtype)
                weight = torch.zeros((1, 1, h * scale, w * scale), dtype=y.dtype)
            ph, pw = y.shape[2], y.shape[3]
            wy, wx = _ramp(ph, overlap * scale, y.device), _ramp(pw, overlap * scale, y.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            ys, xs = y0 * scale, x0 * scale
            out[:, :, ys : ys + ph, xs : xs + pw] += y * wt
            weight[:, :, ys : ys + ph, xs : xs + pw] += wt
    return out / weight

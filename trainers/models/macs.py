"""Multiply-accumulates per input pixel of a single-frame network, the cost the manifest records and
the live budget is counted in (StudentSR's docstring derives its count)."""
from __future__ import annotations

import torch
from torch import nn


def macs_per_input_pixel(model: nn.Module, height: int = 64, width: int = 64) -> float:
    """Multiply-accumulates per input pixel of every Conv2d/ConvTranspose2d, counted with hooks
    on a (1, 3, height, width) forward pass."""
    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        taps = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.ConvTranspose2d):  # every input pixel scatters into taps * out channels
            total += inp[0].numel() * mod.out_channels * taps // mod.groups
        else:
            total += out.numel() * taps * (mod.in_channels // mod.groups)

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for h in hooks:
            h.remove()
    return total / (height * width)

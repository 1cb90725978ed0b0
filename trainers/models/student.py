"""StudentSR, the live single-frame network: its block and the network. The classic baselines it is
measured against are espcn.py and fsrcnn.py.

StudentSR is built for the live budget. ONNX Runtime's fp32 GEMM peak on this 2-core CPU measures
about 36 GMAC/s (engine/peak.py), so 60 fps at 640x480 leaves about 0.6 GMAC per frame, i.e. about
2,000 MACs per input pixel, for everything. So the network:
- pixel-unshuffles the input by 4: every convolution runs on 1/16 of the input's pixels, with a
  receptive field 4x wider than the same depth at full size;
- runs a short chain of residual blocks there;
- predicts a correction to a bilinear 2x of the input directly in pixel-shuffled layout (each
  1/16-size position emits its 8x8x3 output block), so the network only learns what bilinear
  interpolation misses: noise, blur, aliasing.
The engine makes the bilinear 2x with OpenCV (the same half-pixel-centre bilinear as torch's
align_corners=False; ONNX Runtime's own resize was slower) and hands it to the exported graph
(export.py) as a second input, to which the graph adds the correction with a saturating uint8 add.

MACs per input pixel (C channels, B blocks, u = 4, s = 2, head kernel h, tail kernel k):
    head h^2 * 3u^2 * C / u^2 + body B * 2 * 9 * C^2 / u^2 + tail k^2 * C * 3(us)^2 / u^2
A 1x1 head (h = 1, each 4x4 block alone; the body's 3x3 convolutions bring the context) costs a
ninth of a 3x3 one, and in the same 3,000 steps it scored higher on Kodak24 at every noise level.
macs.py counts them with hooks; the manifest records the count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models.gaussian import gaussian_kernel


@dataclass(frozen=True)
class StudentConfig:
    channels: int = 24
    blocks: int = 2
    unshuffle: int = 4
    scale: int = 2
    tail_kernel: int = 1
    head_kernel: int = 3  # the trainer's CLI defaults to 1; 3 here reads older checkpoints' configs right
    # Gaussian blur (sigma, input pixels) of the input before the bilinear base; 0: plain bilinear.
    # The base then carries less of the noise, which the correction (16 numbers per 4x4 block) cannot
    # cancel pixel by pixel, and the correction adds back detail, which it can.
    base_blur_sigma: float = 0.0
    # Train each body convolution as RepConv3x3 (several linear branches), fused into one 3x3
    # convolution for export (StudentSR.fused): more to learn with, the same MACs at run time.
    reparam: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class RepConv3x3(nn.Module):
    """A C -> C 3x3 convolution trained as the sum of four linear branches: 3x3, 1x1, identity, and
    a 1x1 expansion to `expand` x C channels followed by a 3x3 back to C (RepVGG; the expand-squeeze
    branch of ECBSR, Zhang et al. 2021). The sum is one 3x3 convolution (`fused`), so the extra
    parameters shape the optimisation and cost nothing at run time.

    The expansion's output is padded with its own bias, not zeros, so that the fused convolution
    with zero padding equals the branches at the borders too."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.expand = nn.Conv2d(channels, expand * channels, 1)
        self.squeeze = nn.Conv2d(expand * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.expand.bias[None, :, None, None]
        t = F.pad(self.expand(x) - b, (1, 1, 1, 1)) + b
        return self.conv3(x) + self.conv1(x) + self.squeeze(t) + x

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, C, 3, 3) weight and (C,) bias of the single convolution the branches sum to."""
        c = self.conv3.out_channels
        w = self.conv3.weight.detach().clone()
        w[:, :, 1, 1] += self.conv1.weight.detach()[:, :, 0, 0] + torch.eye(c)
        w += torch.einsum("omyx,mi->oiyx", self.squeeze.weight.detach(), self.expand.weight.detach()[:, :, 0, 0])
        bias = (self.conv3.bias + self.conv1.bias + self.squeeze.bias
                + torch.einsum("omyx,m->o", self.squeeze.weight, self.expand.bias)).detach()
        return w, bias


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus the input (EDSR-style, no batch norm); each convolution a
    RepConv3x3 while training when `reparam`."""

    def __init__(self, channels: int, reparam: bool = False):
        super().__init__()
        conv = (lambda: RepConv3x3(channels)) if reparam else (lambda: nn.Conv2d(channels, channels, 3, padding=1))
        self.conv1 = conv()
        self.conv2 = conv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class StudentSR(nn.Module):
    """(N, 3, H, W) float [0, 1] -> (N, 3, sH, sW); H and W multiples of `unshuffle`."""

    def __init__(self, cfg: StudentConfig = StudentConfig()):
        super().__init__()
        self.cfg = cfg
        u, c, s, k = cfg.unshuffle, cfg.channels, cfg.scale, cfg.tail_kernel
        self.head = nn.Conv2d(3 * u * u, c, cfg.head_kernel, padding=cfg.head_kernel // 2)
        self.body = nn.Sequential(*[ResBlock(c, cfg.reparam) for _ in range(cfg.blocks)])
        self.tail = nn.Conv2d(c, 3 * (u * s) ** 2, k, padding=k // 2)
        # Start close to plain bilinear (training adds the detail), but not at zero: a zero tail
        # passes no gradient to the layers before it, which then wait ~100 steps to start learning.
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)
        k = torch.from_numpy(gaussian_kernel(cfg.base_blur_sigma)) if cfg.base_blur_sigma > 0 else torch.ones(1, 1)
        self.register_buffer("base_kernel", k, persistent=False)  # fixed: not in the state dict

    def features(self, unshuffled: torch.Tensor) -> torch.Tensor:
        """(N, 3u^2, H/u, W/u) -> the tail's (N, 3(us)^2, H/u, W/u) correction, channel-major
        (c, dy, dx) as pixel_shuffle expects."""
        return self.tail(self.body(F.relu(self.head(unshuffled))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, sH, sW) correction to the bilinear 2x."""
        u, s = self.cfg.unshuffle, self.cfg.scale
        return F.pixel_shuffle(self.features(F.pixel_unshuffle(x, u)), u * s)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, sH, sW): the bilinear 2x the correction is added to, of the input
        blurred by base_kernel first when base_blur_sigma > 0 (reflected borders, as the engine)."""
        if self.cfg.base_blur_sigma > 0:
            r = self.base_kernel.shape[0] // 2
            k = self.base_kernel.to(x.dtype).expand(x.shape[1], 1, 2 * r + 1, 2 * r + 1)
            x = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k, groups=x.shape[1])
        return F.interpolate(x, scale_factor=self.cfg.scale, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.residual(x)

    def fused(self) -> "StudentSR":
        """The same function with every RepConv3x3 fused into a plain 3x3 convolution (itself when
        there are none): what is exported and counted."""
        if not self.cfg.reparam:
            return self
        plain = StudentSR(replace(self.cfg, reparam=False))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("body.")}
        for i, block in enumerate(self.body):
            for name in ("conv1", "conv2"):
                state[f"body.{i}.{name}.weight"], state[f"body.{i}.{name}.bias"] = getattr(block, name).fused()
        plain.load_state_dict(state)
        return plain.train(self.training)

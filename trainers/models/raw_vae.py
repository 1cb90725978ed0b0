"""RAW autoencoder for the learned burst refinement: packed Bayer planes <-> a 16-channel latent at 1/8.

    RawEncoder   (B, 4, H, W) planes -> (B, 2 * LATENT, H/8, W/8) mean and log-variance
    RawDecoder   (B, LATENT, H/8, W/8) latent + (B, 4, H, W) merged planes -> (B, 4, H, W): the merged
                 planes plus a residual (the decoder sees the merge at full packed resolution, so
                 the latent only has to carry what the merge lacks)

Space-to-depth (pixel unshuffle) then a 3x3 convolution at each of three halvings: 8, 16 and 32
base channels (0.24 GMAC per 640x480 frame's planes); the decoder mirrors it at 8-24 channels
(0.30 GMAC), its last layer starting at zero so an untrained decoder returns the merge. Inputs
are normalised planes (0 = black, 1 = white), scaled by INPUT_GAIN so a typical scene spans
about a unit.
"""
from __future__ import annotations

import torch
from torch import nn

LATENT = 16
INPUT_GAIN = 4.0


def conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class RawEncoder(nn.Module):
    """(B, 4, H, W) -> (B, 2 * LATENT, H/8, W/8): the latent's mean, then its log-variance."""

    def __init__(self, latent: int = LATENT):
        super().__init__()
        self.body = nn.Sequential(
            nn.PixelUnshuffle(2), conv3(16, 16), nn.GELU(),
            nn.PixelUnshuffle(2), conv3(64, 32), nn.GELU(),
            nn.PixelUnshuffle(2), conv3(128, 64), nn.GELU(),
            conv3(64, 2 * latent),
        )

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.body(planes * INPUT_GAIN)


class RawDecoder(nn.Module):
    """(B, LATENT, H/8, W/8) latent and (B, 4, H, W) merged planes -> (B, 4, H, W) planes."""

    def __init__(self, latent: int = LATENT):
        super().__init__()
        self.from_latent = nn.Sequential(conv3(latent, 64), nn.GELU(), nn.PixelShuffle(2))  # 16 @ H/4
        self.mid = nn.Sequential(conv3(16, 32), nn.GELU(), nn.PixelShuffle(2))  # 8 @ H/2
        self.unshuffle = nn.PixelUnshuffle(2)
        self.at_half = nn.Sequential(conv3(8 + 16, 24), nn.GELU(), conv3(24, 64), nn.GELU(), nn.PixelShuffle(2))  # 16 @ H
        self.at_full = nn.Sequential(conv3(16 + 4, 16), nn.GELU(), conv3(16, 4))
        nn.init.zeros_(self.at_full[-1].weight)
        nn.init.zeros_(self.at_full[-1].bias)

    def forward(self, z: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        m = merged * INPUT_GAIN
        x = self.mid(self.from_latent(z))
        x = self.at_half(torch.cat([x, self.unshuffle(m)], dim=1))
        return merged + self.at_full(torch.cat([x, m], dim=1)) / INPUT_GAIN


class RawVAE(nn.Module):
    """Encoder + decoder; `scale` (a buffer) brings the latent to about unit spread for the diffusion model."""

    def __init__(self, latent: int = LATENT):
        super().__init__()
        self.encoder = RawEncoder(latent)
        self.decoder = RawDecoder(latent)
        self.register_buffer("scale", torch.ones(()))

    def encode(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(planes).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def forward(self, clean: torch.Tensor, merged: torch.Tensor, sample: bool = True):
        mean, logvar = self.encode(clean)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return self.decoder(z, merged), mean, logvar

"""A PatchGAN discriminator with spectral norm for region crops.

PatchGAN (pix2pix's 70x70 design, scaled): each output logit judges one receptive-field patch, which suits an
inpainting adversary: the realism that matters is local (texture, seams at the mask border), and the crops
are small. Spectral norm on every convolution instead of batch norm keeps it stable at batch size 1-2.
`channels` (first layer width, doubled per stride-2 layer up to 8x) and `layers` (stride-2 layers) are the
capacity knobs; at 64 px, layers=3 gives an 8x8 logit map with a ~46 px receptive field.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError(f"discriminator channels and layers must be >= 1, got {channels}, {layers}")
        blocks: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, channels, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        width = channels
        for i in range(1, layers):
            nxt = channels * min(2 ** i, 8)
            blocks += [spectral_norm(nn.Conv2d(width, nxt, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            width = nxt
        nxt = channels * min(2 ** layers, 8)
        blocks += [spectral_norm(nn.Conv2d(width, nxt, 3, 1, 1)), nn.LeakyReLU(0.2, True),
                   spectral_norm(nn.Conv2d(nxt, 1, 3, 1, 1))]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) in [-1, 1] -> (N, 1, H / 2**layers, W / 2**layers) logits."""
        return self.net(x)

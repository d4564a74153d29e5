"""U-Net discriminator with spectral normalisation (Real-ESRGAN design, as in mmagic and Lada's Stage 2).

Key-name contract: parameter and buffer names equal mmagic's `UNetDiscriminatorWithSpectralNorm`, so the
`discriminator.*` entries of a Lada/mmagic checkpoint load with `strict=True`:

- `conv_0.weight`, `conv_0.bias` (plain 3x3 conv, in_channels -> mid)
- `conv_1` .. `conv_8`: spectral-normed, bias-free, each with `weight_orig`, `weight_u`, `weight_v`
  (conv_1..3: 4x4 stride-2 downsampling mid -> 2mid -> 4mid -> 8mid;
   conv_4..6: 3x3 after a bilinear x2 upsample, 8mid -> 4mid -> 2mid -> mid, with skip additions;
   conv_7, conv_8: 3x3 mid -> mid)
- `conv_9.weight`, `conv_9.bias` (plain 3x3 conv, mid -> 1 logit per pixel)

The classic `torch.nn.utils.spectral_norm` hook is used on purpose: the parametrizations variant stores
`parametrizations.weight.original*` keys, which mmagic checkpoints do not have.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm


def _sn_conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, 1, bias=False))


class UNetDiscriminatorWithSpectralNorm(nn.Module):
    """Per-pixel real/fake logits: (n, c, h, w) -> (n, 1, h, w); h and w must be divisible by 8."""

    def __init__(self, in_channels: int = 3, mid_channels: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        m = mid_channels
        self.skip_connection = skip_connection
        self.conv_0 = nn.Conv2d(in_channels, m, kernel_size=3, stride=1, padding=1)
        self.conv_1 = _sn_conv(m, m * 2, 4, 2)
        self.conv_2 = _sn_conv(m * 2, m * 4, 4, 2)
        self.conv_3 = _sn_conv(m * 4, m * 8, 4, 2)
        self.conv_4 = _sn_conv(m * 8, m * 4, 3, 1)
        self.conv_5 = _sn_conv(m * 4, m * 2, 3, 1)
        self.conv_6 = _sn_conv(m * 2, m, 3, 1)
        self.conv_7 = _sn_conv(m, m, 3, 1)
        self.conv_8 = _sn_conv(m, m, 3, 1)
        self.conv_9 = nn.Conv2d(m, 1, kernel_size=3, stride=1, padding=1)
        # Parameter-free modules: they add no state-dict keys, so the contract above is unaffected.
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def _up(self, x: torch.Tensor, conv: nn.Module, skip: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(conv(self.upsample(x)))
        return x + skip if self.skip_connection else x

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-2] % 8 or img.shape[-1] % 8:
            # Three stride-2 convs then three x2 upsamples: other sizes break the skip additions obscurely.
            raise ValueError(f"discriminator input h, w must be divisible by 8, got {tuple(img.shape[-2:])}")
        f0 = self.lrelu(self.conv_0(img))
        f1 = self.lrelu(self.conv_1(f0))
        f2 = self.lrelu(self.conv_2(f1))
        f3 = self.lrelu(self.conv_3(f2))
        x = self._up(f3, self.conv_4, f2)
        x = self._up(x, self.conv_5, f1)
        x = self._up(x, self.conv_6, f0)
        x = self.lrelu(self.conv_7(x))
        x = self.lrelu(self.conv_8(x))
        return self.conv_9(x)

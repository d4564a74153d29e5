"""Adversarial loss with mmagic's `GANLoss` semantics ('vanilla', 'lsgan', 'hinge').

`loss_weight` scales only the generator's term (is_disc=False); the discriminator's term is always
weight 1, as in mmagic, so Stage 2's `gan_loss.loss_weight=0.02` does not slow the discriminator down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_TYPES = ("vanilla", "lsgan", "hinge")


class GANLoss(nn.Module):
    def __init__(
        self,
        gan_type: str = "vanilla",
        real_label_val: float = 1.0,
        fake_label_val: float = 0.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"gan_type {gan_type!r} is not supported; choose one of {', '.join(GAN_TYPES)}")
        self.gan_type = gan_type
        self.real_label_val = float(real_label_val)
        self.fake_label_val = float(fake_label_val)
        self.loss_weight = float(loss_weight)

    def _target(self, input: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        value = self.real_label_val if target_is_real else self.fake_label_val
        return torch.full_like(input, value)

    def forward(self, input: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        if self.gan_type == "vanilla":
            loss = F.binary_cross_entropy_with_logits(input, self._target(input, target_is_real))
        elif self.gan_type == "lsgan":
            loss = F.mse_loss(input, self._target(input, target_is_real))
        elif is_disc:  # hinge, discriminator: relu(1 - x) on real, relu(1 + x) on fake
            loss = F.relu(1 - input if target_is_real else 1 + input).mean()
        else:  # hinge, generator: target_is_real is ignored, as in mmagic
            loss = -input.mean()
        return loss if is_disc else loss * self.loss_weight

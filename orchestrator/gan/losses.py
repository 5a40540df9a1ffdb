"""GAN losses by name. Each maps the discriminator's raw scores to a D loss and a G loss.

The weight clipping of ``wgan`` and the gradient penalty of ``wgan-gp`` need the discriminator
itself, so they live in ``step.py``; here each loss only says whether it needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class GanLoss:
    name: str
    d_loss: Callable[[Tensor, Tensor, float], Tensor]  # (real scores, fake scores, smoothing)
    g_loss: Callable[[Tensor], Tensor]  # (fake scores)
    probabilities: bool = False  # scores are logits: report D(x) as sigmoid(score)
    clip_weights: bool = False
    gradient_penalty: bool = False


def _bce_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    # one-sided label smoothing (Salimans et al. 2016): only the real targets move off 1
    real_target = torch.full_like(real, 1.0 - smoothing)
    return F.binary_cross_entropy_with_logits(
        real, real_target
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def _bce_g(fake: Tensor) -> Tensor:
    # non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
    return F.softplus(-fake).mean()


def _wasserstein_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    return fake.mean() - real.mean()


def _wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _hinge_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _lsgan_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    return 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean()


def _lsgan_g(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


LOSSES: dict[str, GanLoss] = {
    "bce": GanLoss("bce", _bce_d, _bce_g, probabilities=True),
    "wgan": GanLoss("wgan", _wasserstein_d, _wasserstein_g, clip_weights=True),
    "wgan-gp": GanLoss("wgan-gp", _wasserstein_d, _wasserstein_g, gradient_penalty=True),
    "hinge": GanLoss("hinge", _hinge_d, _wasserstein_g),
    "lsgan": GanLoss("lsgan", _lsgan_d, _lsgan_g),
}


def gradient_penalty(
    discriminator: torch.nn.Module, real: Tensor, fake: Tensor, rng: torch.Generator
) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=rng)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

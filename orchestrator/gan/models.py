"""DCGAN generator and discriminator (Radford et al. 2016) for 32 and 64 px, built from a TrialConfig.

Both nets double (G) or halve (D) the spatial size per stride-2 layer. 64 px uses four width steps
(8x, 4x, 2x, 1x the base width), 32 px three (4x, 2x, 1x), exactly as the paper's reference code.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils import parametrizations

from orchestrator.config import RESOLUTIONS, TrialConfig
from orchestrator.errors import ConfigError


def _width_multipliers(resolution: int) -> list[int]:
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"resolution {resolution} is not supported: use 32 or 64")
    steps = {32: 3, 64: 4}[resolution]
    return [2 ** (steps - 1 - i) for i in range(steps)]  # 64 px: [8, 4, 2, 1]


class Generator(nn.Module):
    def __init__(self, config: TrialConfig, channels: int, resolution: int) -> None:
        super().__init__()
        self.nz = config.nz
        mults = _width_multipliers(resolution)
        widths = [config.ngf * m for m in mults]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [
                nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(w_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    """Outputs one raw score per image (a logit for bce, a critic value for the Wasserstein losses)."""

    def __init__(self, config: TrialConfig, channels: int, resolution: int) -> None:
        super().__init__()
        widths = [config.ndf * m for m in reversed(_width_multipliers(resolution))]
        layers: list[nn.Module] = [
            _conv(channels, widths[0], 4, 2, 1, config.d_norm, bias=config.d_norm != "batch"),
            nn.LeakyReLU(config.leaky_slope, inplace=True),
        ]
        for w_in, w_out in itertools.pairwise(widths):
            layers.append(_conv(w_in, w_out, 4, 2, 1, config.d_norm, bias=config.d_norm != "batch"))
            if config.d_norm == "batch":
                layers.append(nn.BatchNorm2d(w_out))
            layers.append(nn.LeakyReLU(config.leaky_slope, inplace=True))
            if config.d_dropout > 0:
                layers.append(nn.Dropout2d(config.d_dropout))
        layers.append(_conv(widths[-1], 1, 4, 1, 0, config.d_norm, bias=True))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _conv(c_in: int, c_out: int, k: int, s: int, p: int, norm: str, bias: bool) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, k, s, p, bias=bias)
    return parametrizations.spectral_norm(conv) if norm == "spectral" else conv


def init_weights(module: nn.Module) -> None:
    """The DCGAN paper's init: conv weights N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # under spectral norm the trainable tensor is the parametrization's original
            weight = getattr(m, "parametrizations", None)
            nn.init.normal_(weight["weight"].original if weight is not None else m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_models(
    config: TrialConfig, channels: int, resolution: int
) -> tuple[Generator, Discriminator]:
    return Generator(config, channels, resolution), Discriminator(config, channels, resolution)

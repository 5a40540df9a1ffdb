"""The GAN training step: plain PyTorch, no Ray, usable in a notebook.

``build_state`` makes the nets and optimisers from a TrialConfig; ``train_step`` does ``n_critic``
discriminator steps and one generator step. On CUDA it runs in bf16 autocast with channels_last
tensors and fused optimisers; on the CPU in fp32, seeded and deterministic.

``python -m orchestrator.train DATASET`` trains one trial without Ray (see ``orchestrator.trial``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from orchestrator.config import TrialConfig
from orchestrator.errors import TrainingDiverged
from orchestrator.losses import LOSSES, gradient_penalty
from orchestrator.models import Discriminator, Generator, build_models

# steps queued between reads of their statistics: a read waits for the device, so reading after
# every step keeps the CPU from queueing ahead of the GPU, and small GAN steps are launch-bound
READ_EVERY = 16


class ImageSource(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepStats:
    d_loss: float  # of the last discriminator step, gradient penalty included
    g_loss: float
    d_real: float  # D's mean output on real images: a probability for bce, a raw score otherwise
    d_fake: float  # the same on generated images, before the generator step
    d_grad_norm: float
    g_grad_norm: float


@dataclass
class GANState:
    config: TrialConfig
    generator: Generator
    discriminator: Discriminator
    ema: Generator | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator  # drives latents, data order and interpolates; lives on `device`
    device: torch.device
    channels: int
    resolution: int
    step: int = 0  # generator steps taken
    fast: bool = False  # bf16 autocast + channels_last (the default on CUDA)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def eval_generator(self) -> Generator:
        """The generator used for FID and image grids: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.generator


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_state(
    config: TrialConfig,
    channels: int,
    resolution: int,
    device: torch.device | str,
    seed: int,
    fast: bool | None = None,
) -> GANState:
    """``fast`` (bf16 autocast + channels_last) defaults to on for CUDA; the CPU runs fp32."""
    device = torch.device(device)
    fast = device.type == "cuda" if fast is None else fast
    # weight init draws from the global generator: seed it inside a fork so callers are unaffected
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = build_models(config, channels, resolution)
    generator, discriminator = generator.to(device), discriminator.to(device)
    if fast:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    ema = None
    if config.ema_decay > 0:
        ema = build_models(config, channels, resolution)[0].to(device)
        ema.load_state_dict(generator.state_dict())
        ema.requires_grad_(False)
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    return GANState(
        config=config,
        generator=generator,
        discriminator=discriminator,
        ema=ema,
        opt_g=make_optimizer(config, generator, config.lr_g, device),
        opt_d=make_optimizer(config, discriminator, config.lr_d, device),
        rng=rng,
        device=device,
        channels=channels,
        resolution=resolution,
        fast=fast,
    )


def make_optimizer(
    config: TrialConfig, net: nn.Module, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    params = list(net.parameters())
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(config.beta1, config.beta2), **fused)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, **fused)


def latents(state: GANState, n: int) -> torch.Tensor:
    return torch.randn(n, state.config.nz, device=state.device, generator=state.rng)


def _autocast(state: GANState) -> contextlib.AbstractContextManager[Any]:
    if state.fast:
        return torch.autocast(state.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(state: GANState, images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if state.fast else images


def train_step(state: GANState, data: ImageSource) -> StepStats:
    """``n_critic`` discriminator steps, then one generator step; raises TrainingDiverged on NaN/inf."""
    stats = StepStats(*queue_step(state, data).tolist())
    check_finite(stats, state.step)
    return stats


def train_steps(
    state: GANState, data: ImageSource, steps: int, read_every: int = READ_EVERY
) -> list[StepStats]:
    """``steps`` training steps, their statistics read from the device every ``read_every`` steps
    (one sync each time). Raises TrainingDiverged naming the first step whose loss was NaN/inf,
    seen at the next read: up to ``read_every - 1`` steps late."""
    stats: list[StepStats] = []
    queued: list[torch.Tensor] = []
    for done in range(1, steps + 1):
        queued.append(queue_step(state, data))
        if len(queued) == read_every or done == steps:
            first = state.step - len(queued) + 1
            for offset, row in enumerate(torch.stack(queued).cpu().tolist()):
                stats.append(StepStats(*row))
                check_finite(stats[-1], first + offset)
            queued.clear()
    return stats


def check_finite(stats: StepStats, step: int) -> None:
    for name in ("d_loss", "g_loss"):
        if not math.isfinite(getattr(stats, name)):
            raise TrainingDiverged(name, step)


def queue_step(state: GANState, data: ImageSource) -> torch.Tensor:
    """``train_step`` without waiting for the device: the step's ``StepStats`` values as one tensor
    on the device, unchecked. A loop that reads them every few steps lets the CPU queue the next
    steps' kernels while the GPU runs (``train_steps``)."""
    cfg, loss = state.config, LOSSES[state.config.loss]
    G, D = state.generator, state.discriminator
    G.train()
    D.train()
    D.requires_grad_(True)
    for _ in range(cfg.n_critic):
        real = _prepare(state, data.sample(cfg.batch_size, state.rng))
        with torch.no_grad(), _autocast(state):
            fake = G(latents(state, cfg.batch_size))
        with _autocast(state):
            real_scores, fake_scores = D(real).float(), D(fake).float()
            d_loss = loss.d_loss(real_scores, fake_scores, cfg.label_smoothing)
        if loss.gradient_penalty:
            # in fp32: the double backward of a bf16 penalty is too coarse to hold ||grad|| near 1
            d_loss = d_loss + cfg.gp_weight * gradient_penalty(D, real, fake.float(), state.rng)
        state.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        d_norm = _grad_norm(D)
        state.opt_d.step()
        if loss.clip_weights:
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-cfg.clip_value, cfg.clip_value)

    D.requires_grad_(False)  # the generator step needs no discriminator weight gradients
    with _autocast(state):
        g_loss = loss.g_loss(D(G(latents(state, cfg.batch_size))).float())
    state.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    g_norm = _grad_norm(G)
    state.opt_g.step()
    D.requires_grad_(True)
    _update_ema(state)
    state.step += 1

    to_prob = torch.sigmoid if loss.probabilities else (lambda t: t)
    return torch.stack(
        [d_loss.detach().float(), g_loss.detach().float(), to_prob(real_scores.detach()).mean(),
         to_prob(fake_scores.detach()).mean(), d_norm, g_norm]
    )


def _grad_norm(net: nn.Module) -> torch.Tensor:
    # multi-tensor norms: a couple of kernel launches for the whole net, not one per parameter
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float()


@torch.no_grad()
def _update_ema(state: GANState) -> None:
    if state.ema is None:
        return
    weight = 1.0 - state.config.ema_decay
    # multi-tensor ops, as the fused optimisers use: one launch per op for the whole net
    torch._foreach_lerp_(list(state.ema.parameters()), list(state.generator.parameters()), weight)
    buffers = list(state.ema.buffers())
    if buffers:  # foreach ops reject empty lists; a generator without batch norm has none
        torch._foreach_copy_(buffers, list(state.generator.buffers()))


@torch.no_grad()
def generate(state: GANState, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from latents, with the evaluation generator in eval mode (running BN stats,
    so a sample does not depend on what else is in its batch)."""
    net = state.eval_generator
    was_training = net.training
    net.eval()
    try:
        with _autocast(state):
            return net(z.to(state.device)).float()
    finally:
        net.train(was_training)


def fixed_latents(nz: int, n: int, seed: int) -> torch.Tensor:
    """The same latents for every evaluation and every trial of a search (CPU, seeded)."""
    return torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))


def state_dict(state: GANState) -> dict[str, Any]:
    """Everything needed to resume bit-for-bit: nets, EMA, optimisers, step and RNG states."""
    return {
        "config": state.config.to_dict(),
        "channels": state.channels,
        "resolution": state.resolution,
        "step": state.step,
        "generator": state.generator.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "rng": state.rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if state.cuda else None,
    }


def load_state_dict(state: GANState, saved: dict[str, Any]) -> None:
    state.generator.load_state_dict(saved["generator"])
    state.discriminator.load_state_dict(saved["discriminator"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.load_state_dict(saved["ema"])
    state.opt_g.load_state_dict(saved["opt_g"])
    state.opt_d.load_state_dict(saved["opt_d"])
    state.rng.set_state(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    if state.cuda and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state.step = saved["step"]


if __name__ == "__main__":
    import sys

    from orchestrator.train_cli import cli_main

    sys.exit(cli_main())

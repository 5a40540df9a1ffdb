"""The GAN training step: plain PyTorch, no Ray, usable in a notebook.

``build_state`` makes the nets and optimisers from a TrialConfig; ``train_step`` does ``n_critic``
discriminator steps and one generator step. Where and in which number format it computes is the
state's ``Placement`` (``orchestrator.gan.placement``): by default bf16 autocast with channels_last
tensors on CUDA (fp16 with a gradient scaler on GPUs without native bf16), on the CPU bf16 with
channels_last where it has bf16 instructions and fp32 elsewhere; fused optimisers wherever torch
has them. The step itself has no device branch: the CPU tests run it in
every precision and memory format a GPU uses.

``python -m orchestrator.train DATASET`` trains one trial without Ray (see ``orchestrator.trial``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from orchestrator.config import TrialConfig
from orchestrator.errors import TrainingDiverged
from orchestrator.gan.losses import LOSSES, gradient_penalty
from orchestrator.gan.models import Discriminator, Generator, build_models
from orchestrator.gan.placement import Placement, place

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
    rng: torch.Generator  # drives latents, data order and interpolates; draws on `device`
    placement: Placement
    channels: int
    resolution: int
    seed: int = 0
    step: int = 0  # generator steps taken
    scaler_g: torch.amp.GradScaler | None = None  # fp16 only: each net's loss scale
    scaler_d: torch.amp.GradScaler | None = None

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def eval_generator(self) -> Generator:
        """The generator used for FID and image grids: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.generator


def build_state(
    config: TrialConfig,
    channels: int,
    resolution: int,
    placement: Placement | torch.device | str,
    seed: int,
) -> GANState:
    """A device alone is placed with its defaults (``placement.place``): bf16 + channels_last on
    CUDA, bf16 + channels_last or fp32 on the CPU (whether it has bf16 instructions)."""
    if not isinstance(placement, Placement):
        placement = place(placement)
    # weight init draws from the global generator: seed it inside a fork so callers are unaffected
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = build_models(config, channels, resolution)
    generator, discriminator = placement.module(generator), placement.module(discriminator)
    ema = None
    if config.ema_decay > 0:
        # in the generator's memory format too: the EMA update is then a plain elementwise lerp
        ema = placement.module(build_models(config, channels, resolution)[0])
        ema.load_state_dict(generator.state_dict())
        ema.requires_grad_(False)
    return GANState(
        config=config,
        generator=generator,
        discriminator=discriminator,
        ema=ema,
        opt_g=make_optimizer(config, generator, config.lr_g, placement),
        opt_d=make_optimizer(config, discriminator, config.lr_d, placement),
        rng=placement.generator(seed),
        placement=placement,
        channels=channels,
        resolution=resolution,
        seed=seed,
        scaler_g=placement.grad_scaler(),
        scaler_d=placement.grad_scaler(),
    )


def make_optimizer(
    config: TrialConfig, net: nn.Module, lr: float, placement: Placement
) -> torch.optim.Optimizer:
    params = list(net.parameters())
    # fused kernels where torch has them (CUDA and the CPU alike), else multi-tensor ones
    kernels = {"fused": True} if placement.fused else {"foreach": True}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(config.beta1, config.beta2), **kernels)
    if config.optimizer == "rmsprop":  # torch has no fused RMSprop
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, **kernels)


def latents(state: GANState, n: int) -> torch.Tensor:
    return torch.randn(n, state.config.nz, device=state.device, generator=state.rng)


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
    autocast = state.placement.autocast
    for _ in range(cfg.n_critic):
        real = state.placement.images(data.sample(cfg.batch_size, state.rng))
        with torch.no_grad(), autocast():
            fake = G(latents(state, cfg.batch_size))
        with autocast():
            real_scores, fake_scores = D(real).float(), D(fake).float()
            d_loss = loss.d_loss(real_scores, fake_scores, cfg.label_smoothing)
        if loss.gradient_penalty:
            # in fp32: the double backward of a bf16 penalty is too coarse to hold ||grad|| near 1
            d_loss = d_loss + cfg.gp_weight * gradient_penalty(D, real, fake.float(), state.rng)
        d_norm = _optimise(d_loss, D, state.opt_d, state.scaler_d)
        if loss.clip_weights:
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-cfg.clip_value, cfg.clip_value)

    D.requires_grad_(False)  # the generator step needs no discriminator weight gradients
    with autocast():
        g_loss = loss.g_loss(D(G(latents(state, cfg.batch_size))).float())
    g_norm = _optimise(g_loss, G, state.opt_g, state.scaler_g)
    D.requires_grad_(True)
    _update_ema(state)
    state.step += 1

    to_prob = torch.sigmoid if loss.probabilities else (lambda t: t)
    return torch.stack(
        [d_loss.detach().float(), g_loss.detach().float(), to_prob(real_scores.detach()).mean(),
         to_prob(fake_scores.detach()).mean(), d_norm, g_norm]
    )


def _optimise(
    loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> torch.Tensor:
    """Backward and optimiser step; returns the gradient norm. With a scaler (fp16) the loss is
    scaled for the backward and the gradients unscaled before their norm; a step whose gradients
    overflowed is skipped (its norm is not finite) and the scale shrinks."""
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        norm = _grad_norm(net)
        opt.step()
        return norm
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    norm = _grad_norm(net)
    scaler.step(opt)
    scaler.update()
    return norm


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
    so a sample does not depend on what else is in its batch) and in fp32 whatever the trial trains
    in: its weights are fp32 under autocast, and what is scored is the generator, not a bf16 forward."""
    net = state.eval_generator
    was_training = net.training
    net.eval()
    try:
        with torch.autocast(state.device.type, enabled=False):  # a caller's autocast included
            return net(z.to(state.device)).float()
    finally:
        net.train(was_training)


def fixed_latents(nz: int, n: int, seed: int) -> torch.Tensor:
    """The same latents for every evaluation and every trial of a search (CPU, seeded)."""
    return torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists and tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


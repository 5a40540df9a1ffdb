"""Models, losses and the training step on a toy problem, CPU."""

from __future__ import annotations

import math

import pytest
import torch
from fakes import SMALL, Blobs

from orchestrator.config import LOSSES, TrialConfig
from orchestrator.errors import ConfigError, TrainingDiverged
from orchestrator.gan.checkpoints import restore_training_state, training_state
from orchestrator.gan.losses import LOSSES as LOSS_FNS
from orchestrator.gan.losses import gradient_penalty
from orchestrator.gan.models import Discriminator, Generator
from orchestrator.gan.step import build_state, generate, train_step, train_steps


def _state(seed: int = 0, **overrides: object):
    return build_state(TrialConfig.from_dict({**SMALL, **overrides}), 3, 32, "cpu", seed)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", ["batch", "spectral", "none"])
def test_models_shapes_and_range(resolution: int, channels: int, norm: str) -> None:
    cfg = TrialConfig.from_dict({**SMALL, "d_norm": norm, "d_dropout": 0.1})
    g, d = Generator(cfg, channels, resolution), Discriminator(cfg, channels, resolution)
    images = g(torch.randn(5, cfg.nz))
    assert images.shape == (5, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1  # tanh output
    assert d(images).shape == (5,)


def test_dcgan_init() -> None:
    g = Generator(TrialConfig(), 3, 64)
    convs = [m.weight for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    stds = [float(w.detach().std()) for w in convs]
    assert all(abs(s - 0.02) < 0.002 for s in stds), stds
    assert sum(p.numel() for p in g.parameters()) == 3_576_704  # the DCGAN-64 generator's size


@pytest.mark.parametrize("loss", LOSSES)
def test_discriminator_loss_falls_against_fixed_generator(loss: str) -> None:
    """Training only D separates real from fake: its loss must fall, gradients stay finite."""
    state = _state(loss=loss, lr_d=1e-3)
    spec = LOSS_FNS[loss]
    real_src, rng = Blobs(), torch.Generator().manual_seed(1)
    losses = []
    for _ in range(25):
        real = real_src.sample(16, rng)
        with torch.no_grad():
            fake = state.generator(torch.randn(16, 16, generator=rng))
        d_loss = spec.d_loss(state.discriminator(real), state.discriminator(fake), 0.0)
        if spec.gradient_penalty:
            d_loss = d_loss + 10 * gradient_penalty(state.discriminator, real, fake, rng)
        state.opt_d.zero_grad()
        d_loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in state.discriminator.parameters())
        state.opt_d.step()
        losses.append(d_loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses


@pytest.mark.parametrize("loss", LOSSES)
def test_generator_loss_falls_against_fixed_discriminator(loss: str) -> None:
    state = _state(loss=loss, lr_g=2e-3)
    spec = LOSS_FNS[loss]
    state.discriminator.requires_grad_(False)
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(20):
        g_loss = spec.g_loss(state.discriminator(state.generator(z)))
        state.opt_g.zero_grad()
        g_loss.backward()
        state.opt_g.step()
        losses.append(g_loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_train_step_reports_finite_stats(loss: str, optimizer: str) -> None:
    state = _state(loss=loss, optimizer=optimizer, n_critic=2, ema_decay=0.9)
    stats = [train_step(state, Blobs()) for _ in range(3)]
    assert state.step == 3
    for s in stats:
        assert all(math.isfinite(v) for v in vars(s).values())
        assert s.d_grad_norm > 0 and s.g_grad_norm > 0
    if loss == "bce":
        assert all(0 < s.d_real < 1 and 0 < s.d_fake < 1 for s in stats)  # probabilities


def test_wgan_clips_discriminator_weights() -> None:
    state = _state(loss="wgan", clip_value=0.01, optimizer="rmsprop", lr_d=0.05)
    train_step(state, Blobs())
    assert max(p.abs().max().item() for p in state.discriminator.parameters()) <= 0.01 + 1e-7


def test_gradient_penalty_of_linear_critic() -> None:
    """D(x) = <w, x> has gradient w everywhere, so the penalty is exactly (||w|| - 1)^2."""
    w = torch.full((1, 3, 4, 4), 0.5)  # ||w|| = 0.5 * sqrt(48)

    class Linear(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * w).flatten(1).sum(1)

    rng = torch.Generator().manual_seed(0)
    gp = gradient_penalty(Linear(), torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4), rng)
    assert gp.item() == pytest.approx((0.5 * math.sqrt(48) - 1) ** 2, rel=1e-5)


def test_label_smoothing_is_one_sided() -> None:
    bce = LOSS_FNS["bce"]
    logits = torch.zeros(4)
    plain, smooth = bce.d_loss(logits, logits, 0.0), bce.d_loss(logits, logits, 0.1)
    assert plain.item() == pytest.approx(2 * math.log(2))  # both terms log 2 at D = 0.5
    assert smooth.item() == pytest.approx(2 * math.log(2))  # BCE(0.5, 0.9) is log 2 too
    high = torch.full((4,), 5.0)
    # with smoothing the loss of a very confident D on real images rises: the target is 0.9, not 1
    assert bce.d_loss(high, -high, 0.1) > bce.d_loss(high, -high, 0.0)


def test_ema_tracks_generator() -> None:
    state = _state(ema_decay=0.5)
    before = [p.clone() for p in state.ema.parameters()]
    train_step(state, Blobs())
    for e, b, g in zip(state.ema.parameters(), before, state.generator.parameters(), strict=True):
        assert torch.allclose(e, 0.5 * b + 0.5 * g, atol=1e-6)
    assert state.eval_generator is state.ema


def test_deterministic_on_cpu() -> None:
    a, b = _state(seed=3), _state(seed=3)
    sa = [train_step(a, Blobs()) for _ in range(3)]
    sb = [train_step(b, Blobs()) for _ in range(3)]
    assert sa == sb
    pairs = zip(a.generator.parameters(), b.generator.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    c = _state(seed=4)
    assert train_step(c, Blobs()) != sa[0]


def test_checkpoint_round_trip_resumes_exactly() -> None:
    a = _state(seed=5, ema_decay=0.9)
    for _ in range(2):
        train_step(a, Blobs())
    saved = training_state(a)
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in saved.items()}
    import copy

    saved = copy.deepcopy(saved)
    continued = [train_step(a, Blobs()) for _ in range(2)]
    b = _state(seed=99, ema_decay=0.9)
    restore_training_state(b, saved)
    resumed = [train_step(b, Blobs()) for _ in range(2)]
    assert continued == resumed and b.step == 4
    z = torch.randn(4, 16)
    assert torch.equal(generate(a, z), generate(b, z))


def test_nan_raises_at_once() -> None:
    state = _state()
    with pytest.raises(TrainingDiverged, match="not finite at step 1"):
        train_step(state, Blobs(value=math.nan))


class TurnsNaN(Blobs):
    """Blobs until the ``after``-th batch, NaN from then on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        self.calls += 1
        batch = super().sample(batch_size, generator)
        return batch.fill_(math.nan) if self.calls >= self.after else batch


def test_steps_read_in_batches_are_the_steps_one_by_one() -> None:
    one, batched = _state(seed=3, ema_decay=0.9), _state(seed=3, ema_decay=0.9)
    expected = [train_step(one, Blobs()) for _ in range(10)]
    assert train_steps(batched, Blobs(), 10, read_every=4) == expected and batched.step == 10
    emas = (training_state(one)["ema"].values(), training_state(batched)["ema"].values())
    for a, b in zip(*emas, strict=True):
        assert torch.equal(a, b)


def test_a_nan_between_reads_names_its_own_step() -> None:
    state = _state()
    with pytest.raises(TrainingDiverged, match="not finite at step 6"):
        train_steps(state, TurnsNaN(after=6), 20, read_every=4)
    assert state.step == 8  # seen at the read after step 8, not later


def test_ema_is_the_decayed_average_of_the_generator() -> None:
    state = _state(ema_decay=0.9)
    before = [p.detach().clone() for p in state.ema.parameters()]
    train_step(state, Blobs())
    for e, old, g in zip(state.ema.parameters(), before, state.generator.parameters(), strict=True):
        assert torch.allclose(e, old + 0.1 * (g.detach() - old), atol=1e-7)
    for e, g in zip(state.ema.buffers(), state.generator.buffers(), strict=True):
        assert torch.equal(e, g)  # BatchNorm's running statistics are copied, not averaged


def test_generate_is_independent_of_batch() -> None:
    state = _state()
    train_step(state, Blobs())
    z = torch.randn(8, 16)
    assert torch.allclose(generate(state, z)[:2], generate(state, z[:2]), atol=1e-6)


def test_config_rejects_unknown_and_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lr_gen' \(did you mean 'lr_g'\?\)"):
        TrialConfig.from_dict({"lr_gen": 1e-4})
    with pytest.raises(ConfigError, match=r"beta1=1.5 must be in \[0, 1\)"):
        TrialConfig.from_dict({"beta1": 1.5})
    with pytest.raises(ConfigError, match=r"loss='hinj' is not one of .*did you mean 'hinge'"):
        TrialConfig.from_dict({"loss": "hinj"})
    with pytest.raises(ConfigError, match=r"ngf=64\.5 must be an integer"):
        TrialConfig.from_dict({"ngf": 64.5})
    cfg = TrialConfig.from_dict({"lr_g": "1e-4", "ngf": 32.0})
    assert cfg.lr_g == 1e-4 and cfg.ngf == 32 and isinstance(cfg.ngf, int)

"""The checkpoint formats, in one place: what a trial's checkpoint folder holds and the files in it.

A Tune checkpoint folder (``checkpoint_NNNNNN``) holds ``state.pt`` (everything to resume: the
training state of ``training_state`` plus the trial's best FID and history), ``generator.pt`` (the
evaluation generator alone, for sampling), ``grid.png`` (samples from the fixed grid latents),
``report.json`` (the metrics reported there) and the curve pictures. The one-trial command writes
``checkpoint.pt``, a ``state.pt`` by another name. Every tensor in them is on the CPU.

``ImageModel`` is a generator as a user wants it: latents of shape (N, nz), float32, to float32
images of shape (N, C, H, W) with values in [0, 1] (the tanh output, shifted), in eval mode (batch
norm uses its running statistics, so an image does not depend on the rest of its batch).
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.atomic import atomic_write
from orchestrator.config import TrialConfig
from orchestrator.errors import ConfigError, first_line
from orchestrator.gan.models import Generator
from orchestrator.gan.step import GANState, to_cpu

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # everything needed to resume
GENERATOR_FILE = "generator.pt"  # the evaluation generator alone, for sampling
GRID_FILE = "grid.png"  # samples from the fixed grid latents at this checkpoint
REPORT_FILE = "report.json"  # the metrics reported at this checkpoint
CURVE_FILES = ("loss_curves.png", "metric_curves.png")  # the trial's history so far, as pictures
TRIAL_FILE = "checkpoint.pt"  # the one-trial command's state file
_NEEDED = ("config", "channels", "resolution", "generator")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``state_dict`` file, read onto the CPU whatever device wrote it: RNG states must stay CPU
    byte tensors, and ``restore_training_state`` places every other tensor where its module lives."""
    return torch.load(path, map_location="cpu", weights_only=False)


def training_state(state: GANState) -> dict[str, Any]:
    """Everything needed to resume bit-for-bit: nets, EMA, optimisers, loss scales, step and RNG
    states; every tensor on the CPU, so the file loads on any machine."""
    return to_cpu({
        "config": state.config.to_dict(),
        "channels": state.channels,
        "resolution": state.resolution,
        "step": state.step,
        "generator": state.generator.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "scaler_g": state.scaler_g.state_dict() if state.scaler_g is not None else None,
        "scaler_d": state.scaler_d.state_dict() if state.scaler_d is not None else None,
        "rng": state.rng.get_state(),
        "rng_device": state.rng.device.type,
        "torch_rng": torch.get_rng_state(),
        # dropout in D draws from the device's global generator: the trial's device alone
        "cuda_rng": torch.cuda.get_rng_state(state.device) if state.cuda else None,
    })


def restore_training_state(state: GANState, saved: dict[str, Any]) -> None:
    """Restore ``saved`` (CPU tensors, from ``load_checkpoint``) into ``state``: weights are copied
    into the nets on their device and format, optimiser state follows its parameters."""
    state.generator.load_state_dict(saved["generator"])
    state.discriminator.load_state_dict(saved["discriminator"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.load_state_dict(saved["ema"])
    state.opt_g.load_state_dict(saved["opt_g"])
    state.opt_d.load_state_dict(saved["opt_d"])
    for scaler, key in ((state.scaler_g, "scaler_g"), (state.scaler_d, "scaler_d")):
        if scaler is not None and saved.get(key):
            scaler.load_state_dict(saved[key])
    state.step = saved["step"]
    _restore_rng(state, saved)


def _restore_rng(state: GANState, saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if state.cuda and saved.get("cuda_rng") is not None:
        cuda_rng = saved["cuda_rng"]  # a list from checkpoints that saved every GPU's state
        torch.cuda.set_rng_state(cuda_rng[0] if isinstance(cuda_rng, list) else cuda_rng, state.device)
    saved_on = saved.get("rng_device", state.rng.device.type)
    if saved_on == state.rng.device.type:
        state.rng.set_state(saved["rng"])
        return
    # a CPU generator's state is not a CUDA one's: a trial moved between device kinds (a GPU
    # search resumed with --device cpu) continues with a fresh stream rather than not at all
    state.rng.manual_seed(state.seed * 1_000_003 + state.step)
    log.warning("checkpoint's sampling generator was on %s, the trial now runs on %s: continuing from "
                "step %d with a fresh stream (valid, but not bit-for-bit the same run)",
                saved_on, state.rng.device.type, state.step)


def save_trial(state: GANState, path: Path, best_fid: float, history: list[dict[str, float]]) -> Path:
    """A trial's ``state.pt`` (or the one-trial command's ``checkpoint.pt``): the training state, the
    best FID so far and the evaluation history. Atomic: a crash mid-write leaves the previous one."""
    saved = {**training_state(state), "best_fid": best_fid, "history": history}
    return atomic_write(Path(path), lambda f: torch.save(saved, f))


def restore_trial(state: GANState, path: Path) -> tuple[float | None, list[dict[str, float]]]:
    """Restore ``save_trial``'s file into ``state``; returns its best FID (None when it has none)
    and its history."""
    saved = load_checkpoint(path)
    restore_training_state(state, saved)
    return saved.get("best_fid"), list(saved.get("history", []))


def save_generator(state: GANState, path: Path) -> None:
    """The evaluation generator (the EMA copy when there is one) with what rebuilds it."""
    torch.save(
        {
            "config": state.config.to_dict(),
            "channels": state.channels,
            "resolution": state.resolution,
            "step": state.step,
            "generator": to_cpu(state.eval_generator.state_dict()),  # loads on a machine without a GPU
        },
        path,
    )


class ImageModel(nn.Module):
    """(N, nz) latents -> (N, C, H, W) images in [0, 1]."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.generator(z) + 1) / 2  # the generator reshapes z to (N, nz, 1, 1) itself


def load_generator(path: Path) -> ImageModel:
    """The generator in a Tune checkpoint folder (its ``generator.pt``) or in a ``.pt`` file: the
    trainable's ``generator.pt``, its ``state.pt`` or the one-trial CLI's ``checkpoint.pt`` (whose
    EMA generator, when it has one, is the one evaluated)."""
    file = path / GENERATOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no {GENERATOR_FILE} in this folder; pass a Tune checkpoint folder "
                          "(checkpoint_NNNNNN) or a .pt file")
    try:
        with warnings.catch_warnings():  # on a pickle protocol torch did not write: refused below anyway
            warnings.simplefilter("ignore")
            saved = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        raise ConfigError(f"{file}: cannot be read as a PyTorch checkpoint of tensors") from None
    if not isinstance(saved, dict) or any(key not in saved for key in _NEEDED):
        raise ConfigError(f"{file}: not a generator checkpoint (it needs {', '.join(_NEEDED)})")
    if not isinstance(saved["config"], dict):
        raise ConfigError(f"{file}: not a generator checkpoint (its config is not a mapping)")
    config = TrialConfig.from_dict(saved["config"], source=str(file))
    try:  # what this program writes is ints; anything else is another program's file, or damage
        resolution, channels = int(saved["resolution"]), int(saved["channels"])
        if resolution < 1 or channels not in (1, 3):
            raise ValueError(f"resolution {resolution}, {channels} channels")
        generator = Generator(config, channels, resolution)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{file}: not a generator this program can build ({first_line(err)})") from None
    weights = saved.get("ema") or saved["generator"]
    if not isinstance(weights, dict):
        raise ConfigError(f"{file}: not a generator checkpoint (its weights are not a state dict)")
    try:
        generator.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(
            f"{file}: the weights do not fit the generator its config describes (nz {config.nz}, "
            f"ngf {config.ngf}, {resolution} px): {_detail(err)}"
        ) from None
    return ImageModel(generator).eval()


def _detail(err: RuntimeError) -> str:
    """torch's load_state_dict error is a header and one line per mismatch: the first mismatch."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else first_line(err)

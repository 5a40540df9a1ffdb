"""The checkpoint formats, in one place: what a trial's checkpoint folder holds and the files in it.

A Tune checkpoint folder (``checkpoint_NNNNNN``) holds ``state.pt`` (everything to resume: the
training state of ``step.state_dict`` plus the trial's best FID and history), ``generator.pt`` (the
evaluation generator alone, for sampling), ``grid.png`` (samples from the fixed grid latents),
``report.json`` (the metrics reported there) and the curve pictures. The one-trial command writes
``checkpoint.pt``, a ``state.pt`` by another name. Every tensor in them is on the CPU.

``ImageModel`` is a generator as a user wants it: latents of shape (N, nz), float32, to float32
images of shape (N, C, H, W) with values in [0, 1] (the tanh output, shifted), in eval mode (batch
norm uses its running statistics, so an image does not depend on the rest of its batch).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.config import TrialConfig
from orchestrator.errors import ConfigError, first_line
from orchestrator.gan.models import Generator
from orchestrator.gan.step import GANState, to_cpu

STATE_FILE = "state.pt"  # everything needed to resume
GENERATOR_FILE = "generator.pt"  # the evaluation generator alone, for sampling
GRID_FILE = "grid.png"  # samples from the fixed grid latents at this checkpoint
REPORT_FILE = "report.json"  # the metrics reported at this checkpoint
CURVE_FILES = ("loss_curves.png", "metric_curves.png")  # the trial's history so far, as pictures
TRIAL_FILE = "checkpoint.pt"  # the one-trial command's state file
_NEEDED = ("config", "channels", "resolution", "generator")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``state_dict`` file, read onto the CPU whatever device wrote it: RNG states must stay CPU
    byte tensors, and ``load_state_dict`` places every other tensor where its module lives."""
    return torch.load(path, map_location="cpu", weights_only=False)


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

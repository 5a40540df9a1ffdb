"""Image grids: generator output in [-1, 1] to a PNG a person can look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from orchestrator.atomic import atomic_write


def grid_image(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """A square-ish grid of ``images`` ([N, C, H, W] in [-1, 1]) with a 2-px border."""
    nrow = nrow or max(1, math.isqrt(images.shape[0]))
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=2, pad_value=-1)
    return to_image(grid)


def to_image(image: torch.Tensor) -> Image.Image:
    """One [C, H, W] image in [-1, 1] as an 8-bit RGB (or grey) picture."""
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels_hwc = pixels.permute(1, 2, 0).numpy()
    if pixels_hwc.shape[2] == 1:
        pixels_hwc = pixels_hwc[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels_hwc))


def save_png(image: Image.Image, path: Path) -> Path:
    """Write atomically, so a viewer or an artifact upload never sees half a file."""
    return atomic_write(Path(path), lambda f: image.save(f, format="PNG"))

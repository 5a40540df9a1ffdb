"""Small stand-ins the tests share: a toy image source, a toy feature extractor, tiny nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orchestrator.data.dataset import CachedDataset
from orchestrator.metrics.frechet import FeatureStats

SMALL = {"nz": 16, "ngf": 8, "ndf": 8, "batch_size": 16}  # a tiny trial: steps in milliseconds


class Blobs:
    """A toy image source: bright square on dark ground at a random place, 3 x 32 x 32 in [-1, 1]."""

    def __init__(self, channels: int = 3, resolution: int = 32, value: float | None = None) -> None:
        self.channels, self.resolution, self.value = channels, resolution, value

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        x = -torch.ones(batch_size, self.channels, self.resolution, self.resolution)
        if self.value is not None:
            return x.fill_(self.value)
        corners = torch.randint(0, self.resolution - 8, (batch_size, 2), generator=generator)
        for img, (r, c) in zip(x, corners.tolist(), strict=True):
            img[:, r : r + 8, c : c + 8] = 1.0
        return x


class MomentFeatures:
    """A stand-in feature extractor: per-channel means and spreads (FID's maths, not Inception)."""

    name, dims, has_classifier = "moments", 6, False

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = images.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1), None


def blob_images(n: int) -> np.ndarray:
    """``n`` Blobs as a uint8 ``[n, 3, 32, 32]`` array, as a decoded dataset holds them."""
    batch = Blobs().sample(n, torch.Generator().manual_seed(0))
    return ((batch + 1) * 127.5).round().to(torch.uint8).numpy()


def blob_dataset(n: int) -> CachedDataset:
    """``n`` Blobs as a decoded dataset of one class (never written to disk)."""
    images = blob_images(n)
    return CachedDataset(images, np.zeros(n, np.int64), ("blob",), "blobs", Path("blobs.npy"))


def moment_reference(data: CachedDataset) -> FeatureStats:
    """The real side of a FID under ``MomentFeatures``: statistics of every image of ``data``."""
    stats = FeatureStats(MomentFeatures.dims)
    stats.update(MomentFeatures()(torch.from_numpy(data.images).float() / 127.5 - 1)[0])
    return stats

"""One trial's loop: train for an interval, evaluate, checkpoint. Shared by the one-trial CLI
(``python -m orchestrator.train``) and the Ray Tune trainable, so the two can never drift apart.

Each evaluation reports FID on ``fid_n`` images from latents fixed by ``eval_seed`` (the same for
every evaluation and every trial), the best FID so far, IS when the classifier head is loaded, the
mean losses and D outputs since the last report, gradient norms, img/s, step and epoch, and the
seconds spent training, evaluating, and in the evaluation's generator and Inception pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data.dataset import CLASS_READERS, CachedDataset, DeviceImages
from orchestrator.gan.checkpoints import restore_trial, save_trial
from orchestrator.gan.placement import Placement, place
from orchestrator.gan.step import (
    GANState,
    build_state,
    fixed_latents,
    generate,
    train_steps,
)
from orchestrator.images import grid_image
from orchestrator.metrics.diversity import RealReference
from orchestrator.metrics.frechet import MAX_KEEP, FeatureStats, generated_features
from orchestrator.metrics.health import Verdict, check
from orchestrator.metrics.inception import FeatureExtractor
from orchestrator.metrics.registry import Evaluation, evaluate, objective

GRID_SIZE = 64  # images in each sample grid
EVAL_BATCH = 100


@dataclass
class _Meter:
    """Running sums of step statistics since the last report. A non-finite value is left out of its
    mean: in fp16 a step whose gradients overflowed is skipped by the loss scaler and has an inf
    gradient norm (a non-finite loss stops the trial before it gets here)."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.counts.setdefault(key, 0)
            self.sums.setdefault(key, 0.0)
            if math.isfinite(value):
                self.sums[key] += value
                self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: total / self.counts[key] if self.counts[key] else math.nan
                for key, total in self.sums.items()}


class TrialRunner:
    """Owns a GANState plus what evaluation needs: the data on the device, reference FID statistics,
    the feature extractor and the fixed latents. ``device`` is placed with ``settings.precision``;
    ``images``, the data already on that device, is reused when given (a Ray actor running its next
    trial keeps them)."""

    def __init__(
        self,
        config: TrialConfig,
        settings: RunSettings,
        data: CachedDataset,
        reference: FeatureStats,
        extractor: FeatureExtractor,
        device: torch.device | Placement,
        real_ref: RealReference | None = None,
        images: DeviceImages | None = None,
    ) -> None:
        self.settings = settings
        self.real_ref = real_ref  # real features for KID, precision/recall, NDB; None skips them
        self.data = data
        self.reference = reference
        self.extractor = extractor
        placement = device if isinstance(device, Placement) else place(device, settings.precision)
        self.images = images if images is not None else device_images(data, placement)
        self.state: GANState = build_state(
            config, data.channels, data.resolution, placement, settings.seed
        )
        self.eval_latents = fixed_latents(config.nz, settings.fid_n, settings.eval_seed)
        self.grid_latents = fixed_latents(config.nz, GRID_SIZE, settings.eval_seed)
        self.objective = objective(settings.fid_n)
        self.best_fid = self.objective.worst
        self.meter = _Meter()
        self.history: list[dict[str, float]] = []  # every evaluation's report, for the detectors
        self.verdict: Verdict | None = None  # set when an evaluation shows the trial has failed

    @property
    def step(self) -> int:
        return self.state.step

    def train(self, steps: int) -> None:
        """``steps`` generator steps; raises TrainingDiverged at the first NaN/inf loss."""
        cfg = self.state.config
        start = time.perf_counter()
        for stats in train_steps(self.state, self.images, steps):
            self.meter.add(vars(stats))
        self.meter.seconds += time.perf_counter() - start
        self.meter.images += steps * cfg.batch_size * cfg.n_critic

    def evaluate(self) -> dict[str, float]:
        """Score the generator with every registered metric and return the report, resetting the
        running means."""
        cfg = self.state.config
        start = time.perf_counter()
        labels: list[np.ndarray] = []
        # one Inception pass gives FID, IS and the features the diversity metrics need
        fake, features, logits = generated_features(
            self._latent_sampler(labels), self.settings.fid_n, self.extractor, batch_size=EVAL_BATCH,
            max_keep=MAX_KEEP if self.real_ref is not None else 0,
        )
        feature_seconds = time.perf_counter() - start  # the generator and the Inception pass
        reader = CLASS_READERS.get(self.settings.dataset)
        scores = evaluate(Evaluation(
            self.settings.fid_n, self.reference, fake, features, logits, self.real_ref,
            np.concatenate(labels) if labels else None, reader.classes if reader else 0,
        ))
        value = scores[self.objective.key]
        self.best_fid = value if self.objective.better(value, self.best_fid) else self.best_fid
        report: dict[str, float] = {
            **scores,
            self.objective.best_key: self.best_fid,
            **self.meter.means(),
            "img_per_s": self.meter.images / self.meter.seconds if self.meter.seconds else 0.0,
            "train_seconds": self.meter.seconds,
            "step": float(self.state.step),
            "epoch": self.state.step * cfg.batch_size * cfg.n_critic / len(self.data),
        }
        report["eval_seconds"] = time.perf_counter() - start
        report["feature_seconds"] = feature_seconds
        self.meter = _Meter()
        self.history.append(report)
        self.verdict = check(self.history, cfg.loss, self.settings.health)
        return report

    def _latent_sampler(self, labels: list[np.ndarray]) -> Callable[[int], torch.Tensor]:
        """Images from the fixed evaluation latents, taken in order, whatever the batch sizes asked.
        Where the dataset's classes can be read off the pixels, each batch's are read into
        ``labels`` on the way."""
        offset = 0
        reader = CLASS_READERS.get(self.settings.dataset)

        def sample(n: int) -> torch.Tensor:
            nonlocal offset
            z = self.eval_latents[offset : offset + n]
            offset += n
            images = generate(self.state, z)
            if reader is not None:
                labels.append(reader.read(images))
            return images

        return sample

    def grid(self) -> Image.Image:
        """The sample grid from the fixed grid latents: comparable across evaluations and trials."""
        return grid_image(generate(self.state, self.grid_latents))

    def save(self, path: Path) -> Path:
        return save_trial(self.state, path, self.best_fid, self.history)

    def restore(self, path: Path) -> None:
        best, self.history = restore_trial(self.state, path)
        self.best_fid = self.objective.worst if best is None else best


def device_images(data: CachedDataset, placement: Placement) -> DeviceImages:
    """The training images on the trial's device, batches drawn in its memory format."""
    return DeviceImages(data.images, placement.device, channels_last=placement.channels_last)


def format_report(report: dict[str, float], settings: RunSettings) -> str:
    """One line per evaluation for people: losses, D outputs, FID and speed."""
    key, best = objective(settings.fid_n).key, objective(settings.fid_n).best_key
    parts = [
        f"step {int(report['step']):>6} epoch {report['epoch']:6.2f}",
        f"d_loss {report.get('d_loss', np.nan):7.4f} g_loss {report.get('g_loss', np.nan):7.4f}",
        f"D(x) {report.get('d_real', np.nan):6.3f} D(G(z)) {report.get('d_fake', np.nan):6.3f}",
        f"{key} {report[key]:8.3f} (best {report[best]:.3f})",
        f"{report['img_per_s']:8.0f} img/s",
    ]
    if "inception_score" in report:
        parts.insert(4, f"IS {report['inception_score']:.2f}")
    return " | ".join(parts)

"""The thin Ray Tune adapter: setup / step / save / restore around ``TrialRunner``, nothing else.

One Tune iteration is one evaluation interval (``eval_every`` generator steps, then an evaluation),
so ASHA's time unit is evaluations. Ray's ``config`` becomes a ``TrialConfig`` once, in ``setup``;
run settings, the decoded data and the reference FID statistics arrive through
``tune.with_parameters`` (prepared once on the driver, never per trial).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.result import DONE

from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data import CachedDataset
from orchestrator.errors import TrainingDiverged
from orchestrator.images import save_png
from orchestrator.metrics.fid import FeatureStats
from orchestrator.metrics.inception import load_inception
from orchestrator.train import resolve_device
from orchestrator.trial import TrialRunner, best_fid_key, fid_key

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # everything needed to resume
GENERATOR_FILE = "generator.pt"  # the evaluation generator alone, for sampling
GRID_FILE = "grid.png"  # samples from the fixed grid latents at this checkpoint
REPORT_FILE = "report.json"  # the metrics reported at this checkpoint


class GanTrainable(tune.Trainable):
    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        settings: RunSettings,
        data: CachedDataset,
        reference: FeatureStats,
        fid_weights: str | None = None,
    ) -> None:
        self.settings, self.data, self.reference = settings, data, reference
        # Ray hides all but the trial's GPU (fractions included), so "cuda" is the right one
        self.device = resolve_device(settings.device)
        resources = self.trial_resources
        if self.device.type == "cpu" and resources is not None:
            torch.set_num_threads(max(1, int(resources.required_resources.get("CPU", 1))))
        self.extractor = load_inception(fid_weights, device=self.device)
        self._build(config)

    def _build(self, config: dict[str, Any]) -> None:
        trial_config = TrialConfig.from_dict(config, source=f"trial {self.trial_id}")
        self.runner = TrialRunner(
            trial_config, self.settings, self.data, self.reference, self.extractor, self.device
        )
        self.last_report: dict[str, Any] = {}
        self.started_at = time.time()  # wall clock, for measuring how trials overlap

    def step(self) -> dict[str, Any]:
        try:
            self.runner.train(self.settings.eval_every)
        except TrainingDiverged as err:
            # inf, not NaN: ASHA's cutoff ignores NaN and would never stop the trial
            log.warning("trial %s diverged: %s", self.trial_id, err)
            return self._report(
                {fid_key(self.settings): math.inf, best_fid_key(self.settings): math.inf},
                diverged=str(err),
            )
        return self._report(self.runner.evaluate(), diverged="")

    def _report(self, metrics: dict[str, float], diverged: str) -> dict[str, Any]:
        report: dict[str, Any] = {
            **metrics,
            "step": self.runner.step,
            "started_at": self.started_at,
            "reported_at": time.time(),
            "diverged": int(bool(diverged)),
            "failure": diverged,
        }
        if diverged:
            report[DONE] = True
        self.last_report = report
        return report

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        folder = Path(checkpoint_dir)
        self.runner.save(folder / STATE_FILE)
        generator = self.runner.state.eval_generator
        torch.save(
            {
                "config": self.runner.state.config.to_dict(),
                "channels": self.runner.state.channels,
                "resolution": self.runner.state.resolution,
                "step": self.runner.step,
                "generator": generator.state_dict(),
            },
            folder / GENERATOR_FILE,
        )
        save_png(self.runner.grid(), folder / GRID_FILE)
        (folder / REPORT_FILE).write_text(json.dumps(self.last_report, default=float))

    def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
        self.runner.restore(Path(checkpoint_dir) / STATE_FILE)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: a new trial in the same process keeps the data and the Inception network."""
        self._build(new_config)
        return True

"""The thin Ray Tune adapter: setup / step / save / restore around ``TrialRunner``, nothing else.

One Tune iteration is one evaluation interval (``eval_every`` generator steps, then an evaluation),
so ASHA's time unit is evaluations. Ray's ``config`` becomes a ``TrialConfig`` once, in ``setup``;
run settings, the decoded data and the reference FID statistics arrive through
``tune.with_parameters`` (prepared once on the driver, never per trial).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.result import DONE

from orchestrator import trial_report as keys
from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data.dataset import CachedDataset
from orchestrator.errors import TrainingDiverged
from orchestrator.gan.checkpoints import (
    CURVE_FILES,
    GENERATOR_FILE,
    GRID_FILE,
    REPORT_FILE,
    STATE_FILE,
    save_generator,
)
from orchestrator.gan.placement import place, trial_device
from orchestrator.images import save_png
from orchestrator.metrics.diversity import RealReference
from orchestrator.metrics.frechet import FeatureStats
from orchestrator.metrics.health import Verdict
from orchestrator.metrics.inception import load_inception
from orchestrator.search.checkpoint_repair import write_tune_result
from orchestrator.trial import TrialRunner, device_images
from orchestrator.views.plots import loss_curves, metric_curves

log = logging.getLogger(__name__)



class GanTrainable(tune.Trainable):
    def setup(  # type: ignore[override]
        self,
        config: dict[str, Any],
        settings: RunSettings,
        data: CachedDataset,
        reference: FeatureStats,
        real_ref: RealReference | None = None,
        fid_weights: str | None = None,
    ) -> None:
        setup_start = time.perf_counter()
        self.settings, self.data, self.reference, self.real_ref = settings, data, reference, real_ref
        # the GPU Ray assigned (a fraction of one included), among the ones this process sees
        self.device = trial_device(settings.device, ray.get_gpu_ids())
        # which machine ran each interval: Tune's result.json then shows a trial moving after a
        # lost node, and the MLflow run says where its trial ran
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"trial {self.trial_id} on {self.node_ip} has a GPU share but torch sees no "
                               "CUDA device; check the node's driver, or search with --device cpu")
        resources = self.trial_resources
        if self.device.type == "cpu" and resources is not None:
            torch.set_num_threads(max(1, int(resources.required_resources.get("CPU", 1))))
        self.extractor = load_inception(fid_weights, device=self.device)
        self.placement = place(self.device, settings.precision)
        # on the device once per actor: a reused actor's next trial trains on the same copy
        self.images = device_images(data, self.placement)
        self._build(config)
        # where a trial's time goes besides training and evaluating (bench/smoke_breakdown.py):
        # this actor's set-up, reported once, and the checkpoints saved since the last report
        self.overhead = {keys.SETUP_SECONDS: time.perf_counter() - setup_start, keys.CHECKPOINT_SECONDS: 0.0}

    def _build(self, config: dict[str, Any]) -> None:
        trial_config = TrialConfig.from_dict(config, source=f"trial {self.trial_id}")
        self.runner = TrialRunner(
            trial_config, self.settings, self.data, self.reference, self.extractor, self.placement,
            self.real_ref, images=self.images,
        )
        self.last_report: dict[str, Any] = {}
        self.started_at = time.time()  # wall clock, for measuring how trials overlap

    def step(self) -> dict[str, Any]:
        try:
            self.runner.train(self.settings.eval_every)
        except TrainingDiverged as err:
            # the objective's worst, not NaN: ASHA's cutoff ignores NaN and would never stop the trial
            log.warning("trial %s diverged: %s", self.trial_id, err)
            goal = self.runner.objective
            return self._report(
                {goal.key: goal.worst, goal.best_key: goal.worst},
                Verdict(keys.DIVERGED, err.what, {}), reason=str(err),
            )
        metrics = self.runner.evaluate()
        found = self.runner.verdict
        return self._report(metrics, found, reason=found.describe() if found else "")

    def _report(self, metrics: dict[str, float], verdict: Verdict | None, reason: str) -> dict[str, Any]:
        report: dict[str, Any] = {  # the keys: orchestrator/trial_report.py
            **metrics,
            keys.STEP: self.runner.step,
            keys.STARTED_AT: self.started_at,
            keys.REPORTED_AT: time.time(),
            keys.NODE_ID: self.node_id,
            keys.NODE_IP: self.node_ip,
            keys.DEVICE: str(self.placement.device),
            keys.COMPUTE_PRECISION: self.placement.precision,
            keys.DIVERGED_FLAG: int(verdict is not None and verdict.mode == keys.DIVERGED),
            keys.FAILURE: reason,
            keys.FAILURE_MODE: verdict.mode if verdict else "",
            keys.EVIDENCE: dict(verdict.evidence) if verdict else {},
            **self.overhead,
        }
        self.overhead = {keys.SETUP_SECONDS: 0.0, keys.CHECKPOINT_SECONDS: 0.0}
        if verdict is not None:
            report[DONE] = True  # a dead trial stops now, whatever ASHA would decide later
        self.last_report = report
        return report

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        start = time.perf_counter()
        folder = Path(checkpoint_dir)
        self.runner.save(folder / STATE_FILE)
        save_generator(self.runner.state, folder / GENERATOR_FILE)
        save_png(self.runner.grid(), folder / GRID_FILE)
        if self.runner.history:
            # drawn here, not on the driver: the history of every logged step is the worker's, and a
            # driver of hundreds of trials would spend its loop drawing two figures per result
            history = pd.DataFrame(self.runner.history)
            loss_curves(history, folder / CURVE_FILES[0])
            metric_curves(history, self.runner.objective.key, folder / CURVE_FILES[1])
        (folder / REPORT_FILE).write_text(json.dumps(self.last_report, default=float))
        write_tune_result(self, folder)
        self.overhead[keys.CHECKPOINT_SECONDS] += time.perf_counter() - start

    def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
        self.runner.restore(Path(checkpoint_dir) / STATE_FILE)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: a new trial in the same process keeps the data and the Inception network."""
        self._build(new_config)
        return True

"""``GanTrainable`` driven as Tune drives it (``tune.with_parameters``, then ``train``, ``save``,
``restore``, ``reset``), but in this process on toy data: a local one-CPU Ray for the runtime
context, and the moments extractor in place of Inception."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import SMALL, MomentFeatures, blob_dataset, moment_reference
from PIL import Image

from orchestrator.config import RunSettings
from orchestrator.data.dataset import CachedDataset
from orchestrator.gan.checkpoints import (
    CURVE_FILES,
    GENERATOR_FILE,
    GRID_FILE,
    REPORT_FILE,
    STATE_FILE,
    load_generator,
)
from orchestrator.gan.step import generate
from orchestrator.metrics.frechet import FeatureStats
from orchestrator.metrics.health import Verdict
from orchestrator.metrics.registry import objective
from orchestrator.search.checkpoint_repair import TUNE_RESULT_FILE
from orchestrator.trial_report import DISCRIMINATOR_WINS, DIVERGED

EVERY = 3
SETTINGS = RunSettings(dataset="folder:blobs", fid_n=40, eval_every=EVERY, device="cpu", precision="fp32")
FID = objective(SETTINGS.fid_n)
WEIGHTS = "fake-inception.pt"
# plain SGD at the largest learning rate the config allows, on the unbounded least-squares loss:
# the losses overflow within three steps (tests/test_trial.py)
EXPLODING = {**SMALL, "loss": "lsgan", "optimizer": "sgd", "lr_g": 10.0, "lr_d": 10.0, "d_norm": "none"}

Make = Callable[..., Any]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-CPU Ray of this module's own (``address="local"``: never another session's cluster),
    shut down after it. A trainable outside Tune makes a log folder under Ray's default storage
    path: moved here, out of the home folder."""
    import ray
    import ray.tune.trainable.trainable as trainable_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainable_module, "DEFAULT_STORAGE_PATH", str(tmp_path_factory.mktemp("ray_results")))
        started = not ray.is_initialized()  # an earlier module's Ray, if one is left, serves too
        if started:
            ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            if started:
                ray.shutdown()


@pytest.fixture(scope="module")
def data() -> CachedDataset:
    return blob_dataset(64)


@pytest.fixture(scope="module")
def reference(data: CachedDataset) -> FeatureStats:
    return moment_reference(data)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, torch.device]]:
    """Every ``load_inception`` call the trainables make, answered with the moments extractor."""
    calls: list[tuple[Any, torch.device]] = []

    def load(weights: Any, device: torch.device) -> MomentFeatures:
        calls.append((weights, device))
        return MomentFeatures()

    monkeypatch.setattr("orchestrator.search.trainable.load_inception", load)
    return calls


@pytest.fixture
def make(local_ray: None, data: CachedDataset, reference: FeatureStats, loads: list) -> Iterator[Make]:
    """``make(config, seed=0)``: a trainable built as Tune builds one; every one is stopped after."""
    from ray import tune

    from orchestrator.search.trainable import GanTrainable

    made: list[Any] = []

    def build(config: dict[str, Any] | None = None, seed: int = 0) -> Any:
        settings = dataclasses.replace(SETTINGS, seed=seed)
        cls = tune.with_parameters(GanTrainable, settings=settings, data=data, reference=reference,
                                   fid_weights=WEIGHTS)
        made.append(cls(config=dict(config or SMALL)))
        return made[-1]

    yield build
    for trainable in made:
        trainable.stop()


def _grid_images(trainable: Any) -> torch.Tensor:
    return generate(trainable.runner.state, trainable.runner.grid_latents)


# --- one iteration


def test_one_iteration_is_one_evaluation_interval(make: Make, loads: list) -> None:
    import ray

    trainable = make()
    assert loads == [(WEIGHTS, torch.device("cpu"))]  # the network, once, on the trial's device
    assert trainable.runner.extractor is trainable.extractor and trainable.runner.images is trainable.images
    result = trainable.train()
    assert math.isfinite(result[FID.key]) and result[FID.best_key] == result[FID.key]
    assert result["training_iteration"] == 1 and result["step"] == EVERY and result["done"] is False
    assert (result["device"], result["compute_precision"]) == ("cpu", "fp32")
    failure = (result["diverged"], result["failure"], result["failure_mode"], result["evidence"])
    assert failure == (0, "", "", {})
    assert result["node_id"] == ray.get_runtime_context().get_node_id()
    assert result["started_at"] <= result["reported_at"]
    assert math.isfinite(result["d_loss"]) and result["img_per_s"] > 0
    again = trainable.train()
    assert again["training_iteration"] == 2 and again["step"] == 2 * EVERY
    assert again[FID.best_key] == min(result[FID.key], again[FID.key])
    assert len(trainable.runner.history) == 2


# --- checkpoints


def test_save_writes_the_checkpoint_folder(make: Make, tmp_path: Path) -> None:
    trainable = make()
    result = trainable.train()
    trainable.save(str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {STATE_FILE, GENERATOR_FILE, GRID_FILE, REPORT_FILE,
                                                      TUNE_RESULT_FILE, *CURVE_FILES}
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report[FID.key] == result[FID.key] and report["step"] == EVERY
    # what a resume falls back on where Tune deleted the checkpoint its state names: Tune's result
    tune_result = json.loads((tmp_path / TUNE_RESULT_FILE).read_text())
    assert tune_result["training_iteration"] == 1 and tune_result[FID.key] == result[FID.key]
    with Image.open(tmp_path / GRID_FILE) as grid:
        assert grid.size == (8 * 34 + 2, 8 * 34 + 2)
    # the generator file alone gives the trial's images, as [0, 1] floats
    model = load_generator(tmp_path)
    z = trainable.runner.grid_latents[:8]
    assert torch.equal(model(z), (generate(trainable.runner.state, z) + 1) / 2)


def test_a_restored_trainable_continues_from_the_same_step(make: Make, tmp_path: Path) -> None:
    saving = make()
    saving.train()
    checkpoint = saving.save(str(tmp_path))
    restored = make(seed=5)  # another seed: everything must come from the checkpoint
    restored.restore(checkpoint)  # what Tune hands back: the checkpoint with its result
    assert restored.runner.step == saving.runner.step == EVERY
    assert torch.equal(_grid_images(restored), _grid_images(saving))
    assert restored.runner.best_fid == saving.runner.best_fid
    assert restored.runner.history == saving.runner.history
    a, b = saving.train(), restored.train()
    assert a["training_iteration"] == b["training_iteration"] == 2
    assert a["step"] == b["step"] == 2 * EVERY
    assert a[FID.key] == b[FID.key] and a["d_loss"] == b["d_loss"]  # bit for bit
    assert torch.equal(_grid_images(restored), _grid_images(saving))


def test_a_bare_checkpoint_folder_restores_too(make: Make, tmp_path: Path) -> None:
    """``load_checkpoint`` needs only the folder: Tune may hand a copy of it to a new actor."""
    saving = make()
    saving.train()
    saving.save(str(tmp_path))
    restored = make()
    restored.load_checkpoint(str(tmp_path))
    assert restored.runner.step == EVERY and torch.equal(_grid_images(restored), _grid_images(saving))


# --- actor reuse


def test_reset_builds_a_new_trial_on_the_same_data_and_network(make: Make, loads: list) -> None:
    trainable = make()
    trainable.train()
    images, extractor, old = trainable.images, trainable.extractor, trainable.runner
    assert trainable.reset({**SMALL, "lr_g": 1e-3})  # Tune's call, which calls reset_config
    assert trainable.runner is not old and trainable.runner.state.config.lr_g == 1e-3
    assert trainable.runner.step == 0 and trainable.runner.history == []
    assert trainable.runner.best_fid == math.inf and trainable.last_report == {}
    assert trainable.images is images and trainable.runner.images is images
    assert trainable.extractor is extractor and trainable.runner.extractor is extractor
    assert len(loads) == 1  # no second network
    result = trainable.train()
    assert result["training_iteration"] == 1 and result["step"] == EVERY


def test_reset_with_a_bad_config_names_it(make: Make) -> None:
    from orchestrator.errors import ConfigError

    trainable = make()
    with pytest.raises(ConfigError, match=r"trial default: unknown key 'lr' \(did you mean"):
        trainable.reset_config({**SMALL, "lr": 1e-3})


# --- failed trials stop at once


@pytest.mark.parametrize("how", ["learning_rate", "nan_weight"])
def test_a_diverging_trial_reports_the_worst_fid_and_stops(make: Make, how: str) -> None:
    if how == "learning_rate":
        trainable = make(EXPLODING)
    else:
        trainable = make()
        with torch.no_grad():
            next(trainable.runner.state.discriminator.parameters()).fill_(math.nan)
    result = trainable.train()
    assert result["done"] is True and result["diverged"] == 1 and result["failure_mode"] == DIVERGED
    assert result[FID.key] == math.inf and result[FID.best_key] == math.inf
    assert "_loss is not finite at step" in result["failure"] and 1 <= result["step"] <= EVERY
    assert result["training_iteration"] == 1 and trainable.runner.history == []
    if how == "nan_weight":
        assert result["failure"] == "d_loss is not finite at step 1"


def test_a_failure_verdict_stops_the_trial_with_its_evidence(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = Verdict(DISCRIMINATOR_WINS, "d_loss", {"d_fake": 0.001, "d_loss": 0.002})
    monkeypatch.setattr("orchestrator.trial.check", lambda history, loss, config: verdict)
    result = make().train()
    assert result["done"] is True and result["diverged"] == 0
    assert (result["failure_mode"], result["evidence"]) == (DISCRIMINATOR_WINS, verdict.evidence)
    assert result["failure"] == "discriminator_wins on d_loss (d_fake=0.001, d_loss=0.002)"
    assert math.isfinite(result[FID.key])  # the evaluation itself still counts

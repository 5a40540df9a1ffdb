"""``TrialRunner`` on toy data (Blobs, the moments extractor): what one evaluation reports, the
running means between reports, fixed-latent FID and grids, save and restore, and divergence."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import SMALL, MomentFeatures, blob_dataset, moment_reference

from orchestrator.config import RunSettings, TrialConfig
from orchestrator.data.dataset import CachedDataset
from orchestrator.errors import TrainingDiverged
from orchestrator.gan.step import generate, train_steps
from orchestrator.metrics.frechet import FeatureStats
from orchestrator.metrics.registry import objective
from orchestrator.trial import GRID_SIZE, TrialRunner, format_report

N_IMAGES = 64
SETTINGS = RunSettings(dataset="folder:blobs", fid_n=40, eval_every=3, device="cpu", precision="fp32")
FID = objective(SETTINGS.fid_n)  # the report's FID key and its best-so-far key
# plain SGD at the largest learning rate the config allows, on the unbounded least-squares loss:
# the losses overflow within three steps for every seed tried
EXPLODING = {"loss": "lsgan", "optimizer": "sgd", "lr_g": 10.0, "lr_d": 10.0, "d_norm": "none"}


@pytest.fixture(scope="module")
def data() -> CachedDataset:
    return blob_dataset(N_IMAGES)


@pytest.fixture(scope="module")
def reference(data: CachedDataset) -> FeatureStats:
    return moment_reference(data)


def _runner(data: CachedDataset, reference: FeatureStats, seed: int = 0, **overrides: object) -> TrialRunner:
    settings = dataclasses.replace(SETTINGS, seed=seed)
    config = TrialConfig.from_dict({**SMALL, **overrides})
    return TrialRunner(config, settings, data, reference, MomentFeatures(), torch.device("cpu"))


# --- what an evaluation reports


def test_the_fid_key_carries_the_sample_count(data: CachedDataset, reference: FeatureStats) -> None:
    assert (FID.key, FID.best_key, FID.mode) == ("fid40", "fid40_best", "min")
    assert objective(5000).key == "fid5k"
    runner = _runner(data, reference)
    assert runner.objective == FID and runner.best_fid == math.inf  # nothing evaluated yet


@pytest.mark.parametrize("n_critic", [1, 2])
def test_an_evaluation_reports_fid_and_the_steps_trained(
    data: CachedDataset, reference: FeatureStats, n_critic: int
) -> None:
    runner = _runner(data, reference, n_critic=n_critic)
    runner.train(3)
    report = runner.evaluate()
    key = FID.key
    assert math.isfinite(report[key]) and report[key] > 0
    assert report[FID.best_key] == report[key]  # the first evaluation is the best so far
    assert report["step"] == runner.step == 3
    assert report["epoch"] == pytest.approx(3 * SMALL["batch_size"] * n_critic / N_IMAGES)
    assert report["img_per_s"] > 0 and report["train_seconds"] > 0 and report["eval_seconds"] > 0
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"):
        assert math.isfinite(report[name]), name
    assert "inception_score" not in report  # the extractor has no classifier head
    assert runner.history == [report] and runner.verdict is None


def test_the_running_means_cover_only_the_steps_since_the_last_evaluation(
    data: CachedDataset, reference: FeatureStats
) -> None:
    runner, twin = _runner(data, reference), _runner(data, reference)
    runner.train(2)
    first = runner.evaluate()
    assert runner.meter.sums == {} and runner.meter.images == 0 and runner.meter.seconds == 0
    runner.train(3)
    second = runner.evaluate()
    # the twin takes the same steps (evaluating draws nothing from the training generator)
    twin.train(2)
    stats = train_steps(twin.state, twin.images, 3)
    for name in ("d_loss", "g_loss", "d_fake"):
        assert second[name] == pytest.approx(np.mean([getattr(s, name) for s in stats]), rel=1e-9), name
    assert second["d_loss"] != pytest.approx(first["d_loss"])
    # the speed counts the images of those 3 steps only
    assert second["img_per_s"] * second["train_seconds"] == pytest.approx(3 * SMALL["batch_size"])
    assert second["step"] == 5
    assert len(runner.history) == 2


def test_evaluating_twice_without_training_gives_the_same_fid(
    data: CachedDataset, reference: FeatureStats
) -> None:
    runner = _runner(data, reference)
    runner.train(3)
    first, second = runner.evaluate(), runner.evaluate()
    key = FID.key
    assert second[key] == first[key] and second["step"] == first["step"]  # the same fixed latents
    # nothing trained in between: no losses to average and no speed to measure
    assert "d_loss" not in second and second["img_per_s"] == 0.0
    assert runner.history == [first, second]


def test_the_best_fid_is_the_running_minimum(data: CachedDataset, reference: FeatureStats) -> None:
    runner = _runner(data, reference)
    runner.train(2)
    trained = copy.deepcopy(runner.state.generator.state_dict())
    fids: list[float] = []

    def evaluate() -> None:
        report = runner.evaluate()
        fids.append(report[FID.key])
        assert report[FID.best_key] == runner.best_fid == min(fids) <= report[FID.key]

    evaluate()
    with torch.no_grad():  # another generator, then the first again: FID goes one way, then back
        for p in runner.state.generator.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    evaluate()
    runner.state.generator.load_state_dict(trained)
    evaluate()
    assert fids[0] == fids[2] != fids[1]


def test_the_fixed_latents_do_not_depend_on_the_trial_seed(
    data: CachedDataset, reference: FeatureStats
) -> None:
    a, b = _runner(data, reference, seed=0), _runner(data, reference, seed=1)
    assert torch.equal(a.eval_latents, b.eval_latents) and torch.equal(a.grid_latents, b.grid_latents)
    assert a.eval_latents.shape == (SETTINGS.fid_n, SMALL["nz"]) and len(a.grid_latents) == GRID_SIZE
    # while the seed does fix the weights
    assert not torch.equal(generate(a.state, a.grid_latents), generate(b.state, b.grid_latents))


def test_given_device_images_are_reused(data: CachedDataset, reference: FeatureStats) -> None:
    first = _runner(data, reference)
    config = TrialConfig.from_dict(SMALL)
    second = TrialRunner(config, SETTINGS, data, reference, MomentFeatures(), torch.device("cpu"),
                         images=first.images)
    assert second.images is first.images


# --- the sample grid


def test_the_grid_is_a_picture_of_the_grid_latents(data: CachedDataset, reference: FeatureStats) -> None:
    runner = _runner(data, reference)
    grid = runner.grid()
    side = 8 * (32 + 2) + 2  # 64 images of 32 px, 8 a row, 2 px borders
    assert grid.size == (side, side) and grid.mode == "RGB"
    assert runner.grid().tobytes() == grid.tobytes()  # fixed latents, eval-mode generator
    runner.train(2)
    assert runner.grid().tobytes() != grid.tobytes()


# --- save and restore


def test_a_restored_runner_has_the_saved_generator_best_and_history(
    data: CachedDataset, reference: FeatureStats, tmp_path: Path
) -> None:
    saving = _runner(data, reference)
    saving.train(3)
    saving.evaluate()
    saving.train(2)
    saving.evaluate()
    path = saving.save(tmp_path / "state.pt")
    assert path == tmp_path / "state.pt" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind

    restored = _runner(data, reference, seed=7)  # another seed: everything must come from the file
    restored.restore(path)
    assert restored.step == saving.step == 5
    z = saving.grid_latents
    assert torch.equal(generate(restored.state, z), generate(saving.state, z))
    assert restored.best_fid == saving.best_fid and restored.history == saving.history
    assert restored.grid().tobytes() == saving.grid().tobytes()
    # and it goes on as the saving runner does, step for step
    saving.train(2)
    restored.train(2)
    assert restored.meter.means() == saving.meter.means()
    key = FID.key
    assert restored.evaluate()[key] == saving.evaluate()[key]


# --- divergence


def test_a_huge_learning_rate_raises_training_diverged(data: CachedDataset, reference: FeatureStats) -> None:
    runner = _runner(data, reference, **EXPLODING)
    with pytest.raises(TrainingDiverged, match=r"_loss is not finite at step \d") as raised:
        runner.train(SETTINGS.eval_every)
    assert raised.value.what in ("d_loss", "g_loss") and 1 <= raised.value.step <= SETTINGS.eval_every


def test_a_nan_weight_raises_at_the_first_step(data: CachedDataset, reference: FeatureStats) -> None:
    runner = _runner(data, reference)
    with torch.no_grad():
        next(runner.state.discriminator.parameters()).fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="d_loss is not finite at step 1") as raised:
        runner.train(5)
    assert (raised.value.what, raised.value.step) == ("d_loss", 1)
    assert runner.history == [] and runner.meter.sums == {}  # nothing from the dead steps is averaged


# --- the line for people


def test_format_report_shows_the_fid_key_step_and_losses(
    data: CachedDataset, reference: FeatureStats
) -> None:
    runner = _runner(data, reference)
    runner.train(3)
    report = runner.evaluate()
    line = format_report(report, SETTINGS)
    assert line.startswith("step      3 epoch   0.75 | ")
    assert f"fid40 {report['fid40']:8.3f} (best {report['fid40_best']:.3f})" in line
    assert f"d_loss {report['d_loss']:7.4f}" in line and "img/s" in line and "IS " not in line
    with_is = format_report({**report, "inception_score": 3.25}, SETTINGS)
    assert "| IS 3.25 |" in with_is
    # a report with nothing trained since the last one still formats, its losses as nan
    assert "d_loss     nan" in format_report(runner.evaluate(), SETTINGS)

"""Pictures: every function writes a PNG that opens and is not blank; NaN/inf and single rows draw
as cuts, not crashes; importance finds the hyperparameter the value depends on."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from PIL import Image

from orchestrator.views import plots

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = np.arange(1, 13) * 500
DISTRIBUTIONS = {
    "lr_g": FloatDistribution(1e-5, 1e-2, log=True),
    "ngf": IntDistribution(32, 128),
    "loss": CategoricalDistribution(["bce", "hinge", "wgan-gp"]),
    "n_critic": IntDistribution(1, 5),  # conditional: absent when loss is bce
    "ema_decay": CategoricalDistribution([0.0, 0.999]),
}


def assert_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1]
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, f"{path.name} looks blank"
    assert not list(path.parent.glob(f".{path.stem}-*")), "temp file left behind"


def history(rows: int = len(STEPS), diverge_at: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "step": STEPS[:rows],
        "d_loss": 1.3 * np.exp(-STEPS[:rows] / 3000) + 0.2,
        "g_loss": 2.0 + rng.normal(0, 0.2, rows),
        "d_real": 0.7 + rng.normal(0, 0.02, rows),
        "d_fake": 0.3 + rng.normal(0, 0.02, rows),
        "fid2k": 250 * np.exp(-STEPS[:rows] / 2000) + 30,
        "kid": 0.2 * np.exp(-STEPS[:rows] / 2000),
        "recall": np.linspace(0.0, 0.5, rows),
    })
    if diverge_at is not None:
        frame.loc[diverge_at:, ["fid2k", "kid"]] = math.inf
        frame.loc[diverge_at:, ["d_loss", "g_loss"]] = math.nan
    return frame


def gids(fig: Figure, prefix: str) -> list[str]:
    return [str(line.get_gid()) for ax in fig.axes for line in ax.get_lines()
            if str(line.get_gid()).startswith(prefix)]


# ---- per trial ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [history(), history(diverge_at=8), history(rows=1),
                                   history(rows=1, diverge_at=0), pd.DataFrame({"step": [100]})],
                         ids=["clean", "diverged", "one-row", "one-row-inf", "no-metrics"])
def test_trial_pictures_are_pngs(tmp_path: Path, frame: pd.DataFrame) -> None:
    assert plots.loss_curves(frame, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert_png(tmp_path / "loss.png")
    plots.metric_curves(frame, "fid2k", tmp_path / "sub" / "metrics.png")
    assert_png(tmp_path / "sub" / "metrics.png")


def test_metric_curves_mark_the_best_fid_and_the_cut() -> None:
    fig = plots.draw_metric_curves(history(diverge_at=8), "fid2k")
    fid_axes, *extra = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in extra] == ["kid", "recall"]
    (best,) = [line for line in fid_axes.get_lines() if line.get_gid() == "best"]
    assert np.asarray(best.get_xdata()).tolist() == [STEPS[7]]  # FID falls until it diverges at row 8
    (cut,) = [line for line in fid_axes.get_lines() if line.get_gid() == "cut"]
    assert np.asarray(cut.get_xdata()).tolist() == STEPS[8:].tolist()
    assert not gids(plots.draw_metric_curves(history(), "fid2k"), "cut")


def test_a_gap_between_finite_values_is_not_a_cut() -> None:
    frame = history()
    frame.loc[3, "kid"] = math.nan  # kid not computed at that evaluation
    assert not gids(plots.draw_metric_curves(frame, "fid2k"), "cut")


def test_loss_curves_cut_where_losses_turn_nan() -> None:
    fig = plots.draw_loss_curves(history(diverge_at=5))
    losses, outputs = fig.axes
    assert len([line for line in losses.get_lines() if line.get_gid() == "cut"]) == 2
    assert not [line for line in outputs.get_lines() if line.get_gid() == "cut"]


# ---- per search --------------------------------------------------------------------------------


def search_histories(n: int = 24) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    histories, outcomes = {}, {}
    for i in range(n):
        rows = len(STEPS) if i % 3 == 0 else 3 + i % 5
        fid = (300 + 40 * i) * np.exp(-STEPS[:rows] / 2500) + 20 + i
        outcome = "completed" if rows == len(STEPS) else "stopped_early"
        if i % 8 == 5:
            fid[-2:], outcome = math.inf, "failed"
        histories[f"t{i:02d}"] = pd.DataFrame({"step": STEPS[:rows], "fid2k": fid})
        outcomes[f"t{i:02d}"] = outcome
    histories["dead"] = pd.DataFrame({"step": [500], "fid2k": [math.inf]})  # diverged at once
    outcomes["dead"] = "failed"
    return histories, outcomes


def test_fid_over_time_cuts_stopped_and_failed_trials(tmp_path: Path) -> None:
    histories, outcomes = search_histories()
    fig = plots.draw_fid_over_time(histories, "fid2k", outcomes)
    cut = {t for t, o in outcomes.items() if o in ("stopped_early", "failed") and t != "dead"}
    assert {g.removeprefix("cut:") for g in gids(fig, "cut:")} == cut
    (ax,) = fig.axes
    failed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(failed) == sum(o == "failed" for t, o in outcomes.items() if t != "dead")
    best = max(ax.get_lines(), key=lambda line: line.get_linewidth())
    assert str(best.get_label()).startswith("t00:") and "(best)" in str(best.get_label())
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == plots.LABELLED + 2  # readable at 25 trials
    assert ax.get_yscale() == "log"  # FIDs from ~1000 down to ~20
    plots.fid_over_time(histories, "fid2k", outcomes, tmp_path / "fid.png")
    assert_png(tmp_path / "fid.png", (800, 400))


def test_fid_over_time_with_no_finite_fid(tmp_path: Path) -> None:
    histories = {"a": pd.DataFrame({"step": [500], "fid2k": [math.inf]}), "b": pd.DataFrame({"step": [1]})}
    plots.fid_over_time(histories, "fid2k", {"a": "failed"}, tmp_path / "fid.png")
    assert_png(tmp_path / "fid.png")


def results_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """FID depends on lr_g only (a bowl around 3e-4); ngf is noise; n_critic exists unless bce."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lr_g, loss = 10 ** rng.uniform(-5, -2), ["bce", "hinge", "wgan-gp"][i % 3]
        fid = 30 * (math.log10(lr_g) + 3.5) ** 2 + 20 + rng.normal(0, 0.5)
        row = {"trial_id": f"t{i}", "best_fid2k": fid,
               "config/lr_g": lr_g, "config/ngf": int(rng.integers(32, 129)), "config/loss": loss,
               "config/ema_decay": [0.0, 0.999][i % 2], "config/batch_size": 64}
        if loss != "bce":
            row["config/n_critic"] = int(rng.integers(1, 6))
        rows.append(row)
    rows[1]["best_fid2k"] = math.inf  # a trial that diverged
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    csv = tmp_path_factory.mktemp("results") / "results.csv"
    results_table().to_csv(csv, index=False)  # the round trip runner.py's results.csv makes
    return plots.study_from_results(pd.read_csv(csv), list(DISTRIBUTIONS), DISTRIBUTIONS, "best_fid2k")


def test_study_from_results_gives_each_trial_the_params_it_has(study: optuna.Study) -> None:
    table = results_table()
    assert len(study.trials) == len(table) - 1  # the inf row is left out
    for trial in study.trials:
        row = table[table["trial_id"] == trial.user_attrs["trial_id"]].iloc[0]
        assert trial.value == pytest.approx(row["best_fid2k"])
        assert ("n_critic" in trial.params) == (row["config/loss"] != "bce")
        assert trial.params["ngf"] == row["config/ngf"] and isinstance(trial.params["ngf"], int)
        assert trial.params["ema_decay"] in (0.0, 0.999)


def test_param_importance_finds_lr_g(study: optuna.Study, tmp_path: Path) -> None:
    importances = plots.param_importance(study, tmp_path / "importance.png")
    assert importances["lr_g"] > 0.5 > importances["ngf"]
    assert "n_critic" not in importances  # not in every trial: optuna leaves it out
    assert_png(tmp_path / "importance.png")


def test_param_importance_without_scikit_learn(study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn"
                        else find_spec(name, *a))
    assert isinstance(plots._evaluator(), optuna.importance.PedAnovaImportanceEvaluator)
    importances = plots.draw_param_importance(study)[1]
    assert importances["lr_g"] > importances["ngf"]


CONSTANT = {"config/lr_g": 1e-4, "config/ngf": 64, "config/loss": "hinge", "config/n_critic": 1,
            "config/ema_decay": 0.0}


@pytest.mark.parametrize("rows", [results_table().iloc[:1], results_table().assign(**CONSTANT)],
                         ids=["one-trial", "constant"])
def test_param_importance_of_a_tiny_study(rows: pd.DataFrame, tmp_path: Path) -> None:
    small = plots.study_from_results(rows, list(DISTRIBUTIONS), DISTRIBUTIONS, "best_fid2k")
    assert plots.param_importance(small, tmp_path / "importance.png") == {}
    assert_png(tmp_path / "importance.png")


def test_parallel_coordinates_of_the_best_trials(study: optuna.Study, tmp_path: Path) -> None:
    fig = plots.draw_parallel_coordinates(study, top=5)
    (ax,) = fig.axes
    lines = {str(line.get_gid()): line for line in ax.get_lines() if str(line.get_gid()).startswith("trial:")}
    assert len(lines) == 5
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "best_fid2k" and {"loss", "ema_decay", "n_critic"} <= set(labels)
    best = study.best_trial
    y = np.asarray(lines["trial:0"].get_ydata(), dtype=float)
    assert y[0] == 0.0  # the lowest FID sits at the bottom of its axis
    assert np.isnan(y[labels.index("n_critic")]) == ("n_critic" not in best.params)
    plots.parallel_coordinates(study, tmp_path / "parallel.png")
    assert_png(tmp_path / "parallel.png")
    plots.parallel_coordinates(optuna.create_study(), tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = plots.loss_curves(history(), tmp_path / "loss.png")
    before = path.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.loss_curves(history(rows=1), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["loss.png"]

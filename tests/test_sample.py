"""Using the winner: ``python -m orchestrator.sample`` from a run id and from a checkpoint, and the best
generator logged as an MLflow model by the smoke search (the shared ``smoke_search`` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from orchestrator.cli import run_main
from orchestrator.config import TrialConfig
from orchestrator.gan.checkpoints import load_generator
from orchestrator.gan.models import Generator
from orchestrator.sample import main
from orchestrator.tracking.models import MODEL_TAG, RUN_MODEL_TAG, tracking_uri_set

REPO = Path(__file__).resolve().parents[1]
FID = "fid128"  # the smoke test's FID
RES, PAD = 32, 2  # the shapes space's resolution; grid_image's border


@pytest.fixture(scope="module")
def winner(smoke_search: dict) -> dict:
    """The parent run's tags, the best trial's run and its best checkpoint folder (lowest FID)."""
    parent = MlflowClient(smoke_search["tracking_uri"]).get_run(smoke_search["parent_run_id"])
    trial = smoke_search["experiment_dir"] / f"trial_{parent.data.tags['best_trial']}"
    reports = {c: json.loads((c / "report.json").read_text()) for c in trial.glob("checkpoint_*")}
    best = min(reports, key=lambda c: reports[c][FID])
    return {"tags": parent.data.tags, "checkpoint": best, "fid": reports[best][FID],
            "uri": smoke_search["tracking_uri"]}


def sample(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = run_main(main, argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_best_checkpoint_is_the_reported_best(winner: dict) -> None:
    assert winner["fid"] == pytest.approx(float(winner["tags"][f"best_{FID}"]), abs=1e-3)


def test_grid_from_run_id_and_from_checkpoint(winner: dict, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_png, checkpoint_png = tmp_path / "run.png", tmp_path / "checkpoint.png"
    run_id = winner["tags"]["best_run_id"]
    out = sample([run_id, "--mlflow-uri", winner["uri"], "--out", str(run_png)], capsys)
    assert winner["tags"][MODEL_TAG] in out  # the logged model, not the last checkpoint, was used
    sample([str(winner["checkpoint"]), "--out", str(checkpoint_png)], capsys)
    side = 8 * (RES + PAD) + PAD  # 64 samples: 8 x 8
    for path in (run_png, checkpoint_png):
        assert Image.open(path).size == (side, side)
        tile = pixels(path)[PAD : PAD + RES, PAD : PAD + RES]
        assert tile.std() > 1  # a generated image, not a constant
    # the logged model is the best checkpoint's generator: the same images up to rounding
    assert np.abs(pixels(run_png) - pixels(checkpoint_png)).max() <= 1


def test_grid_of_n_and_its_layout(winner: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample([str(winner["checkpoint"]), "--n", "10", "--out", str(tmp_path / "g.png")], capsys)
    # torchvision's make_grid: 3 columns (isqrt(10)), 4 rows
    assert Image.open(tmp_path / "g.png").size == (3 * (RES + PAD) + PAD, 4 * (RES + PAD) + PAD)


def test_folder_of_pngs_is_the_grid_prefix(winner: dict, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "samples"
    sample([str(winner["checkpoint"]), "--n", "5", "--out", str(folder), "--seed", "3"], capsys)
    sample([str(winner["checkpoint"]), "--out", str(tmp_path / "grid.png"), "--seed", "3"], capsys)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    grid = pixels(tmp_path / "grid.png")
    for i, file in enumerate(files):
        assert Image.open(file).size == (RES, RES)
        x = PAD + i * (RES + PAD)  # the first row of the 8-wide grid
        assert np.array_equal(pixels(file), grid[PAD : PAD + RES, x : x + RES])  # same latents


def test_evaluation_seed_gives_the_checkpoint_grid(winner: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # the trial drew its grid from the evaluation seed (RunSettings.eval_seed) with the same generator
    sample([str(winner["checkpoint"]), "--seed", "12345", "--out", str(tmp_path / "g.png")], capsys)
    assert np.abs(pixels(tmp_path / "g.png") - pixels(winner["checkpoint"] / "grid.png")).max() <= 1


def test_seed_fixes_the_images(winner: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = {name: tmp_path / f"{name}.png" for name in ("a", "b", "c")}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        sample([str(winner["checkpoint"] / "generator.pt"), "--seed", seed, "--out", str(paths[name])],
               capsys)
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert np.abs(pixels(paths["a"]) - pixels(paths["c"])).mean() > 1


def test_logged_model_maps_latents_to_images(winner: dict) -> None:
    uri = winner["tags"][MODEL_TAG]
    client = MlflowClient(winner["uri"])
    assert client.get_run(winner["tags"]["best_run_id"]).data.tags[RUN_MODEL_TAG] == uri
    checkpoint = load_generator(winner["checkpoint"])
    nz = checkpoint.generator.nz
    with tracking_uri_set(winner["uri"]):
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri)
        example = mlflow.models.Model.load(uri).load_input_example()
    assert info.run_id == winner["tags"]["best_run_id"]
    assert info.signature.inputs.inputs[0].shape == (-1, nz)
    assert info.signature.outputs.inputs[0].shape == (-1, 3, RES, RES)
    assert np.asarray(example).shape == (2, nz)
    z = torch.randn(5, nz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images, expected = model(z), checkpoint(z)
    assert images.shape == (5, 3, RES, RES)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert model(z[:1]).shape == (1, 3, RES, RES)  # the batch size is free


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A checkpoint whose weights are of another architecture, a store without the run."""
    root = tmp_path_factory.mktemp("bad-sample")
    small, wide = TrialConfig(nz=16, ngf=8), TrialConfig(nz=16, ngf=16)
    weights = Generator(small, 3, RES).state_dict()
    torch.save({"config": wide.to_dict(), "channels": 3, "resolution": RES, "step": 1, "generator": weights},
               root / "other.pt")
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # creates an empty store
    return {"OTHER": str(root / "other.pt"), "STORE": f"sqlite:///{root / 'mlflow.db'}", "ROOT": str(root)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0123456789abcdef0123456789abcdef", "--mlflow-uri", "STORE"],
         "run 0123456789abcdef0123456789abcdef not found in sqlite:///"),
        (["0123456789abcdef0123456789abcdef"], "needs --mlflow-uri or $MLFLOW_TRACKING_URI"),
        (["0123456789abcdef0123456789abcdef", "--mlflow-uri", "sqlite:////nonexistent/m.db"],
         "no such database file"),
        (["/nonexistent/checkpoint_000001"], "no such file or folder, nor an MLflow run id"),
        (["OTHER"], "the weights do not fit the generator its config describes (nz 16, ngf 16, 32 px)"),
        (["ROOT"], "no generator.pt in this folder"),
        (["OTHER", "--n", "0"], "argument --n: 0 must be in [1, 10,000]"),
        (["OTHER", "--n", "1000000000"], "argument --n: 1000000000 must be in [1, 10,000]"),
        (["OTHER", "--n", "many"], "argument --n: 'many' is not a whole number"),
        (["OTHER", "--out", ""], "argument --out: must not be empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, bad_files: dict[str, str],
                                          tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # first, so that a case's own --out wins
    argv = ["--out", str(tmp_path / "grid.png")] + [bad_files.get(a, a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sample", *argv], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "grid.png").exists()

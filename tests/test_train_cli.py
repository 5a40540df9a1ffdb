"""``python -m orchestrator.train`` end to end on shapes, and its bad-input handling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.train import main


def test_train_cli_on_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["shapes", "--resolution", "32", "--steps", "20", "--eval-every", "10", "--fid-n", "40",
                 "--limit", "500", "--out", str(out), "--seed", "1"])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step")]
    assert len(lines) == 2
    fids = [float(re.search(r"fid40 +([\d.]+)", ln).group(1)) for ln in lines]
    assert all(0 < f < 1000 for f in fids)
    assert "img/s" in lines[0] and "D(G(z))" in lines[0]
    grids = sorted(out.glob("samples_step*.png"))
    assert [g.name for g in grids] == ["samples_step0000010.png", "samples_step0000020.png"]
    assert Image.open(grids[0]).size == (8 * 34 + 2, 8 * 34 + 2)  # 8 x 8 images of 32 px, 2 px borders
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 20 and saved["resolution"] == 32 and saved["channels"] == 3
    assert saved["best_fid"] == pytest.approx(min(fids), abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shapez"], "did you mean 'shapes'"),
        (["shapes", "--resolution", "48"], "resolution"),
        (["food101", "--data-root", "/nonexistent/place"], "/nonexistent/place"),
        (["shapes", "--config", "CONFIG"], "unknown key 'lr_gen'"),
        (["shapes", "--config", "RANGE"], "beta1=2.0 must be in [0, 1)"),
        (["shapes", "--steps", "0"], "argument --steps: 0 must be in [1, 2,147,483,647]"),
        (["shapes", "--epochs", "nan"], "argument --epochs: nan must be a finite number above 0"),
        (["shapes", "--epochs", "inf"], "argument --epochs: inf must be a finite number above 0"),
        (["shapes", "--out", ""], "argument --out: must not be empty"),
        (["shapes", "--classes", ""], "argument --classes: '' has an empty name"),
        (["shapes", "--seed", "-1"], "argument --seed: -1 must be in [0, 4,294,967,295]"),
        (["shapes", "--stepz", "3"], "unrecognized arguments: --stepz 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("lr_gen: 1.0e-4\n")
    (tmp_path / "range.yaml").write_text("beta1: 2.0\n")
    files = {"CONFIG": str(tmp_path / "bad.yaml"), "RANGE": str(tmp_path / "range.yaml")}
    args = [files.get(a, a) for a in args]
    proc = subprocess.run([sys.executable, "-m", "orchestrator.train", "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_train_defaults_are_the_searchs(tmp_path: Path) -> None:
    """One place turns flags into RunSettings: left out, train scores a trial as a search would."""
    from orchestrator.search.cli import parse_args as search_args
    from orchestrator.search.plan import make_plan
    from orchestrator.space.sampling import space_path
    from orchestrator.train import _settings, parse_args

    searched = make_plan(search_args(["shapes", "--gpus-per-trial", "0"])).settings
    trained = _settings(parse_args(["shapes"]))
    fields = ("resolution", "eval_every", "fid_n", "eval_seed", "seed", "precision", "cache_dir")
    assert [getattr(trained, f) for f in fields] == [getattr(searched, f) for f in fields]
    assert (trained.resolution, trained.eval_every, trained.fid_n) == (32, 2500, 256)  # shapes.yaml's cpu:
    on_file = _settings(parse_args(["shapes", "--space", str(space_path("shapes"))]))
    assert (on_file.resolution, on_file.eval_every, on_file.fid_n) == (32, 200, 2000)  # shapes.yaml
    flagged = _settings(parse_args(["shapes", "--fid-n", "64", "--resolution", "64"]))
    assert (flagged.resolution, flagged.fid_n, flagged.eval_every) == (64, 64, 2500)
    (tmp_path / "a").mkdir()
    folder = _settings(parse_args([f"folder:{tmp_path}"]))  # no space file: RunSettings' own defaults
    assert (folder.resolution, folder.fid_n) == (32, 5000)

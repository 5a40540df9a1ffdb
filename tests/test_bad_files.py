"""Files of the wrong kind given to any command (issue 16's second adversarial pass): damaged dataset
files, YAML that unfolds into more than memory holds, pipes where files belong, statistics and
checkpoints of another shape, devices that do not exist. Each is one line and exit status 2 before
any work (the FID network is not even loaded), and no file given to read is changed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.cli import run_main
from orchestrator.fid import main as fid_main
from orchestrator.report import main as report_main
from orchestrator.sample import cli_main as sample_cli
from orchestrator.search.cli import cli_main as search_cli
from orchestrator.train import cli_main as train_cli

SHAPES_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "shapes.yaml"
BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"


def _one_line(run: Callable[[Sequence[str]], int], argv: list[str],
              capsys: pytest.CaptureFixture[str]) -> str:
    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # no traceback, and no network loaded before it
    return err


def _fid(argv: Sequence[str]) -> int:
    return run_main(fid_main, argv)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of bad inputs, each named for what is wrong with it."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "huge.yaml").write_text("epochs: " + "9" * 5000 + "\n")
    (tmp_path / "intkey.yaml").write_text("1: 2\n")
    os.mkfifo(tmp_path / "pipe.yaml")
    np.savez(tmp_path / "meta_list.npz", mu=np.zeros(4), sigma=np.eye(4), meta=json.dumps([1, 2]))
    np.savez(tmp_path / "n_array.npz", mu=np.zeros(4), sigma=np.eye(4), n=np.arange(3))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "n_array.npz").read_bytes()[:100])
    np.savez(tmp_path / "four.npz", mu=np.zeros(4), sigma=np.eye(4), n=10)
    for folder, count in (("one", 1), ("two", 2)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "garbage").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "garbage" / name).write_bytes(b"not a png")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["shapes", "--space", "FILES/bomb.yaml"], "aliases (*name) are not read here"),
    (["shapes", "--space", "FILES/pipe.yaml"], "pipe.yaml is not a file"),
    (["shapes", "--space", "FILES/intkey.yaml"], "intkey.yaml"),
])
def test_space_files_that_are_not_space_files(argv: list[str], message: str, files: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("FILES", str(files)) for a in argv]
    assert message in _one_line(search_cli, [*argv, "--storage", str(files / "runs"), "--dry-run"], capsys)


@pytest.mark.parametrize("argv, message", [
    (["shapes", "--config", "FILES/bomb.yaml"], "aliases (*name) are not read here"),
    (["shapes", "--config", "FILES/huge.yaml"], "a value out of range"),
    (["shapes", "--config", "FILES/intkey.yaml"], "intkey.yaml"),
    (["shapes", "--config", "FILES/pipe.yaml"], "pipe.yaml: not a file"),
    (["shapes", "--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["shapes", "--device", ""], "argument --device: '' is not a device"),
    (["shapes", "--device", "mps"], "argument --device: 'mps': this PyTorch has no mps device here"),
])
def test_train_refuses_files_and_devices_that_are_not(argv: list[str], message: str, files: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("FILES", str(files)) for a in argv]
    assert message in _one_line(train_cli, [*argv, "--out", str(files / "out")], capsys)


@pytest.mark.parametrize("argv, message", [
    (["FILES/meta_list.npz", "FILES/four.npz"], "meta_list.npz: not a statistics file"),
    (["FILES/n_array.npz", "FILES/four.npz"], "n_array.npz: not a statistics file"),
    (["FILES/cut.npz", "FILES/four.npz"], "cut.npz: not a statistics file"),
    (["FILES/one", "FILES/two"], "one: FID needs at least 2 images, found 1"),
    (["FILES/garbage", "FILES/two"], "a.png: not a readable image"),
    (["FILES/two", "FILES/four.npz"], "four.npz: statistics of 4 features; the FID network gives 2048"),
    (["FILES/two", "FILES/two", "--device", "nope"], "argument --device: 'nope' is not a device"),
    (["FILES/four.npz", "--save-stats", "FILES/four.npz"], "that is a source of this command"),
])
def test_fid_checks_its_sources_before_loading_the_network(argv: list[str], message: str, files: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.read_bytes() for p in files.glob("*.npz")}
    argv = [a.replace("FILES", str(files)) for a in argv]
    assert message in _one_line(_fid, argv, capsys)
    assert {p: p.read_bytes() for p in files.glob("*.npz")} == before


def _checkpoint(folder: Path, name: str, **changes: object) -> Path:
    saved: dict[str, object] = {"config": {"nz": 8, "ngf": 8}, "channels": 3, "resolution": 32, "step": 1,
                                "generator": {}}
    saved.update(changes)
    torch.save(saved, folder / name)
    return folder / name


@pytest.mark.parametrize("changes, message", [
    ({"config": None}, "its config is not a mapping"),
    ({"config": {1: 2}}, "g.pt: unknown key 1"),
    ({"resolution": "abc"}, "not a generator this program can build"),
    ({"resolution": [32]}, "not a generator this program can build"),
    ({"channels": -3}, "not a generator this program can build"),
    ({"channels": 0}, "not a generator this program can build"),
    ({"generator": "weights"}, "its weights are not a state dict"),
])
def test_checkpoints_of_another_shape_are_one_line(changes: dict[str, object], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _checkpoint(tmp_path, "g.pt", **changes)
    assert message in _one_line(sample_cli, [str(path), "--out", str(tmp_path / "g.png")], capsys)


def test_damaged_dataset_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")  # an interrupted copy
    err = _one_line(search_cli, ["mnist", "--data-root", str(tmp_path), "--storage", str(tmp_path / "runs"),
                                 "--dry-run"], capsys)
    assert "mnist data at" in err and "is missing or corrupt" in err
    meta = tmp_path / "food-101" / "meta"
    meta.mkdir(parents=True)
    (meta / "train.json").write_text("{}")
    (meta / "classes.txt").write_bytes(b"apple_pie\n\xff\xfe\n")
    err = _one_line(search_cli, ["food101", "--data-root", str(tmp_path), "--classes", "apple_pie",
                                 "--storage", str(tmp_path / "runs"), "--dry-run"], capsys)
    assert "classes.txt" in err


@pytest.mark.parametrize("state", [b"{garbage", b"{}", b"[]", b"", b"\x8c\x00\xff"])
def test_report_on_a_damaged_tune_state_is_one_line(state: bytes, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "experiment_state-2026-12-03_21-00-00.json").write_bytes(state)
    err = _one_line(lambda argv: run_main(report_main, argv), [str(tmp_path), "--out", str(tmp_path / "r")],
                    capsys)
    assert "Tune's experiment state cannot be read" in err
    assert (tmp_path / "experiment_state-2026-12-03_21-00-00.json").read_bytes() == state


def test_report_on_a_run_no_search_logged_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    client.create_run(client.create_experiment("x"), tags={"role": "search"})  # no 'metric' tag
    capsys.readouterr()  # MLflow's lines as it made the store
    err = _one_line(lambda argv: run_main(report_main, argv), ["x", "--mlflow-uri", uri, "--out",
                                                                str(tmp_path / "r")], capsys)
    assert "has no 'metric' tag: not a search this program logged" in err


def test_a_home_folder_of_nobody_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line(search_cli, ["mnist", "--data-root", "~nosuchuser-orchestrator/x", "--storage",
                                 str(tmp_path / "runs"), "--dry-run"], capsys)
    assert err == "error: ~nosuchuser-orchestrator/x: no such user's home folder"


@pytest.mark.parametrize("argv, message", [
    (["shapes", "--storage", "ftp://host/x", "--mlflow-uri", "sqlite:///FILES/m.db"],
     "--storage ftp://host/x: results go to a folder or to s3"),
    (["shapes", "--storage", ""], "argument --storage: must not be empty"),
    (["shapes", "--study-storage", "garbage"], "--study-storage garbage: not a database URL"),
    (["shapes", "--study-storage", "redis://localhost/0"], "not a database URL"),
    (["shapes", "--study-storage", "sqlite:///FILES"], "is not a database file"),
    (["shapes", "--study-storage", "sqlite:///FILES/garbage/a.png"], "is not a SQLite database"),
])
def test_stores_of_the_wrong_kind_are_refused_in_the_dry_run(argv: list[str], message: str, files: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("FILES", str(files)) for a in argv]
    storage = [] if "--storage" in argv else ["--storage", str(files / "runs")]
    assert message in _one_line(search_cli, [*argv, *storage, "--dry-run"], capsys)


def test_a_resume_whose_record_is_not_a_search_is_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs" / "s").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "orchestrator.json").write_text("[]")
    err = _one_line(search_cli, ["shapes", "--name", "s", "--resume", "--storage", str(tmp_path / "runs"),
                                 "--dry-run"], capsys)
    assert "orchestrator.json is damaged" in err


def test_a_ray_address_where_nothing_answers_is_one_line() -> None:
    import socket

    from orchestrator.errors import ConfigError
    from orchestrator.search.plan import check_ray_address

    with pytest.raises(ConfigError, match=r"--address 127.0.0.1:9: no Ray cluster answers there"):
        check_ray_address("127.0.0.1:9", timeout=2)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_ray_address(f"ray://127.0.0.1:{listening.getsockname()[1]}")  # it answers: Ray judges the rest
    check_ray_address("auto")


def test_sources_and_budgets_that_make_no_sense(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(files / "complex.npz", mu=np.zeros(4) + 1j, sigma=np.eye(4))
    assert "complex.npz: not a statistics file" in _one_line(_fid, [str(files / "complex.npz"),
                                                                    str(files / "four.npz")], capsys)
    assert "argument A: must not be empty" in _one_line(_fid, ["", str(files / "four.npz")], capsys)
    assert "argument --epochs: 1e30 must be at most 1,000,000" in _one_line(
        train_cli, ["shapes", "--epochs", "1e30", "--out", str(files / "out")], capsys)

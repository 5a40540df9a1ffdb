"""A search's identity (issue 16): a name is one folder under --storage, a taken name is refused
unless the search is resumed, and a resume must be the same search as the one it continues. All of
it is checked before any work, in the dry run too; these run the CLI in-process with --dry-run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.search.cli import cli_main, parse_args
from orchestrator.search.plan import make_plan
from orchestrator.search.record import SEARCH_RECORD_FILE, SearchIdentity, SearchRecord, write_record

SHAPES_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "shapes.yaml"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main([*argv, "--dry-run"])
    return code, capsys.readouterr().err.strip()


def _started(storage: Path, argv: list[str]) -> None:
    """What a search started with ``argv`` leaves in its folder: the state file with its identity."""
    plan = make_plan(parse_args([*argv, "--storage", str(storage)]))
    Path(plan.experiment_dir).mkdir(parents=True)
    write_record(plan, SearchRecord(experiment_id="1", parent_run_id="abc", tracking_uri="",
                                    identity=SearchIdentity.of(plan).as_json(),
                                    command="python -m orchestrator.search " + " ".join(argv)))


@pytest.mark.parametrize("name", ["../../x", "a/b", "", " ", ".hidden", "-x", "x" * 200])
def test_a_name_is_one_folder_name(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["shapes", f"--name={name}", "--storage", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--name {name!r}: a search's name is one folder name" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_taken_name_is_refused_pointing_at_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "runs"
    argv = ["shapes", "--smoke-test", "--name", "smoke", "--storage", str(storage)]
    assert _run(argv, capsys)[0] == 0  # a new name: fine
    _started(storage, ["shapes", "--smoke-test", "--name", "smoke"])
    before = (storage / "smoke" / SEARCH_RECORD_FILE).read_bytes()
    code, err = _run(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "a search named 'smoke' is already in" in err and "--resume" in err
    assert (storage / "smoke" / SEARCH_RECORD_FILE).read_bytes() == before  # untouched
    # a folder holding only Tune's state (the driver died before writing ours) is taken too
    (storage / "other").mkdir()
    (storage / "other" / "experiment_state-2026-12-03_17-00-00.json").write_text("{}")
    assert _run([*argv[:3], "other", *argv[4:]], capsys)[0] == 2


def test_a_resume_must_be_the_same_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "runs"
    start = ["shapes", "--smoke-test", "--name", "s"]
    _started(storage, start)
    same = [*start, "--storage", str(storage), "--resume"]
    assert _run(same, capsys) == (0, "")
    for extra, message in [
        (["--fid-n", "64"], "it started with fid_n 128, this command gives 64"),
        (["--seed", "3"], "it started with seed 0, this command gives 3"),
        (["--num-samples", "9"], "it started with num_samples 4, this command gives 9"),
        (["--limit", "500"], "it started with limit 2000, this command gives 500"),
        (["--mlflow-uri", "http://127.0.0.1:5000"], "it started with mlflow_uri None, this command gives 'h"),
        # more at once: each trial gets a smaller CPU share, and the line names both
        (["--max-concurrent", "2"], "it started with cpus_per_trial "),
    ]:
        code, err = _run([*same, *extra], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "--resume: s is not the same search: " + message in err
        assert "it was started as: python -m orchestrator.search shapes --smoke-test --name s" in err
    assert "(and max_concurrent)" in err
    # another dataset, the same name: refused before any data of it is read
    code, err = _run(["mnist", "--smoke-test", "--name", "s", "--storage", str(storage), "--resume"], capsys)
    assert code == 2 and "it started with dataset 'shapes', this command gives 'mnist'" in err


def test_a_resume_with_a_changed_space_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, space = tmp_path / "runs", tmp_path / "space.yaml"
    shutil.copy(SHAPES_SPACE, space)
    start = ["shapes", "--space", str(space), "--name", "s", "--gpus-per-trial", "0"]
    _started(storage, start)
    assert _run([*start, "--storage", str(storage), "--resume"], capsys) == (0, "")
    space.write_text(space.read_text().replace("max_evals: ", "max_evals: 1"))  # e.g. 6 -> 16
    code, err = _run([*start, "--storage", str(storage), "--resume"], capsys)
    assert code == 2 and f"its space file {space} has changed" in err


def test_a_state_file_that_is_not_json_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SEARCH_RECORD_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, err = _run(["shapes", "--name", "s", "--storage", str(tmp_path), "--resume"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"cannot read {tmp_path / 's'}/{SEARCH_RECORD_FILE}" in err


@pytest.mark.parametrize("text", ["[]", "{}", '{"parent_run_id": ""}', "null"])
def test_a_state_file_that_is_not_a_search_record_is_one_line(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SEARCH_RECORD_FILE).write_text(text)
    code, err = _run(["shapes", "--name", "s", "--storage", str(tmp_path), "--resume"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 's'}/{SEARCH_RECORD_FILE} is damaged (not the record a search writes)" in err


def test_a_record_written_before_identities_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / SEARCH_RECORD_FILE).write_text('{"experiment_id": "1", "parent_run_id": "abc"}')
    argv = ["shapes", "--smoke-test", "--name", "s", "--storage", str(tmp_path), "--resume"]
    assert _run(argv, capsys) == (0, "")
    assert _run([*argv, "--seed", "7"], capsys) == (0, "")  # nothing recorded to compare against


def test_identity_is_json_and_names_what_defines_a_search() -> None:
    plan = make_plan(parse_args(["shapes", "--smoke-test", "--gpus-per-trial", "0"]))
    identity = SearchIdentity.of(plan).as_json()
    assert json.loads(json.dumps(identity)) == identity
    assert {"dataset", "resolution", "fid_n", "space_file_sha256", "seed", "num_samples", "max_evals",
            "cpus_per_trial", "gpus_per_trial"} <= set(identity)


def test_a_damaged_tune_state_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = ["shapes", "--smoke-test", "--name", "s"]
    _started(tmp_path, start)
    state = tmp_path / "s" / "experiment_state-2026-12-03_17-00-00.json"
    state.write_text('{"trial_data": [["{\\"trial_id\\": ')  # cut off mid-write
    code, err = _run([*start, "--storage", str(tmp_path), "--resume"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--resume: Tune's state {state} is damaged" in err


def test_a_trial_this_machine_cannot_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --address the search's own Ray has this machine's CPUs: Tune would wait forever."""
    too_many = str(2 * (os.cpu_count() or 1))
    code, err = _run(["shapes", "--cpus-per-trial", too_many, "--storage", str(tmp_path)], capsys)
    assert code == 2 and f"--cpus-per-trial {too_many}: this machine has {os.cpu_count()} CPUs" in err


@pytest.mark.integration  # starts Ray and MLflow: deselected by a plain `pytest`
@pytest.mark.parametrize("error, status", [(RuntimeError("a bug inside Tune's loop"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_a_search_that_dies_ends_its_parent_run(
    error: BaseException, status: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never left RUNNING in MLflow: a crash ends the search's run FAILED, Ctrl-C KILLED."""
    from mlflow import MlflowClient
    from ray import tune

    def die(self: object) -> None:
        raise error

    monkeypatch.setattr(tune.Tuner, "fit", die)
    storage = tmp_path / "runs"
    argv = ["shapes", "--smoke-test", "--name", "dies", "--storage", str(storage)]
    if isinstance(error, KeyboardInterrupt):
        assert cli_main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="a bug inside"):
            cli_main(argv)
    state = json.loads((storage / "dies" / SEARCH_RECORD_FILE).read_text())
    run = MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
    assert run.info.status == status

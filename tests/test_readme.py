"""Every command in the README is run here, so the README cannot go stale.

The commands are read from the README's ``bash`` blocks (continuation lines joined, comments
dropped) and its ``python`` blocks. Each must match exactly one rule below, or the first test
fails: a README command nobody runs is a bug. The rules:

- ``run``: run as written, in the folder where the walkthrough's smoke search ran, after replacing
  the README's placeholders (``RUN_ID``, ``DIR``...) with real values;
- ``dry-run``: the main job and the cluster job run with ``--dry-run`` appended (every check a real
  run makes before its hours of training, then the plan); the smoke search stands in for the rest;
- ``server``, ``dashboard``: started as written (on a free port), answered over HTTP, stopped;
- ``ci``: the test command, which ``.ci/run`` itself runs verbatim from the README;
- ``cloud``: needs an AWS account: ``cluster.yaml`` is validated by tests/test_cluster.py and each
  ``ray`` subcommand and flag the README uses is checked against ``ray``'s own ``--help``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from servers import free_port

from orchestrator.search.lock import LocalLock

pytestmark = pytest.mark.integration  # whole searches: deselected by a plain `pytest`

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

RULES: list[tuple[str, str]] = [  # (regex on the command, how it is exercised)
    (r"^pip install -e '\.\[dev\]' && ", "ci"),
    (r"^pip install -e \. && python -m orchestrator\.search shapes$", "dry-run"),
    (r"^python -m orchestrator\.search shapes --smoke-test --name smoke$", "smoke"),
    (r"^pip install -e \. 'ray\[default\]' boto3$", "cloud"),
    (r"^ray (up|dashboard|attach|exec|down) cluster\.yaml", "cloud"),
    (r"^ray job submit .* -- python -m orchestrator\.search ", "cloud"),
    (r"^mlflow ui ", "server"),
    (r"^optuna-dashboard ", "dashboard"),
    (r"^python -m orchestrator\.", "run"),
    (r"^import mlflow", "python"),
]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def readme_commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        text = re.sub(r"\\\n\s*", "", block)  # join continuation lines
        for line in text.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands + [block.strip() for block in _blocks("python")]


def rule(command: str) -> str:
    found = [kind for pattern, kind in RULES if re.search(pattern, command)]
    assert found, f"README command with no test: {command!r} (add a rule in tests/test_readme.py)"
    return found[0]


def test_every_readme_command_has_a_rule() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    kinds = {rule(c) for c in commands}
    assert {"ci", "dry-run", "smoke", "run", "server", "cloud", "python"} <= kinds


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    lines = README.read_text().splitlines()
    command = lines[lines.index("# install and run the tests") + 1]
    assert rule(command) == "ci"
    assert "awk '/^# install and run the tests$/ {getline; print; exit}' README.md" in (
        REPO / ".ci" / "run").read_text()


def _commands(kind: str) -> list[str]:
    return [c for c in readme_commands() if rule(c) == kind]


@pytest.fixture(scope="module")
def walkthrough(smoke_search: dict[str, Any]) -> dict[str, Any]:
    """The folder the README's commands run in: where the smoke search left ``runs/smoke``."""
    assert smoke_search["argv"] == shlex.split(_commands("smoke")[0])[3:]
    cwd = smoke_search["storage"].parent
    for block in _blocks("yaml"):  # files the README shows, e.g. trial.yaml, named in a first comment
        if named := re.match(r"# (\S+\.yaml)\n", block):
            (cwd / named[1]).write_text(block)
    return {**smoke_search, "cwd": cwd}


def _placeholders(walkthrough: dict[str, Any], shared: Path) -> dict[str, str]:
    from mlflow import MlflowClient

    parent = MlflowClient(walkthrough["tracking_uri"]).get_run(walkthrough["parent_run_id"])
    return {"RUN_ID": parent.data.tags["best_run_id"], "DIR": str(shared)}


def _shell(command: str, cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", _commands("run"))
def test_run_as_written(command: str, walkthrough: dict[str, Any], shared_data: Path) -> None:
    for name, value in _placeholders(walkthrough, shared_data).items():
        command = re.sub(rf"\b{name}\b", value, command)
    done = _shell(command, walkthrough["cwd"])
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    for out in re.findall(r"--out (\S+)", command):  # whatever it says it writes, it wrote
        assert (walkthrough["cwd"] / out).exists(), out


@pytest.mark.parametrize("command", _commands("dry-run"))
def test_main_job_validates_and_plans(command: str, tmp_path: Path) -> None:
    job = command.split(" && ", 1)[1]
    done = _shell(f"{job} --dry-run", tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    if torch.cuda.is_available():  # the space file's budget
        assert "trials: 16" in done.stdout and "metric: fid2k_best (min)" in done.stdout
    else:  # a first run that finishes here: the space's CPU section, said so
        import yaml

        cpu = yaml.safe_load((REPO / "search_spaces" / "shapes.yaml").read_text())["cpu"]
        trials = cpu["budget"]["num_samples"]
        assert "no GPU: the space's cpu: section" in done.stdout and f"trials: {trials}," in done.stdout
        assert "metric: fid256_best (min)" in done.stdout


def test_mlflow_ui_serves_the_runs(walkthrough: dict[str, Any]) -> None:
    (command,) = _commands("server")
    body = _served(command, walkthrough["cwd"], "/api/2.0/mlflow/experiments/search?max_results=10")
    assert '"name": "smoke"' in body.replace('":"', '": "')
    # --app-name orchestrator: MLflow's page with the script that opens a search on its runs
    assert "orchestrator.order_by" in _served(command, walkthrough["cwd"], "/")


def _served(command: str, cwd: Path, path: str) -> str:
    """Start ``command`` on a free port, return what it answers at ``path``, stop it."""
    port = free_port()
    proc = subprocess.Popen(["bash", "-c", f"exec {command} --port {port}"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        pytest.fail(f"{command} did not answer")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def test_optuna_dashboard_serves_the_study(walkthrough: dict[str, Any]) -> None:
    (command,) = _commands("dashboard")
    body = _served(command, walkthrough["cwd"], "/api/studies")
    assert '"study_name": "smoke"' in body.replace('":"', '": "')


def test_python_snippets_run(walkthrough: dict[str, Any], shared_data: Path) -> None:
    for snippet in _commands("python"):
        for name, value in _placeholders(walkthrough, shared_data).items():
            snippet = re.sub(rf"\b{name}\b", value, snippet)
        done = subprocess.run([sys.executable, "-c", snippet], cwd=walkthrough["cwd"], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"{snippet}\n{done.stderr[-2000:]}"


def test_cluster_commands_exist_in_ray(tmp_path: Path) -> None:
    """No AWS here: the job's own command runs with --dry-run, and every ray subcommand and flag the
    README uses is one that ``ray`` knows."""
    for command in _commands("cloud"):
        words = shlex.split(command)
        if words[0] == "pip":
            continue  # the README's install, as in the Quickstart
        sub = words[1:3] if words[1] == "job" else words[1:2]
        helptext = _shell(f"ray {' '.join(sub)} --help", tmp_path, timeout=120)
        assert helptext.returncode == 0, helptext.stderr
        flags = [w.split("=")[0] for w in words[: words.index("--")] if w.startswith("-")] \
            if "--" in words else [w for w in words if w.startswith("-")]
        for flag in flags:
            assert flag in helptext.stdout, f"ray {' '.join(sub)} has no {flag}"
        if "--" in words:  # the job: everything but the cloud storage, checked for real
            job = words[words.index("--") + 1:]
            # a `ray job submit` driver runs on the head with RAY_ADDRESS=auto, set by Ray's job supervisor
            done = _shell(shlex.join(job) + " --dry-run", tmp_path, timeout=300, RAY_ADDRESS="auto")
            assert done.returncode == 0, done.stderr
            assert "food101" in done.stdout and "s3://" in done.stdout


def _documented_errors() -> list[str]:
    text = README.read_text()
    section = re.sub(r"\s*\n\s*", " ", text[text.index("## Troubleshooting"):])
    return re.findall(r"`(error: [^`]+)`", section)


def _other_architecture(walkthrough: dict[str, Any], folder: Path) -> Path:
    """The best trial's generator checkpoint, with a config that names another width."""
    import torch

    source = next(walkthrough["experiment_dir"].glob("trial_*/checkpoint_*/generator.pt"))
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["config"]["ngf"] = 96
    torch.save(checkpoint, folder / "other.pt")
    return folder / "other.pt"


def test_troubleshooting_messages_are_what_the_program_prints(
    walkthrough: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    bad_space = (REPO / "search_spaces" / "shapes.yaml").read_text().replace(
        "lr_g: {loguniform: [1.0e-5, 1.0e-3]}", "lr_g: {loguniform: [0, 1.0e-3]}")
    (tmp_path / "bad.yaml").write_text(bad_space)
    store = f"sqlite:///{walkthrough['experiment_dir'] / 'mlflow.db'}"
    storage = walkthrough["experiment_dir"].parent
    commands = [
        "python -m orchestrator.fid shapes --resolution 32 --n 64 --save-stats x.npz",
        "python -m orchestrator.search food101 --data-root /nonexistent --dry-run",
        "python -m orchestrator.search shapes --smoke-test --mlflow-uri http://127.0.0.1:9",
        "python -m orchestrator.search shapez --dry-run",
        f"python -m orchestrator.search shapes --space {tmp_path / 'bad.yaml'} --dry-run",
        f"python -m orchestrator.sample 0123456789abcdef0123456789abcdef --mlflow-uri {store}",
        f"python -m orchestrator.sample {_other_architecture(walkthrough, tmp_path)} --n 0",
        f"python -m orchestrator.sample {_other_architecture(walkthrough, tmp_path)}",
        "python -m orchestrator.search shapes --limit 0 --dry-run",
        f"python -m orchestrator.search shapes --smoke-test --name smoke --storage {storage} --dry-run",
        f"python -m orchestrator.search shapes --smoke-test --name smoke --storage {storage} --fid-n 64 "
        "--resume --dry-run",
    ]
    if not torch.cuda.is_available():
        commands.append("python -m orchestrator.search shapes --gpus-per-trial 0.25 --dry-run")
    commands.append("ORCHESTRATOR_CACHE= python -m orchestrator.search shapes --dry-run")
    # a driver holds the walkthrough's search (this process, as a running search would): a --resume
    # of it is refused before any work
    held = LocalLock(walkthrough["experiment_dir"], "python -m orchestrator.search shapes --smoke-test")
    held.acquire()
    commands.append(f"python -m orchestrator.search shapes --smoke-test --name smoke --storage {storage} "
                    "--resume")
    documented = {message: re.compile(".*".join(map(re.escape, message.split("...")))) for message in
                  _documented_errors()}
    unmatched = set(documented)
    try:
        outputs = [(c, _shell(c, tmp_path, timeout=300, ORCHESTRATOR_FID_WEIGHTS="/nope")) for c in commands]
    finally:
        held.release()
    for command, done in outputs:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, f"{command}\n{done.stderr[-2000:]}"
        found = [m for m, pattern in documented.items() if pattern.fullmatch(lines[0])]
        assert found, f"README does not show what {command!r} prints: {lines[0]}"
        unmatched -= set(found)
    assert not unmatched, f"README shows messages no command produced: {unmatched}"

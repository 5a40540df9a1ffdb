"""Search spaces: every shipped file loads and samples valid TrialConfigs; every mistake in a file
is one SearchSpaceError line naming the file, the key and the value; start points come first."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from orchestrator.config import TrialConfig
from orchestrator.errors import SearchSpaceError
from orchestrator.space.sampling import (
    SPACES_DIR,
    Param,
    SearchSpace,
    describe,
    load_space,
    make_sampler,
    make_searcher,
    space_path,
    startup_trials,
)
from orchestrator.space.study import open_study_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE_FILES = sorted(SPACES_DIR.glob("*.yaml"))
FIELDS = {f.name for f in dataclasses.fields(TrialConfig)}
DATASETS = ("shapes", "mnist", "fashion-mnist", "cifar10", "food101")


def _active_keys(params: Sequence[Param], values: Mapping[str, Any]) -> set[str]:
    """The keys a sample must hold, worked out independently of orchestrator.space."""
    keys = set()
    for param in params:
        keys.add(param.name)
        keys |= _active_keys(param.when.get(values.get(param.name), ()), values)
    return keys


def _all_params(params: Sequence[Param]) -> list[Param]:
    out = []
    for param in params:
        out.append(param)
        for branch in param.when.values():
            out += _all_params(branch)
    return out


def _objective(params: Mapping[str, Any]) -> float:
    """A deterministic fake FID, so TPE's model (not only its random start-up) gets exercised."""
    return abs(math.log10(params["lr_g"]) + 3.7) + (0.5 if params.get("loss") == "bce" else 0.0)


def _sample(space: SearchSpace, n: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(sampled params, returned constants) for n trials of a study with the searcher's sampler."""
    study = optuna.create_study(sampler=make_sampler(space, seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        study.tell(trial, _objective(trial.params))
        out.append((dict(trial.params), constants))
    return out


# --- the shipped files ----------------------------------------------------------------------


def test_every_dataset_has_a_space() -> None:
    assert {p.stem for p in SPACE_FILES} >= set(DATASETS)
    for dataset in DATASETS:
        assert space_path(dataset) == SPACES_DIR / f"{dataset}.yaml"


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_space_file_keys_are_trial_config_fields(path: Path) -> None:
    space = load_space(path)
    assert set(space.fixed) <= FIELDS
    assert set(space.sampled_keys()) <= FIELDS
    assert not set(space.fixed) & set(space.sampled_keys())
    assert space.start, "every shipped space starts from a known-good setting"
    assert space.budget.grace_period <= space.budget.max_evals
    assert space.resolution == (64 if path.stem == "food101" else 32)


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_samples_build_trial_configs_with_branch_keys_only(path: Path) -> None:
    space = load_space(path)
    for params, constants in _sample(space, n=100, seed=0):
        assert constants == dict(space.fixed)
        assert set(params) == _active_keys(space.params, params)
        config = space.trial_config({**params, **constants})
        for key, value in {**params, **constants}.items():
            assert getattr(config, key) == value
        if "loss" in params:
            assert ("gp_weight" in params) == (params["loss"] == "wgan-gp")
            assert ("label_smoothing" in params) == (params["loss"] == "bce")
            assert ("clip_value" in params) == (params["loss"] == "wgan")
        if "optimizer" in params:
            assert ("beta1" in params) == (params["optimizer"] == "adam")


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_learning_rates_are_log_scale(path: Path) -> None:
    space = load_space(path)
    lrs = [p for p in _all_params(space.params) if p.name.startswith("lr_")]
    assert {p.name for p in lrs} == {"lr_g", "lr_d"}
    for param in lrs:
        assert isinstance(param.distribution, optuna.distributions.FloatDistribution)
        assert param.distribution.log


def test_learning_rates_are_sampled_log_uniformly() -> None:
    """On [1e-5, 1e-3] half the draws fall below 1e-4 on a log scale; about 9 % on a linear one."""
    space = load_space(space_path("shapes"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(300):
        trial = study.ask()
        space.define_by_run(trial)
        draws.append(trial.params["lr_g"])
    below = sum(d < 1e-4 for d in draws) / len(draws)
    assert 0.4 < below < 0.6


def test_same_seed_same_samples() -> None:
    space = load_space(space_path("shapes"))
    first, again = _sample(space, n=20, seed=7), _sample(space, n=20, seed=7)
    assert first == again
    assert _sample(space, n=20, seed=8) != first


def test_describe_names_every_key() -> None:
    space = load_space(space_path("cifar10"))
    text = describe(space)
    for key in [*space.sampled_keys(), *space.fixed]:
        assert key in text
    assert "5000" in text and "when loss=wgan-gp" in text and "2." in text


# --- the searcher ---------------------------------------------------------------------------


def test_start_points_are_the_first_suggestions() -> None:
    space = load_space(space_path("cifar10"))
    assert len(space.start) == 2
    searcher = make_searcher(space, metric="fid5k", mode="min", seed=0)
    for i, start in enumerate(space.start):
        config = searcher.suggest(f"t{i}")
        assert config is not None and config == {**start, **space.fixed}
        space.trial_config(config)  # a complete, valid trial
    later = searcher.suggest("t2")
    assert later is not None and later not in [{**s, **space.fixed} for s in space.start]
    assert set(later) == _active_keys(space.params, later) | set(space.fixed)


def _tpe_chosen(monkeypatch: pytest.MonkeyPatch, num_samples: int, in_flight: int, seed: int) -> int:
    """How many trials of a search TPE chose: the searcher driven as Tune drives it, ``in_flight``
    trials suggested before the oldest reports. A trial counts as random when the TPE sampler
    handed any of its values to its random fallback (its start-up phase), and a start point as
    neither."""
    from ray.tune.search import ConcurrencyLimiter

    random_trials: set[int] = set()
    draw = optuna.samplers.RandomSampler.sample_independent

    def recorded(self: optuna.samplers.RandomSampler, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                 name: str, dist: optuna.distributions.BaseDistribution) -> object:
        random_trials.add(trial.number)
        return draw(self, study, trial, name, dist)

    monkeypatch.setattr(optuna.samplers.RandomSampler, "sample_independent", recorded)
    space = load_space(space_path("shapes"))
    searcher = ConcurrencyLimiter(
        make_searcher(space, "fid2k", "min", seed=seed, num_samples=num_samples), max_concurrent=in_flight)
    running: list[tuple[str, dict]] = []
    for i in range(num_samples):
        while (config := searcher.suggest(f"t{i}")) is None:  # the limiter is full: the oldest reports
            trial_id, done = running.pop(0)
            searcher.on_trial_complete(trial_id, {"fid2k": abs(math.log10(done["lr_g"]) + 3.7)})
        running.append((f"t{i}", config))
    return num_samples - len(random_trials) - len(space.start)


def test_tpe_chooses_most_trials_of_the_default_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's default start-up of 10 random trials left TPE 3 of the default 16 (4 in flight)."""
    assert startup_trials(16) == 3 and startup_trials(1000) == 10
    chosen = _tpe_chosen(monkeypatch, num_samples=16, in_flight=4, seed=0)
    # 1 start point, then trials suggested while 0, 0, 0, 1, 2 trials have reported are random
    assert chosen == 16 - 1 - 5


def test_storage_keeps_the_study_and_enqueues_start_points_once(tmp_path: Path) -> None:
    space = load_space(space_path("shapes"))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="shapes-run")
    make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="shapes-run")
    study = optuna.load_study(study_name="shapes-run", storage=url)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == len(space.start)


def test_a_search_keeps_its_study_in_a_journal_and_an_older_one_its_sqlite_study(tmp_path: Path) -> None:
    from orchestrator.space.study import check_study_storage, local_study

    space = load_space(space_path("shapes"))
    journal = local_study(str(tmp_path), "new")
    assert journal == str(tmp_path / "new" / "optuna.log")
    check_study_storage(journal)
    searcher = make_searcher(space, "fid2k", "min", seed=0, storage=journal, study_name="new")
    assert searcher.suggest("t0") is not None
    assert (tmp_path / "new" / "optuna.log").stat().st_size > 0  # appended as it goes
    older = tmp_path / "old" / "optuna.db"
    make_searcher(space, "fid2k", "min", seed=0, storage=f"sqlite:///{older}", study_name="old")
    assert local_study(str(tmp_path), "old") == f"sqlite:///{older}"  # its --resume finds its study
    assert local_study("s3://bucket/runs", "new") is None


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_searchers_saved_state_stays_small_and_restores(tmp_path: Path, kind: str) -> None:
    """Tune saves the searcher once a second: its state names the study and the running trials only
    (OptunaSearch pickled the whole study, 2 MB at 1,000 trials); a restored searcher tells Optuna
    about a trial that was running when it was saved, and suggests on from the same study."""
    space = load_space(space_path("shapes"))
    url = str(tmp_path / "optuna.log") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    sizes = []
    for i in range(60):
        config = searcher.suggest(f"t{i}")
        assert config is not None
        if i >= 3:  # three stay running; the others end
            searcher.on_trial_complete(f"t{i - 3}", {"fid2k": 100.0 + i})
        if i in (9, 59):
            searcher.save(str(tmp_path / f"state-{i}.pkl"))
            sizes.append((tmp_path / f"state-{i}.pkl").stat().st_size)
    assert sizes[1] < sizes[0] + 2000, sizes  # 50 more finished trials: about the same state
    searcher.on_trial_result("t57", {"fid2k": 50.0, "training_iteration": 1})

    restored = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    restored.restore(str(tmp_path / "state-59.pkl"))
    restored.on_trial_result("t58", {"fid2k": 60.0, "training_iteration": 1})
    restored.on_trial_complete("t57", {"fid2k": 42.0})
    assert restored.suggest("t60") is not None
    study = optuna.load_study(study_name="s", storage=open_study_storage(url))
    trials = study.get_trials()
    assert len(trials) == 61 and sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 58
    by_value = {t.value: t for t in trials if t.value is not None}
    assert by_value[42.0].intermediate_values == {1: 50.0}  # the trial running at the save, told after
    running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 3 and any(t.intermediate_values == {1: 60.0} for t in running)


def test_a_trial_told_after_the_last_save_is_finished_for_the_restored_searcher(tmp_path: Path) -> None:
    """A driver killed after a trial ended (told to the study, on disk at once) but before Tune saved
    its state: the resumed search runs that trial on, and its results must not reach the finished
    Optuna trial (Optuna raises UpdateFinishedTrialError, from inside Tune's loop)."""
    space = load_space(space_path("shapes"))
    url = str(tmp_path / "optuna.log")
    searcher = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.save(str(tmp_path / "state.pkl"))
    searcher.on_trial_result("t0", {"fid2k": 80.0, "training_iteration": 1})
    searcher.on_trial_complete("t0", {"fid2k": 70.0, "training_iteration": 2})  # after the save

    restored = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_result("t0", {"fid2k": 65.0, "training_iteration": 3})  # the trial run on
    restored.on_trial_complete("t0", {"fid2k": 60.0, "training_iteration": 3})
    restored.on_trial_result("t1", {"fid2k": 90.0, "training_iteration": 1})
    study = optuna.load_study(study_name="s", storage=open_study_storage(url))
    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].value == 70.0 and trials[0].intermediate_values == {1: 80.0}  # as it ended
    assert trials[1].intermediate_values == {1: 90.0}


def test_a_resumed_trial_repeating_reported_steps_does_not_tell_them_again(tmp_path: Path) -> None:
    """A trial resumed from a checkpoint older than its last report repeats evaluations the study
    holds: they are not told again (Optuna would keep the first value and warn, once a step, in the
    resume's log); the steps after them are."""
    space = load_space(space_path("shapes"))
    url = str(tmp_path / "optuna.log")
    searcher = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "state.pkl"))
    for step, fid in ((1, 80.0), (2, 70.0)):  # reported after the save, before the kill
        searcher.on_trial_result("t0", {"fid2k": fid, "training_iteration": step})

    restored = make_searcher(space, "fid2k", "min", seed=0, storage=url, study_name="s")
    restored.restore(str(tmp_path / "state.pkl"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "already reported" warning fails the test
        for step, fid in ((2, 71.0), (3, 65.0)):  # resumed from the checkpoint of step 1
            restored.on_trial_result("t0", {"fid2k": fid, "training_iteration": step})
    study = optuna.load_study(study_name="s", storage=open_study_storage(url))
    assert study.trials[0].intermediate_values == {1: 80.0, 2: 70.0, 3: 65.0}


def test_trial_config_drops_inactive_branches_and_rejects_gaps() -> None:
    space = load_space(space_path("shapes"))
    start = dict(space.start[0])
    config = space.trial_config({**start, "gp_weight": 3.0, "n_critic": 4})
    assert config.gp_weight == TrialConfig().gp_weight and config.n_critic == 1
    del start["lr_g"]
    with pytest.raises(SearchSpaceError, match="lacks active keys \\['lr_g'\\]"):
        space.trial_config(start)
    with pytest.raises(SearchSpaceError, match="unknown key 'lr_gen'"):
        space.trial_config({**space.start[0], "lr_gen": 1e-4})
    with pytest.raises(SearchSpaceError, match="fixed"):
        space.trial_config({**space.start[0], "batch_size": 8})


def test_space_path_errors(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match=r"mnits\.yaml.*did you mean 'mnist'.*available: "):
        space_path("mnits")
    with pytest.raises(SearchSpaceError, match="--space"):
        space_path("folder:/data/faces")
    own = tmp_path / "faces.yaml"
    own.write_text("resolution: 64\n")
    assert space_path("folder:/data/faces", override=own) == own
    with pytest.raises(SearchSpaceError, match=r"nope\.yaml"):
        space_path("shapes", override=tmp_path / "nope.yaml")


# --- validation: one line naming the file, the key and the value ----------------------------

BASE: dict[str, Any] = {
    "resolution": 32,
    "budget": {"eval_every": 10, "max_evals": 6, "grace_period": 2, "reduction_factor": 2, "fid_n": 100},
    "fixed": {"batch_size": 16},
    "params": {
        "lr_g": {"loguniform": [1.0e-5, 1.0e-3]},
        "ngf": {"choice": [32, 64]},
        "loss": {
            "choice": ["bce", "wgan", "wgan-gp"],
            "when": {
                "bce": {"label_smoothing": {"uniform": [0.0, 0.2]}},
                "wgan": {"n_critic": {"int": [1, 5]}},
                "wgan-gp": {"n_critic": {"int": [1, 5]}, "gp_weight": {"loguniform": [1.0, 20.0]}},
            },
        },
    },
    "start": [{"lr_g": 2.0e-4, "loss": "bce", "label_smoothing": 0.0}],
}


def _parent(doc: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container of the slash-separated ``path`` and the last part; digits index lists."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = doc
    for part in parents:
        node = node[part]
    return node, last


def _edit(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``path`` to ``value``; value=KeyError deletes it."""

    def edit(doc: dict[str, Any]) -> None:
        node, last = _parent(doc, path)
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return edit


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        node, last = _parent(doc, path)
        node[new] = node.pop(last)

    return edit


WHEN = "params/loss/when"
BAD_FILES = [
    # unknown keys, with did-you-mean
    (_rename("budget", "budgte"), ["unknown key 'budgte'", "did you mean 'budget'"]),
    (_rename("budget/grace_period", "grace_perod"), ["budget", "'grace_perod'", "'grace_period'"]),
    (_rename("fixed/batch_size", "batchsize"), ["fixed", "'batchsize'", "'batch_size'"]),
    (_rename("params/ngf", "ngff"), ["params.ngff", "'ngff'", "did you mean 'ngf'"]),
    (_rename(f"{WHEN}/wgan/n_critic", "ncritic"), ["when.wgan.ncritic", "'n_critic'"]),
    (_rename("params/lr_g/loguniform", "loguniorm"), ["params.lr_g", "did you mean 'loguniform'"]),
    (_rename(f"{WHEN}/wgan-gp", "wgan_gp"), ["params.loss.when", "'wgan_gp'", "'wgan-gp'"]),
    # ranges and distributions
    (_edit("params/lr_g/loguniform", [1.0e-3, 1.0e-5]), ["params.lr_g.loguniform", "0.001"]),
    (_edit(f"{WHEN}/bce/label_smoothing/uniform", [0.1, 0.1]), ["label_smoothing", "[0.1, 0.1]"]),
    (_edit("params/lr_g/loguniform", [0.0, 1.0e-3]), ["params.lr_g", "[0.0, 0.001]", "> 0"]),
    (_edit(f"{WHEN}/wgan/n_critic", {"int": [0, 5], "log": True}), ["n_critic", "[0, 5]"]),
    (_edit(f"{WHEN}/wgan/n_critic", {"int": [1, 5], "step": 3}), ["n_critic.step", "3"]),
    (_edit(f"{WHEN}/wgan/n_critic", {"int": [1.5, 5]}), ["n_critic.int", "[1.5, 5]"]),
    (_edit("params/lr_g", {"uniform": [1.0e-5, 1.0e-3]}), ["params.lr_g.uniform", "loguniform"]),
    (_edit("params/ngf", {"choice": []}), ["params.ngf.choice", "[]"]),
    (_edit("params/ngf", {"uniform": [32, 64]}), ["params.ngf.uniform", "32", "integer"]),
    (_edit("params/ngf", 64), ["params.ngf", "64", "fixed"]),
    (_edit("params/ngf", {"choice": [32], "int": [1, 2]}), ["params.ngf", "exactly one"]),
    (_edit("params/lr_g/step", 2), ["params.lr_g.step", "2", "loguniform"]),
    (_edit(f"{WHEN}/bce/label_smoothing/uniform", [0.0, 0.6]), ["label_smoothing=0.6"]),
    (_edit("params/loss/choice", ["bce", "wgan", "wgan-gp", "hnge"]), ["'hnge'", "'hinge'"]),
    # a key in two places
    (_edit("fixed/ngf", 64), ["params.ngf", "'ngf'", "both fixed (64)"]),
    (
        _edit("params/n_critic", {"int": [1, 5]}),
        ["params.n_critic", "also sampled at params.loss.when.wgan.n_critic"],
    ),
    (_edit(f"{WHEN}/wgan-gp/n_critic", {"choice": [1, 5]}), ["when.wgan-gp.n_critic", "same kind"]),
    # start points
    (_rename("start/0/lr_g", "lr_gen"), ["start[0]", "'lr_gen'", "did you mean 'lr_g'"]),
    (_edit("start/0/lr_g", 0.5), ["start[0].lr_g", "0.5", "loguniform"]),
    (_edit("start/0/loss", "hinge"), ["start[0].loss", "'hinge'"]),
    (_edit("start/0/batch_size", 32), ["start[0].batch_size", "32", "fixed"]),
    (_edit("start/0/n_critic", 3), ["start[0].n_critic", "3", "loss: wgan"]),
    (_edit("start/0/ngf", 48), ["start[0].ngf", "48", "choice 32 | 64"]),
    (_edit("start", {"lr_g": 1e-4}), ["start", "expected a list"]),
    # fixed values TrialConfig rejects
    (_edit("fixed/batch_size", 0), ["fixed", "batch_size=0"]),
    (_edit("fixed/d_norm", "batchnorm"), ["fixed", "'batchnorm'", "did you mean 'batch'"]),
    # budget
    (_edit("budget/grace_period", 10), ["budget.grace_period", "10", "max_evals 6"]),
    (_edit("budget/reduction_factor", 1), ["budget.reduction_factor", "1", ">= 2"]),
    (_edit("budget/fid_n", 1), ["budget.fid_n", "1", ">= 2"]),
    (_edit("budget/eval_every", 0), ["budget.eval_every", "0"]),
    (_edit("budget/max_evals", 2.5), ["budget.max_evals", "2.5"]),
    (_edit("budget/fid_n", KeyError), ["budget", "missing key 'fid_n'"]),
    # top level
    (_edit("resolution", 48), ["resolution", "48", "32, 64"]),
    (_edit("resolution", 32.0), ["resolution", "32.0", "32, 64"]),  # passed, then crashed later
    (_edit("budget/max_evals", 10**21), ["budget.max_evals", str(10**21), "more than 2,147,483,647"]),
    (_edit("params", {}), ["params", "no sampled keys"]),
    (_edit("params", KeyError), ["missing required key 'params'"]),
    # the cpu: section is checked like the file's own sections, and named as its own
    (_edit("cpu", {"budgt": {}}), ["cpu", "unknown key 'budgt'", "did you mean 'budget'"]),
    (_edit("cpu", {"resolution": 64}), ["cpu", "unknown key 'resolution'"]),
    (_edit("cpu", {"params": {"lr_g": {"uniform": [1.0e-4, 1.0e-3]}}}), ["cpu.params.lr_g.uniform"]),
    (_edit("cpu", {"budget": {"eval_every": 10}}), ["cpu.budget", "missing key 'max_evals'"]),
    (_edit("cpu", {"budget": {**BASE["budget"], "num_samples": 0}}), ["cpu.budget.num_samples", "0", ">= 1"]),
    (_edit("cpu", {"fixed": {"ngf": 32}}), ["params.ngf", "both fixed (32)"]),
    (_edit("cpu", {"start": [{"lr_g": 1.0}]}), ["cpu.start[0].lr_g", "1.0"]),
    (_edit("cpu", {"health": {"patience": 0}}), ["cpu", "patience=0"]),
    (_edit("cpu", [1]), ["cpu", "expected a mapping"]),
]


def test_the_cpu_section_replaces_what_it_gives(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["cpu"] = {"budget": {**BASE["budget"], "eval_every": 7, "num_samples": 3, "max_concurrent": 2},
                  "params": {"lr_g": {"loguniform": [1.0e-4, 1.0e-3]}}, "fixed": {"ngf": 32}}
    space = load_space(_write(tmp_path, doc))
    cpu = space.cpu
    assert cpu is not None and cpu.variant == "cpu" and space.variant == ""
    assert (cpu.budget.eval_every, cpu.budget.num_samples, cpu.budget.max_concurrent) == (7, 3, 2)
    assert (space.budget.num_samples, space.budget.max_concurrent) == (None, None)  # the command's
    assert cpu.sampled_keys() == ["lr_g"] and cpu.fixed == {"ngf": 32}  # replaced, not merged
    assert cpu.start == () and space.start  # start points of the file's params: not the cpu's
    assert cpu.resolution == space.resolution and "its cpu: section" in describe(cpu)
    assert space.sampled_keys() != cpu.sampled_keys()


@pytest.mark.parametrize(("edit", "fragments"), BAD_FILES, ids=[str(b[1]) for b in BAD_FILES])
def test_bad_file_is_one_line_naming_file_key_and_value(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], fragments: list[str]
) -> None:
    load_space(_write(tmp_path, BASE))  # the base itself is valid
    doc = copy.deepcopy(BASE)
    edit(doc)
    _expect_error(_write(tmp_path, doc), fragments)


BAD_TEXT = [
    ("params: [1, 2\n", ["not valid YAML"]),
    ("- resolution\n- budget\n", ["expected a mapping", "['resolution', 'budget']"]),
    ("", ["an empty file"]),
    (
        "resolution: 32\nparams:\n  lr_g: {loguniform: [1.0e-5, 1.0e-3]}\n  lr_g: {loguniform: "
        "[1.0e-4, 1.0e-2]}\n",
        ["duplicate key 'lr_g'", "line 4"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_TEXT, ids=[b[1][0] for b in BAD_TEXT])
def test_bad_yaml(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    _expect_error(path, fragments)


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "absent.yaml", ["cannot read"])


def test_a_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    _expect_error(path, ["not a text file"])


def test_numbers_are_read_as_people_write_them(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML) reads 2e-4 as a string; the space's readers take it as the number it is."""
    text = _write(tmp_path, BASE).read_text()
    text = text.replace("loguniform:\n    - 1.0e-05\n    - 0.001", "loguniform: [1e-5, 1E-3]")
    assert "[1e-5, 1E-3]" in text
    path = tmp_path / "written.yaml"
    path.write_text(text)
    lr_g = next(p for p in load_space(path).params if p.name == "lr_g")
    assert (lr_g.distribution.low, lr_g.distribution.high) == (1e-5, 1e-3)  # type: ignore[attr-defined]


def test_branch_twins_and_nested_branches_are_allowed(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["params"]["optimizer"] = {
        "choice": ["adam", "rmsprop"],
        "when": {
            "adam": {"beta1": {"choice": [0.0, 0.5], "when": {0.5: {"beta2": {"uniform": [0.9, 0.999]}}}}}
        },
    }
    space = load_space(_write(tmp_path, doc))
    seen = set()
    for params, _ in _sample(space, n=40, seed=1):
        assert ("beta2" in params) == (params.get("beta1") == 0.5)
        seen.add(params["loss"])
        space.trial_config(params)
    assert seen == {"bce", "wgan", "wgan-gp"}


def _write(tmp_path: Path, doc: Mapping[str, Any]) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _expect_error(path: Path, fragments: list[str]) -> None:
    with pytest.raises(SearchSpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in [str(path), *fragments]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_the_plan_says_what_the_smoke_test_adds(capsys: pytest.CaptureFixture[str]) -> None:
    """--smoke-test runs a start point of its own so ASHA has a trial to stop: the plan says so."""
    from orchestrator.search.cli import parse_args
    from orchestrator.search.plan import make_plan, print_plan

    plan = make_plan(parse_args(["shapes", "--smoke-test", "--gpus-per-trial", "0"]))
    shipped = load_space(space_path("shapes")).start
    assert len(plan.space.start) == len(shipped) + 1 and plan.smoke_weak_start
    print_plan(plan)
    out = capsys.readouterr().out
    assert "smoke test: start point 2 is start point 1 at the lowest learning rates" in out
    assert "after 3 random trials" in out and "optuna.log" in out
    plain = make_plan(parse_args(["shapes", "--gpus-per-trial", "0"]))
    cpu_section = load_space(space_path("shapes")).cpu
    assert cpu_section is not None  # a plain search without a GPU runs the file's cpu: section
    assert plain.space.start == cpu_section.start and not plain.smoke_weak_start

"""TPE over a bounded history (orchestrator/space/bounded.py): Optuna's own suggestions while the
study fits the bound; past it, exactly the best complete, the newest finished and the running trials,
read one trial at a time; a sampler restored from a saved search goes on as if never saved."""

from __future__ import annotations

import collections
import gc
import math
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.space.bounded import BoundedTPESampler
from orchestrator.space.study import open_study_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _params(trial: optuna.Trial) -> float:
    """A small conditional space (TPE's groups, as the shipped spaces have) and a value of it."""
    x = trial.suggest_float("x", 0.0, 1.0)
    if trial.suggest_categorical("kind", ["a", "b"]) == "a":
        return (x - 0.3) ** 2 + math.log10(trial.suggest_float("lr", 1e-4, 1e-1, log=True)) ** 2 / 10
    return (x - 0.7) ** 2 + trial.suggest_int("width", 1, 8) / 20


def _sampler(cls: type, seed: int = 0, **kw: Any) -> optuna.samplers.TPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=5, **kw)


def _search(study: optuna.Study, n: int, at_once: int = 4, restore_at: int = -1) -> list[dict[str, Any]]:
    """``n`` trials, ``at_once`` running (the oldest told first): every 7th failed, every 5th
    pruned after two reports, the rest complete; at trial ``restore_at`` the sampler is saved and
    restored, as a resumed search's is."""
    running: collections.deque = collections.deque()
    asked = []
    for i in range(n):
        if i == restore_at:
            study.sampler = pickle.loads(pickle.dumps(study.sampler))
        if len(running) == at_once:
            trial, value = running.popleft()
            if trial.number % 7 == 3:
                study.tell(trial, state=TrialState.FAIL)
            elif trial.number % 5 == 1:
                trial.report(value + 1, 1)
                trial.report(value + 0.5, 2)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
        trial = study.ask()
        running.append((trial, _params(trial)))
        asked.append(trial.params)
    return asked


def _study(folder: Path, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    return optuna.create_study(storage=open_study_storage(str(folder / f"{name}.log")), sampler=sampler)


def test_within_the_bound_it_suggests_what_optunas_tpe_does(tmp_path: Path) -> None:
    full = _search(_study(tmp_path, "full", _sampler(optuna.samplers.TPESampler)), 60)
    bounded = _search(_study(tmp_path, "bounded", _sampler(BoundedTPESampler, best=10, recent=60)), 60)
    assert bounded == full
    beyond = _search(_study(tmp_path, "small", _sampler(BoundedTPESampler, best=3, recent=12)), 60)
    assert beyond[:17] == full[:17] and beyond != full  # the same until more than 12 have finished


def test_past_the_bound_it_reads_the_best_the_newest_and_the_running(tmp_path: Path) -> None:
    sampler = _sampler(BoundedTPESampler, best=4, recent=10)
    study = _study(tmp_path, "study", sampler)
    _search(study, 80)
    trial = study.ask()
    _params(trial)  # the window is brought up to date for this trial
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    best = {t.number for t in sorted(complete, key=lambda t: t.value)[:4]}
    newest = {t.number for t in finished[-10:]}
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    read = [t.number for t in sampler._window.trials]
    assert read == sorted(best | newest | running)
    assert len(finished) > 60 and len(running) == 5  # past the bound many times; 4 running and this one
    assert any(n not in newest for n in best)  # old best trials are still read
    # TPE's good side over the window is its good side over the whole study
    good = optuna.samplers._tpe.sampler._split_trials
    view = sampler._view(study, trial._cached_frozen_trial)
    assert ([t.number for t in good(view, view._get_trials(deepcopy=False), 4)[0]]
            == sorted(best))


def test_no_suggestion_walks_the_whole_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: collections.Counter = collections.Counter()
    storage_class = type(open_study_storage(str(tmp_path / "probe.log")))
    original = storage_class.get_all_trials

    def counted(self: Any, study_id: int, deepcopy: bool = True, states: Any = None) -> Any:
        reads["all"] += 1
        return original(self, study_id, deepcopy, states)

    for cls, name in ((BoundedTPESampler, "bounded"), (optuna.samplers.TPESampler, "full")):
        study = _study(tmp_path, name, _sampler(cls))
        _search(study, 20)
        monkeypatch.setattr(storage_class, "get_all_trials", counted)
        for _ in range(10):
            _params(study.ask())
        monkeypatch.setattr(storage_class, "get_all_trials", original)
        reads[name], reads["all"] = reads["all"], 0
    # Optuna's ask looks for a waiting trial once (its own, not the sampler's); Optuna's TPE reads the
    # whole study 4 more times a suggestion of this space (more with more groups), each walked several times
    assert reads["bounded"] == 10 and reads["full"] >= 40


def test_a_restored_sampler_goes_on_as_if_never_saved(tmp_path: Path) -> None:
    kept = _search(_study(tmp_path, "kept", _sampler(BoundedTPESampler, best=3, recent=12)), 70)
    sampler = _sampler(BoundedTPESampler, best=3, recent=12)
    _search(_study(tmp_path, "probe", sampler), 40)
    restored = pickle.loads(pickle.dumps(sampler))
    assert len(sampler._window.trials) > 12 and restored._window.trials == []  # read again, not saved
    again = _search(_study(tmp_path, "again", _sampler(BoundedTPESampler, best=3, recent=12)), 70,
                    restore_at=40)  # past the bound: the restored window is read from the study whole
    assert again == kept


def test_the_benchmark_pairs_both_samplers_and_resumes_its_table(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """``bench/tpe_window.py`` at a size within the bound: both samplers suggest the same trials, so
    every paired difference of quality is zero; a rerun reads the seeds it has and runs none again."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import tpe_window

    table = tmp_path / "tpe.csv"
    argv = ["--trials", "50", "--seeds", "2", "--at-once", "4", "--no-record", "--csv", str(table)]
    assert tpe_window.main(argv) == 0
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # a header, then each seed's two samplers
    out = capsys.readouterr().out
    assert "| best value by then | 50 |" in out and "| good trials by then | 50 |" in out
    quality = [line for line in out.splitlines() if "by then | 50 |" in line]
    assert all(line.endswith("| +0.0 [+0.0, +0.0] |") for line in quality), quality
    assert tpe_window.main(argv) == 0
    assert table.read_text().splitlines() == rows and "{'sampler'" not in capsys.readouterr().out


def test_one_sampler_moved_to_another_study_reads_that_study(tmp_path: Path) -> None:
    sampler = _sampler(BoundedTPESampler, best=3, recent=12)
    first = _study(tmp_path, "first", sampler)
    _search(first, 40)
    # the window holds the storage it read, not its id(): a storage collected can leave its id to the
    # next one (CI once saw the second study's storage taken for the first's, and its trial ids looked up)
    assert sampler._window.read_from is not None and sampler._window.read_from[0] is first._storage
    del first
    gc.collect()
    second = _study(tmp_path, "second", sampler)
    _search(second, 6)
    assert [t.number for t in sampler._window.trials] == list(range(6))  # not the first study's 40

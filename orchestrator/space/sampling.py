"""Search spaces as data: one YAML per dataset, validated before Ray starts, sampled define-by-run.

A file holds a resolution, an ASHA budget, constants (``fixed``), sampled keys (``params``, a
closed vocabulary: choice / uniform / loguniform / int, with ``when`` branches under a choice)
and starting points. Every mistake is a one-line ``SearchSpaceError`` naming the file, the key
and the value; ``search_spaces/shapes.yaml`` is the commented reference for the format, and
``orchestrator/space/schema.py`` parses and checks it. This module samples the checked space.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

import orchestrator
from orchestrator.config import CPU_BUDGET, HealthConfig, TrialConfig
from orchestrator.errors import ConfigError, SearchSpaceError, did_you_mean
from orchestrator.space.bounded import BoundedTPESampler
from orchestrator.space.schema import (
    Budget,
    Param,
    active_params,
    describe_distribution,
    is_number,
    parse_space,
    read_space,
    walk_params,
)
from orchestrator.space.study import open_study_storage

if TYPE_CHECKING:
    from orchestrator.space.searcher import StudySearch


def _spaces_dir() -> Path:
    """Where the built-in spaces are: inside the package when installed from a wheel, else at the
    top of the checkout (pyproject maps one onto the other)."""
    package = Path(orchestrator.__file__).resolve().parent
    installed = package / "search_spaces"
    return installed if installed.is_dir() else package.parent / "search_spaces"


SPACES_DIR = _spaces_dir()


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    resolution: int
    budget: Budget
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    start: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]  # the parsed YAML, logged as an artifact
    health: HealthConfig = field(default_factory=HealthConfig)  # failure-detector thresholds
    # the file's `cpu:` variant: what a search runs where its trials compute on this machine's CPU
    cpu: SearchSpace | None = None
    variant: str = ""  # "cpu" for that variant itself

    @property
    def conditional(self) -> bool:
        return any(p.when for p in self.params)

    def sampled_keys(self) -> list[str]:
        return sorted({p.name for p, _ in walk_params(self.params)})

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest the active keys; return the constants, which Ray merges into the config."""
        _sample(self.params, trial)
        return dict(self.fixed)

    def points_to_evaluate(self) -> list[dict[str, Any]]:
        # sampled keys only: OptunaSearch enqueues them and define_by_run's suggest_* calls pick
        # them up; a constant here would be overridden by the returned dict (ray issue #35319)
        return [dict(point) for point in self.start]

    def trial_config(self, sampled: Mapping[str, Any]) -> TrialConfig:
        """fixed + the active sampled keys -> TrialConfig; keys of inactive branches are dropped."""
        active, known = {p.name for p in active_params(self.params, sampled)}, self.sampled_keys()
        missing = sorted(active - set(sampled))
        if missing:  # TrialConfig's default would stand in silently (STYLE.md, practice 1)
            raise SearchSpaceError(f"{self.path}: sampled config lacks active keys {missing}")
        for name, value in sampled.items():
            if name in self.fixed and value != self.fixed[name]:
                raise SearchSpaceError(
                    f"{self.path}: {name}={value!r} but it is fixed at {self.fixed[name]!r}"
                )
            if name not in self.fixed and name not in known:
                raise SearchSpaceError(
                    f"{self.path}: sampled config has unknown key {name!r}{did_you_mean(name, known)}"
                )
        values = {**self.fixed, **{k: v for k, v in sampled.items() if k in active}}
        try:
            return TrialConfig.from_dict(values, source=str(self.path))
        except ConfigError as err:
            raise SearchSpaceError(str(err)) from None


def load_space(path: Path) -> SearchSpace:
    """Parse and validate ``path``; every problem is a one-line SearchSpaceError."""
    path = Path(path)
    raw = read_space(path)

    def variant(cpu: bool) -> SearchSpace:
        s = parse_space(path, raw, cpu)
        own = cpu and "health" in (raw["cpu"] or {})
        health = HealthConfig.from_dict(s.health, f"{path}: cpu" if own else str(path))
        return SearchSpace(path, s.resolution, s.budget, s.fixed, s.params, s.start, raw, health,
                           variant="cpu" if cpu else "")

    cpu = variant(cpu=True) if "cpu" in raw else None
    return dataclasses.replace(variant(cpu=False), cpu=cpu)


def for_this_machine(space: SearchSpace, on_cpu: bool) -> SearchSpace:
    """The space a run of it uses where its trials compute on a CPU or not, its budget the one that
    run uses: on a CPU the file's own ``cpu:`` section, or for a file without one the file with
    ``CPU_BUDGET``'s budget. The one place search, train and fid decide this; a flag (or the smoke
    test) then overrides the budget's values."""
    if not on_cpu:
        return space
    if space.cpu is not None:
        return space.cpu
    return dataclasses.replace(space, budget=dataclasses.replace(space.budget, **CPU_BUDGET))


def space_path(dataset: str, override: Path | None = None) -> Path:
    """search_spaces/<dataset>.yaml, or ``override`` (--space), which folder: datasets need."""
    if override is not None:
        if not Path(override).is_file():
            what = "is not a file" if Path(override).exists() else "does not exist"
            raise SearchSpaceError(f"search space {override} {what}")
        return Path(override)
    if dataset.startswith("folder:"):
        raise SearchSpaceError(f"dataset {dataset!r} has no default search space: pass --space")
    path = SPACES_DIR / f"{dataset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise SearchSpaceError(
            f"no search space {path} for dataset {dataset!r}"
            f"{did_you_mean(dataset, names)}; available: {', '.join(names)}"
        )
    return path


def startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results. Optuna's default, 10, suits budgets of hundreds:
    in the default 16-trial search with 4 in flight it left TPE only the last 3 trials (a trial is
    suggested before the ones still running report). A fifth of the budget, at least 3 (TPE splits
    what it has seen into a better and a worse group and needs some of each), at most Optuna's 10."""
    return max(3, min(10, num_samples // 5))


def make_sampler(space: SearchSpace, seed: int, num_samples: int = 16) -> optuna.samplers.TPESampler:
    """Multivariate TPE; group=True splits conditional keys into the groups that co-occur; the
    random start sized to the budget of ``num_samples`` trials (``startup_trials``); over a bounded
    history (``space/bounded.py``: a suggestion's cost stops growing past a few hundred trials)."""
    with warnings.catch_warnings():
        # these flags are "experimental" in some optuna releases; we opt in knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: concurrent suggestions see running trials as bad, so parallel workers
        # get spread-out configs (ray issue #46965: OptunaSearch ran trials nearly one at a time)
        return BoundedTPESampler(
            seed=seed, multivariate=True, group=space.conditional, constant_liar=True,
            n_startup_trials=startup_trials(num_samples),
        )


def make_searcher(
    space: SearchSpace,
    metric: str,
    mode: str,
    seed: int,
    storage: str | None = None,
    study_name: str | None = None,
    num_samples: int = 16,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> StudySearch:
    """Ray's OptunaSearch over ``space`` (its state saved without the study: ``space/searcher.py``):
    start points first, then TPE (or ``sampler``: the replays of bench/replay.py compare random
    sampling); ``storage`` a DB URL."""
    from orchestrator.space.searcher import StudySearch  # ray is slow to import; loading needn't

    name = study_name or f"{space.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    db = open_study_storage(storage) if storage else None
    points = space.points_to_evaluate()
    if db is not None and name in optuna.study.get_all_study_names(db):
        points = []  # a resumed study: its start points were enqueued the first time
    return StudySearch(
        space.define_by_run,
        metric=metric,
        mode=mode,
        points_to_evaluate=points,
        sampler=sampler or make_sampler(space, seed, num_samples),
        study_name=name,
        storage=db,
        storage_url=storage,
    )


def describe(space: SearchSpace) -> str:
    """The resolved space, one key a line, for --dry-run."""
    b = space.budget
    lines = [
        f"search space {space.path}" + (" (its cpu: section, for trials on this machine's CPU)"
                                        if space.variant == "cpu" else ""),
        f"  resolution  {space.resolution} px",
        f"  budget      an evaluation (FID on {b.fid_n} images) every {b.eval_every} steps,"
        f" at most {b.max_evals} ({b.eval_every * b.max_evals} steps); ASHA rungs at"
        f" evaluations {', '.join(map(str, b.rungs()))} (reduction {b.reduction_factor:g})",
        f"  fixed       {_render(space.fixed) or '(none)'}",
        "  params",
        *_describe_params(space.params, "    "),
        "  start" + ("" if space.start else "       (none: TPE from the first trial)"),
    ]
    lines += [f"    {i}. {_render(point)}" for i, point in enumerate(space.start, 1)]
    return "\n".join(lines)


# --- sampling -------------------------------------------------------------------------------


def _sample(params: Sequence[Param], trial: optuna.Trial) -> None:
    for param in params:
        _sample(param.when.get(param.suggest(trial), ()), trial)


# --- small helpers --------------------------------------------------------------------------


def _render(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if is_number(v) else f"{k}={v}" for k, v in values.items())


def _describe_params(params: Sequence[Param], indent: str) -> list[str]:
    lines = []
    for param in params:
        lines.append(f"{indent}{param.name:<16} {describe_distribution(param.distribution)}")
        for value, branch in param.when.items():
            lines += [f"{indent}  when {param.name}={value}:", *_describe_params(branch, indent + "    ")]
    return lines

"""The search-space file format: its keys, their checks, and the Budget and Params they parse into.

``read_space`` reads one YAML file with a loader that rejects duplicate keys; ``parse_space`` checks every
section against a closed vocabulary and against ``TrialConfig``, and returns the validated pieces
that ``orchestrator.space.load_space`` assembles into a ``SearchSpace``. Every mistake is one
``SearchSpaceError`` line naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from orchestrator.config import MAX_COUNT, RESOLUTIONS, TrialConfig, read_yaml
from orchestrator.errors import ConfigError, SearchSpaceError, did_you_mean

TOP_LEVEL_KEYS = ("resolution", "budget", "fixed", "params", "start", "health", "cpu")
REQUIRED_KEYS = ("resolution", "budget", "params")
# `cpu:` holds what a search of the file runs where its trials compute on this machine's CPU: any of
# these sections, each replacing the file's own (the file's are sized for GPUs)
CPU_KEYS = ("budget", "fixed", "params", "start", "health")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
OPTIONS = {"choice": ("when",), "uniform": (), "loguniform": (), "int": ("step", "log")}
FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrialConfig)}
# STYLE.md: learning rates are always log-scale; a future lr_* field is covered too
LOG_SCALE_KEYS = tuple(name for name in FIELD_TYPES if name.startswith("lr_"))
Condition = tuple[tuple[str, Any], ...]  # (choice key, value) pairs that must all hold
Numeric = FloatDistribution | IntDistribution


@dataclass(frozen=True)
class Budget:
    """ASHA's time unit is one evaluation: ``eval_every`` generator steps, then FID on ``fid_n``."""

    eval_every: int
    max_evals: int  # ASHA max_t
    grace_period: int  # in evaluations
    reduction_factor: float
    fid_n: int  # images per FID, real and generated
    num_samples: int | None = None  # trials; None: the command's default
    max_concurrent: int | None = None  # trials at once; None: the command's default

    def rungs(self) -> list[int]:
        """The evaluations at which ASHA compares trials (Ray's milestones)."""
        rungs, t = [], float(self.grace_period)
        while t <= self.max_evals:
            rungs.append(round(t))
            t *= self.reduction_factor
        return rungs


@dataclass(frozen=True)
class Param:
    """One sampled key; ``when`` maps a choice value to the keys sampled only under it."""

    name: str
    distribution: BaseDistribution
    key: str  # where it sits in the file, e.g. params.loss.when.wgan.n_critic
    when: Mapping[Any, tuple[Param, ...]] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, log=d.log)
        raise TypeError(f"{self.key}: unsupported distribution {d!r}")


# --- walking the param tree ----------------------------------------------------------------


def active_params(params: Sequence[Param], values: Mapping[str, Any]) -> Iterator[Param]:
    """The params active under ``values``: a branch opens when its choice key takes its value."""
    for param in params:
        yield param
        if param.name in values:
            yield from active_params(param.when.get(values[param.name], ()), values)


def walk_params(params: Sequence[Param], cond: Condition = ()) -> Iterator[tuple[Param, Condition]]:
    """Every param with the condition under which it is sampled."""
    for param in params:
        yield param, cond
        for value, branch in param.when.items():
            yield from walk_params(branch, (*cond, (param.name, value)))


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sections:
    """One variant of a space file, validated: the file's own sections, or its ``cpu:`` variant."""

    resolution: int
    budget: Budget
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    start: tuple[dict[str, Any], ...]
    health: Mapping[str, Any]  # thresholds, checked by HealthConfig


def read_space(path: Path) -> dict[str, Any]:
    """``path``'s YAML, its top-level keys checked."""
    top = _At(Path(path))
    raw = _read(top.path)
    _check_keys(raw, TOP_LEVEL_KEYS, top)
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise top.error(f"missing required key {key!r}")
    return raw


def parse_space(path: Path, raw: Mapping[str, Any], cpu: bool = False) -> Sections:
    """The sections of ``raw`` (read from ``path``), all validated; with ``cpu``, those its ``cpu:``
    section gives replace the file's (errors name them ``cpu.params...``)."""
    top = _At(Path(path))
    resolution = raw["resolution"]
    if not _is_int(resolution) or resolution not in RESOLUTIONS:
        raise (top / "resolution").error(f"{resolution!r} is not one of 32, 64")
    over = _mapping(raw.get("cpu"), top / "cpu") if cpu else {}
    _check_keys(over, CPU_KEYS, top / "cpu")

    def section(key: str) -> tuple[Any, _At]:
        return (over[key], top / "cpu" / key) if key in over else (raw.get(key), top / key)

    fixed = _fixed(*section("fixed"))
    params = _params(*section("params"))
    _check_occurrences(params, fixed, top)
    _check_against_config(params, fixed, top)
    # start points name sampled keys: a cpu: section that replaces the params brings its own (or none)
    points, at = section("start") if "start" in over or "params" not in over else ([], top / "cpu" / "start")
    start = _start(points, params, fixed, at)
    health, at = section("health")
    if health is not None and not isinstance(health, Mapping):
        raise at.error(f"expected a mapping of thresholds, got {health!r}")
    return Sections(resolution, _budget(*section("budget")), fixed, params, start, health or {})


@dataclass(frozen=True)
class _At:
    """Where in which file: ``at / "budget"`` descends, ``at.error(...)`` names both."""

    path: Path
    key: str = ""

    def __truediv__(self, name: Any) -> _At:
        return _At(self.path, f"{self.key}.{name}" if self.key else str(name))

    def error(self, message: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.path}: {self.key + ': ' if self.key else ''}{message}")


def _read(path: Path) -> dict[str, Any]:
    data = read_yaml(path, SearchSpaceError)
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"{data!r}"
        raise SearchSpaceError(f"{path}: expected a mapping of keys, got {kind}")
    return data


def _check_keys(node: Mapping[Any, Any], allowed: Sequence[str], at: _At) -> None:
    for key in node:
        if key not in allowed:
            raise at.error(
                f"unknown key {key!r}{did_you_mean(str(key), allowed)} (allowed: {', '.join(allowed)})"
            )


def _mapping(node: Any, at: _At) -> Mapping[Any, Any]:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise at.error(f"expected a mapping, got {node!r}")
    return node


def _budget(node: Any, at: _At) -> Budget:
    names = [f.name for f in dataclasses.fields(Budget)]
    optional = ("num_samples", "max_concurrent")
    node = _mapping(node, at)
    _check_keys(node, names, at)
    for name in names:
        if name not in node and name not in optional:
            raise at.error(f"missing key {name!r}")
    for name in ("eval_every", "max_evals", "grace_period", "fid_n", *optional):
        least = 2 if name == "fid_n" else 1
        if name not in node:
            continue
        if not _is_int(node[name]) or node[name] < least:
            raise (at / name).error(f"{node[name]!r} must be an integer >= {least}")
        if node[name] > MAX_COUNT:
            raise (at / name).error(f"{node[name]!r} is more than {MAX_COUNT:,}: a typo?")
    rf = node["reduction_factor"]
    if not is_number(rf) or rf < 2:
        raise (at / "reduction_factor").error(f"{rf!r} must be a number >= 2")
    if node["eval_every"] * node["max_evals"] > MAX_COUNT:
        raise (at / "max_evals").error(f"{node['max_evals']!r} x eval_every {node['eval_every']!r} is more "
                                       f"steps than a trial can run ({MAX_COUNT:,})")
    if node["grace_period"] > node["max_evals"]:
        raise (at / "grace_period").error(f"{node['grace_period']!r} exceeds max_evals {node['max_evals']!r}")
    return Budget(**{**node, "reduction_factor": float(rf)})


def _fixed(node: Any, at: _At) -> dict[str, Any]:
    node = _mapping(node, at)
    _check_keys(node, list(FIELD_TYPES), at)
    try:
        config = TrialConfig.from_dict(node, source=f"{at.path}: {at.key}")
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    return {name: getattr(config, name) for name in node}  # coerced: "1e-4" -> 0.0001


def _params(node: Any, at: _At) -> tuple[Param, ...]:
    node = _mapping(node, at)
    if not node:
        raise at.error("no sampled keys: a search needs at least one (e.g. lr_g: {loguniform: [1e-5, 1e-3]})")
    return tuple(_param(name, spec, at / name) for name, spec in node.items())


def _param(name: Any, spec: Any, at: _At) -> Param:
    if name not in FIELD_TYPES:
        raise at.error(
            f"unknown key {name!r}{did_you_mean(str(name), FIELD_TYPES)}"
            " (sampled keys are TrialConfig fields)"
        )
    if not isinstance(spec, dict):
        raise at.error(
            f"{spec!r} is not one of {{{', '.join(DISTRIBUTIONS)}: ...}} (constants go under fixed:)"
        )
    _check_keys(spec, (*DISTRIBUTIONS, "when", "step", "log"), at)
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        raise at.error(f"needs exactly one of {', '.join(DISTRIBUTIONS)}, got {kinds!r}")
    kind = kinds[0]
    for option in spec:
        if option != kind and option not in OPTIONS[kind]:
            raise (at / option).error(f"{spec[option]!r} does not apply to {kind}")
    if name in LOG_SCALE_KEYS and kind != "loguniform":
        raise (at / kind).error(
            f"{spec[kind]!r} for a learning rate: use loguniform (learning rates are always log-scale)"
        )
    d = _distribution(kind, spec, at)
    _check_type(name, kind, d, at / kind)
    when = _when(spec["when"], d, at / "when") if "when" in spec else {}
    return Param(name, d, at.key, when)


def _distribution(kind: str, spec: Mapping[str, Any], at: _At) -> BaseDistribution:
    value, where = spec[kind], at / kind
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise where.error(f"{value!r} must be a non-empty list")
        for item in value:
            if not isinstance(item, (str, int, float)) or value.count(item) > 1:
                raise where.error(f"{item!r} is not a distinct number or string")
        return CategoricalDistribution(value)
    if not (isinstance(value, list) and len(value) == 2 and all(map(is_number, value))):
        raise where.error(f"{value!r} must be [low, high]")
    low, high = value
    if low >= high:
        raise where.error(f"range {value!r} is empty or inverted (low >= high)")
    log = kind == "loguniform" or spec.get("log", False)
    if log is True and low <= 0:
        raise where.error(f"log range {value!r} needs bounds > 0")
    if kind != "int":
        return FloatDistribution(float(low), float(high), log=log)
    step = spec.get("step", 1)
    if not (_is_int(low) and _is_int(high)):
        raise where.error(f"{value!r} must be integers")
    if not isinstance(log, bool):
        raise (at / "log").error(f"{log!r} must be true or false")
    if not _is_int(step) or step < 1 or (high - low) % step or (log and step != 1):
        raise (at / "step").error(
            f"{step!r} must be a positive integer dividing high - low (and 1 with log: true)"
        )
    return IntDistribution(low, high, step=step, log=log)


def _check_type(name: str, kind: str, d: BaseDistribution, at: _At) -> None:
    """str fields take a choice of strings; int fields an int range or a choice of integers."""
    values = d.choices if isinstance(d, CategoricalDistribution) else ()
    ok = {
        "str": kind == "choice" and all(isinstance(v, str) for v in values),
        "int": kind == "int" or (kind == "choice" and all(map(_is_int, values))),
        "float": kind != "choice" or all(map(is_number, values)),
    }[FIELD_TYPES[name]]
    if not ok:
        kind_of = {"str": "a string", "int": "an integer", "float": "a number"}[FIELD_TYPES[name]]
        raise at.error(f"{describe_distribution(d)} cannot give {name}, {kind_of} in TrialConfig")


def _when(node: Any, d: BaseDistribution, at: _At) -> dict[Any, tuple[Param, ...]]:
    choices = d.choices if isinstance(d, CategoricalDistribution) else ()
    branches = {}
    for value, sub in _mapping(node, at).items():
        if value not in choices:
            raise at.error(
                f"{value!r} is not among the choices {list(choices)!r}"
                f"{did_you_mean(str(value), map(str, choices))}"
            )
        branches[value] = _params(sub, at / value)
    return branches


def _check_occurrences(params: Sequence[Param], fixed: Mapping[str, Any], at: _At) -> None:
    """A key is sampled in one place at a time, never also fixed; twins share a distribution."""
    seen: dict[str, list[tuple[Param, Condition]]] = {}
    for param, cond in walk_params(params):
        where = _At(at.path, param.key)
        if param.name in fixed:
            raise where.error(f"{param.name!r} is both fixed ({fixed[param.name]!r}) and sampled")
        for other, other_cond in seen.get(param.name, []):
            if not _exclusive(cond, other_cond):
                raise where.error(
                    f"{param.name!r} is also sampled at {other.key} and both can be active together"
                )
            try:  # optuna stores one kind of distribution per name for a whole study
                check_distribution_compatibility(other.distribution, param.distribution)
            except ValueError:
                raise where.error(
                    f"{describe_distribution(param.distribution)} is not the same kind as at"
                    f" {other.key} ({describe_distribution(other.distribution)})"
                ) from None
        seen.setdefault(param.name, []).append((param, cond))


def _exclusive(a: Condition, b: Condition) -> bool:
    """Two branches exclude each other when they need different values of one choice key."""
    need = dict(b)
    return any(name in need and need[name] != value for name, value in a)


def _check_against_config(params: Sequence[Param], fixed: Mapping[str, Any], at: _At) -> None:
    """Every bound and choice must be a valid TrialConfig value (its checks are intervals)."""
    for param, _ in walk_params(params):
        d = param.distribution
        ends = d.choices if isinstance(d, CategoricalDistribution) else _bounds(d)
        for value in ends:
            try:
                TrialConfig.from_dict({**fixed, param.name: value}, f"{at.path}: {param.key}")
            except ConfigError as err:
                raise SearchSpaceError(str(err)) from None


def _start(
    node: Any, params: Sequence[Param], fixed: Mapping[str, Any], at: _At
) -> tuple[dict[str, Any], ...]:
    if node is not None and not isinstance(node, list):
        raise at.error(f"expected a list of points, got {node!r}")
    gates: dict[str, list[Condition]] = {}
    for param, cond in walk_params(params):
        gates.setdefault(param.name, []).append(cond)
    return tuple(
        _start_point(p, params, gates, fixed, _At(at.path, f"{at.key}[{i}]"))
        for i, p in enumerate(node or [])
    )


def _start_point(
    point: Any,
    params: Sequence[Param],
    gates: Mapping[str, list[Condition]],
    fixed: Mapping[str, Any],
    at: _At,
) -> dict[str, Any]:
    """A partial point is fine (TPE samples the rest) but every key given must take effect."""
    point = _mapping(point, at)
    active = {p.name: p for p in active_params(params, point)}
    resolved = {}
    for name, value in point.items():
        if name in fixed:
            raise (at / name).error(
                f"{value!r}, but {name} is fixed ({fixed[name]!r}) and a start point sets sampled keys only"
            )
        if name not in gates:
            raise at.error(
                f"unknown key {name!r}{did_you_mean(str(name), gates)}"
                f" (sampled keys: {', '.join(sorted(gates))})"
            )
        if name not in active:
            need = " or ".join(", ".join(f"{k}: {v}" for k, v in c) for c in gates[name])
            raise (at / name).error(f"{value!r} takes effect only with {need}; set that too")
        resolved[name] = _resolve(active[name].distribution, value, at / name)
    return resolved


def _resolve(d: BaseDistribution, value: Any, at: _At) -> Any:
    """``value`` in optuna's own type when ``d`` contains it, else a SearchSpaceError."""
    if isinstance(d, CategoricalDistribution):
        if value in d.choices and not isinstance(value, bool):
            return d.choices[d.choices.index(value)]
    elif isinstance(d, Numeric) and is_number(value) and d.low <= value <= d.high:
        if isinstance(d, FloatDistribution):
            return float(value)
        if value == int(value) and (value - d.low) % d.step == 0:
            return int(value)
    raise at.error(f"{value!r} is outside {describe_distribution(d)}")


# --- small helpers --------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(d: BaseDistribution) -> tuple[float, float]:
    return (d.low, d.high) if isinstance(d, Numeric) else (math.nan, math.nan)


def describe_distribution(d: BaseDistribution) -> str:
    if not isinstance(d, Numeric):
        return "choice " + " | ".join(map(str, getattr(d, "choices", ())))
    kind = "int" if isinstance(d, IntDistribution) else "uniform"
    step = f" step {d.step}" if isinstance(d, IntDistribution) and d.step != 1 else ""
    return f"{'log' if d.log else ''}{kind} [{d.low:g}, {d.high:g}]{step}"

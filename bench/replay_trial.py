"""A trial that trains nothing: it serves a recorded learning curve (issue 27's replays, issue 28's
searches the size of a cluster).

``Curves`` is a learning-curve table as ``bench/learning_curves.py`` records it (one row per
evaluation: ``config_id``, ``seed``, ``eval``, ``step``, ``train_seconds``, ``eval_seconds``,
``ended``, ``config`` as JSON, and the metrics). A sampler's suggestion meets the table's finite set
of configurations at the nearest recorded one, in the space's own scaling: a log-scaled parameter
by the difference of logarithms over its log range, another number by its difference over its
range, a categorical one by 0 or 1; squared and summed (``nearest``). Of a configuration recorded
with several seeds, each trial serves one, drawn from the replay's seed and the trial's id.

``Curves.synthetic`` makes such a table without training: seeded curves whose floor depends on how
far a configuration lies from a hidden optimum of the space (so a sampler has something to learn),
some of them failing part-way, every evaluation costing the same recorded seconds (issue 28).

``ReplayTrial`` reports one recorded evaluation per Tune iteration, as the GAN trainable would
(every recorded metric, the step, the report keys of ``orchestrator.trial_report``), with the
recorded seconds as ``device_seconds`` (the compute the real trial spent on it), after sleeping them
times ``Curves.time_scale`` so that trials finish in the order their recorded compute says. Its
checkpoints hold what a GAN trial's hold for the driver to read (``Artifacts``: a real generator
file and a sample grid, made once on the driver, and the report). No torch in its worker: this
module imports none, and what it reports says whether any got imported.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from curve_table import COMPLETED, ID_COLUMNS
from ray import tune
from ray.tune.result import DONE

from orchestrator import trial_report as keys
from orchestrator.search.checkpoint_repair import write_tune_result

DEVICE_SECONDS = "device_seconds"  # the recorded compute of the evaluation a result serves


@dataclass(frozen=True)
class Scale:
    """How one parameter's distance is measured: ``kind`` "log", "linear" or "category"."""

    kind: str
    low: float = 0.0
    high: float = 1.0

    def distance(self, a: Any, b: Any) -> float:
        if a is None or b is None or self.kind == "category":
            return 0.0 if a == b else 1.0
        x, y, lo, hi = float(a), float(b), self.low, self.high
        if self.kind == "log":
            x, y, lo, hi = math.log(x), math.log(y), math.log(lo), math.log(hi)
        return abs(x - y) / (hi - lo) if hi > lo else float(x != y)


@dataclass
class Curves:
    """The recorded evaluations of every (configuration, seed), the metric a search ranks on, and
    how the sampled keys are scaled."""

    rows: pd.DataFrame
    metric: str
    scales: dict[str, Scale]
    time_scale: float = 0.0  # wall seconds slept per recorded second
    seed: int = 0  # the replay's: which recorded seed a trial serves
    every: int = 1  # serve every that many recorded evaluations (a coarser evaluation interval)
    configs: dict[int, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        # only runs the recording finished: a run cut short (a machine restart) is not its curve
        rows = self.rows.assign(ended=self.rows["ended"].fillna("").astype(str))
        finished = rows.groupby("run")["ended"].transform(lambda e: (e != "").any())
        self.rows = rows[finished].reset_index(drop=True)
        first = self.rows.drop_duplicates("config_id").set_index("config_id")["config"]
        self.configs = {int(i): json.loads(c) if isinstance(c, str) else dict(c) for i, c in first.items()}

    @classmethod
    def read(cls, path: Path, metric: str, scales: dict[str, Scale], **kw: Any) -> Curves:
        return cls(pd.read_csv(path), metric, scales, **kw)

    @classmethod
    def synthetic(cls, configs: list[dict[str, Any]], metric: str, scales: dict[str, Scale], evals: int,
                  seconds: float, seed: int = 0, fail: float = 0.1, **kw: Any) -> Curves:
        """One seeded made-up curve per configuration, ``evals`` evaluations of ``seconds`` each:
        the metric falls from about 300 towards a floor of 40 plus 200 times the configuration's
        squared distance from a hidden optimum (drawn from ``seed``, in the space's scaling), with
        5 % noise; a fraction ``fail`` of the runs fail part-way (``mode_collapse``)."""
        rng = np.random.default_rng(seed)
        optimum = hidden_optimum(scales, rng)
        rows = []
        for i, config in enumerate(configs):
            floor = synthetic_floor(config, scales, optimum, seed)
            failed_at = int(rng.integers(1, evals + 1)) if rng.uniform() < fail else 0
            for k in range(1, (failed_at or evals) + 1):
                value = (floor + (300.0 - floor) * math.exp(-k / 2)) * float(rng.lognormal(0, 0.05))
                ended = "mode_collapse" if k == failed_at else COMPLETED if k == evals else ""
                rows.append({"run": f"c{i:04d}-s0", "config_id": i, "seed": 0, "eval": k, "step": k,
                             "train_seconds": 0.8 * seconds, "eval_seconds": 0.2 * seconds,
                             "seconds": k * seconds, "ended": ended, "config": json.dumps(config),
                             metric: value})
        return cls(pd.DataFrame(rows), metric, scales, **kw)

    def nearest(self, config: dict[str, Any]) -> tuple[int, float]:
        """The recorded configuration nearest ``config`` and its distance (0: recorded exactly)."""
        def far(recorded: dict[str, Any]) -> float:
            return math.sqrt(sum(s.distance(config.get(k), recorded.get(k)) ** 2
                                 for k, s in self.scales.items()))

        best = min(self.configs, key=lambda i: (far(self.configs[i]), i))
        return best, far(self.configs[best])

    def curve(self, config_id: int, trial_id: str) -> pd.DataFrame:
        """One recorded seed's evaluations of ``config_id``, in order; with ``every`` > 1, every
        ``every``-th of them (and the last: where the run ended), each charged the training of the
        recorded intervals it covers and one evaluation."""
        mine = self.rows[self.rows["config_id"] == config_id]
        seeds = sorted(mine["seed"].unique())
        pick = seeds[zlib.crc32(f"{self.seed}:{trial_id}".encode()) % len(seeds)]
        run = mine[mine["seed"] == pick].sort_values("eval").reset_index(drop=True)
        if self.every == 1:
            return run
        kept = (run["eval"] % self.every == 0) | (run.index == len(run) - 1)
        trained = run["train_seconds"].cumsum()[kept]
        coarse = run[kept].assign(train_seconds=trained.diff().fillna(trained.iloc[0]).to_numpy())
        return coarse.assign(eval=range(1, len(coarse) + 1)).reset_index(drop=True)

    def best(self) -> float:
        """The best value of the metric any recorded evaluation reached (lower is better)."""
        return float(self.rows[self.metric].min())


def hidden_optimum(scales: dict[str, Scale], rng: np.random.Generator) -> dict[str, float | None]:
    """Where the synthetic curves are best: a position in each number's scaling (categories are
    scored by a seeded draw per choice instead, ``_away``)."""
    return {k: (float(rng.uniform()) if s.kind != "category" else None) for k, s in scales.items()}


def synthetic_floor(config: dict[str, Any], scales: dict[str, Scale], optimum: dict[str, float | None],
                    seed: int) -> float:
    """The value a synthetic curve falls towards: 40 plus 200 times the configuration's mean
    squared distance from ``optimum``."""
    far = sum(_away(s, config.get(k), optimum[k], seed) ** 2 for k, s in scales.items())
    return 40.0 + 200.0 * far / max(1, len(scales))


def _away(scale: Scale, value: Any, optimum: float | None, seed: int) -> float:
    """How far ``value`` lies from the hidden optimum, 0 to 1: a number by its position in the
    space's scaling, a category by a seeded draw per choice; a conditional key the configuration
    does not have, not at all."""
    if value is None:
        return 0.0
    if scale.kind == "category" or optimum is None:
        return (zlib.crc32(f"{seed}:{value}".encode()) % 1000) / 1000
    x, lo, hi = float(value), scale.low, scale.high
    if scale.kind == "log":
        x, lo, hi = math.log(x), math.log(lo), math.log(hi)
    return abs((x - lo) / (hi - lo) - optimum) if hi > lo else 0.0


@dataclass(frozen=True)
class Artifacts:
    """What every checkpoint of a replayed trial holds besides its own state, as a GAN trial's
    does: ``files`` (name, bytes: a generator file, a sample grid), made once on the driver, and
    the last report as JSON under ``report_file``. Empty: the state alone."""

    report_file: str = ""
    files: tuple[tuple[str, bytes], ...] = ()


class ReplayTrial(tune.Trainable):
    def setup(self, config: dict[str, Any], curves: Curves,  # type: ignore[override]
              artifacts: Artifacts = Artifacts()) -> None:
        self.curves, self.artifacts = curves, artifacts
        self._serve(config)

    def _serve(self, config: dict[str, Any]) -> None:
        self.config_id, self.distance = self.curves.nearest(config)
        self.served = self.curves.curve(self.config_id, self.trial_id).to_dict("records")
        self.at, self.best, self.started_at = 0, math.inf, time.time()
        self.last_report: dict[str, Any] = {}

    def step(self) -> dict[str, Any]:
        row = self.served[self.at]
        seconds = float(row["train_seconds"]) + float(row["eval_seconds"])
        time.sleep(seconds * self.curves.time_scale)
        metric = self.curves.metric
        value = float(row[metric])
        self.best = min(self.best, value) if math.isfinite(value) else self.best
        self.at += 1
        last = self.at >= len(self.served)
        ended = str(row["ended"]) if last else ""  # "completed", or the failure that stopped the run
        failed = "" if ended in ("", COMPLETED) else ended
        recorded = {k: float(v) for k, v in row.items()  # every metric the recording computed
                    if k not in ID_COLUMNS and isinstance(v, int | float) and not isinstance(v, bool)}
        self.last_report = {
            **recorded, metric: value, f"{metric}_best": self.best, DEVICE_SECONDS: seconds,
            keys.STEP: int(row["step"]), keys.STARTED_AT: self.started_at, keys.REPORTED_AT: time.time(),
            keys.FAILURE: failed, keys.FAILURE_MODE: failed,
            "config_id": self.config_id, "distance": self.distance,
            "torch_imported": int("torch" in sys.modules),
        }
        return {**self.last_report, **({DONE: True} if last else {})}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        folder = Path(checkpoint_dir)
        state = {"config_id": self.config_id, "at": self.at, "best": self.best}
        (folder / "replay.json").write_text(json.dumps(state))
        for name, data in self.artifacts.files:
            (folder / name).write_bytes(data)
        if self.artifacts.report_file:
            (folder / self.artifacts.report_file).write_text(json.dumps(self.last_report, default=float))
        write_tune_result(self, folder)

    def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
        state = json.loads((Path(checkpoint_dir) / "replay.json").read_text())
        self.at, self.best = int(state["at"]), float(state["best"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._serve(new_config)  # a reused actor: the next trial's curve
        return True

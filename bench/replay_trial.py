"""A trial that trains nothing: it serves a recorded learning curve (issue 27's replays, issue 28's
searches the size of a cluster).

``Curves`` is a learning-curve table as ``bench/learning_curves.py`` records it (one row per
evaluation: ``config_id``, ``seed``, ``eval``, ``step``, ``train_seconds``, ``eval_seconds``,
``ended``, ``config`` as JSON, and the metrics). A sampler's suggestion meets the table's finite set
of configurations at the nearest recorded one, in the space's own scaling: a log-scaled parameter
by the difference of logarithms over its log range, another number by its difference over its
range, a categorical one by 0 or 1; squared and summed (``nearest``). Of a configuration recorded
with several seeds, each trial serves one, drawn from the replay's seed and the trial's id.

``ReplayTrial`` reports one recorded evaluation per Tune iteration, with the recorded seconds as
``device_seconds`` (the compute the real trial spent on it), after sleeping them times
``Curves.time_scale`` so that trials finish in the order their recorded compute says. No torch in
its worker: this module imports none, and what it reports says whether any got imported.
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

import pandas as pd
from ray import tune
from ray.tune.result import DONE

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


class ReplayTrial(tune.Trainable):
    def setup(self, config: dict[str, Any], curves: Curves) -> None:  # type: ignore[override]
        self.curves = curves
        self._serve(config)

    def _serve(self, config: dict[str, Any]) -> None:
        self.config_id, self.distance = self.curves.nearest(config)
        self.served = self.curves.curve(self.config_id, self.trial_id)
        self.at, self.best = 0, math.inf

    def step(self) -> dict[str, Any]:
        row = self.served.iloc[self.at]
        seconds = float(row["train_seconds"]) + float(row["eval_seconds"])
        time.sleep(seconds * self.curves.time_scale)
        value = float(row[self.curves.metric])
        self.best = min(self.best, value) if math.isfinite(value) else self.best
        self.at += 1
        last = self.at >= len(self.served)
        ended = str(row["ended"]) if last else ""  # "completed", or the failure that stopped the run
        failed = "" if ended in ("", "completed") else ended
        return {
            self.curves.metric: value, f"{self.curves.metric}_best": self.best, DEVICE_SECONDS: seconds,
            "step": int(row["step"]), "config_id": self.config_id, "distance": self.distance,
            "failure": failed, "failure_mode": failed,
            "torch_imported": int("torch" in sys.modules), "reported_at": time.time(),
            **({DONE: True} if last else {}),
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"config_id": self.config_id, "at": self.at, "best": self.best}
        (Path(checkpoint_dir) / "replay.json").write_text(json.dumps(state))

    def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
        state = json.loads((Path(checkpoint_dir) / "replay.json").read_text())
        self.at, self.best = int(state["at"]), float(state["best"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._serve(new_config)  # a reused actor: the next trial's curve
        return True

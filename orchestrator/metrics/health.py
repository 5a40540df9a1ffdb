"""GAN failure detectors: name the way a trial failed, from its own evaluation history.

They run in the trial loop after every evaluation (``TrialRunner``), so the one-trial CLI and the
Tune trainable stop a dead trial the same way; the trainable then ends the trial at once (Tune's
``done``), before ASHA would, and tags the reason. FID stays the metric ASHA ranks on: these
detectors only add stops, never replace the ranking.

Failure modes:
- ``diverged``: a loss turned NaN or inf (raised by the training step itself);
- ``discriminator_wins``: D rejects every generated image (mean D(G(z)) near 0) while its own loss
  is ~0 or the generator's loss keeps rising: the generator gets no useful gradient;
- ``vanishing_losses``: both losses at ~0 for several evaluations: neither net is learning;
- ``mode_collapse``: realistic generated samples cover a small part of the real data (recall far
  down, most NDB bins different, or their Inception features far less spread than the real ones).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.config import HealthConfig
from orchestrator.trial_report import DISCRIMINATOR_WINS, MODE_COLLAPSE, VANISHING_LOSSES


@dataclass(frozen=True)
class Verdict:
    mode: str  # one of trial_report.FAILURE_MODES
    trigger: str  # the measurement that crossed its threshold
    evidence: dict[str, float]  # the values behind the verdict, at the last evaluation

    def describe(self) -> str:
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.evidence.items())
        return f"{self.mode} on {self.trigger} ({values})"


def check(history: Sequence[Mapping[str, float]], loss: str, config: HealthConfig) -> Verdict | None:
    """The first failure the history shows, judged at its last evaluation; None when healthy."""
    for detector in (_discriminator_wins, _vanishing_losses, _mode_collapse):
        verdict = detector(history, loss, config)
        if verdict is not None:
            return verdict
    return None


def _recent(history: Sequence[Mapping[str, float]], n: int) -> Sequence[Mapping[str, float]] | None:
    return history[-n:] if len(history) >= n else None


History = Sequence[Mapping[str, float]]


def _discriminator_wins(history: History, loss: str, cfg: HealthConfig) -> Verdict | None:
    if loss not in ("bce", "lsgan"):  # only these report D's output as a probability-like score
        return None
    recent = _recent(history, cfg.patience)
    if recent is None or not all(r.get("d_fake", 1.0) < cfg.d_fake_floor for r in recent):
        return None
    d_dead = all(r.get("d_loss", 1.0) < cfg.d_loss_floor for r in recent)
    rising = _recent(history, cfg.g_rise_evals + 1)
    g_rising = rising is not None and all(b["g_loss"] > a["g_loss"] for a, b in itertools.pairwise(rising))
    if not (d_dead or g_rising):
        return None
    last = history[-1]
    evidence = {k: float(last[k]) for k in ("d_fake", "d_loss", "g_loss") if k in last}
    return Verdict(DISCRIMINATOR_WINS, "d_loss" if d_dead else "g_loss", evidence)


def _vanishing_losses(history: History, loss: str, cfg: HealthConfig) -> Verdict | None:
    recent = _recent(history, cfg.patience)
    if recent is None:
        return None
    if all(abs(r.get("d_loss", 1.0)) < cfg.loss_floor and abs(r.get("g_loss", 1.0)) < cfg.loss_floor
           for r in recent):
        last = history[-1]
        return Verdict(VANISHING_LOSSES, "d_loss", {"d_loss": last["d_loss"], "g_loss": last["g_loss"]})
    return None


def _mode_collapse(history: History, loss: str, cfg: HealthConfig) -> Verdict | None:
    recent = _recent(history, cfg.patience)
    if recent is None or len(history) < cfg.start_after + cfg.patience:
        return None
    def realistic(r: Mapping[str, float]) -> bool:
        return r.get("precision", 0.0) >= cfg.precision_floor

    tests: dict[str, Callable[[Mapping[str, float]], bool]] = {
        "diversity_ratio": lambda r: r["diversity_ratio"] < cfg.diversity_min and realistic(r),
        "recall": lambda r: r["recall"] < cfg.recall_min and realistic(r),
        "ndb_k": lambda r: r["ndb_k"] > cfg.ndb_max and realistic(r),
        "mode_coverage": lambda r: r["mode_coverage"] < cfg.coverage_min and r.get("decodable", 0) >= 0.5,
    }
    for key, failing in tests.items():
        if all(key in r and failing(r) for r in recent):
            last = history[-1]
            keys = (*tests, "precision", "decodable")
            return Verdict(MODE_COLLAPSE, key, {k: float(last[k]) for k in keys if k in last})
    return None

"""Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over 10 splits.

It needs the 1008-way classifier of the same Inception pass that gives FID its features: an
extractor whose ``has_classifier`` is False gives no logits, and callers report IS as unavailable
rather than a made-up value.
"""

from __future__ import annotations

import math

import torch

from orchestrator.errors import ConfigError, DataError

SPLITS = 10  # the original's, so scores are comparable with published ones


def inception_score(logits: torch.Tensor, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) of the score over ``splits`` consecutive slices of ``logits`` ``[N, classes]``.

    As in the original code: the softmax runs over all the logits (1008 for the TF network), each
    slice's marginal p(y) is its own mean prediction, and the std is the population std (ddof=0).
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise DataError(f"expected logits [N, classes], got shape {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ConfigError(f"the Inception Score over {splits} splits needs at least {splits} images, got {n}")
    # float64 log-probabilities: confident predictions underflow float32 probabilities to 0
    log_p = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    scores = torch.stack(
        [_split_score(log_p[i * n // splits : (i + 1) * n // splits]) for i in range(splits)]
    )
    return float(scores.mean()), float(scores.std(correction=0))


def _split_score(log_p: torch.Tensor) -> torch.Tensor:
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])  # log of mean p(y|x)
    kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
    return kl.mean().exp()

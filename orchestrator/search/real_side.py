"""The real side of every metric, prepared once by the driver before any trial (``real_side``):
the decoded data, the FID network's name, the reference statistics and the diversity reference.
From the caches when they hold it all; otherwise in a child process that loads the network, so
the network never stays in the driver. ``Clock`` times the driver's phases."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchestrator.data import dataset as datasets
from orchestrator.gan.placement import resolve_device
from orchestrator.metrics.inception import (
    NameOnly,
    NetworkNeeded,
    load_inception,
    network_name,
    resolve_weights,
)
from orchestrator.metrics.reference import RealImages
from orchestrator.search.plan import Plan, print_plan

if TYPE_CHECKING:
    from orchestrator.config import RunSettings
    from orchestrator.data.dataset import CachedDataset
    from orchestrator.metrics.diversity import RealReference
    from orchestrator.metrics.frechet import FeatureStats


def real_side(plan: Plan, clock: Clock) -> tuple[CachedDataset, str, FeatureStats, RealReference]:
    """The decoded data and the real side of every metric, once, before the trials: (data, the FID
    network's name, reference statistics, real reference). Read from the caches where they hold it
    all (every search after the first on a dataset, and every ``--resume``: no network loaded).
    Otherwise prepared in a child process (on its GPU, when the machine has one), so the network
    and its pass over the real images (1.5 GiB held, 2.4 at the peak, for a 256-image reference on
    the CPU) never stay in the driver, which runs the whole search: its memory is the trials'
    (issue 28: at most 2 GiB at 1,000 trials)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    weights = resolve_weights(plan.fid_weights)  # no network: one line before any work
    print_plan(plan)
    if (cached := cached_real_side(plan.settings, NameOnly(network_name(weights)), clock)) is not None:
        return cached
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        data, name, reference, real_ref, seconds = child.submit(
            prepare_real_side, plan.settings, plan.fid_weights).result()
    clock.lap("reference")
    # the child's own phases; what is left of the wall clock (starting it, importing) is the network's load
    seconds["inception"] += clock.seconds.pop("reference") - sum(seconds.values())
    clock.seconds.update(seconds)
    return data, name, reference, real_ref


def cached_real_side(settings: RunSettings, network: NameOnly, clock: Clock
                     ) -> tuple[CachedDataset, str, FeatureStats, RealReference] | None:
    """``real_side``'s result from the caches alone, with the network known by name only, or None
    where any of it would take a pass through the network (no statistics written then; the data
    are decoded and cached, which the child then reads). A resume of 1,000 trials spent about 10 s
    starting the child that loads the network, only to read these files."""
    own = Clock()
    spec = datasets.spec_for(settings)
    data = datasets.prepare_dataset(spec, settings.cache_dir)
    datasets.check_fid_n(settings.fid_n, len(data), spec.name)  # unreadable files skipped
    own.lap("data")
    real = RealImages(data.images, data.key, settings.fid_n, network, settings.cache_dir)
    try:
        reference, real_ref = real.reference()
    except NetworkNeeded:
        return None
    own.lap("reference")
    clock.lap("reference")
    clock.seconds.update(inception=0.0, **own.seconds)
    return data, network.name, reference, real_ref


def prepare_real_side(settings: RunSettings, fid_weights: str | None
                      ) -> tuple[CachedDataset, str, FeatureStats, RealReference, dict[str, float]]:
    """``real_side``'s work, in the child: also how long each part took."""
    clock = Clock()
    spec = datasets.spec_for(settings)
    extractor = load_inception(fid_weights, device=resolve_device("auto"))
    clock.lap("inception")
    data = datasets.prepare_dataset(spec, settings.cache_dir)
    datasets.check_fid_n(settings.fid_n, len(data), spec.name)  # unreadable files skipped
    clock.lap("data")
    real = RealImages(data.images, data.key, settings.fid_n, extractor, settings.cache_dir)
    reference, real_ref = real.reference(device=extractor.device)
    clock.lap("reference")
    return data, extractor.name, reference, real_ref, clock.seconds


class Clock:
    """The driver's phases in seconds, each from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now

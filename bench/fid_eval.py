"""Seconds to score N generated images: the product's FID path vs pytorch-fid's own.

A 64-px DCGAN generator (trained ``--train-steps`` steps on ``shapes``, so its images are not noise)
draws N images from the fixed evaluation latents. The reference is N real ``shapes`` images, whose
statistics each side computes once, untimed (the product caches them per dataset).

- product: what ``orchestrator.trial.TrialRunner.evaluate`` does: ``generated_features`` on the
  generator's batches (generation and Inception in one stream, feature moments accumulated on the
  device), then ``fid`` against ``RealImages.stats``;
- pytorch-fid: the same images written as PNGs (as a user of pytorch-fid would), then
  ``pytorch_fid.fid_score.calculate_fid_given_paths([pngs, reference.npz])``, its reference
  ``.npz`` made by its own ``save_fid_stats`` from the real images as PNGs.

Both use the same Inception weights: the product's loader finds them (``load_inception``) and its
``read_weights`` maps them for pytorch-fid's network, served through the product's own hook, as
tests/test_inception.py does. Reports both times, the speed ratio and the relative FID difference
(target: <= 0.5 %, judged where N > 2048: with fewer images than Inception's 2,048 feature
dimensions both covariances are singular, and pytorch-fid's ``sqrtm`` may return a complex root and
refuse), and, untimed, each side's distance on the other's statistics. On a GPU, also the product's
FID with the feature pass in TF32 (cuDNN's default) instead of IEEE fp32, to show what fp32 buys.
Exit status 1 when the target is missed (a ``FAIL target:`` line says so).

    PYTHONPATH=. python bench/fid_eval.py [--device cuda] [--n 10000] [--train-steps 300]
    PYTHONPATH=. python bench/fid_eval.py --device cpu --n 64 --batch 32 --pfid-batch 32 \
        --train-steps 0 --no-record                                       # a check that it runs
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import add_common_args, rate, report, table, target, timed
from PIL import Image
from pytorch_fid import fid_score
from step_throughput import make

from orchestrator.config import RunSettings
from orchestrator.data.shapes import draw_shapes
from orchestrator.gan.step import GANState, fixed_latents, generate, train_step
from orchestrator.metrics import inception
from orchestrator.metrics.frechet import (
    MAX_KEEP,
    FeatureStats,
    fid,
    generated_features,
)
from orchestrator.metrics.reference import RealImages

DIMS = 2048
JUDGED_ABOVE = DIMS  # the target is judged where n exceeds this: below it pytorch-fid's sqrtm is ill-posed


def trained_generator(device: torch.device, steps: int) -> GANState:
    state, data = make(device, 64)  # the product's default on the device
    for _ in range(steps):
        train_step(state, data)
    return state


def sampler(state: GANState, latents: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """Images from ``latents`` in order, whatever batch sizes are asked: trial.py's sampler."""
    offset = 0

    def sample(n: int) -> torch.Tensor:
        nonlocal offset
        z = latents[offset : offset + n]
        offset += n
        return generate(state, z)

    return sample


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats -> uint8 [N, H, W, C], rounded as the product's image grids are."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def write_pngs(folder: Path, hwc: np.ndarray, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(hwc, start):
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(folder / f"{i:06d}.png")


def cross_check(state: GANState, latents: torch.Tensor, reference: FeatureStats, fake: FeatureStats,
                extractor: inception.InceptionExtractor, batch: int) -> tuple[float, float]:
    """Splits a difference between the two FIDs: the product's FID of the images rounded to uint8 (as
    the PNGs hold them), and pytorch-fid's distance (scipy sqrtm) on the product's statistics."""
    sample = sampler(state, latents)

    def rounded(n: int) -> torch.Tensor:
        return sample(n).clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)

    on_rounded, _, _ = generated_features(rounded, len(latents), extractor, batch_size=batch, max_keep=0)
    theirs_on_ours = fid_score.calculate_frechet_distance(*reference.mean_cov(), *fake.mean_cov())
    return fid(reference, on_rounded), float(theirs_on_ours)


def pfid_workers() -> int:
    """pytorch-fid's command line default: min(8, available cores)."""
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--n", type=int, help="images scored (default 10000 on cuda, else 200)")
    p.add_argument("--batch", type=int, default=100, help="the product's batch (trial.py's EVAL_BATCH)")
    p.add_argument("--pfid-batch", type=int, default=50, help="pytorch-fid's batch (its CLI default)")
    p.add_argument("--train-steps", type=int, default=300, help="generator steps before scoring")
    p.add_argument("--no-cross-check", dest="cross_check", action="store_false",
                   help="skip the untimed check of where a FID difference comes from")
    p.add_argument("--fid-weights", type=Path, help="Inception weights (default: the product's search)")
    args = p.parse_args()
    device = torch.device(args.device)
    n = args.n or (10000 if device.type == "cuda" else 200)
    extractor = inception.load_inception(args.fid_weights, device=device)
    weights, _ = inception.read_weights(inception.resolve_weights(args.fid_weights))
    state = trained_generator(device, args.train_steps)
    latents = fixed_latents(state.config.nz, n, RunSettings().eval_seed)
    real, _ = draw_shapes("train", 64, n)

    with tempfile.TemporaryDirectory(prefix="fid-eval-") as tmp:
        folder = Path(tmp)
        reference = RealImages(real, f"bench-shapes-64-{n}", n, extractor, folder, progress=False).stats()
        write_pngs(folder / "real", real.transpose(0, 2, 3, 1))
        # the product's hook serves the mapped weights to pytorch-fid's own loader (no download)
        with inception._serving(weights):
            fid_score.save_fid_stats([str(folder / "real"), str(folder / "real.npz")], args.pfid_batch,
                                     device, DIMS, pfid_workers())
        extractor(generate(state, latents[: min(n, 8)]))  # warm-up: kernels and handles, both paths

        ours: dict[str, float] = {}
        fakes: list[FeatureStats] = []

        def run_product() -> None:  # what TrialRunner.evaluate does for the FID
            fake, _, _ = generated_features(sampler(state, latents), n, extractor, batch_size=args.batch,
                                            max_keep=MAX_KEEP)
            ours["distance_s"] = timed(lambda: ours.update(fid=fid(reference, fake)), device)
            fakes.append(fake)

        product_s = timed(run_product, device)

        theirs: dict[str, float] = {}

        def write_generated() -> None:
            for start in range(0, n, args.batch):
                images = generate(state, latents[start : start + args.batch])
                write_pngs(folder / "fake", to_uint8(images), start)

        def run_pfid() -> None:
            with inception._serving(weights):
                try:
                    theirs["fid"] = fid_score.calculate_fid_given_paths(
                        [str(folder / "fake"), str(folder / "real.npz")], args.pfid_batch, device, DIMS,
                        pfid_workers())
                except ValueError as err:  # "Imaginary component ...": its sqrtm on singular covariances
                    theirs["fid"], theirs["error"] = float("nan"), str(err)

        write_s = timed(write_generated, device)
        pfid_s = timed(run_pfid, device)
        crossed = None
        if args.cross_check:
            crossed = cross_check(state, latents, reference, fakes[0], extractor, args.batch)
        tf32 = tf32_fid(state, latents, reference, extractor, args.batch) if device.type == "cuda" else None

    total_pfid = write_s + pfid_s
    rel = abs(ours["fid"] - theirs["fid"]) / abs(theirs["fid"])
    rows = [
        ["product (generated_features + fid)", f"{product_s:.2f}", rate(n / product_s), f"{ours['fid']:.4f}"],
        ["  of which the Fréchet distance", f"{ours['distance_s']:.3f}", "", ""],
        ["pytorch-fid (PNGs + calculate_fid_given_paths)", f"{total_pfid:.2f}", rate(n / total_pfid),
         f"{theirs['fid']:.4f}"],
        ["  of which generating and writing PNGs", f"{write_s:.2f}", "", ""],
    ]
    lines = table(["path", "seconds", "img/s", f"FID (n={n})"], rows)
    lines += ["", f"Speed-up {total_pfid / product_s:.2f}x; relative FID difference {rel:.3%} "
              f"(target <= 0.5 %, judged where n > {JUDGED_ABOVE}); generator trained {args.train_steps} "
              "steps; "
              f"product batch {args.batch}, pytorch-fid batch {args.pfid_batch} with {pfid_workers()} loader "
              f"workers; weights {extractor.name}."]
    if "error" in theirs:
        lines += ["", f"pytorch-fid refused: {theirs['error']}"]
    if crossed is not None:
        lines += ["", "Where a difference comes from (untimed): the product's FID of the same images rounded "
                  f"to uint8 as in the PNGs {crossed[0]:.4f} (the rest is the two pipelines); pytorch-fid's "
                  f"distance (scipy sqrtm) on the product's statistics {crossed[1]:.4f} (vs the product's "
                  "eigenvalue form)."]
    if tf32 is not None:
        lines += ["", "The feature pass in TF32 (cuDNN's default for fp32 convolutions) instead of IEEE "
                  "fp32: "
                  f"FID {tf32:.4f}, {abs(tf32 - ours['fid']) / ours['fid']:.3%} from the fp32 pass."]
    report("fid_eval", device, lines, args)
    judged = n > JUDGED_ABOVE
    return target(rel <= 0.005 if judged else None,
                  f"the product's FID within 0.5 % of pytorch-fid's: {rel:.3%} at n={n}"
                  + ("" if judged else f" (not judged: n <= {JUDGED_ABOVE})"))


def tf32_fid(state: GANState, latents: torch.Tensor, reference: FeatureStats,
             extractor: inception.InceptionExtractor, batch: int) -> float:
    """The product's FID of the same images with the feature pass's fp32 switches left as the process
    has them (cuDNN: TF32 convolutions), untimed; the reference stays fp32, as a cache would hold it."""
    loose = copy.copy(extractor)
    loose.exact = False
    fake, _, _ = generated_features(sampler(state, latents), len(latents), loose, batch_size=batch,
                                    max_keep=0)
    return fid(reference, fake)


if __name__ == "__main__":
    sys.exit(main())

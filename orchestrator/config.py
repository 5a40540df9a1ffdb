"""Frozen configuration: ``TrialConfig`` (what a search varies), ``RunSettings`` (where it runs) and
``HealthConfig`` (the failure detectors' thresholds).

A trial's hyperparameters arrive as a plain dict (Ray's ``config``, a YAML file) and are turned
into a ``TrialConfig`` exactly once, by ``TrialConfig.from_dict``: an unknown key or a value out of
range is a ``ConfigError`` naming it, never a silent default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError, OrchestratorError, SearchSpaceError, did_you_mean, first_line

LOSSES = ("bce", "wgan", "wgan-gp", "hinge", "lsgan")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
D_NORMS = ("batch", "spectral", "none")
RESOLUTIONS = (32, 64)
MAX_COUNT = 2**31 - 1  # Ray, Optuna and torch keep counts in 32 or 64 bits: a larger one is a typo
# image files a folder dataset or a folder of samples may hold (what PIL reads; compared lower-case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # what a trial computes in (orchestrator.gan.placement)
# a search (and the one-trial CLI) whose trials run on this machine's CPU, of a built-in space that
# has no cpu: section of its own (shapes.yaml has one, measured to train a working GAN here): the
# space files' budgets are GPU-sized (hours here), this one finishes in minutes on 2 cores and
# checks the machinery more than it trains: 6 trials, 2 at once, each at most 4 evaluations of 50
# steps (rungs at 1 and 2), FID on 256 images
CPU_BUDGET = {"num_samples": 6, "max_evals": 4, "grace_period": 1, "reduction_factor": 2, "eval_every": 50,
              "fid_n": 256, "max_concurrent": 2}


@dataclass(frozen=True)
class TrialConfig:
    """Everything a search may vary about one GAN trial. Defaults are DCGAN's (Radford et al. 2016)."""

    nz: int = 100  # latent size
    ngf: int = 64  # generator base width
    ndf: int = 64  # discriminator base width
    d_norm: str = "batch"
    leaky_slope: float = 0.2
    d_dropout: float = 0.0
    loss: str = "bce"
    label_smoothing: float = 0.0  # one-sided: real targets become 1 - label_smoothing (bce only)
    clip_value: float = 0.01  # wgan weight clipping
    gp_weight: float = 10.0  # wgan-gp gradient penalty
    optimizer: str = "adam"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    momentum: float = 0.0  # sgd / rmsprop
    n_critic: int = 1  # discriminator steps per generator step
    batch_size: int = 64
    ema_decay: float = 0.0  # 0 disables the EMA generator

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "trial config") -> TrialConfig:
        """Build and validate; ``source`` names where the values came from in error messages."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(key, names)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                kwargs[f.name] = _coerce(values[f.name], f.type, f"{source}: {f.name}")
        config = cls(**kwargs)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: Path) -> TrialConfig:
        return cls.from_dict(load_yaml_mapping(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "trial config") -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: {key}={getattr(self, key)!r} must be {rule}")

        for key, choices in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("d_norm", D_NORMS)):
            value = getattr(self, key)
            if value not in choices:
                raise ConfigError(
                    f"{source}: {key}={value!r} is not one of {', '.join(choices)}"
                    f"{did_you_mean(str(value), choices)}"
                )
        for key in ("nz", "ngf", "ndf", "n_critic"):
            need(1 <= getattr(self, key) <= 4096, key, "an integer in [1, 4096]")
        need(1 <= self.batch_size <= 65536, "batch_size", "an integer in [1, 65536]")
        for key in ("lr_g", "lr_d"):
            need(0 < getattr(self, key) <= 10, key, "in (0, 10]")
        for key in ("beta1", "beta2", "momentum", "d_dropout", "ema_decay"):
            need(0 <= getattr(self, key) < 1, key, "in [0, 1)")
        need(0 <= self.leaky_slope < 1, "leaky_slope", "in [0, 1)")
        need(0 <= self.label_smoothing < 0.5, "label_smoothing", "in [0, 0.5)")
        need(0 < self.clip_value <= 10, "clip_value", "in (0, 10]")
        need(0 <= self.gp_weight <= 1000, "gp_weight", "in [0, 1000]")


@dataclass(frozen=True)
class HealthConfig:
    """The failure detectors' thresholds (``metrics.health``); the ``health:`` section of a
    search-space file overrides any of them."""

    start_after: int = 3  # evaluations before collapse checks: an untrained generator looks collapsed
    patience: int = 2  # consecutive evaluations a condition must hold
    d_fake_floor: float = 0.01  # mean D(G(z)) below this: D rejects everything (bce, lsgan)
    d_loss_floor: float = 0.01  # ... and D's loss below this: D has nothing left to learn
    g_rise_evals: int = 3  # ... or the G loss rose over this many evaluations in a row
    loss_floor: float = 1e-4  # |D loss| and |G loss| both below this: vanishing losses
    # collapse is realistic samples of too few kinds; an untrained generator has low recall, high
    # NDB and little spread too (early on it draws the same blob for every z), but its samples are
    # not realistic: recall, NDB, spread and coverage only count when precision (or, on shapes, the
    # decodable fraction) shows the samples look real
    precision_floor: float = 0.5
    recall_min: float = 0.02  # recall below this: generated samples miss most of the real data
    ndb_max: float = 0.9  # NDB/K above this: almost every bin differs from the real data
    diversity_min: float = 0.2  # feature spread of generated / real below this: too few kinds
    coverage_min: float = 0.0  # shapes only: fraction of the 32 classes produced (0 disables)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> HealthConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in names:
                raise SearchSpaceError(f"{source}: health: unknown key {key!r}{did_you_mean(key, names)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SearchSpaceError(f"{source}: health: {key}={value!r} must be a number")
            kwargs[key] = value
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str) -> None:
        ranges = {
            "start_after": (0, 10_000), "patience": (1, 1000), "g_rise_evals": (1, 1000),
            "d_fake_floor": (0, 0.5), "d_loss_floor": (0, 10), "loss_floor": (0, 1),
            "recall_min": (0, 1), "ndb_max": (0, 1), "diversity_min": (0, 1), "coverage_min": (0, 1),
            "precision_floor": (0, 1),
        }
        for key, (low, high) in ranges.items():
            value = getattr(self, key)
            integer = key in ("start_after", "patience", "g_rise_evals")
            if not (low <= value <= high) or (integer and value != int(value)) or math.isnan(value):
                kind = "an integer" if integer else "a number"
                raise SearchSpaceError(f"{source}: health: {key}={value!r} must be {kind} in [{low}, {high}]")


@dataclass(frozen=True)
class RunSettings:
    """Where and how a trial runs: never searched, the same for every trial of a search."""

    dataset: str = "shapes"
    resolution: int = 32
    data_root: Path | None = None
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    download: bool = False
    classes: tuple[str, ...] | None = None
    max_images: int | None = None  # use at most this many training images
    eval_every: int = 500  # generator steps between evaluations
    fid_n: int = 5000  # generated (and real) images per FID
    eval_seed: int = 12345  # fixes the latents of every FID and every image grid
    seed: int = 0  # fixes weights and data order
    device: str = "auto"  # "auto" picks cuda when present
    precision: str = "auto"  # autocast dtype: auto | bf16 | fp16 | fp32 (orchestrator.gan.placement)
    health: HealthConfig = field(default_factory=HealthConfig)  # failure-detector thresholds

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution {self.resolution} is not supported: use 32 or 64")
        if self.fid_n < 2:
            raise ConfigError(f"fid_n={self.fid_n} must be at least 2")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every={self.eval_every} must be at least 1")
        check_choice("precision", self.precision, PRECISIONS)


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigError(f"{flag} {value!r} is not one of {', '.join(choices)}{hint}")
    return value


def default_cache_dir() -> Path:
    """``$ORCHESTRATOR_CACHE`` or ``~/.cache/orchestrator``: decoded datasets and FID statistics. An
    empty variable is refused like every empty path (it would mean the current folder)."""
    import os

    cache = os.environ.get("ORCHESTRATOR_CACHE")
    if cache is not None:
        if not cache.strip():
            raise ConfigError("$ORCHESTRATOR_CACHE is set but empty: point it at a folder, or unset it "
                              "for ~/.cache/orchestrator")
        return Path(cache)
    home = os.environ.get("HOME")
    if home is not None and not home.strip():
        raise ConfigError("$HOME is empty, so there is no ~/.cache: set $ORCHESTRATOR_CACHE to a folder")
    try:
        return Path.home() / ".cache" / "orchestrator"
    except (RuntimeError, KeyError):  # no HOME and no entry in the password database
        raise ConfigError("no home folder for ~/.cache: set $ORCHESTRATOR_CACHE to a folder") from None


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as people write them and refusing a key given twice.

    PyYAML follows YAML 1.1, where a float needs a dot: ``2e-4`` would be the string "2e-4". The
    extra resolver reads it as YAML 1.2 (and JSON, and Python) do."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        # an alias repeats a node by reference: a few lines of them (a "billion laughs") unfold
        # into more values than memory holds as soon as anything walks them
        if self.check_event(yaml.AliasEvent):  # type: ignore[no-untyped-call]
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not read here: write the "
                                              "value out", mark)
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]  # type: ignore[no-untyped-call]
        for i, key in enumerate(keys):
            if key in keys[:i]:  # PyYAML would keep the last: an lr_g given twice is a mistake
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.value[i][0].start_mark
                )
        return super().construct_mapping(node, deep=deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path, error: type[OrchestratorError] = ConfigError) -> Any:
    """``path``'s YAML document; ``error`` (one line naming the file) when it cannot be read, is not
    UTF-8 text or is not YAML."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, or a pipe that would never end
        raise error(f"{path}: not a file")
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=YamlLoader)  # a SafeLoader
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (not UTF-8)") from None
    except ValueError as err:  # an integer of thousands of digits
        raise error(f"{path}: a value out of range: {first_line(err)}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{path}: not valid YAML{line}: {problem}") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Accept YAML's and Optuna's spellings (1e-4 as str, 64.0 as float) of the declared type."""
    kind = {"int": int, "float": float, "str": str}[str(annotation)]
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={value!r} must be a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}={value!r} must be finite")
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return int(number)
    return number

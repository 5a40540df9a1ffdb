"""A search's record beside Tune's state (``orchestrator.json``): where its MLflow runs are, what
defines it (``SearchIdentity``), and the command that started it; and the checks a new search and a
resume make against the folder it names. Typed here, JSON on disk: the file format is unchanged, and
a record written before searches recorded their identity still resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.atomic import atomic_write
from orchestrator.errors import ConfigError, first_line
from orchestrator.search.lock import LOCK_FILE
from orchestrator.space.study import SQLITE_STUDY_FILE, STUDY_FILE
from orchestrator.tracking.store import ARTIFACTS_FOLDER, STORE_FILE

if TYPE_CHECKING:
    from orchestrator.search.plan import Plan

SEARCH_RECORD_FILE = "orchestrator.json"  # beside Tune's experiment state: the MLflow ids of this search
# what a search's folder holds before its first trial: its lock, and what a start cut short made
OWN_FILES = (LOCK_FILE, STORE_FILE, STUDY_FILE, SQLITE_STUDY_FILE, ARTIFACTS_FOLDER)


class DamagedRecord(ValueError):
    """Valid JSON, but not the record a search writes."""


@dataclasses.dataclass(frozen=True)
class SearchIdentity:
    """What makes a search this search: its data, its space file, its budget, its seeds and its
    resources. A resume that differs would put two searches' trials into one, so it is refused.
    JSON types only: the record holds it as written."""

    dataset: str
    data_root: str | None
    classes: list[str] | None
    limit: int | None
    resolution: int
    space_file_sha256: str
    smoke_test: bool
    num_samples: int
    max_evals: int
    eval_every: int
    fid_n: int
    grace_period: int
    reduction_factor: float
    seed: int
    eval_seed: int
    device: str
    precision: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    fid_weights: str | None
    # where its runs and its study are: a resume elsewhere would not find them
    mlflow_uri: str | None
    study_storage: str | None

    @classmethod
    def of(cls, plan: Plan) -> SearchIdentity:
        s = plan.settings
        return cls(
            dataset=s.dataset, data_root=str(s.data_root) if s.data_root else None,
            classes=list(s.classes) if s.classes else None, limit=s.max_images, resolution=s.resolution,
            space_file_sha256=hashlib.sha256(Path(plan.space.path).read_bytes()).hexdigest(),
            smoke_test=plan.smoke_weak_start, num_samples=plan.num_samples, max_evals=plan.max_evals,
            eval_every=s.eval_every, fid_n=s.fid_n, grace_period=plan.grace_period,
            reduction_factor=plan.reduction_factor, seed=s.seed, eval_seed=s.eval_seed, device=s.device,
            precision=s.precision, cpus_per_trial=plan.resources["cpu"], gpus_per_trial=plan.resources["gpu"],
            max_concurrent=plan.max_concurrent, fid_weights=plan.fid_weights,
            mlflow_uri=plan.tracking_uri, study_storage=plan.study_storage,
        )

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # as the record will read back

    def differences(self, started: dict[str, Any]) -> list[str]:
        """The keys a recorded identity gives another value (keys it lacks: recorded before them)."""
        now = self.as_json()
        return [key for key in now if key in started and started[key] != now[key]]


@dataclasses.dataclass(frozen=True)
class SearchRecord:
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    identity: dict[str, Any] | None = None  # None: written before searches recorded it
    command: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> SearchRecord:
        """Raises ``DamagedRecord`` for anything that is not the record a search writes."""
        if not isinstance(value, dict) or not value.get("parent_run_id"):
            raise DamagedRecord("not the record a search writes")
        identity = value.get("identity")
        return cls(experiment_id=str(value.get("experiment_id", "")),
                   parent_run_id=str(value["parent_run_id"]), tracking_uri=str(value.get("tracking_uri", "")),
                   identity=identity if isinstance(identity, dict) else None, command=value.get("command"))

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_record(plan: Plan, record: SearchRecord) -> None:
    if "://" in plan.storage:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(f"{plan.experiment_dir}/{SEARCH_RECORD_FILE}")
        with fs.open_output_stream(path) as out:
            out.write(json.dumps(record.as_json()).encode())
        return
    text = json.dumps(record.as_json(), indent=2).encode()
    atomic_write(Path(plan.experiment_dir) / SEARCH_RECORD_FILE, lambda f: f.write(text))


def read_record(plan: Plan) -> SearchRecord:
    """Raises ``OSError`` (unreadable), ``ValueError`` (not JSON, not UTF-8) or ``DamagedRecord``."""
    if "://" in plan.storage:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(f"{plan.experiment_dir}/{SEARCH_RECORD_FILE}")
        with fs.open_input_stream(path) as stream:
            return SearchRecord.from_json(json.loads(stream.read()))
    return SearchRecord.from_json(json.loads((Path(plan.experiment_dir) / SEARCH_RECORD_FILE).read_text()))


def check_new(plan: Plan) -> None:
    """A search never starts in the folder of another: Tune would keep two states there and the
    state file would name only the second search's MLflow run."""
    if "://" in plan.storage:
        return  # listing a remote folder would need its credentials before any work: not checked
    folder = Path(plan.experiment_dir)
    if (folder / SEARCH_RECORD_FILE).exists() or any(folder.glob("experiment_state*")):
        raise ConfigError(f"a search named {plan.name!r} is already in {folder}: add --resume to continue "
                          "it, or choose another --name")
    # a folder of someone else's files is never moved into (the driver's lock, taken just before,
    # and what an interrupted start of this same search made are a search's own)
    others = sorted(p.name for p in folder.iterdir() if p.name not in OWN_FILES) if folder.is_dir() else []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(f"--name {plan.name}: {folder} holds files that are not a search's ({shown}); "
                          "choose another --name or --storage")


def check_resumable(plan: Plan) -> None:
    """``--resume`` continues the search it names, and only when this command is that search."""
    where = f"{plan.experiment_dir}/{SEARCH_RECORD_FILE}"
    if "://" not in plan.storage and not Path(where).exists():
        raise ConfigError(f"--resume: {plan.experiment_dir} holds no search to resume")
    try:
        record = read_record(plan)
    except DamagedRecord:
        raise ConfigError(f"--resume: {where} is damaged (not the record a search writes); the search "
                          "cannot resume from it") from None
    except (OSError, ValueError) as err:  # unreadable, not JSON, not UTF-8
        raise ConfigError(f"--resume: cannot read {where}: {first_line(err)}") from None
    if "://" not in plan.storage:
        _check_tune_state(Path(plan.experiment_dir))
    if record.identity is None:
        return  # written before searches recorded their identity: nothing to compare
    identity = SearchIdentity.of(plan)  # hashes the space file: once
    differ = identity.differences(record.identity)
    if not differ:
        return
    key, now = differ[0], identity.as_json()
    what = (f"its space file {plan.space.path} has changed" if key == "space_file_sha256"
            else f"it started with {key} {record.identity[key]!r}, this command gives {now[key]!r}")
    more = f" (and {', '.join(differ[1:])})" if len(differ) > 1 else ""
    started_as = f"; it was started as: {record.command}" if record.command else ""
    raise ConfigError(f"--resume: {plan.name} is not the same search: {what}{more}{started_as}")


def _check_tune_state(folder: Path) -> None:
    """Tune's saved experiment state parses: a damaged one would fail the resume with Tune's
    traceback, after the data and the reference statistics."""
    for path in sorted(folder.glob("experiment_state*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON (truncated)
            raise ConfigError(f"--resume: Tune's state {path} is damaged ({first_line(err)}); "
                              "the search cannot resume from it") from None

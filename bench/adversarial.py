"""An adversarial pass over every command (issues 16 and 24): inputs a new user gets wrong, files of
the wrong kind, outputs the kernel refuses, environment variables, and SIGINT / SIGTERM at random
moments. Each case runs the real command in a fresh process and is judged on what the README
promises:

- refused input: exit status 2, one line on stderr starting ``error: ``, no traceback, nothing given
  to read changed;
- a signal: exit status 130 (SIGINT) or 143 (SIGTERM), the last line of stderr the command's one
  ``interrupted (Ctrl-C): ...`` / ``terminated (SIGTERM): ...`` line, no traceback, and the command
  ends within a minute of the signal;
- accepted input: exit status 0, no traceback;
- racing drivers (real processes): a second driver on a running search is refused in one line naming
  the holder; of two ``--resume`` started together after the driver was SIGKILLed, one goes on and
  one is refused; a Ctrl-C ends the winner with its one line; no dead driver blocks a ``--resume``.

    python bench/adversarial.py [--only NAME] [--signals 6] [--races 2] [--no-record]

The counts per class go to bench/RESULTS.md; every case that broke a promise is printed with its
command and stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import REPO, add_common_args, report, table
from PIL import Image

TIMEOUT_S = 300


@dataclass
class Case:
    name: str
    klass: str
    argv: list[str]  # after `python -m`
    expect: str  # "refused" | "ok" | "signal"
    env: dict[str, str] = field(default_factory=dict)
    fragment: str = ""  # what the refusal line must hold
    signal_after: float = 0.0  # seconds, for "signal" cases
    signum: int = signal.SIGINT
    guarded: tuple[Path, ...] = ()  # files that must not change


@dataclass
class Outcome:
    case: Case
    ok: bool
    why: str
    stderr: str


def workspace(root: Path) -> dict[str, Path]:
    """The files the cases point at, each named for what is wrong with it."""
    names = ("empty_dir", "file", "one_image", "pngs", "garbage", "npz4", "ckpt_dir")
    w = {name: root / name for name in names}
    w["empty_dir"].mkdir()
    w["file"].write_text("a file, not a folder\n")
    w["one_image"].mkdir()
    Image.new("RGB", (16, 16)).save(w["one_image"] / "a.png")
    w["pngs"].mkdir()
    for i in range(6):
        Image.new("RGB", (40, 40), (40 * i, 10, 10)).save(w["pngs"] / f"{i}.png")
    w["garbage"].mkdir()
    for i in range(4):
        (w["garbage"] / f"{i}.png").write_bytes(b"\x89PNG not really")
    np.savez(w["npz4"], mu=np.zeros(4), sigma=np.eye(4), n=10)
    w["npz4"] = w["npz4"].with_suffix(".npz")
    for name in ("huge", "grey16", "thumbs"):
        w[name] = root / name
        w[name].mkdir()
        for i in range(4):
            Image.new("RGB", (40, 40), (10, 40 * i, 10)).save(w[name] / f"{i}.png")
    Image.new("1", (12_000, 9_000)).save(w["huge"] / "huge.png")
    Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))).save(w["grey16"] / "g.png")
    for i in range(3):
        Image.new("RGB", (6, 6), (200, 10, 40 * i)).save(w["thumbs"] / f"t{i}.png")
    w["real_ckpt"] = root / "real_ckpt"  # an untrained generator, as a trial saves one: sampling works
    w["real_ckpt"].mkdir()
    import torch

    from orchestrator.config import TrialConfig
    from orchestrator.gan.models import Generator

    config = TrialConfig()
    torch.save({"config": config.to_dict(), "channels": 3, "resolution": 32,
                "generator": Generator(config, 3, 32).state_dict()}, w["real_ckpt"] / "generator.pt")
    w["ckpt_dir"].mkdir()
    (w["ckpt_dir"] / "generator.pt").write_bytes(b"not torch")
    (root / "bad.yaml").write_text("lr_g: [1, 2\n")
    (root / "unknown.yaml").write_text("lr_gen: 0.001\n")
    (root / "alias.yaml").write_text("a: &a [1, 2]\nb: *a\n")
    (root / "latin1.yaml").write_bytes("lr_g: 0.001 # caf\xe9\n".encode("latin-1"))
    (root / "space_bad.yaml").write_text("resolution: 48\nbudget: {}\nparams: {}\n")
    (root / "empty.npz").write_bytes(b"")
    (root / "notdb.db").write_text("not sqlite")
    w["root"] = root
    return w


def cases(w: dict[str, Path], signals: int, seed: int) -> list[Case]:
    root, out = w["root"], []
    long_name = "x" * 300

    def refused(klass: str, name: str, argv: list[str], fragment: str = "", **kw: object) -> None:
        out.append(Case(name, klass, argv, "refused", fragment=fragment, **kw))  # type: ignore[arg-type]

    search = ["orchestrator.search", "shapes", "--dry-run"]
    # 1. flag values of every kind, every command
    for flag in ("--num-samples", "--max-evals", "--grace-period", "--max-concurrent", "--eval-every",
                 "--fid-n", "--limit"):
        for value in ("0", "-3", "2.5", "1e9", "nan", "abc", ""):
            refused("flag values", f"search {flag} {value!r}", [*search, flag, value], flag)
    for flag in ("--gpus-per-trial", "--cpus-per-trial", "--reduction-factor"):
        for value in ("-1", "nan", "inf", "x"):
            refused("flag values", f"search {flag} {value!r}", [*search, flag, value], flag)
    for value in ("-1", "1.5", "99999999999", "seed"):
        refused("flag values", f"search --seed {value!r}", [*search, "--seed", value], "--seed")
    refused("flag values", "search --precision fp8", [*search, "--precision", "fp8"], "--precision")
    refused("flag values", "search --device tpu", [*search, "--device", "tpu"], "--device")
    refused("flag values", "search huge budget", [*search, "--max-evals", "1000000", "--eval-every", "5000"],
            "more than any trial can run")
    for value in ("", "a/b", "..", ".hidden", "x" * 200, "sp ace"):
        refused("flag values", f"search --name {value[:20]!r}", [*search, "--name", value], "--name")
    train = ["orchestrator.train", "shapes"]
    for flag, values in (("--steps", ("0", "-1", "x")), ("--epochs", ("0", "nan", "inf", "1e12")),
                         ("--resolution", ("48", "0", "x")), ("--fid-n", ("0", "1", "x")),
                         ("--eval-every", ("0", "x"))):
        for value in values:
            refused("flag values", f"train {flag} {value!r}", [*train, flag, value])
    for flag, value in (("--n", "0"), ("--n", "100000"), ("--seed", "-1"), ("--n", "x")):
        refused("flag values", f"sample {flag} {value!r}",
                ["orchestrator.sample", str(w["ckpt_dir"]), flag, value])
    for flag, value in (("--n", "0"), ("--n", "1"), ("--batch-size", "0"), ("--resolution", "48"),
                        ("--device", "cuda:99x")):
        refused("flag values", f"fid {flag} {value!r}", ["orchestrator.fid", "shapes", "shapes", flag, value])
    # 2. typos and unknown names
    for argv, fragment in ((["orchestrator.search", "shapez", "--dry-run"], "did you mean 'shapes'"),
                           (["orchestrator.train", "mnsit"], "did you mean"),
                           (["orchestrator.fid", "shapez", "shapes"], ""),
                           (["orchestrator.search", "shapes", "--numsamples", "3"], "unrecognized"),
                           (["orchestrator.report", "no-such-experiment"], ""),
                           (["orchestrator.sample", "0123456789abcdef0123456789abcdef"], "")):
        refused("names", " ".join(argv[:3]), argv, fragment)
    # 3. paths: empty, missing, the wrong kind, where the kernel refuses, too long
    for flag in ("--storage", "--cache-dir", "--space", "--data-root", "--fid-weights"):
        refused("paths", f"search {flag} ''", [*search, flag, ""], flag)
    for where in ("/proc/self/runs", "/sys/orchestrator", str(w["file"]), str(w["file"] / "sub"),
                  str(root / long_name / "runs")):
        refused("outputs", f"search --storage {where[-24:]}",
                ["orchestrator.search", "shapes", "--smoke-test", "--storage", where], "--storage")
        refused("outputs", f"search --cache-dir {where[-24:]}", [*search, "--cache-dir", where], "cache")
        refused("outputs", f"train --out {where[-24:]}", [*train, "--out", where], "--out")
        refused("outputs", f"sample --out {where[-24:]}",
                ["orchestrator.sample", str(w["ckpt_dir"]), "--out", where + "/g.png"])
    for value, fragment in (("", "set but empty"), (" ", "set but empty"), ("/proc/self/c", "cache"),
                            (str(w["file"]), "cache")):
        refused("environment", f"ORCHESTRATOR_CACHE={value!r} search",
                ["orchestrator.search", "shapes", "--smoke-test"], fragment,
                env={"ORCHESTRATOR_CACHE": value})
        refused("environment", f"ORCHESTRATOR_CACHE={value!r} train", train, fragment,
                env={"ORCHESTRATOR_CACHE": value})
    refused("environment", "HOME='' search", search, "$HOME is empty",
            env={"HOME": "", "ORCHESTRATOR_CACHE": None})
    refused("environment", "MLFLOW_TRACKING_URI=garbage report", ["orchestrator.report", "x"], "",
            env={"MLFLOW_TRACKING_URI": "ftp://x"})
    refused("environment", "RAY_ADDRESS dead", ["orchestrator.search", "shapes", "--smoke-test"], "--address",
            env={"RAY_ADDRESS": "127.0.0.1:9"})
    refused("outputs", "fid --save-stats over a source",
            ["orchestrator.fid", str(w["pngs"]), "--save-stats", str(w["npz4"])], "", guarded=(w["npz4"],))
    refused("outputs", "train --out of another run", [*train, "--out", str(w["ckpt_dir"])], "")
    # 4. files of the wrong kind
    for name in ("bad.yaml", "unknown.yaml", "alias.yaml", "latin1.yaml"):
        refused("files", f"train --config {name}", [*train, "--config", str(root / name)], name,
                guarded=(root / name,))
    refused("files", "search --space space_bad.yaml", [*search, "--space", str(root / "space_bad.yaml")],
            "space_bad.yaml")
    for source in ("empty_dir", "file", "one_image", "garbage", "empty.npz"):
        path = w.get(source, root / source)
        refused("files", f"fid {source}", ["orchestrator.fid", str(path), str(w["pngs"])], "", guarded=())
    refused("files", "fid statistics of 4 features", ["orchestrator.fid", str(w["npz4"]), str(w["pngs"])])
    refused("files", "sample a damaged checkpoint", ["orchestrator.sample", str(w["ckpt_dir"])])
    refused("files", "sample --mlflow-uri notdb",
            ["orchestrator.sample", "0" * 32, "--mlflow-uri", f"sqlite:///{root / 'notdb.db'}"], "",
            guarded=(root / "notdb.db",))
    for source in ("empty_dir", "garbage", "file"):
        refused("files", f"search folder:{source}",
                ["orchestrator.search", f"folder:{w.get(source)}", "--space",
                 str(REPO / "search_spaces" / "shapes.yaml"), "--dry-run"])
    # files that are not what they seem: a header that declares more pixels than memory holds (a
    # 1-bit PNG of 108 MP is a few kB), 16-bit grey, thumbnails, among images that are fine
    for name, extra in (("huge", w["huge"]), ("wide-grey", w["grey16"]), ("thumbs", w["thumbs"])):
        argv = ["orchestrator.fid", str(extra), str(w["pngs"])]
        out.append(Case(f"fid pngs + {name}", "files", argv, "ok"))
    # 5. accepted: the README's own commands and what is valid
    mnist = ["orchestrator.search", "mnist", "--dry-run", "--data-root", str(REPO.parent / "shared" / "data")]
    for argv in (search, [*search, "--smoke-test"], mnist):
        out.append(Case(" ".join(argv[1:4]), "accepted", argv, "refused" if "mnist" in argv else "ok"))
    # 6. signals at random moments, every command
    rng = random.Random(seed)
    long_running = {
        "search": ["orchestrator.search", "shapes", "--smoke-test", "--storage", str(root / "sig-runs")],
        "train": [*train, "--steps", "200", "--eval-every", "100", "--fid-n", "64", "--out", ""],
        "fid": ["orchestrator.fid", "shapes", "shapes", "--resolution", "32", "--n", "256"],
        "sample": ["orchestrator.sample", str(w["real_ckpt"]), "--n", "10000", "--out", ""],
    }
    for command, argv in long_running.items():
        for k in range(signals):
            after = rng.uniform(0.2, 25.0)
            signum = (signal.SIGINT, signal.SIGTERM)[k % 2]
            run_argv = [a if a else str(root / f"{command}-{k}") for a in argv]
            cache = {"ORCHESTRATOR_CACHE": str(root / f"sig-cache-{command}-{k}")}
            out.append(Case(f"{command} {signal.Signals(signum).name} at {after:.1f} s", "signals", run_argv,
                            "signal", env=cache, signal_after=after, signum=signum))
    return out


def run(case: Case, cwd: Path) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    before = {p: _digest(p) for p in case.guarded}
    proc = subprocess.Popen([sys.executable, "-m", *case.argv], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    sent = None
    try:
        if case.expect == "signal":
            try:
                proc.wait(timeout=case.signal_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(case.signum)
                sent = time.time()
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return Outcome(case, False, f"no end within {TIMEOUT_S} s", err[-1500:])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what a command left running (Ray) goes with it
    return Outcome(case, *judge(case, proc.returncode, err, sent, before), err[-1500:])


def judge(case: Case, code: int, err: str, sent: float | None, before: dict[Path, str]) -> tuple[bool, str]:
    lines = err.strip().splitlines()
    if "Traceback" in err:
        return False, "a traceback"
    changed = [p.name for p, digest in before.items() if _digest(p) != digest]
    if changed:
        return False, f"changed {changed}"
    if case.expect == "refused":
        if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
            return False, f"exit {code}, {len(lines)} lines"
        if case.fragment and case.fragment not in lines[0]:
            return False, f"the line lacks {case.fragment!r}"
        return True, "refused in one line"
    if case.expect == "ok":
        return (code == 0, f"exit {code}")
    if sent is None:
        return (code == 0, f"finished before the signal, exit {code}")
    want = 143 if case.signum == signal.SIGTERM else 130
    line = lines[-1] if lines else ""
    head = "terminated (SIGTERM): " if case.signum == signal.SIGTERM else "interrupted (Ctrl-C): "
    if code != want or not line.startswith(head):
        return False, f"exit {code}, last line {line[:80]!r}"
    if time.time() - sent > 60:
        return False, "went on working after the signal"
    return True, "stopped in one line"


REFUSED = "being run by another driver"


def race_outcomes(root: Path, rounds: int, rng: random.Random) -> list[Outcome]:
    """Drivers racing for one search, with real processes: a ``--resume`` while the first driver
    runs; the driver SIGKILLed, then two ``--resume`` started together; a Ctrl-C to the one that won;
    and one more ``--resume`` after that, which no dead driver may block."""
    outcomes: list[Outcome] = []

    def outcome(name: str, ok: bool, why: str, err: str = "") -> None:
        outcomes.append(Outcome(Case(name, "races", [], "race"), ok, why, err[-1500:]))

    for k in range(rounds):
        storage = root / f"race-{k}"
        base = ["orchestrator.search", "shapes", "--smoke-test", "--storage", str(storage), "--name", "r"]
        first = _driver(base, root, "first")
        procs = [first]
        try:
            state = storage / "r" / "orchestrator.json"
            if not _wait_until(state.exists, first, 300):
                outcome(f"round {k}: first driver", False, "never started", _err(first))
                continue
            time.sleep(rng.uniform(0.0, 8.0))
            second = _driver([*base, "--resume"], root, "second")
            procs.append(second)
            code = _wait_exit(second, 120)
            err = _err(second)
            outcome(f"round {k}: --resume while the driver runs", code == 2 and REFUSED in err
                    and len(err.strip().splitlines()) == 1, f"exit {code}", err)
            os.killpg(first.pid, signal.SIGKILL)  # the driver dies, however: SIGKILL
            first.wait()
            time.sleep(rng.uniform(0.0, 2.0))
            pair = [_driver([*base, "--resume"], root, f"pair{i}") for i in range(2)]
            procs += pair
            _wait_until(lambda pair=pair: any(p.poll() is not None for p in pair), pair[0], 120)
            time.sleep(2)
            refused = [p for p in pair if p.poll() == 2 and REFUSED in _err(p)]
            going = [p for p in pair if p.poll() is None]
            outcome(f"round {k}: two --resume together", len(refused) == 1 and len(going) == 1,
                    f"exits {[p.poll() for p in pair]}", "".join(_err(p) for p in pair))
            if going:
                time.sleep(rng.uniform(0.0, 20.0))
                going[0].send_signal(signal.SIGINT)
                code = _wait_exit(going[0], 120)
                last = (_err(going[0]).strip().splitlines() or [""])[-1]
                outcome(f"round {k}: Ctrl-C to the driver that won", code == 130
                        and last.startswith("interrupted (Ctrl-C): "),
                        f"exit {code}, last line {last[:80]!r}", _err(going[0]))
            after = _driver([*base, "--resume"], root, "after")
            procs.append(after)
            code = _wait_exit(after, 25)
            outcome(f"round {k}: --resume after the drivers ended", code in (None, 0),
                    f"exit {code} within 25 s", _err(after))
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return outcomes


def _driver(argv: list[str], root: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ORCHESTRATOR_CACHE": str(root / "race-cache")}
    err = (root / f"{name}.err").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=err, start_new_session=True)
    proc.err_path = root / f"{name}.err"  # type: ignore[attr-defined]
    return proc


def _err(proc: subprocess.Popen[bytes]) -> str:
    return proc.err_path.read_text(errors="replace")  # type: ignore[attr-defined]


def _wait_until(done: object, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if done():  # type: ignore[operator]
            return True
        if proc.poll() is not None:
            return bool(done())  # type: ignore[operator]
        time.sleep(0.2)
    return False


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=timeout)
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, device=False)
    p.add_argument("--only", help="run the cases whose name holds this")
    p.add_argument("--signals", type=int, default=6, help="signals per long-running command")
    p.add_argument("--races", type=int, default=2, help="rounds of racing drivers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        w = workspace(root)
        todo = [c for c in cases(w, args.signals, args.seed) if not args.only or args.only in c.name]
        outcomes = []
        start = time.time()
        for i, case in enumerate(todo, 1):
            outcome = run(case, root)
            outcomes.append(outcome)
            mark = "ok  " if outcome.ok else "FAIL"
            print(f"[{i}/{len(todo)}] {mark} {case.klass}: {case.name}: {outcome.why}", flush=True)
            if not outcome.ok:
                print("      $ python -m " + " ".join(case.argv) + "\n      " + outcome.stderr.strip()[-600:]
                      .replace("\n", "\n      "), flush=True)
        if not args.only or args.only in "races":
            for outcome in race_outcomes(root, args.races, random.Random(args.seed)):
                outcomes.append(outcome)
                mark = "ok  " if outcome.ok else "FAIL"
                print(f"[race] {mark} {outcome.case.name}: {outcome.why}", flush=True)
                if not outcome.ok:
                    print("      " + outcome.stderr.strip()[-600:].replace("\n", "\n      "), flush=True)
    by_class: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_class.setdefault(outcome.case.klass, []).append(outcome)
    rows = [[k, len(v), sum(o.ok for o in v), sum(not o.ok for o in v)] for k, v in by_class.items()]
    rows.append(["all", len(outcomes), sum(o.ok for o in outcomes), sum(not o.ok for o in outcomes)])
    failed = [f"{o.case.klass}: {o.case.name}: {o.why}" for o in outcomes if not o.ok]
    lines = [*table(["class", "cases", "as promised", "not"], rows), "",
             f"{time.time() - start:.0f} s; " + ("every case as the README promises" if not failed else
                                                 "not as promised: " + "; ".join(failed))]
    report("adversarial", "cpu", lines, args)


if __name__ == "__main__":
    main()

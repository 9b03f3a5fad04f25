"""`guppy-sweep`: a grid of recorded guppy-train runs that differ in a few flags.

    guppy-sweep --name lr-study --vary lr=3e-3,3e-4 --vary n_heads=1,4 --seeds 0,1 -- --preset demo --epochs 1
    guppy-sweep --name lr-study --vary lr=3e-3,3e-4 --seeds 0,1 --list -- --preset demo   # the commands only
    guppy-sweep --name batch --vary batch_size/grad_accum=64/1,16/4,16/1 -- --preset demo  # one axis, two flags

Every combination of the --vary values (and --seeds) is one run, trained as its own
`python -m guppy.train.trainer` process into runs/<sweep>/<run>/, its output in runs/<sweep>/_logs/<run>.log.
runs/<sweep>/sweep.json holds the grid, each run's flags and its status, rewritten atomically at
every change. Running the same command again skips finished (and diverged) runs, resumes
interrupted ones from their last checkpoint and starts again those that left none. Ctrl-C
stops every run after its current step (each saves a checkpoint); a failed or diverged run
does not stop the others. Every run's flags are checked before anything is created.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from guppy.run.format import (
    SEED_KEY,
    SWEEP_FILE,
    SWEEP_LOCK,
    SWEEP_SCHEMA,
    axis_keys,
    axis_name,
    axis_values,
    list_checkpoints,
    state_path,
)
from guppy.run.format import SWEEP_LOGS_DIR as LOGS_DIR
from guppy.run.writer import atomic_write, read_run_json

DONE = ("finished", "diverged")  # a diverged run is an outcome: running it again diverges again
OWNED = ("run_name", "runs_dir", "resume")  # the sweep names and places its runs itself
STOP_WAIT_S = 120  # how long a run may take to save its checkpoint after Ctrl-C


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its folder name, the values it varies, its guppy-train flags."""

    name: str
    settings: dict[str, str]
    flags: tuple[str, ...]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "guppy.train.trainer", *self.flags]


# ---- planning: every run's flags, checked before anything exists ---------------------------------


def parse_vary(text: str) -> tuple[str, list[str]]:
    """'n_heads=1,4' -> ('n_heads', ['1', '4']); the key may also be written 'n-heads' or '--n-heads'.
    Settings that change together are one axis: 'batch_size/grad_accum=64/1,16/4' (each value has
    one part per key)."""
    key, eq, values = text.partition("=")
    keys = [k.strip().lstrip("-").replace("-", "_") for k in axis_keys([key])]
    key, n = axis_name(keys), len(keys)
    vals = [v.strip() for v in values.split(",")]
    if not eq or not all(keys) or not all(vals):
        raise ValueError(f"--vary {text!r}: expected KEY=V1,V2,... (e.g. lr=3e-3,3e-4) or K1/K2=A1/A2,B1/B2")
    dup = next((v for v in vals if vals.count(v) > 1), None)
    if dup is not None:
        raise ValueError(f"--vary {text!r}: value {dup!r} given twice")
    bad = next((v for v in vals if n > 1 and (len(axis_values(v)) != n or not all(axis_values(v)))), None)
    if bad is not None:
        raise ValueError(f"--vary {text!r}: value {bad!r} needs {n} parts joined by / (one per key)")
    return key, vals


def _settings(axis: str, value: str) -> dict[str, str]:
    """One axis's value as settings: ('batch_size/grad_accum', '16/4') -> {'batch_size': '16', 'grad_accum': '4'}."""
    keys = axis_keys([axis])
    return dict(zip(keys, axis_values(value))) if len(keys) > 1 else {axis: value}


def safe(text: str) -> str:
    """A value as part of a folder name: stable (the text as given) and filesystem safe."""
    return re.sub(r"[^A-Za-z0-9.+=-]", "_", text).strip(".") or "_"


def run_name(settings: dict[str, str]) -> str:
    """{'lr': '3e-3', 'seed': '0'} -> 'lr-3e-3__seed-0'."""
    return "__".join(f"{k}-{safe(v)}" for k, v in settings.items())


def _parser():
    """guppy-train's own parser, raising ValueError instead of exiting: the one authority on its flags."""
    from guppy.train.trainer import build_parser  # torch: only once there is something to check

    p = build_parser()

    def error(message):
        raise ValueError(f"guppy-train flags: {message}")
    p.error = error
    return p


def _flag_of(parser, key: str) -> argparse.Action:
    action = parser._option_string_actions.get(f"--{key.replace('_', '-')}")
    if action is None or action.dest in OWNED or action.dest in ("quiet", "help", "dist_backend"):
        known = sorted(a.dest for a in parser._actions if a.option_strings and a.dest not in (*OWNED, "quiet", "help", "dist_backend"))
        raise ValueError(f"--vary {key}: not a guppy-train setting; expected one of: {', '.join(known)}")
    return action


def _as_flags(action: argparse.Action, value: str) -> list[str]:
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        truth = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(value.lower())
        if truth is None:
            raise ValueError(f"--vary {action.dest}: {value!r} is not true or false")
        return [flag if truth else f"--no-{flag[2:]}"]
    return [flag, value]


def check_train_flags(parser, flags: list[str]):
    """The TrainConfig these flags give, as guppy-train builds it; ValueError on anything bad."""
    from guppy.config import TrainConfig
    from guppy.train.trainer import check_config, given_flags

    cfg = TrainConfig.for_preset(**given_flags(parser.parse_args(flags)))
    check_config(cfg)  # what guppy-train checks before it writes: the model builds, --record-hooks exist
    return cfg


def plan(name: str, vary: list[tuple[str, list[str]]], seeds: list[str], base: list[str],
         runs_dir: str | Path = "runs") -> list[SweepRun]:
    """Every run of the grid with its full guppy-train flags, each checked as guppy-train would."""
    if not name or "/" in name or name.startswith((".", "_")):
        raise ValueError(f"--name {name!r}: must be a plain folder name")
    parser = _parser()
    base_args = parser.parse_args(base)  # unknown or ill-typed base flags: one line now
    for key in OWNED:
        if getattr(base_args, key, None) is not None:
            raise ValueError(f"--{key.replace('_', '-')} after --: the sweep names and places its runs itself")
    axes = list(vary) + ([(SEED_KEY, seeds)] if seeds else [])
    if not axes:
        raise ValueError("nothing to sweep: give at least one --vary KEY=V1,V2 or --seeds")
    keys = axis_keys(axis for axis, _ in axes)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{sorted(k for k in keys if keys.count(k) > 1)[0]} is varied twice "
                         "(--seeds is the same as --vary seed=...)")
    actions = {k: _flag_of(parser, k) for k in keys}
    for k, action in actions.items():
        if getattr(base_args, action.dest) is not None:
            raise ValueError(f"{action.option_strings[0]} is both varied and given after --; drop one")
    extra = ["--quiet"]
    if base_args.record is None:  # a sweep exists to compare insides: record unless told not to
        extra.append("--record")
    folder = Path(runs_dir) / name
    runs = []
    for values in itertools.product(*(v for _, v in axes)):
        settings = {k: v for (axis, _), value in zip(axes, values) for k, v in _settings(axis, value).items()}
        rname = run_name(settings)
        varied = [f for k, v in settings.items() for f in _as_flags(actions[k], v)]
        flags = [*base, *varied, *extra, "--runs-dir", str(folder), "--run-name", rname]
        try:
            check_train_flags(parser, flags)
        except ValueError as e:
            raise ValueError(f"run {rname}: {e}") from None
        runs.append(SweepRun(rname, settings, tuple(flags)))
    clash = next((r.name for r in runs if sum(r.name == o.name for o in runs) > 1), None)
    if clash:
        raise ValueError(f"two runs would share the folder name {clash!r}; write the values differently")
    return runs


def list_commands(runs: list[SweepRun]) -> str:
    """One `guppy-train` line per run, for a job scheduler (xargs -P, a SLURM array, Ray)."""
    return "".join(shlex.join(["guppy-train", *r.flags]) + "\n" for r in runs)


# ---- state on disk -------------------------------------------------------------------------------


def disk_status(run_dir: Path) -> str:
    """'finished'/'diverged' (done), 'resume' (a checkpoint with training state) or 'new'."""
    try:
        status = read_run_json(run_dir).get("status")
    except ValueError:
        return "new"
    if status in DONE:
        return status
    if any(state_path(p).exists() for p in list_checkpoints(run_dir).values()):
        return "resume"
    return "new"


class SweepFile:
    """sweep.json: the grid and every run's flags and status; written atomically by this process only."""

    def __init__(self, folder: Path, name: str, grid: dict, base: list[str], runs: list[SweepRun]):
        self.path = folder / SWEEP_FILE
        fresh = {"schema_version": SWEEP_SCHEMA, "name": name, "grid": grid, "base": base,
                 "runs": [{"name": r.name, "settings": r.settings, "flags": list(r.flags), "status": "pending"}
                          for r in runs]}
        if self.path.exists():
            old = read_sweep(folder)
            if (old.get("grid"), old.get("base")) != (grid, base):
                raise ValueError(f"{self.path}: this sweep was started with other flags (grid {old.get('grid')}, "
                                 f"base {shlex.join(old.get('base', []))}); pick another --name")
            status = {r["name"]: r for r in old.get("runs", [])}
            for r in fresh["runs"]:
                r.update({k: v for k, v in status.get(r["name"], {}).items() if k not in r or k == "status"})
        self.data = fresh
        self.by_name = {r["name"]: r for r in fresh["runs"]}

    def set(self, name: str, **fields) -> None:
        self.by_name[name].update(fields)
        self.write()

    def write(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.data, indent=1)))


def read_sweep(folder: str | Path) -> dict:
    path = Path(folder) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable sweep file ({e})") from None


# ---- running -------------------------------------------------------------------------------------


def threads_per_run(parallel: int) -> int:
    """The cores this process may use, shared between the runs at once (OMP_NUM_THREADS caps it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // parallel)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def _die_with_parent() -> None:
    """In the child: SIGINT when guppy-sweep dies, however it dies, so no orphan keeps training into
    the sweep's folders; the run saves a checkpoint and a re-run resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


class Runner:
    """Runs the pending runs of a sweep, `parallel` at a time, each a guppy-train process."""

    def __init__(self, folder: Path, state: SweepFile, runs: list[SweepRun], parallel: int, say=print):
        self.folder, self.state, self.runs, self.parallel, self.say = folder, state, runs, parallel, say
        self.env = os.environ | {"OMP_NUM_THREADS": str(threads_per_run(parallel)), "PYTHONUNBUFFERED": "1"}
        self.env["MKL_NUM_THREADS"] = self.env["OMP_NUM_THREADS"]
        self.active: dict[str, tuple[subprocess.Popen, float]] = {}

    def start(self, run: SweepRun) -> None:
        run_dir = self.folder / run.name
        how = disk_status(run_dir)
        if how == "resume":
            argv = [sys.executable, "-m", "guppy.train.trainer", "--resume", str(run_dir), "--quiet"]
        else:
            if run_dir.exists():  # a start that left no checkpoint: nothing to keep
                shutil.rmtree(run_dir)
            argv = run.command()
            self.state.by_name[run.name]["wall_s"] = 0.0
        log = self.folder / LOGS_DIR / f"{run.name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "a") as out:
            out.write(f"\n$ {shlex.join(argv)}\n")
            out.flush()
            # a session of its own: Ctrl-C reaches guppy-sweep only, which passes on one SIGINT per run
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self.active[run.name] = (proc, time.monotonic())
        self.state.set(run.name, status="running", pid=proc.pid)
        self.say(f"{'resumed' if how == 'resume' else 'started'} {run.name}")

    def finish(self, name: str, code: int) -> str:
        proc, t0 = self.active.pop(name)
        try:
            meta = read_run_json(self.folder / name)
            status, message = meta.get("status", "failed"), meta.get("message", "")
        except ValueError:  # it died before writing run.json
            status, message = "failed", ""
        if code not in (0, 3, 130) or status not in ("finished", "diverged", "interrupted"):
            status = "failed"
            message = message or _last_line(self.folder / LOGS_DIR / f"{name}.log") or f"exit status {code}"
        wall = round(time.monotonic() - t0, 1) + self.state.by_name[name].get("wall_s", 0.0)
        self.state.set(name, status=status, returncode=code, message=message, wall_s=round(wall, 1), pid=None)
        self.say(f"{status} {name} ({wall:.0f} s){': ' + message if status != 'finished' else ''}")
        return status

    def run(self) -> dict[str, str]:
        """Run every run not yet done; on Ctrl-C (or SIGTERM) stop them all after their current step."""
        todo = [r for r in self.runs if disk_status(self.folder / r.name) not in DONE]
        for r in self.runs:
            if r not in todo:
                self.state.set(r.name, status=disk_status(self.folder / r.name))
        self.say(f"{len(self.runs) - len(todo)} of {len(self.runs)} runs done; {len(todo)} to run, "
                 f"{self.parallel} at a time, {self.env['OMP_NUM_THREADS']} threads each")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while todo or self.active:
                while todo and len(self.active) < self.parallel:
                    self.start(todo.pop(0))
                time.sleep(0.2)
                for name, (proc, _) in list(self.active.items()):
                    if proc.poll() is not None:
                        self.finish(name, proc.returncode)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return {r["name"]: r["status"] for r in self.state.data["runs"]}

    def stop(self) -> None:
        for proc, _ in self.active.values():
            proc.send_signal(signal.SIGINT)  # guppy-train saves a checkpoint and exits
        deadline = time.monotonic() + STOP_WAIT_S
        for name, (proc, _) in list(self.active.items()):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.finish(name, proc.returncode)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def _lock(folder: Path):
    """Held while this process drives the sweep: two guppy-sweeps on one sweep would train a run twice."""
    f = open(folder / SWEEP_LOCK, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{folder}: another guppy-sweep is running this sweep") from None
    return f


# ---- the command ---------------------------------------------------------------------------------


def build_parser():
    from guppy.cli import ArgumentParser, positive_int

    p = ArgumentParser(prog="guppy-sweep", usage="guppy-sweep --name NAME --vary KEY=V1,V2 [...] -- [guppy-train flags]",
                       description="Train a grid of recorded runs that differ in a few guppy-train flags, "
                                   "into runs/<name>/<run>/. Flags after -- are given to every run. The same "
                                   "command again skips finished runs and resumes interrupted ones.")
    p.add_argument("--name", required=True, help="the sweep's folder under --runs-dir")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a guppy-train setting and its values (n_heads -> --n-heads); repeat for a grid; settings that "
                        "change together share an axis: batch_size/grad_accum=64/1,16/4")
    p.add_argument("--seeds", default="", metavar="S1,S2", help="seeds to run every setting with (default: the base --seed)")
    # 2 by default: two 1-thread runs finish a small sweep sooner than one 2-thread run at a time on a
    # 2-core CPU, and far sooner on a busy one (benchmarks/bench_sweep.py re-measures it)
    p.add_argument("--parallel", type=positive_int, default=2, metavar="N",
                   help="runs at a time; the cores are split between them (OMP_NUM_THREADS caps a run's share) (default: 2)")
    p.add_argument("--list", action="store_true", help="print one guppy-train command per run and exit; creates nothing")
    p.add_argument("--runs-dir", default="runs", help="where the sweep folder goes (default: runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import run_main

    argv = sys.argv[1:] if argv is None else list(argv)
    own, base = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)

    def body() -> int:
        vary = [parse_vary(v) for v in args.vary]
        seeds = [s.strip() for s in args.seeds.split(",")] if args.seeds.strip() else []
        runs = plan(args.name, vary, seeds, base, args.runs_dir)
        if args.list:
            sys.stdout.write(list_commands(runs))
            return 0
        folder = Path(args.runs_dir) / args.name
        if folder.exists() and not (folder / SWEEP_FILE).exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} exists and is not a sweep folder; pick another --name")
        grid = {k: v for k, v in vary} | ({SEED_KEY: seeds} if seeds else {})
        folder.mkdir(parents=True, exist_ok=True)
        with _lock(folder):
            state = SweepFile(folder, args.name, grid, base, runs)
            state.write()
            runner = Runner(folder, state, runs, args.parallel, say=lambda m: print(f"guppy-sweep: {m}", file=sys.stderr))
            try:
                result = runner.run()
            except KeyboardInterrupt:
                print(f"guppy-sweep: interrupted; run the same command again to continue {folder}", file=sys.stderr)
                return 130
        counts = {s: sum(v == s for v in result.values()) for s in dict.fromkeys(result.values())}
        print(f"{folder}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return 1 if "failed" in counts else 0

    return run_main("guppy-sweep", body)


if __name__ == "__main__":
    raise SystemExit(main())

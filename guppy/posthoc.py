"""`guppy-record RUN`: snapshots after the fact, for every checkpoint of a run that has none.

    guppy-import checkpoints/ --name guppylm && guppy-record runs/guppylm   # GuppyLM's own training, replayed
    guppy-record runs/demo-20261124-1512                                   # a guppy run trained without --record

The live recorder (`guppy.record.Recorder`) does the measuring, on the same fixed inputs (our
persona's held-out chats and repeated random sequences, encoded with the run's own tokenizer), so
a post-hoc snapshot holds the same datasets as a live one. What only training knows is marked
absent, never estimated: the gradients of the training batches between snapshots and the update
of the step before the snapshot are NaN, and the snapshot lists them under `absent`. Resumable:
snapshots already written are skipped, so a stopped `guppy-record` continues where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from guppy import runfiles

ABSENT_KEY = "absent"  # snapshot dataset: names of the datasets that could not be measured (NaN)
ABSENT = ("grads/param_norm", "params/update_ratio")  # need the training batches / the step before
POSTHOC_KEY = "posthoc_record"  # run.json: when and how guppy-record ran


@dataclass
class TrainerView:
    """The trainer attributes the Recorder reads (on_train_start, snapshot), for a run that is
    not training: the one place that lists them."""

    run_dir: Path
    model: object  # GuppyLM, holding the weights of the checkpoint being recorded
    data: object  # .tokenizer, .chats.eval, .topics: what the fixed inputs are built from
    total_steps: int
    step: int = 0
    epoch_progress: float = math.nan  # unknown for imported checkpoints
    tokens: float = math.nan
    elapsed: float = math.nan  # seconds of training


def posthoc_recorder(**kwargs):
    """A Recorder whose snapshots say which datasets are absent (the class is built on first use:
    guppy.record imports torch)."""
    import h5py

    from guppy.record import Recorder

    class PosthocRecorder(Recorder):
        def param_stats(self, model):
            out = super().param_stats(model)  # no training step seen: NaN gradients and update ratios
            out[ABSENT_KEY] = np.array(ABSENT, dtype=h5py.string_dtype())
            return out

    return PosthocRecorder(**kwargs)


def watch_data(run_dir: Path):
    """What the fixed inputs are built from: the run's tokenizer and the persona's held-out chats."""
    from guppy.runs import load_eval_data
    from guppy.tokenizer import ChatTokenizer

    persona, chats = load_eval_data(run_dir)
    tokenizer = ChatTokenizer.load(run_dir / "tokenizer.json")
    return SimpleNamespace(tokenizer=tokenizer, chats=SimpleNamespace(eval=chats), topics=list(persona.topics))


def progress_at(run_dir: Path) -> dict[int, dict]:
    """epoch, tokens and seconds of training at each logged step, from metrics.csv (a guppy run's
    checkpoints fall on logged steps; an imported run has none of these)."""
    import csv

    path = run_dir / "metrics.csv"
    out: dict[int, dict] = {}
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not (row.get("step") or "").isdigit():
                continue
            known = out.setdefault(int(row["step"]), {})
            for col, attr in (("epoch", "epoch_progress"), ("tokens", "tokens"), ("elapsed_s", "elapsed")):
                if row.get(col):
                    known[attr] = float(row[col])
    return out


def record_run(run_dir: str | Path, hooks: str | None = None, full_probes: int = 12, device: str = "cpu",
               show_progress: bool = True) -> list[int]:
    """Write the snapshot of every checkpoint of `run_dir` that has none; returns the steps written."""
    import torch
    from tqdm import tqdm

    from guppy.checkpoint import read_weights
    from guppy.model import GuppyLM
    from guppy.record import DEFAULT_HOOKS

    run_dir = Path(run_dir)
    runfiles.read_run_json(run_dir)  # a clear error if this is not a run folder
    checkpoints = runfiles.list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir}: the run has no checkpoint to record")

    def done(step: int) -> bool:
        return (run_dir / "snapshots" / f"step-{step:06d}.h5").exists()

    todo = [n for n in checkpoints if not done(n)]
    if not todo:
        return []
    cfg, state, _ = read_weights(checkpoints[todo[0]])
    model = GuppyLM(cfg).to(device).eval()
    recorder = posthoc_recorder(hooks=hooks or DEFAULT_HOOKS, full_probes=full_probes)
    known = progress_at(run_dir)
    view = TrainerView(run_dir, model, watch_data(run_dir), total_steps=max(checkpoints))
    written, t0 = [], time.perf_counter()
    bar = tqdm(total=len(checkpoints), initial=len(checkpoints) - len(todo), unit="snapshot", disable=not show_progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for i, n in enumerate(todo):
            if i:
                _, state, _ = read_weights(checkpoints[n])
            with torch.no_grad():
                model.load_state_dict(state, strict=True)
            view.step = n
            view.epoch_progress, view.tokens, view.elapsed = math.nan, math.nan, math.nan
            for attr, value in known.get(n, {}).items():
                setattr(view, attr, value)
            if i == 0:
                recorder.on_train_start(view)  # builds or reopens the fixed inputs; snapshots step 0 itself
            if not done(n):
                recorder.snapshot(view)
            written.append(n)
            bar.update(1)
    finally:
        bar.close()
    runfiles.update_run_json(run_dir, **{POSTHOC_KEY: {"steps": len(checkpoints), "absent": list(ABSENT),
                                                        "seconds": round(time.perf_counter() - t0, 1)}})
    return written


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, run_main

    p = ArgumentParser(prog="guppy-record", description="Record the snapshots of every checkpoint of a run that "
                                                        "has none (an imported series, or a run trained without --record).")
    p.add_argument("run", help="run folder")
    p.add_argument("--record-hooks", default=None, help="comma-separated hook names or globs whose full tensors are "
                                                        "stored (default: as guppy-train --record)")
    p.add_argument("--record-probes", type=int, default=12, help="inputs whose full tensors are stored (default 12)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    def body():
        from guppy.train import pick_device

        if args.record_probes < 3:
            raise ValueError(f"--record-probes: {args.record_probes} must be >= 3")
        device = pick_device(args.device)
        t0 = time.perf_counter()
        written = record_run(args.run, args.record_hooks, args.record_probes, device, show_progress=not args.quiet)
        if not written:
            print(f"{args.run}: every checkpoint already has its snapshot")
        else:
            print(f"recorded {len(written)} snapshot{'s' * (len(written) != 1)} (steps {written[0]}..{written[-1]}) "
                  f"in {time.perf_counter() - t0:.1f}s; open it: streamlit run dashboards/app.py -- --runs-dir "
                  f"{Path(args.run).parent}")

    return run_main("guppy-record", body)


if __name__ == "__main__":
    sys.exit(main())

"""`guppy-record RUN`: snapshots after the fact, for every checkpoint of a run that has none.

    guppy-import checkpoints/ --name guppylm && guppy-record runs/guppylm   # GuppyLM's own training, replayed
    guppy-record runs/demo-20261124-1512                                   # a guppy run trained without --record

The live recorder (`guppy.record.recorder.Recorder`) does the measuring, on the same fixed inputs (our
persona's held-out chats and repeated random sequences, encoded with the run's own tokenizer), so
a post-hoc snapshot holds the same datasets as a live one. What only training knows is marked
absent, never estimated: the gradients of the training batches between snapshots and the update
of the step before the snapshot are NaN, and the snapshot lists them under `runformat.ABSENT`. Resumable:
snapshots already written are skipped, so a stopped `guppy-record` continues where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from guppy.run import format as R
from guppy.run import writer as run_writer

# what only training knows: the gradients of the training batches, the update of the step before
ABSENT = (R.PARAM_GRAD_NORM, R.PARAM_UPDATE_RATIO)


@dataclass
class CheckpointView:
    """What `Recorder.snapshot` reads of a run (as `guppy.train.callbacks.TrainView` gives it in
    training), for a checkpoint after the fact: the one place that lists it."""

    run_dir: Path
    model: object  # GuppyLM, holding the weights of the checkpoint being recorded
    data: object  # .tokenizer, .chats.eval, .topics: what the fixed inputs are built from
    total_steps: int
    step: int = 0
    epoch_progress: float = math.nan  # unknown for imported checkpoints
    tokens: float = math.nan
    elapsed: float = math.nan  # seconds of training


def watch_data(run_dir: Path):
    """What the fixed inputs are built from: the run's tokenizer and the persona's held-out chats."""
    from guppy.data.tokenizer import ChatTokenizer
    from guppy.run.reader import load_eval_data

    persona, chats = load_eval_data(run_dir)
    tokenizer = ChatTokenizer.load(run_dir / R.TOKENIZER_JSON)
    return SimpleNamespace(tokenizer=tokenizer, chats=SimpleNamespace(eval=chats), topics=list(persona.topics))


def progress_at(run_dir: Path) -> dict[int, dict]:
    """epoch, tokens and seconds of training at each logged step, from metrics.csv (a guppy run's
    checkpoints fall on logged steps; an imported run has none of these)."""
    import csv

    path = run_dir / R.METRICS_CSV
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


def record_run(run_dir: str | Path, hooks: str | None = None, full_inputs: int = 12, device: str = "cpu",
               show_progress: bool = True) -> list[int]:
    """Write the snapshot of every checkpoint of `run_dir` that has none; returns the steps written."""
    import torch
    from tqdm import tqdm

    from guppy.model.transformer import GuppyLM
    from guppy.record.recorder import DEFAULT_HOOKS, Recorder
    from guppy.run.checkpoint import read_weights

    run_dir = Path(run_dir)
    run_writer.read_run_json(run_dir)  # a clear error if this is not a run folder
    checkpoints = R.list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"{run_dir}: the run has no checkpoint to record")

    def done(step: int) -> bool:
        return R.snapshot_path(run_dir, step).exists()

    todo = [n for n in checkpoints if not done(n)]
    if not todo:
        return []
    cfg, state, _ = read_weights(checkpoints[todo[0]])
    model = GuppyLM(cfg).to(device).eval()
    recorder = Recorder(hooks=hooks or DEFAULT_HOOKS, full_inputs=full_inputs)  # no training seen: ABSENT is NaN
    known = progress_at(run_dir)
    view = CheckpointView(run_dir, model, watch_data(run_dir), total_steps=max(checkpoints))
    recorder.start(run_dir, model, view.data, view.total_steps)  # builds or reopens the watch set
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
            recorder.snapshot(view)
            written.append(n)
            bar.update(1)
    finally:
        bar.close()
    run_writer.update_run_json(run_dir, **{R.POSTHOC_KEY: {"steps": len(checkpoints), "absent": list(ABSENT),
                                                        "seconds": round(time.perf_counter() - t0, 1)}})
    return written


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, run_main

    p = ArgumentParser(prog="guppy-record", description="Record the snapshots of every checkpoint of a run that "
                                                        "has none (an imported series, or a run trained without --record).")
    p.add_argument("run", help="run folder")
    p.add_argument("--record-hooks", default=None, help="comma-separated hook names or globs whose full tensors are "
                                                        "stored (default: as guppy-train --record)")
    p.add_argument("--record-inputs", type=int, default=12,
                   help="inputs of the watch set whose full tensors are stored (default 12), as guppy-train's")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    def body():
        from guppy.train.trainer import pick_device

        if args.record_inputs < 3:
            raise ValueError(f"--record-inputs: {args.record_inputs} must be >= 3")
        device = pick_device(args.device)
        t0 = time.perf_counter()
        written = record_run(args.run, args.record_hooks, args.record_inputs, device, show_progress=not args.quiet)
        if not written:
            print(f"{args.run}: every checkpoint already has its snapshot")
        else:
            print(f"recorded {len(written)} snapshot{'s' * (len(written) != 1)} (steps {written[0]}..{written[-1]}) "
                  f"in {time.perf_counter() - t0:.1f}s; open it: streamlit run dashboards/app.py -- --runs-dir "
                  f"{Path(args.run).parent}")

    return run_main("guppy-record", body)


if __name__ == "__main__":
    sys.exit(main())

"""What recording costs: the same run with and without --record, measured in one process.

    python benchmarks/bench_record.py                      # make demo's run: demo preset, 2 epochs, loss on all
    python benchmarks/bench_record.py --epochs 1           # the default guppy-train run (~3 min)
    python benchmarks/bench_record.py --steps 200          # a quick look (the schedule is denser per step)

The two runs share every setting (preset, epochs, batch, eval, persona eval) but --record,
which takes the default snapshot schedule. Prints wall time of each (target overhead <= 5%),
the recorder's own share, bytes per snapshot (HDF5 file and weights) for this preset and for
the guppy preset, the size of a default one-epoch guppy run, the time to open a run, and the
time to load one snapshot's attention patterns. Both runs are timed twice, interleaved
(plain, recorded, plain, recorded), and the faster of each kept, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import load_note  # noqa: E402  (benchmarks/machine.py)

import guppy  # noqa: E402
from guppy.config import TrainConfig, model_preset  # noqa: E402
from guppy.record.recorder import snapshot_schedule  # noqa: E402
from guppy.run import format as R  # noqa: E402
from guppy.train.trainer import start_run  # noqa: E402


def train(cfg: TrainConfig) -> tuple[float, Path, object]:
    """Wall seconds of start_run + fit (data from the warm cache), the run folder and the trainer."""
    t = time.perf_counter()
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished", trainer.message
    return time.perf_counter() - t, trainer.run_dir, trainer


def sizes(run_dir: Path) -> tuple[int, int, int]:
    """(snapshot count, mean bytes per snapshot file, mean bytes per snapshot's weights)."""
    snaps = R.list_snapshots(run_dir)
    weights = [R.checkpoint_path(run_dir, step) for step in snaps]
    snaps = list(snaps.values())
    return len(snaps), sum(s.stat().st_size for s in snaps) // len(snaps), sum(w.stat().st_size for w in weights) // len(weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="model preset of the timed runs (default demo)")
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of the timed runs (default 2, as make demo)")
    p.add_argument("--steps", type=int, default=0, help="steps instead of epochs (0 = use --epochs)")
    p.add_argument("--eval-prompts", type=int, default=1, help="persona-eval prompts per topic, as guppy-train")
    p.add_argument("--loss-on", default="all", choices=("reply", "all"), help="as guppy-train (default all, as make demo)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each kind, interleaved (best kept)")
    p.add_argument("--disk-preset", default="guppy", help="also measure snapshot sizes of this preset (8 steps)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-record-"))
    load_before = os.getloadavg()[0]
    try:
        base = TrainConfig(preset=args.preset, epochs=args.epochs, steps=args.steps, eval_prompts=args.eval_prompts,
                           loss_on=args.loss_on, runs_dir=str(root))
        start_run(TrainConfig(**{**base.to_dict(), "steps": 1, "run_name": "warm"}), show_progress=False)  # data cache
        plain_t, rec_t = [], []
        for i in range(args.repeats):
            plain_s, _, trainer = train(TrainConfig(**{**base.to_dict(), "run_name": f"plain{i}"}))
            rec_s, run_dir, rec = train(TrainConfig(**{**base.to_dict(), "run_name": f"rec{i}", "record": True}))
            plain_t.append(plain_s)
            rec_t.append(rec_s)
        recorder = rec.callbacks[-1]
        n, h5_bytes, w_bytes = sizes(run_dir)
        plain_s, rec_s = min(plain_t), min(rec_t)
        what = f"{args.steps} steps" if args.steps else f"{args.epochs:g} epochs ({trainer.total_steps} steps)"
        print(f"preset {args.preset}, {what}, batch {base.batch_size}, persona eval {args.eval_prompts}/topic")
        print(f"  without --record: {', '.join(f'{t:.1f}s' for t in plain_t)}; "
              f"with: {', '.join(f'{t:.1f}s' for t in rec_t)} ({n} snapshots, {recorder.seconds:.1f}s in the recorder, "
              f"{recorder.seconds / n * 1e3:.0f} ms a snapshot)")
        print(f"recording overhead: {rec_s / plain_s - 1:+.1%} of wall time, best of {args.repeats} each "
              f"(recorder's own time: {recorder.seconds / plain_s:.1%}; target <= 5%)")
        print(f"bytes per snapshot ({args.preset}): {h5_bytes / 2**20:.2f} MiB HDF5 + {w_bytes / 2**20:.2f} MiB weights")

        t = time.perf_counter()
        run = guppy.open_run(run_dir)
        _ = run.snapshots
        open_s = time.perf_counter() - t
        t = time.perf_counter()
        patterns = run.acts("blocks.*.attn.hook_pattern", snapshot="latest")
        load_s = time.perf_counter() - t
        print(f"open a run + list its {n} snapshots: {open_s * 1e3:.0f} ms; load one snapshot's attention patterns "
              f"({sum(a.nbytes for a in patterns.values()) / 2**10:.0f} KiB): {load_s * 1e3:.0f} ms")

        if args.disk_preset:
            cfg = TrainConfig(preset=args.disk_preset, steps=8, eval_prompts=0, runs_dir=str(root), run_name="disk",
                              record=True)
            _, disk_dir, big = train(cfg)
            n, h5_bytes, w_bytes = sizes(disk_dir)
            epoch_steps = big.steps_per_epoch
            full_n = len(snapshot_schedule(epoch_steps))
            state = sum(f.stat().st_size for f in (disk_dir / "checkpoints").glob("*.state.safetensors"))
            total = full_n * (h5_bytes + w_bytes) + state
            print(f"bytes per snapshot ({args.disk_preset}, {model_preset(args.disk_preset).num_params():,} params): "
                  f"{h5_bytes / 2**20:.2f} MiB HDF5 + {w_bytes / 2**20:.2f} MiB weights")
            print(f"default 1-epoch {args.disk_preset} run: {full_n} snapshots -> {total / 2**30:.2f} GiB "
                  f"with the training state (target < 1 GB)")
        print(load_note(max(load_before, os.getloadavg()[0])))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What recording costs: the same run with and without --record, measured in one process.

    python benchmarks/bench_record.py [--preset demo] [--steps 300] [--disk-preset guppy]

Prints wall time with the default snapshot schedule vs without (target overhead <= 5%),
bytes per snapshot (HDF5 file and weights), the projected size of a default one-epoch run,
the time to open a run, and the time to load one snapshot's attention patterns.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import guppy  # noqa: E402
from guppy.config import TrainConfig, model_preset  # noqa: E402
from guppy.record import snapshot_schedule  # noqa: E402
from guppy.train import start_run  # noqa: E402


def train(cfg: TrainConfig) -> tuple[float, Path, object]:
    t = time.perf_counter()
    trainer = start_run(cfg, show_progress=False)
    assert trainer.fit() == "finished", trainer.message
    return time.perf_counter() - t, trainer.run_dir, trainer


def sizes(run_dir: Path) -> tuple[int, int, int]:
    """(snapshot count, mean bytes per snapshot file, mean bytes per snapshot's weights)."""
    snaps = sorted((run_dir / "snapshots").glob("step-*.h5"))
    weights = [run_dir / "checkpoints" / f"{s.stem}.safetensors" for s in snaps]
    return len(snaps), sum(s.stat().st_size for s in snaps) // len(snaps), sum(w.stat().st_size for w in weights) // len(weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--disk-preset", default="guppy", help="also measure snapshot sizes of this preset (8 steps)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-record-"))
    try:
        base = TrainConfig(preset=args.preset, steps=args.steps, eval_prompts=0, runs_dir=str(root))
        # the schedule of the real run length, not of the short benchmark: overhead depends on it
        plain_s, _, trainer = train(base.__class__(**{**base.to_dict(), "run_name": "plain"}))
        rec_s, run_dir, rec = train(base.__class__(**{**base.to_dict(), "run_name": "rec", "record": True}))
        recorder = rec.callbacks[-1]
        n, h5_bytes, w_bytes = sizes(run_dir)
        print(f"preset {args.preset}, {args.steps} steps, batch {base.batch_size}: "
              f"without --record {plain_s:.1f}s, with {rec_s:.1f}s ({n} snapshots, {recorder.seconds:.1f}s in the recorder)")
        print(f"recording overhead: {rec_s / plain_s - 1:+.1%} of wall time (target <= 5%)")
        epoch_steps = trainer.batches_per_epoch
        full_n = len(snapshot_schedule(epoch_steps))
        per_snap = recorder.seconds / n
        print(f"for a default 1-epoch run ({epoch_steps} steps, {full_n} snapshots): ~{full_n * per_snap:.1f}s of "
              f"recording, {full_n * per_snap / (plain_s / args.steps * epoch_steps):.1%} of its training time")
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
            epoch_steps = big.batches_per_epoch
            full_n = len(snapshot_schedule(epoch_steps))
            state = sum(f.stat().st_size for f in (disk_dir / "checkpoints").glob("*.state.safetensors"))
            total = full_n * (h5_bytes + w_bytes) + state
            print(f"bytes per snapshot ({args.disk_preset}, {model_preset(args.disk_preset).num_params():,} params): "
                  f"{h5_bytes / 2**20:.2f} MiB HDF5 + {w_bytes / 2**20:.2f} MiB weights")
            print(f"default 1-epoch {args.disk_preset} run: {full_n} snapshots -> {total / 2**30:.2f} GiB "
                  f"with the training state (target < 1 GB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

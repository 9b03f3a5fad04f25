"""What guppy-timeline costs: the full timeline of a run (no LLC), its quick one, and the LLC series.

    python benchmarks/bench_timeline.py --run runs/reference-...             # target: <= 3 min on 2 cores
    python benchmarks/bench_timeline.py --run runs/induction-... --llc       # + the LLC series: <= 5 min
    python benchmarks/bench_timeline.py --run runs/reference-... --calibrate # SGLD step sizes on 2 checkpoints

Works on a hard-linked copy of the run (its own timeline files), so the run folder is not touched.
Prints each part's seconds, its seconds per snapshot, and the ratio to a baseline measured in the
same process: one forward pass of the watch set at the last checkpoint (what every part repeats).
With --calibrate: for the first non-zero and the last checkpoint, each SGLD step size's LLC and
how far the chain's loss drifted (mean of its last quarter against the loss at the weights): a step
size is usable while the drift stays small and the LLC grows with it roughly linearly.
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
os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's chain bars


def hardlinked_copy(run: Path, into: Path) -> Path:
    from guppy.run import format as R

    dst = into / run.name
    shutil.copytree(run, dst, copy_function=os.link)
    for name in (R.TIMELINE_FILE, R.TIMELINE_SERIES_FILE, R.TIMELINE_KEY_FILE, R.LLC_FILE):
        (dst / name).unlink(missing_ok=True)  # links: unlinking the copy's never touches the run's
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--llc", action="store_true", help="also time the LLC series (default settings)")
    p.add_argument("--calibrate", action="store_true", help="sweep SGLD step sizes instead")
    p.add_argument("--lrs", default="1e-6,3e-6,1e-5,3e-5", help="step sizes for --calibrate")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    import guppy
    from guppy.analysis import timeline as T
    from guppy.analysis.llc import LLCSettings, estimate_llc, llc_series

    torch.set_num_threads(args.threads)
    if not (args.run / "run.json").exists():
        print(f"bench_timeline: error: {args.run}: no such run folder", file=sys.stderr)
        return 1
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"CPU: {cpu}; {args.threads} torch threads; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-timeline-", dir=args.run.resolve().parent) as tmp:
        run_dir = hardlinked_copy(args.run.resolve(), Path(tmp))
        run = guppy.open_run(run_dir)
        n = len(run.snapshot_files)
        model = run.model().float().eval()
        tokens = torch.from_numpy(run.watch.tokens)
        with torch.no_grad():
            model(tokens)
            t = time.perf_counter()
            for _ in range(5):
                model(tokens)
            base = (time.perf_counter() - t) / 5
        print(f"{run_dir.name}: {n} snapshots, {len(run.checkpoint_steps)} checkpoints; baseline: one forward of "
              f"the watch set ({tokens.shape[0]} x {tokens.shape[1]}) {base * 1e3:.1f} ms")
        if args.calibrate:
            from guppy.analysis.heldout import heldout_batch

            d = LLCSettings()
            batch = heldout_batch(run, d.chats)
            steps = [s for s in run.checkpoint_steps if s > 0]
            for step in (steps[0], steps[-1]):
                m = run.model(step)
                for lr in (float(x) for x in args.lrs.split(",")):
                    s = LLCSettings(lr=lr)
                    t = time.perf_counter()
                    r = estimate_llc(m, batch, s)
                    print(f"step {step:>6}  lr {lr:<7g} LLC {r['llc']:8.2f} +- {r['llc_std']:.2f}  loss "
                          f"{r['init_loss']:.3f} -> {r['final_loss']:.3f} (drift {r['final_loss'] - r['init_loss']:+.3f})"
                          f"  {time.perf_counter() - t:.1f}s", flush=True)
            return 0
        for quick in (True, False):
            t = time.perf_counter()
            frame = T.timeline(run, T.TimelineSettings(quick=quick), force=True)
            dt = time.perf_counter() - t
            what = "quick timeline (snapshot files)" if quick else "full timeline (no LLC)"
            print(f"{what:34s} {dt:7.1f} s  {dt / n:6.2f} s/snapshot  {dt / base:8.0f} x baseline  "
                  f"{(frame.kind == 'stage').sum()} stages, {(frame.kind == 'birth').sum()} births"
                  + ("   target <= 180 s" if not quick else ""), flush=True)
        if args.llc:
            settings = LLCSettings()
            steps = [s for s in run.snapshot_files if s in set(run.checkpoint_steps)]
            t = time.perf_counter()
            table = llc_series(run, steps, settings)
            dt = time.perf_counter() - t
            print(f"{'LLC series':34s} {dt:7.1f} s  {dt / len(steps):6.2f} s/checkpoint  {dt / base:8.0f} x baseline"
                  f"   target <= 300 s\n  {settings.describe()}")
            for r in table.itertuples(index=False):
                print(f"  step {r.step:>6}  LLC {r.llc:8.2f} +- {r.llc_std:.2f}  loss {r.init_loss:.3f} -> {r.final_loss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

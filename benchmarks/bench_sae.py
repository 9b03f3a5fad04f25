"""What guppy-sae costs on a run: every snapshot's SAE at one residual point, timed, with what it found.

    python benchmarks/bench_sae.py --run runs/reference-20261201-120000      # the reference fish (target <= 10 min)
    python benchmarks/bench_sae.py --run runs/demo --hook blocks.0.hook_resid_post
    python benchmarks/bench_sae.py --run runs/demo -- --width 512 --k 8          # other guppy-sae settings after --

Runs guppy-sae with its default settings in a scratch copy of the run folder (its small files copied,
checkpoints and snapshots linked, so the run's own SAEs are untouched; with --in-place, on the run
itself with --fresh, so the SAEs stay for experiments/feature_figures.py), then
prints the wall time against the 10-minute target, the time per stage (activations, SAE training,
scoring) summed over snapshots, the baseline of the same run (one forward of the model over the SAE's
training tokens per snapshot, measured here) and the ratio to it, the explained variance and loss
recovered of the last SAE, the share of topics found at the first and last snapshot and when the
median topic feature was born.
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

TARGET_S = 600


def scratch_copy(run: Path, into: Path) -> Path:
    """The run folder with its checkpoints linked (not copied) and no features: guppy-sae writes here."""
    out = into / run.name
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints", "features", "snapshots"))
    for sub in ("checkpoints", "snapshots"):
        (out / sub).mkdir()
        for f in (run / sub).iterdir():
            os.symlink(f.resolve(), out / sub / f.name)
    return out


def forward_baseline(run_dir: Path, hook: str, tokens: int, seed: int) -> float:
    """Seconds of one forward up to the hook over the SAE's training tokens, at every snapshot."""
    import torch

    import guppy
    from guppy.features import activations as A

    run = guppy.open_run(run_dir)
    batch = A.batch_of(run, A.training_chats(run, tokens, seed))
    t = 0.0
    for step in run.snapshot_files:
        model = run.model(step)
        t0 = time.perf_counter()
        with torch.no_grad():
            A.hook_activations(model, batch.tokens, hook)
        t += time.perf_counter() - t0
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a recorded run folder, e.g. runs/reference-...")
    p.add_argument("--hook", default=None, help="one hook (default guppy-sae's: the residual half way up)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: both cores)")
    p.add_argument("--in-place", action="store_true",
                   help="train into the run folder itself (replacing its SAEs of that hook) instead of a scratch copy")
    p.add_argument("sae_flags", nargs="*", help="guppy-sae flags after --, e.g. -- --width 512 --k 8")
    args = p.parse_args(argv)

    import torch

    import guppy
    from guppy.features import store
    from guppy.features.activations import default_hook
    from guppy.features.cli import main as guppy_sae

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from feature_figures import numbers

    run_dir = Path(args.run)
    src = guppy.open_run(run_dir)
    hook = args.hook or default_hook(src.model_config.n_layers)
    print(f"machine: {load_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-sae-") as tmp:
        work = run_dir if args.in_place else scratch_copy(run_dir, Path(tmp))
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        fresh = ["--fresh"] if args.in_place else []
        code = guppy_sae([str(work), "--hook", hook, "--threads", str(args.threads), "--quiet", *fresh, *args.sae_flags])
        wall = time.perf_counter() - t0
        if code:
            return code
        settings = store.read_settings(work, hook)
        base = forward_baseline(work, hook, settings.tokens, settings.seed)
        run = guppy.open_run(work)
        s = run.feature_summary(hook)
        n = numbers(run, hook)
    print(f"run: {run_dir} ({len(s)} snapshots), hook {hook}, {n['width']} latents, k {n['k']}")
    print(f"guppy-sae wall time: {wall:.0f} s ({wall / TARGET_S:.2f} x the {TARGET_S} s target), "
          f"{wall / len(s):.1f} s per snapshot")
    print(f"  stages summed over snapshots: activations {s.seconds_acts.sum():.0f} s, SAE training {s.seconds_train.sum():.0f} s, "
          f"scoring {s.seconds_score.sum():.0f} s (the rest: loading data, the lineage, importing SAELens)")
    print(f"  baseline, same machine now: one forward up to the hook over the training tokens at every snapshot "
          f"{base:.1f} s; guppy-sae is {wall / base:.1f} x that")
    print(f"last SAE (step {n['last_step']}): explained variance {n['explained_variance']:.3f}, "
          f"loss recovered {n['loss_recovered']:.3f}, {n['dead']} dead, {n['dense']} dense")
    print(f"topics found (a feature with F1 >= 0.8): {n['found_first']:.0%} at step {n['first_step']}, "
          f"{n['found_last']:.0%} of {n['topics']} at step {n['last_step']}; median topic feature born at step "
          f"{n['median_birth']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

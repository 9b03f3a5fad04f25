"""docs/timeline.md's figures: each run's timeline drawn over its loss curve, one PNG per run.

    python experiments/timeline_figures.py --run runs/demo-... --run runs/reference-... --out docs/timeline

For every run: the training and held-out loss with the stages as bands and the births as marks
(top; the heads' births named), the scores of the heads whose births the timeline found, and the
LLC where it was estimated (bottom). The file is named after the run's recipe (the run name up to its date: demo.png,
reference.png, induction.png). The timeline comes from `run.timeline()` (measured now if the run
has none cached: a few minutes for the reference fish). Needs matplotlib (the `figures` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import guppy  # noqa: E402
from guppy.run.writer import atomic_write  # noqa: E402


def figure_name(run_dir: Path) -> str:
    return re.sub(r"-\d{8}-\d{6}$", "", run_dir.name) + ".png"


def draw(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run = guppy.open_run(run_dir)
    frame = run.timeline()
    series = run.timeline_series()
    m = run.metrics
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, constrained_layout=True,
                                      gridspec_kw=dict(height_ratios=[3, 2]))
    train = m[["step", "loss"]].dropna()
    top.plot(train.step, train.loss, color="#1f77b4", lw=1.2, label="train loss")
    held = m[["step", "eval_loss"]].dropna() if "eval_loss" in m else m.iloc[:0]
    if len(held):
        top.plot(held.step, held.eval_loss, "o:", color="#ff7f0e", ms=3, label="held-out loss")
    stages = frame[frame.kind == "stage"].reset_index(drop=True)
    for i, s in stages.iterrows():
        for ax in (top, bottom):
            ax.axvspan(max(s.step, 0.5), max(s.value, 1), color=("#1f77b4", "#ff7f0e")[i % 2], alpha=0.08, lw=0)
        top.text(max(s.step, 0.5), 1.0, f" {i + 1}", transform=top.get_xaxis_transform(), va="top", fontsize=9)
    born = frame[frame.kind == "birth"]
    if len(born) and len(train):
        y = np.interp(born.step, train.step, train.loss)
        top.scatter(np.maximum(born.step, 0.5), y, marker="D", color="#d62728", s=22, zorder=3, label="births")
        for (_, b), yy in list(zip(born.iterrows(), y)):  # the heads named; the rest are marks (hover in the dashboard)
            if not (b.what.startswith("L") and " becomes " in b.what):
                continue
            top.annotate(b.what.replace(" becomes a ", ": ").replace(" head", ""), (max(b.step, 0.5), yy),
                         fontsize=7, rotation=30, xytext=(3, 6), textcoords="offset points")
    top.set_ylabel("loss (nats)")
    top.set_yscale("log")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{run_dir.name}: {len(stages)} stages, {len(born)} births (guppy-timeline)", loc="left", fontsize=10)
    heads = [b.what.split(" ")[0] + "|" + b.evidence.split(" score")[0] for b in born.itertuples()
             if b.what.startswith("L") and " score " in b.evidence]
    cols = {"previous-token": "prev_token", "induction": "induction", "duplicate-token": "duplicate_token",
            "first-token": "first_token", "copy": None}
    drawn = 0
    for key in dict.fromkeys(heads):
        head, score = key.split("|")
        metric = cols.get(score)
        col = f"head.{metric}.{head}" if metric else None
        if series is not None and col in series and drawn < 8:
            bottom.plot(np.maximum(series.step, 0.5), series[col], lw=1.2, label=f"{head} {score}")
            drawn += 1
    if not drawn and series is not None:  # no head took a role: the sites that came to matter under ablation
        sites = sorted((c for c in series.columns if c.startswith("ablate.")), key=lambda c: -series[c].max())[:6]
        for c in sites:
            bottom.plot(np.maximum(series.step, 0.5), series[c], lw=1.2, label=f"ablating {c[7:]}")
            drawn += 1
        bottom.set_yscale("symlog", linthresh=0.1)
        bottom.set_ylabel("held-out loss added (nats)")
    else:
        bottom.set_ylabel("head score")
    llc = frame[frame.kind == "llc"]
    if len(llc):
        ax2 = bottom.twinx()
        ax2.plot(np.maximum(llc.step, 0.5), llc.value, "s--", color="black", ms=3, lw=1, label="LLC")
        ax2.set_ylabel("LLC (dashed)")
    if drawn:
        bottom.legend(loc="upper left", fontsize=7, ncol=2)
    steps = sorted(run.snapshot_files)
    if len(steps) > 2 and steps[-1] / max(steps[1], 1) > 50:
        bottom.set_xscale("log")
    bottom.set_xlabel("training step")
    out.mkdir(parents=True, exist_ok=True)
    path = out / figure_name(run_dir)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Draw each run's timeline over its loss curve.")
    p.add_argument("--run", action="append", required=True, type=Path, help="a recorded run (repeat for several)")
    p.add_argument("--out", type=Path, default=Path("docs/timeline"))
    args = p.parse_args(argv)
    for r in args.run:
        if not (r / "run.json").exists():
            print(f"timeline_figures: error: {r}: no such run folder", file=sys.stderr)
            return 1
    for r in args.run:
        print(draw(r, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

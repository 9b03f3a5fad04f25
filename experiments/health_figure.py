"""docs/divergence.md's figure, drawn from a diverged run.

    python experiments/health_figure.py --run runs/broken --out docs/divergence.png

Left: the run's health signals per layer up to the break (health.csv, log axis); right: the
forensics' fp32 replay of the broken batch, max |x| at every hook point in forward order on
the last good weights against the same batch on the earlier weights, the hook it named
marked. Reads the run through `guppy.open_run` only. Needs matplotlib (the `figures` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import guppy  # noqa: E402
from guppy.run.format import LAYER_SIGNALS, SIGNAL_TITLES  # noqa: E402


def draw(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    run = guppy.open_run(run_dir)
    health, f = run.health, run.forensics()
    s, L = f.summary, run.model_config.n_layers
    fig = plt.figure(figsize=(13, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(len(LAYER_SIGNALS) + 1, 2, width_ratios=[1, 1.25])
    ax = fig.add_subplot(grid[0, 0])
    ax.plot(health.step, health.loss, color="black")
    ax.set_title("training loss", fontsize=9, loc="left")
    axes = [ax]
    for i, signal in enumerate(LAYER_SIGNALS, start=1):
        ax = fig.add_subplot(grid[i, 0], sharex=axes[0])
        for l in range(L):
            ax.plot(health.step, health[f"blocks.{l}.{signal}"], label=f"layer {l}")
        ax.set_title(SIGNAL_TITLES[signal], fontsize=9, loc="left")
        axes.append(ax)
    axes[1].legend(fontsize=8, loc="upper left")
    for ax in axes:
        ax.set_yscale("log")
        ax.axvline(s["step"], color="red", lw=1)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("step (red: diverged)")

    ax = fig.add_subplot(grid[:, 1])
    h = f.hooks
    y = range(len(h))
    ax.barh(y, h.max_abs, color=["red" if bad else "#1f77b4" for bad in h.first_bad], height=0.8,
            label=f"last good weights (step {s['weights_step']})")
    ax.scatter(h.baseline_max_abs, y, color="black", s=8, zorder=3, label=f"earlier weights (step {s['baseline_step']})")
    ax.set_yticks(list(y), h.hook, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("max |x| on the broken batch, fp32 replay (log)")
    ax.set_title(f"forensics of step {s['step']}: {s['first_bad_kind']}: {s['first_bad_hook']}", fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{run_dir.name}: diverged at step {s['step']} ({s['cause']})", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a diverged run folder")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "divergence.png"))
    args = p.parse_args()
    print(draw(Path(args.run), Path(args.out)))


if __name__ == "__main__":
    main()

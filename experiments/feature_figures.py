"""docs/features.md's figure and numbers from a run's SAEs (guppy-sae RUN first): topics found over training.

    python experiments/feature_figures.py --run runs/reference-20261201-120000 --out docs/features

Draws topics_found.png: above, the share of the persona's topics that a feature detects with F1 >= 0.8
(held-out chats, last prompt token) at every snapshot, with the SAE's explained variance and the loss
it recovers when spliced in; below, every topic's best F1 at every snapshot, topics ordered by when
their feature was born. Prints the numbers docs/features.md quotes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guppy.cli import ArgumentParser, run_main  # noqa: E402

PROG = "feature_figures.py"
FIGURE = "topics_found.png"


def numbers(run, hook: str | None) -> dict:
    """What the docs quote: topics found at the first and last snapshot, the median birth of a topic feature, ..."""
    import numpy as np

    from guppy.features.lineage import topic_births
    from guppy.features.scoring import FOUND

    summary, topics, feats = run.feature_summary(hook), run.feature_topics(hook), run.features(hook)
    if summary.empty:
        raise ValueError(f"{run.path}: no SAEs computed yet; run guppy-sae {run.path} first")
    first, last = summary.iloc[0], summary.iloc[-1]
    births = topic_births(feats, topics)
    found = births[(births.score >= FOUND) & births.born.notna()]
    return {"hook": hook or run.feature_hooks[0], "snapshots": len(summary), "first_step": int(first.step),
            "last_step": int(last.step), "found_first": float(first.topics_found_share),
            "found_last": float(last.topics_found_share), "topics": int(last.topics),
            "median_birth": float(np.median(found.born)) if len(found) else float("nan"), "found_now": len(found),
            "explained_variance": float(last.explained_variance), "loss_recovered": float(last.loss_recovered),
            "dead": int(last.dead), "dense": int(last.dense), "width": int(last.width), "k": int(last.k),
            "seconds": float(summary.seconds.sum()),
            "best_step": int(summary.step[summary.topics_found_share.idxmax()]),
            "best_found": float(summary.topics_found_share.max())}


def figure(run, hook: str | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from guppy.features.lineage import topic_births
    from guppy.run.writer import atomic_write

    summary, topics, feats = run.feature_summary(hook), run.feature_topics(hook), run.features(hook)
    births = topic_births(feats, topics).sort_values(["born", "topic"], na_position="last")
    grid = topics.pivot(index="topic", columns="step", values="score").loc[births.topic]
    x = np.maximum(summary.step.to_numpy(), 0.5)  # step 0 on a log axis
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 9), height_ratios=[1, 2.2], constrained_layout=True)
    top.plot(x, summary.topics_found_share, "o-", color="crimson", label="topics found (a feature with F1 >= 0.8)")
    top.plot(x, summary.explained_variance, "s-", color="steelblue", ms=3, label="explained variance")
    top.plot(x, summary.loss_recovered, "^-", color="seagreen", ms=3, label="loss recovered, SAE spliced in")
    top.set(xscale="log", ylim=(0, 1.02), xlabel="training step", title=f"the fish's features over training ({int(summary.iloc[0].width)} "
            f"latents, k {int(summary.iloc[0].k)}, at {hook or run.feature_hooks[0]})")
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    im = bottom.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    bottom.set_xticks(range(len(grid.columns)), [str(s) for s in grid.columns], rotation=90, fontsize=7)
    bottom.set_yticks(range(len(grid)), grid.index, fontsize=5 if len(grid) > 30 else 8)
    bottom.set(xlabel="training step (snapshot)", title="each topic's best feature: F1 at the last prompt token (held-out chats);\n"
               "topics ordered by when that feature's lineage was born")
    fig.colorbar(im, ax=bottom, shrink=0.6, label="F1")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Draw docs/features.md's figure from a run's SAEs (guppy-sae first).")
    p.add_argument("--run", required=True, help="a run folder with SAEs (guppy-sae RUN)")
    p.add_argument("--hook", default=None, help="which hook's SAEs (default: the only one computed)")
    p.add_argument("--out", default="docs/features", help="folder for the PNG (default docs/features)")
    args = p.parse_args(argv)

    def body() -> None:
        import guppy

        run = guppy.open_run(args.run)
        n = numbers(run, args.hook)
        figure(run, args.hook, Path(args.out) / FIGURE)
        print(f"{n['hook']}: {n['snapshots']} SAEs of {n['width']} latents (k {n['k']}), guppy-sae {n['seconds']:.0f} s")
        print(f"topics found (F1 >= 0.8): {n['found_first']:.0%} at step {n['first_step']}, {n['found_last']:.0%} of "
              f"{n['topics']} at step {n['last_step']} (most: {n['best_found']:.0%} at step {n['best_step']})")
        print(f"median topic feature born at step {n['median_birth']:g} (over the {n['found_now']} topics found at the end)")
        print(f"last SAE: explained variance {n['explained_variance']:.3f}, loss recovered {n['loss_recovered']:.3f}, "
              f"{n['dead']} dead, {n['dense']} dense")
        print(f"wrote {Path(args.out) / FIGURE}")

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

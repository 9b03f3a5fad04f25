"""The README's induction figures, drawn from a run made by `make demo-induction` (PNG, matplotlib).

    python probes/induction_figures.py --run runs/induction-demo --out docs/induction

Writes into --out:
  formation.png  every head's induction score on repeated random tokens over training (the
                 earlier layer's best previous-token head dotted), and below it the loss on the
                 recalled items' tokens of held-out memory chats and the training loss
  patterns.png   the induction head's attention on a repeated random sequence, before it formed,
                 just after, and at the end
and prints the numbers the figures show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from guppy.cli import ArgumentParser, run_main

PROG = "induction_figures.py"


def formation_figure(table, metrics, formed, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    others = False
    for col in [c for c in table.columns if c.startswith("induction.")]:
        head = col.split(".", 1)[1]
        main = bool(formed) and head == formed["head"]
        label = f"{head} induction" if main else (None if others else "other heads' induction")
        others |= not main
        top.plot(table.step, table[col], lw=2.5 if main else 0.8, color="C3" if main else "0.6", label=label)
    if formed:
        prev = [c for c in table.columns if c.startswith("prev_token.L") and int(c[12:].split("H")[0]) < formed["layer"]]
        if prev:
            best = max(prev, key=lambda c: table[c].iloc[-1])
            top.plot(table.step, table[best], ":", color="C0", lw=2, label=f"{best.split('.', 1)[1]} previous-token")
        for ax in (top, bottom):
            ax.axvspan(formed["rise_from"], formed["rise_to"], color="gold", alpha=0.3, lw=0)
    top.axhline(0.5, ls="--", color="0.5", lw=0.8)
    top.set_ylim(0, 1)
    top.set_ylabel("score on repeated\nrandom tokens")
    top.legend(loc="upper left", frameon=False)
    bottom.plot(table.step, table.recall_loss, color="C3", lw=2, label="loss on recalled tokens (held-out items)")
    if metrics is not None:
        m = metrics.dropna(subset=["loss"])
        bottom.plot(m.step, m.loss, color="0.4", lw=1, label="training loss")
    bottom.set_ylabel("loss (nats)")
    bottom.set_xlabel("training step")
    bottom.legend(loc="upper right", frameon=False)
    title = f"{formed['head']} becomes an induction head at step {formed['step']}" if formed else "no induction head yet"
    fig.suptitle(title + " (grey: the other heads; shaded: its score rising 10% -> 90%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def patterns_figure(run, formed, path: Path) -> list[int]:
    import matplotlib.pyplot as plt

    P = run.probes
    rows = [int(i) for i in P.subset if P.kind[int(i)] == "repeat"]
    k = int(np.flatnonzero(P.subset == rows[0])[0])
    n = int(P.lengths[rows[0]])
    steps = list(run.snapshot_files)
    before = [s for s in steps if s <= formed["rise_from"]] or steps[:1]
    after = [s for s in steps if s >= formed["rise_to"]] or steps[-1:]
    chosen = list(dict.fromkeys([before[-1], after[0], steps[-1]]))
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.3 * len(chosen), 3.5))
    for ax, s in zip(np.atleast_1d(axes), chosen):
        pat = run.acts(f"blocks.{formed['layer']}.attn.hook_pattern", s, rows=slice(k, k + 1))[0, formed["index"], :n, :n]
        ax.imshow(pat.astype(np.float32), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{formed['head']}, step {s}", fontsize=10)
        ax.set_xlabel("key")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].set_ylabel("query")
    fig.suptitle(f"attention on a start token + 20 random tokens, repeated: the stripe 19 back is induction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Draw the induction demo's figures (PNG) from its run.")
    p.add_argument("--run", required=True, help="a run made by make demo-induction")
    p.add_argument("--out", default="docs/induction", help="folder for the PNG files (default docs/induction)")
    args = p.parse_args(argv)

    def body():
        import guppy
        from guppy.recall import formation, read_recall

        run = guppy.open_run(args.run)
        table = read_recall(run.path)
        if table is None:
            raise ValueError(f"{run.path}: no recall.csv (make the run with `make demo-induction`)")
        formed = formation(table)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        formation_figure(table, run.metrics, formed, out / "formation.png")
        print(f"wrote {out / 'formation.png'}")
        if formed is None:
            print("no head's induction score reached 0.5: no pattern figure")
            return
        if run.snapshot_files:
            chosen = patterns_figure(run, formed, out / "patterns.png")
            print(f"wrote {out / 'patterns.png'} (steps {', '.join(map(str, chosen))})")
        print(f"{formed['head']}: induction {formed['score_before']:.3f} -> {formed['score_after']:.3f}, "
              f"crossed 0.5 at step {formed['step']}, rose between steps {formed['rise_from']} and {formed['rise_to']}")

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

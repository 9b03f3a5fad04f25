"""Knock the previous-token head out while the induction recipe trains: does another head take its
place, does recall form later, or never? (docs/experiments.md, "Knocking out the previous-token head")

    python -m experiments.induction --no-record --steps 2000 --every 50 --run-name ko-none
    python -m experiments.induction --no-record --steps 2000 --every 50 --ablate L0H2 --run-name ko-L0H2
    python -m experiments.induction --no-record --steps 2000 --every 50 --ablate L0H2 --ablate-steps 1450: --run-name ko-L0H2-from-1450
    python experiments/knockout.py --runs runs/ko-none runs/ko-L0H2 runs/ko-L0H2-from-1450 --out docs/experiments/knockout.png

Reads each run's recall.csv (guppy.analysis.memory_recall.RecallMonitor) and what it knocked out
(run.json), and draws four panels over training: recall of held-out items; the previous-token
score of every layer-0 head on repeated random tokens (the knocked-out one dashed); the best
layer-1 head's induction score on repeated random tokens and its copy score inside the memory
chats; the in-context loss drop. Prints the numbers the page states.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guppy.cli import ArgumentParser, run_main  # noqa: E402

PROG = "knockout.py"


def runs_of(paths: list[str]) -> list[dict]:
    """Per run: its name, what it knocked out ('' for none), the window, and its recall.csv."""
    from guppy.analysis.memory_recall import read_recall
    from guppy.run.reader import open_run

    out = []
    for path in paths:
        run = open_run(path)
        table = read_recall(path)
        if table is None or table.empty:
            raise ValueError(f"{path}: no recall.csv: train it with python -m experiments.induction")
        cfg = run.config
        out.append({"name": Path(path).name, "ablate": cfg.ablate, "steps": cfg.ablate_steps, "table": table})
    return out


def label(r: dict) -> str:
    if not r["ablate"]:
        return f"{r['name']}: nothing knocked out"
    return f"{r['name']}: {r['ablate']} knocked out " + (f"at steps {r['steps']}" if r["steps"] else "all along")


def columns(table, metric: str, layer: int) -> list[str]:
    from guppy.run.format import head_column_parts

    return [c for c in table.columns if (p := head_column_parts(c)) and p[0] == metric and p[1] == layer]


def facts(r: dict) -> str:
    """The numbers of one run: recall at the end and when it first reached 20%; the strongest
    previous-token head of layer 0 that was not knocked out (and the knocked-out ones), the best
    copy head of layer 1 inside the chats, and (in tables that have them) the best layer-1 induction
    score on repeated random tokens, the step it first passed 0.5, and the in-context loss drop."""
    from guppy.run.format import ICL_DROP

    t = r["table"]
    last = t.iloc[-1]
    rise = t.step[t.recall_acc >= 0.2]
    knocked = r["ablate"].split(",")
    heads = {c.split(".", 1)[1]: c for c in columns(t, "prev_token", 0)}
    prev = max((h for h in heads if h not in knocked), key=lambda h: last[heads[h]])
    gone = "".join(f", knocked-out {h} {last[heads[h]]:.2f}" for h in heads if h in knocked)
    copy = max(columns(t, "chat_induction", 1), key=lambda c: last[c])
    said = (f"{label(r)} -> recall {last.recall_acc:.1%} of held-out chats at step {int(last.step)} "
            f"({f'20% first at step {int(rise.iloc[0])}' if len(rise) else 'never 20%'}); strongest layer-0 "
            f"previous-token head {prev} {last[heads[prev]]:.2f}{gone}; best layer-1 copy head "
            f"{copy.split('.', 1)[1]} {last[copy]:.2f} in the chats")
    induction = columns(t, "induction", 1)
    if induction:
        best = max(induction, key=lambda c: last[c])
        above = t.step[t[induction].max(axis=1) > 0.5]
        said += (f"; best layer-1 induction head on repeated random tokens {best.split('.', 1)[1]} {last[best]:.2f} "
                 f"({f'a head first above 0.5 at step {int(above.iloc[0])}' if len(above) else 'none ever above 0.5'})")
    if ICL_DROP in t:
        said += f"; in-context loss drop {last[ICL_DROP]:.2f} nats"
    return said


def draw(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from guppy.run.format import ICL_DROP
    from guppy.run.writer import atomic_write

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2), constrained_layout=True)
    for i, r in enumerate(runs):
        t, colour = r["table"], f"C{i}"
        axes[0].plot(t.step, t.recall_acc, color=colour, lw=1.6, label=label(r))
        knocked = r["ablate"].split(",")
        for c in columns(t, "prev_token", 0):
            head = c.split(".", 1)[1]
            axes[1].plot(t.step, t[c], color=colour, lw=1.0, ls="--" if head in knocked else "-", alpha=0.8)
        induction = columns(t, "induction", 1)
        if induction:
            axes[2].plot(t.step, t[induction].max(axis=1), color=colour, lw=1.6)
        axes[2].plot(t.step, t[columns(t, "chat_induction", 1)].max(axis=1), color=colour, lw=1.0, ls=":")
        if ICL_DROP in t:
            axes[3].plot(t.step, t[ICL_DROP], color=colour, lw=1.6)
        if r["steps"] and r["steps"].split(":")[0]:
            for ax in axes:
                ax.axvline(int(r["steps"].split(":")[0]), color=colour, lw=0.8, ls=":")
    axes[0].set(title="recall of held-out items\n(share of chats)", xlabel="step", ylim=(0, 1))
    axes[1].set(title="layer-0 heads' previous-token score\n(the knocked-out head: dashed)", xlabel="step")
    axes[2].set(title="best layer-1 head: induction score on repeated random\ntokens (solid), copy score in memory chats (dotted)",
                xlabel="step")
    axes[3].set(title="in-context loss drop on repeated random tokens\n(first copy - second copy, nats)", xlabel="step")
    axes[0].legend(fontsize=7, loc="upper left")
    for ax in axes:
        ax.title.set_fontsize(9)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="The knock-out experiment's figure and numbers from its runs.")
    p.add_argument("--runs", nargs="+", required=True, help="run folders trained by python -m experiments.induction")
    p.add_argument("--out", default="docs/experiments/knockout.png", help="the PNG to write (default %(default)s)")
    args = p.parse_args(argv)

    def body():
        runs = runs_of(args.runs)
        for r in runs:
            print(facts(r))
        print(draw(runs, Path(args.out)))
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())

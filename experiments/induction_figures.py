"""docs/induction.md's figures, drawn from a run made by `make demo-induction` (PNG, matplotlib).

    python experiments/induction_figures.py --run runs/induction-demo --out docs/induction

Writes into --out:
  formation.png  every head's induction score on repeated random tokens over training (layer 0's
                 best previous-token head dotted; the copy heads summed, where more than one share it),
                 its induction score inside held-out memory chats
                 (guppy.analysis.memory_recall.chat_induction), and the loss on the recalled items' tokens,
                 on the two copies of the repeated random tokens, and the training loss
  chat_patterns.png  the head most induction-like inside the chats, on a held-out memory chat,
                 at steps near 1,000, 2,000, 3,000 and the last (from the snapshots' weights)
  patterns.png   once a head's score on repeated random tokens crosses 0.5: its attention on a
                 repeated random sequence before it formed, just after, and at the end
and prints the numbers the figures show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from guppy.cli import ArgumentParser, run_main

PROG = "induction_figures.py"


def chat_induction_table(run, table):
    """recall.csv's chat_induction columns, or (for runs recorded before the monitor measured them)
    the same scores computed from every snapshot's weights on 128 held-out memory chats."""
    cols = [c for c in table.columns if c.startswith("chat_induction.")]
    if cols:
        return table[["step", *cols]]
    import pandas as pd

    from guppy.analysis.memory_recall import chat_induction, held_out_memory_chats, recall_batch

    batch = recall_batch(run.tokenizer, held_out_memory_chats(run.path, 128), run.model_config.n_ctx)
    return pd.DataFrame([{"step": s, **chat_induction(run.model(s), batch)} for s in run.snapshot_files])


def formation_figure(table, chat, metrics, formed, path: Path) -> None:
    """Scores on repeated random tokens, copy scores inside the memory chats (and, where measured,
    in the same chats with the item swapped for random tokens), and the losses. Shaded: the rise
    of the head that crossed 0.5 on random tokens or, if none did, of the best copy head in the chats."""
    import matplotlib.pyplot as plt

    from guppy.analysis.memory_recall import copy_heads, formation, previous_token_head
    from guppy.run.format import ICL_FIRST, ICL_SECOND

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]})
    for ax, t, prefix, what in ((axes[0], table, "induction.", "on repeated random tokens"),
                                (axes[1], chat, "chat_induction.", "inside held-out memory chats")):
        cols = [c for c in t.columns if c.startswith(prefix)]
        best = max(cols, key=lambda c: t[c].iloc[-1])
        for col in cols:
            main = col == best
            ax.plot(t.step, t[col], lw=2.5 if main else 0.8, color="C3" if main else "0.6",
                    label=f"{col.split('.', 1)[1]} (highest at the end)" if main else None)
        ax.axhline(0.5, ls="--", color="0.5", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"induction score\n{what}", fontsize=9)
        ax.legend(loc="upper left", frameon=False, fontsize=8)
    if formed and len(heads := copy_heads(table, formed["layer"])) > 1:  # the copying split between heads
        summed = sum(table[f"induction.{h}"] for h in heads)
        axes[0].plot(table.step, summed, "--", color="C2", lw=1.2, label=f"{'+'.join(heads)} summed")
        axes[0].set_ylim(0, max(1.0, 1.05 * summed.max()))
    if best := previous_token_head(table, before_layer=1):
        axes[0].plot(table.step, table[best], ":", color="C0", lw=1.5, label=f"{best.split('.', 1)[1]} previous-token")
        axes[0].legend(loc="upper left", frameon=False, fontsize=8)
    swapped = [c for c in table.columns if c.startswith("chat_random_induction.")]
    if swapped:
        best = max(swapped, key=lambda c: table[c].iloc[-1])
        axes[1].plot(table.step, table[best], "--", color="C1", lw=1.5,
                     label=f"{best.split('.', 1)[1]}, the item swapped for random tokens")
        axes[1].legend(loc="upper left", frameon=False, fontsize=8)
    rise = formed or formation(chat, threshold=None, metric="chat_induction")
    if rise:
        for ax in axes:
            ax.axvspan(rise["rise_from"], rise["rise_to"], color="gold", alpha=0.3, lw=0)
    axes[2].plot(table.step, table.recall_loss, color="C3", lw=2, label="loss on recalled tokens (held-out items)")
    if ICL_SECOND in table:  # runs of before the in-context loss columns lack them
        axes[2].plot(table.step, table[ICL_FIRST], color="C0", lw=1, label="repeated random tokens: first copy")
        axes[2].plot(table.step, table[ICL_SECOND], color="C0", lw=2, label="repeated random tokens: second copy")
    if metrics is not None:
        m = metrics.dropna(subset=["loss"])
        axes[2].plot(m.step, m.loss, color="0.4", lw=0.8, label="training loss")
    axes[2].set_ylabel("loss (nats)")
    axes[2].set_xlabel("training step")
    axes[2].legend(loc="lower left", frameon=False, fontsize=8)
    title = (f"{formed['head']} crosses 0.5 at step {formed['step']}" if formed
             else "no head's induction score on repeated random tokens reaches 0.5" + (
                 f";\nin the chats {rise['head']}'s copy score rises between steps {rise['rise_from']} and {rise['rise_to']}"
                 if rise else ""))
    fig.suptitle(title + " (grey: the other heads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def patterns_figure(run, formed, path: Path) -> list[int]:
    import matplotlib.pyplot as plt

    P = run.watch
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
    fig.suptitle("attention on a start token + 20 random tokens, repeated: the stripe 19 back is induction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return chosen


def chat_patterns_figure(run, head: str, steps: list[int], path: Path) -> None:
    """`head`'s attention on one held-out memory chat at `steps`, computed from the snapshots' weights:
    rows are the positions that predict the recalled item, columns the whole chat."""
    import matplotlib.pyplot as plt

    from guppy.analysis.memory_recall import chat_pattern, example_chat, held_out_memory_chats, recall_batch

    chat = example_chat(held_out_memory_chats(run.path))
    batch = recall_batch(run.tokenizer, [chat], run.model_config.n_ctx)
    n = int(batch.lengths[0]) - 1
    layer, h = (int(x) for x in head[1:].split("H"))
    fig, axes = plt.subplots(len(steps), 1, figsize=(9, 1.3 * len(steps) + 0.8), sharex=True)
    for ax, s in zip(np.atleast_1d(axes), steps):
        pat = chat_pattern(run.model(s), batch, layer, h)  # (item tokens, n)
        ax.imshow(pat, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_ylabel(f"step {s}", fontsize=9)
        ax.set_yticks([])
    ids = batch.tokens[0, :n].tolist()
    told = [i for i in range(n) if any(int(k) == i for k in batch.copy_pairs[:, 2])]
    last = np.atleast_1d(axes)[-1]
    last.set_xticks(told)
    last.set_xticklabels([run.tokenizer.decode([ids[i]]) for i in told], rotation=60, fontsize=7)
    last.set_xlabel("key position (ticks: the tokens an induction head should attend to)")
    fig.suptitle(f"{head} on a held-out chat: rows = positions predicting '{chat.recall}' in the last reply",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog=PROG, description="Draw the induction demo's figures (PNG) from its run.")
    p.add_argument("--run", required=True, help="a run made by make demo-induction")
    p.add_argument("--out", default="docs/induction", help="folder for the PNG files (default docs/induction)")
    args = p.parse_args(argv)

    def body():
        import guppy
        from guppy.analysis.memory_recall import formation, read_recall

        run = guppy.open_run(args.run)
        table = read_recall(run.path)
        if table is None:
            raise ValueError(f"{run.path}: no recall.csv (make the run with `make demo-induction`)")
        formed = formation(table)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        chat = chat_induction_table(run, table)
        formation_figure(table, chat, run.metrics, formed, out / "formation.png")
        print(f"wrote {out / 'formation.png'}")
        last = table.iloc[-1]
        best_rand = max((c for c in table.columns if c.startswith("induction.")), key=lambda c: last[c])
        best_chat = max((c for c in chat.columns if c.startswith("chat_induction.")), key=lambda c: chat[c].iloc[-1])
        print(f"step {int(last.step)}: recall {last.recall_acc:.1%} of held-out chats ({last.recall_token_acc:.1%} of "
              f"item tokens, loss {last.recall_loss:.3f}); best induction on random tokens {best_rand.split('.', 1)[1]} "
              f"{last[best_rand]:.3f}; inside memory chats {best_chat.split('.', 1)[1]} {chat[best_chat].iloc[-1]:.3f} "
              f"(step {int(chat.step.iloc[-1])})")
        snaps = list(run.snapshot_files)
        if snaps:  # the head most induction-like inside the chats, before, during and after its rise
            rise = formation(chat, threshold=None, metric="chat_induction")  # a head of layer 1 or later
            head = rise["head"] if rise else best_chat.split(".", 1)[1]
            marks = (rise["rise_from"], rise["step"], rise["rise_to"]) if rise else ()
            picked = sorted({min(snaps, key=lambda s: abs(s - t)) for t in (*marks, snaps[-1])})
            chat_patterns_figure(run, head, picked, out / "chat_patterns.png")
            print(f"wrote {out / 'chat_patterns.png'} ({head} at steps {', '.join(map(str, picked))})")
        if formed is None:
            print("no head's induction score on repeated random tokens reached 0.5: no patterns.png")
            return
        if run.snapshot_files:
            chosen = patterns_figure(run, formed, out / "patterns.png")
            print(f"wrote {out / 'patterns.png'} (steps {', '.join(map(str, chosen))})")
        print(f"{formed['head']}: induction {formed['score_before']:.3f} -> {formed['score_after']:.3f}, "
              f"crossed 0.5 at step {formed['step']}, rose between steps {formed['rise_from']} and {formed['rise_to']}")

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())

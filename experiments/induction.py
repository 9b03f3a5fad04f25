"""Watch an induction head form: train a small fish on memory chats, recorded densely.

    python -m experiments.induction                       # what `make demo-induction` runs
    python -m experiments.induction --steps 400 --every 5 --run-name try
    python -m experiments.induction --ablate L0H2 --ablate-steps 1450: --run-name late-ko   # knock a head out while training

The recipe (`recipe()`) trains the 2-layer `induction` preset on a mix of ordinary chats and
multi-turn memory chats (`guppy.data.memory_chats`), recorded (snapshots every `record_every` steps,
for attention patterns before and after), with a `RecallMonitor` that measures recall of
held-out items and every head's induction and previous-token scores on repeated random tokens
every `--every` steps into `recall.csv`. At the end it prints when the induction head formed.
`probes/recall_heads.py` then ablates it.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from guppy.config import TrainConfig


def recipe(**overrides) -> TrainConfig:
    """The demo's run: the 2-layer `induction` preset on 50% memory chats of the kinds whose items
    are arbitrary (words, letter codes, and either said twice in one turn, with words between the
    two copies or none; names, foods and numbers can be recalled by their look alone: a head that
    attends to 'name-like' tokens, no induction needed) and 40% say-it-back chats of random tokens
    of the whole vocabulary (`guppy.data.copy_chats`: items made of words taught copying only the
    tokens words are made of), loss on every token (on the last reply only the copy heads formed
    later and less surely), 2,000 steps, snapshots every 100 steps. Measured on this data: see
    docs/induction.md."""
    base = TrainConfig(preset="induction", memory_fraction=0.5, copy_fraction=0.4,
                       memory_kinds="words,poem,code,twice,echo", n_chats=60_000,
                       batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=50, steps=2000, loss_on="all",
                       eval_every=500, eval_prompts=0, record=True, record_every=100, log_every=10)
    return replace(base, **overrides)


def summary(run_dir) -> str:
    from guppy.analysis.memory_recall import column_rise, copy_heads, formation, previous_token_head, read_recall
    from guppy.run.format import ICL_DROP, ICL_FIRST, ICL_SECOND

    table = read_recall(run_dir)
    f = formation(table)
    last = table.iloc[-1]
    lines = [f"recall of held-out items at step {int(last.step)}: {last.recall_acc:.1%} of chats "
             f"({last.recall_token_acc:.1%} of item tokens), loss {last.recall_loss:.3f} "
             f"(step 0: {table.recall_loss.iloc[0]:.3f})"]
    best = formation(table, threshold=None)  # the head of layer >= 1 that rises highest, dated half way up
    prev_col = previous_token_head(table, best["layer"]) if best else None  # its partner: an earlier layer's
    if prev_col:
        prev = column_rise(table, prev_col)
        lines.append(f"previous-token head {prev_col.split('.', 1)[1]} born at step {prev['step']} (half way up; "
                     f"score {prev['before']:.3f} -> {prev['after']:.3f}, 10%-90% between steps "
                     f"{prev['rise_from']} and {prev['rise_to']})")
    if f is None:
        lines.append(f"no head's induction score reached 0.5 (best: {best['head']} "
                     f"{table['induction.' + best['head']].max():.3f}, half way up at step {best['step']})")
    else:
        lines.append(f"induction head {f['head']} born at step {f['step']} (first above 0.5): score "
                     f"{f['score_before']:.3f} -> {f['score_after']:.3f}, 10%-90% between steps {f['rise_from']} "
                     f"and {f['rise_to']} ({f['rise_to'] - f['rise_from']} steps)")
    if best is not None:
        heads = copy_heads(table, best["layer"])
        summed = sum(float(last[f"induction.{h}"]) for h in heads)
        lines.append(f"induction score at step {int(last.step)}: best single head {best['head']} "
                     f"{last['induction.' + best['head']]:.3f}; summed over layer {best['layer']}'s copy heads "
                     + (f"(those ending >= 0.1: {'+'.join(heads)}) {summed:.3f}" if heads else "(none ends >= 0.1)"))
    if ICL_DROP in table:  # runs of before the in-context loss columns lack it
        drop = column_rise(table, ICL_DROP)
        lines.append(f"in-context loss on repeated random tokens (first copy - second copy): {table[ICL_DROP].iloc[0]:.2f} "
                     f"nats at step 0 -> {drop['after']:.2f} at step {int(last.step)} (first copy "
                     f"{last[ICL_FIRST]:.2f}, second {last[ICL_SECOND]:.2f}); dropping between steps {drop['rise_from']} "
                     f"and {drop['rise_to']} (10%-90%), half way at step {drop['step']}")
    for metric, where in (("chat_induction", "inside held-out memory chats"),
                          ("chat_random_induction", "in the same chats with the item swapped for random tokens")):
        rise = formation(table, threshold=0.0, metric=metric)
        if rise is not None:
            lines.append(f"copy score {where}: {rise['head']} {rise['score_after']:.3f} "
                         f"(from {rise['score_before']:.3f}, rising between steps {rise['rise_from']} and {rise['rise_to']})")
    if "random_recall_acc" in table:
        lines.append(f"recall of random tokens swapped in for the item: {last.random_recall_acc:.1%} of chats "
                     f"({last.random_recall_token_acc:.1%} of item tokens)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, positive_int, run_main

    p = ArgumentParser(prog="python -m experiments.induction", description="Train the induction demo run (see `recipe`).")
    p.add_argument("--steps", type=positive_int, default=recipe().steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--every", type=positive_int, default=50,
                   help="measure recall and head scores every N steps (default %(default)s)")
    p.add_argument("--recall-chats", type=positive_int, default=128,
                   help="held-out memory chats each measure scores (default %(default)s)")
    p.add_argument("--record-every", type=positive_int, default=recipe().record_every,
                   help="snapshot every N steps (default %(default)s)")
    p.add_argument("--no-record", action="store_true", help="no snapshots (recall.csv only): for quick tries")
    p.add_argument("--lr", type=float, default=recipe().lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--memory-fraction", type=float, default=recipe().memory_fraction,
                   help="share of memory chats (default %(default)s)")
    p.add_argument("--memory-kinds", default=recipe().memory_kinds,
                   help="comma-separated memory kinds (default %(default)s)")
    p.add_argument("--copy-fraction", type=float, default=recipe().copy_fraction,
                   help="share of say-it-back chats of random tokens (guppy.data.copy_chats; default %(default)s)")
    p.add_argument("--n-heads", type=int, default=recipe().n_heads,
                   help="heads per layer, d_head = d_model / n_heads; 0 = the preset's (default %(default)s)")
    p.add_argument("--loss-on", default=recipe().loss_on, choices=("reply", "all"),
                   help="train on the last reply's tokens only, or on every token (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=recipe().batch_size,
                   help="chats per step (default %(default)s)")
    p.add_argument("--preset", default=recipe().preset, help="model preset (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order (default 0)")
    p.add_argument("--ablate", default="", help="sites knocked out while training, as guppy-train --ablate "
                   "(L0H3, L1.mlp, joined by +; default none)")
    p.add_argument("--ablate-steps", default="", help="the steps they stay knocked out, as guppy-train "
                   "--ablate-steps (A:B, A:, :B; default all)")
    p.add_argument("--run-name", default="", help="run folder name (default: induction-<timestamp>)")
    p.add_argument("--runs-dir", default="runs", help="where runs are written (default runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    def body():
        from guppy.analysis.memory_recall import RecallMonitor
        from guppy.train.trainer import start_run

        cfg = recipe(steps=args.steps, record_every=args.record_every, record=not args.no_record, lr=args.lr,
                     min_lr=args.lr / 10, memory_fraction=args.memory_fraction, seed=args.seed,
                     loss_on=args.loss_on, memory_kinds=args.memory_kinds,
                     copy_fraction=args.copy_fraction, n_heads=args.n_heads, batch_size=args.batch_size,
                     preset=args.preset, ablate=args.ablate, ablate_steps=args.ablate_steps,
                     run_name=args.run_name, runs_dir=args.runs_dir)
        monitor = RecallMonitor(every=args.every, n_chats=args.recall_chats)
        trainer = start_run(cfg, callbacks=[monitor], show_progress=not args.quiet)
        print(f"run: {trainer.run_dir} ({trainer.total_steps} steps)", file=sys.stderr)
        status = trainer.fit()
        print(f"{status}: {trainer.message}; recall measured in {monitor.seconds:.0f}s")
        print(summary(trainer.run_dir))
        return 0 if status == "finished" else 1

    return run_main("guppy-induction", body)


if __name__ == "__main__":
    raise SystemExit(main())

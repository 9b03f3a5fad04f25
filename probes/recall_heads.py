"""Does the model recall what it was told earlier in a chat, and which head does the recalling?

    python probes/recall_heads.py --run runs/induction-demo                 # the latest snapshot
    python probes/recall_heads.py --run runs/induction-demo --snapshot all  # over training

On held-out memory chats (items never seen in training; guppy.data.memory_chats), teacher-forced:
the share of chats whose recalled item is predicted right in every token (`recall_acc`), of
item tokens right, and the loss on them (guppy.analysis.memory_recall). Then the same with each head ablated
in turn (mean ablation at its slice of `attn.hook_z`, means over the same chats), the heads after
layer 0 that copy inside the chats (copy score at least half the best's) ablated together, and `chance`:
the accuracy when the item told earlier is swapped for another chat's item, i.e. what the model
scores without the information. A head whose ablation drops recall to chance does the copying.

Writes runs/<name>/probes/recall_ablation.csv (step, site, recall scores, the head's induction
score inside the chats (guppy.analysis.memory_recall.chat_scores) and on the snapshot's repeated random tokens) and recall_ablation.html (recall with each head ablated, over training).
"""

from __future__ import annotations

import sys

import pandas as pd

from guppy.analysis import probe_runner as A
from guppy.analysis.memory_recall import chat_scores, corrupted, recall_batch, recall_scores
from guppy.cli import positive_int
from guppy.model.ablate import METHODS, ablation_hooks
from guppy.run.format import head_column_parts

PROG = "recall.py"


def recall_table(model, tokenizer, chats, method: str = "mean") -> pd.DataFrame:
    """One row per site: the model itself ('none'), the corrupted context ('chance'), each head ablated."""
    cfg = model.cfg
    batch = recall_batch(tokenizer, chats, cfg.n_ctx)
    scores = chat_scores(model, batch)  # one pass: the recall scores and every head's copy score
    inside = {k: v for k, v in scores.items() if head_column_parts(k)}
    rows = [{"site": "none", "layer": -1, "head": -1, **{k: v for k, v in scores.items() if k not in inside}},
            {"site": "chance", "layer": -1, "head": -1,
             **recall_scores(model, recall_batch(tokenizer, corrupted(batch.chats), cfg.n_ctx))}]
    reference = batch.tokens if method != "zero" else None
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            hooks = ablation_hooks(model, heads=[(layer, head)], method=method, reference=reference,
                                   pad_id=tokenizer.pad_id)
            rows.append({"site": f"L{layer}H{head}", "layer": layer, "head": head,
                         **recall_scores(model, batch, fwd_hooks=hooks),
                         "chat_induction": inside[f"chat_induction.L{layer}H{head}"]})
    copiers = copy_heads(inside)
    if len(copiers) > 1:  # copying shared by several heads: ablate them together too
        hooks = ablation_hooks(model, heads=copiers, method=method, reference=reference, pad_id=tokenizer.pad_id)
        rows.append({"site": "+".join(f"L{l}H{h}" for l, h in copiers), "layer": -1, "head": -1,
                     **recall_scores(model, batch, fwd_hooks=hooks)})
    return pd.DataFrame(rows)


def copy_heads(inside: dict[str, float]) -> list[tuple[int, int]]:
    """The heads after layer 0 whose copy score inside the chats is at least half the highest one's."""
    scores = {(p[1], p[2]): v for k, v in inside.items() if (p := head_column_parts(k)) and p[1] > 0}
    top = max(scores.values(), default=0.0)
    return sorted(k for k, v in scores.items() if top > 0 and v >= top / 2)


def figure(df: pd.DataFrame):
    import plotly.express as px

    fig = px.line(df, x="step", y="recall_acc", color="site", markers=True, range_y=[0, 1],
                  hover_data=["recall_token_acc", "recall_loss", "chat_induction", "induction"])
    fig.update_layout(title="Recall of held-out items with each head ablated ('none': the model; 'chance': "
                            "the item told earlier swapped for another)")
    return fig


def compute(run, steps, args):
    from guppy.analysis.memory_recall import held_out_memory_chats

    chats = held_out_memory_chats(run.path, args.chats)
    heads = run.head_metrics(("induction",))
    tables = []
    for s in steps:
        df = recall_table(run.model(s), run.tokenizer, chats, args.method).assign(step=s)
        at = heads[heads.step == s].set_index(["layer", "head"]).value
        df["induction"] = [float(at.get((r.layer, r.head), float("nan"))) for r in df.itertuples()]
        tables.append(df)
    df = A.by_step(tables)
    last = df[df.step == steps[-1]]
    A.print_table(f"step {steps[-1]}: {len(chats)} held-out memory chats, {args.method} ablation of one head:",
                  last.drop(columns=["step", "layer", "head"]), rows=len(last))
    heads_only = last[last.layer >= 0]
    top = heads_only.loc[heads_only.chat_induction.idxmax()]
    worst = heads_only.loc[heads_only.recall_acc.idxmin()]
    base, chance = (float(last[last.site == k].recall_acc.iloc[0]) for k in ("none", "chance"))
    print(f"recall {base:.1%}, chance {chance:.1%}; ablating the head most induction-like inside the chats, "
          f"{top.site} (score there {top.chat_induction:.2f}, on random tokens {top.induction:.2f}): "
          f"{top.recall_acc:.1%}; the most harmful ablation: {worst.site} ({worst.recall_acc:.1%})")
    joint = last[last.site.str.contains("+", regex=False)]
    if len(joint):
        print(f"ablating the copy heads together, {joint.site.iloc[0]}: {joint.recall_acc.iloc[0]:.1%} "
              f"(loss {joint.recall_loss.iloc[0]:.3f})")
    return {"": df}, figure(df)


def flags(p) -> None:
    p.add_argument("--chats", type=positive_int, default=256, help="held-out memory chats to score (default 256)")
    p.add_argument("--method", default="mean", choices=METHODS, help="ablation method (default mean)")


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Recall accuracy on held-out memory chats, with each head ablated.", compute, argv,
                       output="recall_ablation", extra_args=flags)


if __name__ == "__main__":
    sys.exit(main())

"""What kind of head is each head, and when did it become one?

    python probes/head_types.py --run runs/demo --snapshot all

Scores are mean attention masses (0..1) on the run's fixed probe set (held-out chats plus
repeated random sequences), computed from each snapshot's weights (guppy.analysis.head_types.head_scores):

    induction        q -> q - n + 1 on sequences repeating with period n (the token after the last copy)
    duplicate_token  q -> q - n (the previous copy of the current token), repeated sequences only
    prev_token       q -> q - 1
    first_token      q -> 0, the 'resting' position
    local            q -> q-3 .. q (a window of 4, itself included)

A head is labelled with the first type in that order whose score reaches its threshold
(printed with the table; guppy.analysis.head_types.HEAD_TYPES), else 'other'.

Writes runs/<name>/probes/head_types.csv (step, layer, head, every score, type) and
head_types.html (each score over training, one line per head, thresholds dashed).
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.head_types import HEAD_TYPES, classify_heads, head_scores

PROG = "head_types.py"


def classify(model, tokens: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> pd.DataFrame:
    """One row per head: layer, head, every score, type. Works on any model and token batch
    (`period` (B,) is the repeat period of each sequence, 0 where it does not repeat)."""
    scores = head_scores(model, tokens, lengths, period)
    types = classify_heads(scores)
    L, H = types.shape
    rows = [{"layer": l, "head": h, "label": f"L{l}H{h}", **{k: float(v[l, h]) for k, v in scores.items()},
             "type": types[l, h]} for l in range(L) for h in range(H)]
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame):
    import plotly.express as px

    names = [score for score, _, _ in HEAD_TYPES.values()]
    long = df.melt(id_vars=["step", "label", "type"], value_vars=names, var_name="score")
    # each score's threshold as one more (dashed) line, so every panel shows its own
    ends = [df.step.min(), df.step.max()]
    lines = pd.DataFrame([{"step": s, "label": "threshold", "type": "", "score": score, "value": t}
                          for score, t, _ in HEAD_TYPES.values() for s in ends])
    fig = px.line(pd.concat([long, lines]), x="step", y="value", color="label", facet_col="score",
                  facet_col_wrap=3, markers=True, hover_data=["type"], range_y=[0, 1])
    fig.update_traces(line_dash="dash", line_color="grey", marker_size=0, selector={"name": "threshold"})
    fig.update_layout(title="Head scores over training (label = first type whose threshold is reached)")
    return fig


def compute(run, steps, args):
    P = run.watch
    tokens, lengths, period = (torch.from_numpy(x) for x in (P.tokens, P.lengths, P.period))
    if not (period > 0).any():
        print(f"{PROG}: note: the watch set has no repeated sequences; induction and duplicate-token scores are 0")
    df = A.by_step([classify(run.model(s), tokens, lengths, period).assign(step=s) for s in steps])
    print("types (first reaching its threshold): " + "; ".join(
        f"{k}: {s} >= {t}" for k, (s, t, _) in HEAD_TYPES.items()))
    last = df[df.step == steps[-1]]
    cols = ["label", "type"] + [s for s, _, _ in HEAD_TYPES.values()] + ["entropy"]
    A.print_table(f"step {steps[-1]}:", last[cols], rows=len(last))
    if len(steps) > 1:  # when each typed head first took its final type
        for r in last[last.type != "other"].itertuples():
            got = df[(df.label == r.label) & (df.type == r.type)].step.min()
            print(f"  {r.label} first {r.type} at step {got}")
    return {"": df}, figure(df)


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Classify heads (induction, duplicate-token, previous-token, first-token, local) over training.",
                       compute, argv, output="head_types")


if __name__ == "__main__":
    sys.exit(main())

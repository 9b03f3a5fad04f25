"""Logit lens: what the residual stream would predict if the model stopped at each layer.

    python probes/logit_lens.py --run runs/demo --snapshot all

At each layer boundary (blocks.l.hook_resid_pre for every l, then the last hook_resid_post)
the residual is decoded as the output is: through ln_final (with its own scale at that
point, as TransformerLens' logit lens does) and the tied unembedding (guppy.analysis.logit_lens,
which guppy.explain runs too). Reported per point:
the next-token loss and top-1 accuracy on the reply tokens of held-out chats, and the top
tokens predicted for each of a few chats' first reply token.

Writes runs/<name>/probes/logit_lens.csv (step, point, loss, accuracy), logit_lens_top.csv
(step, point, prompt, target, top tokens) and logit_lens.html (loss by layer over training).
"""

from __future__ import annotations

import sys

import pandas as pd

from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import heldout_batch
from guppy.analysis.logit_lens import lens
from guppy.cli import positive_int

PROG = "logit_lens.py"


def figure(df: pd.DataFrame):
    import plotly.express as px

    fig = px.line(df, x="point", y="loss", color=df.step.astype(str), markers=True,
                  hover_data=["accuracy"], labels={"color": "step", "point": "residual stream point"},
                  color_discrete_map=A.step_colours(df.step.unique()))
    fig.update_layout(title="Logit lens: held-out reply loss when decoding each layer's residual stream",
                      yaxis_title="loss (nats / token)")
    return fig


def compute(run, steps, args):
    batch = heldout_batch(run, args.chats)
    show = min(args.show, len(batch.topics))
    positions = batch.reply_start - 1  # the last prompt token predicts the reply's first token
    decode = run.tokenizer.decode
    rows, top_rows = [], []
    for step in steps:
        stats, tops = lens(run.model(step), batch.tokens, batch.reply_mask, positions)
        rows += [s | {"step": step} for s in stats]
        for i, s in enumerate(stats):
            for c in range(show):
                top_rows.append({"step": step, "point": s["point"], "prompt": batch.prompts[c],
                                 "target": decode([int(batch.tokens[c, batch.reply_start[c]])]),
                                 "top": " | ".join(repr(decode([t])) for t in tops[i, c].tolist())})
    df = pd.DataFrame(rows)[["step", "point", "loss", "accuracy"]]
    top = pd.DataFrame(top_rows)
    A.print_table(f"step {steps[-1]}, {len(batch.topics)} held-out chats:", df[df.step == steps[-1]])
    A.print_table(f"top tokens for the first reply token of {batch.prompts[0]!r}:",
                  top[(top.step == steps[-1]) & (top.prompt == batch.prompts[0])][["point", "target", "top"]])
    return {"": df, "top": top}, figure(df)


def flags(p) -> None:
    p.add_argument("--chats", type=positive_int, default=64, help="held-out chats for the loss (default 64)")
    p.add_argument("--show", type=positive_int, default=4, help="chats whose first-reply-token top tokens are kept (default 4)")


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Logit lens: per-layer loss and top tokens from decoding the residual stream.", compute, argv,
                       output="logit_lens", extra_args=flags)


if __name__ == "__main__":
    sys.exit(main())

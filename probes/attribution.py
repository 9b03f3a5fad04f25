"""Direct logit attribution: how much each head and MLP writes the reply's first token.

    python probes/attribution.py --run runs/demo

The final residual at the last prompt position is split into what the embeddings, each head, each
attention bias and each MLP wrote, and each part is read through ln_final (its measured scale) and
the unembedding: the parts plus the ln bias term sum exactly to the logit of the reply's true first
token (`dla`), and to it minus the mean logit over the vocabulary (`dla_centered`). The maths is
guppy.analysis.attribution's, which guppy.explain runs too.

Writes runs/<name>/probes/attribution.csv (one row per chat and component) and
attribution.html (mean per component and per chat).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.attribution import attribute
from guppy.analysis.heldout import heldout_batch
from guppy.cli import positive_int

PROG = "attribution.py"


def figure(df: pd.DataFrame):
    import plotly.express as px
    from plotly.subplots import make_subplots

    order = list(dict.fromkeys(df.component))
    mean = df.groupby("component", sort=False)["dla_centered"].agg(["mean", "std"]).reindex(order)
    wide = df.pivot_table(index="chat", columns="component", values="dla_centered", sort=False)[order]
    hover = df.drop_duplicates("chat").set_index("chat").reindex(wide.index)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.35, 0.65], vertical_spacing=0.08, shared_xaxes=True,
                        subplot_titles=["mean over chats (+- std)", "per chat"])
    fig.add_bar(x=order, y=mean["mean"], error_y={"array": mean["std"]}, name="mean", row=1, col=1)
    heat = px.imshow(wide.values, x=order, color_continuous_scale="RdBu_r", aspect="auto",
                     zmin=-abs(wide.values).max(), zmax=abs(wide.values).max()).data[0]
    text = np.array((hover.topic + ": " + hover.prompt + " -> " + hover.target).tolist(), dtype=object)
    heat.customdata = np.repeat(text[:, None], len(order), 1)
    heat.hovertemplate = "%{x}<br>%{customdata}<br>%{z:.2f}<extra></extra>"
    fig.add_trace(heat, row=2, col=1)
    fig.update_layout(title="Direct logit attribution to the first reply token (target minus mean logit)",
                      coloraxis={"colorscale": "RdBu_r"}, showlegend=False, height=800)
    return fig


def compute(run, steps, args):
    step = steps[0]
    model, batch = run.model(step), heldout_batch(run, args.chats)
    positions = batch.reply_start - 1  # the last prompt token, where the first reply token is predicted
    targets = batch.tokens[torch.arange(len(positions)), batch.reply_start]
    terms, labels, bias, logit = attribute(model, batch.tokens, positions, targets)
    cterms, _, cbias, clogit = attribute(model, batch.tokens, positions, targets, centered=True)
    decode = run.tokenizer.decode
    rows = []
    for i in range(len(positions)):
        common = {"step": step, "chat": i, "topic": batch.topics[i], "prompt": batch.prompts[i],
                  "target": decode([int(targets[i])])}
        rows += [common | {"component": c, "dla": float(terms[i, j]), "dla_centered": float(cterms[i, j])}
                 for j, c in enumerate(labels)]
        rows.append(common | {"component": "ln bias", "dla": float(bias[i]), "dla_centered": float(cbias[i])})
        rows.append(common | {"component": "total (logit)", "dla": float(logit[i]), "dla_centered": float(clogit[i])})
    df = pd.DataFrame(rows)
    gap = float((terms.sum(1) + bias - logit).abs().max())
    summary = df.groupby("component", sort=False)[["dla", "dla_centered"]].mean().reset_index()
    summary = summary.reindex(summary.dla_centered.abs().sort_values(ascending=False).index)
    A.print_table(f"step {step}: mean attribution over {len(positions)} held-out chats (largest |centered| first);"
                  f" sum of terms + ln bias - logit: max {gap:.1e}", summary)
    parts = df[~df.component.isin(["ln bias", "total (logit)"])]
    return {"": df}, figure(parts)


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Direct logit attribution of the reply's first token to each head and MLP.", compute, argv,
                       output="attribution", allow_all=False,
                       extra_args=lambda p: p.add_argument("--chats", type=positive_int, default=64,
                                                           help="held-out chats to attribute (default 64)"))


if __name__ == "__main__":
    sys.exit(main())

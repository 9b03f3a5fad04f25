"""Direct logit attribution: how much each head and MLP writes the reply's first token.

    python probes/attribution.py --run runs/demo

The final residual at the last prompt position is a sum of components: token embedding,
position embedding (where the model adds one), per layer each head's output (z_h @ W_O[h]), the attention bias b_O, and
the MLP output. The final LayerNorm is linear once its scale is fixed, so (as TransformerLens'
`apply_ln_to_stack`) each component c contributes

    ((c - mean_D(c)) / scale) * w  .  W_U[:, target]

with `scale` the one ln_final.hook_scale measured in the real forward. These terms plus the
constant `ln_final.b . W_U[:, target]` (the 'ln bias' term, reported apart) sum exactly to the
target logit. The same is done for the target logit minus the mean logit over the vocabulary
(W_U[:, target] - mean_v W_U[:, v]), which ignores what raises every token alike.

Writes runs/<name>/probes/attribution.csv (one row per chat and component) and
attribution.html (mean per component and per chat).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import heldout_batch
from guppy.cli import positive_int
from guppy.run.format import act_name

PROG = "attribution.py"


@torch.no_grad()
def components(model, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    """The final residual at `positions` (B,) split into components -> ((B, C, D), labels,
    ln_final scale (B, 1), logits (B, V) of the real forward)."""
    cfg = model.cfg
    L = cfg.n_layers
    if cfg.norm != "pre":
        raise ValueError(f"direct logit attribution needs a pre-LN model: with norm={cfg.norm!r} the final residual "
                         f"is a LayerNorm's output, not a sum of what each head and MLP wrote")
    embeds = [n for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]  # rotary/none add no positions
    names = [*embeds, "ln_final.hook_scale", "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out"]
    logits, cache = model.run_with_cache(tokens, names=names)
    rows = torch.arange(len(positions))
    parts = [cache[n][rows, positions][:, None] for n in embeds]
    labels = [n.removeprefix("hook_") for n in embeds]  # embed, pos_embed
    for l in range(L):
        parts.append(cache.head_results(l)[rows, positions])  # (B, H, D)
        labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        parts.append(model.blocks[l].attn.b_O.expand(len(positions), 1, -1))
        labels.append(f"L{l} attn bias")
        parts.append(cache[act_name("mlp_out", l)][rows, positions][:, None])
        labels.append(f"L{l} MLP")
    scale = cache["ln_final.hook_scale"][rows, positions]  # (B, 1)
    return torch.cat(parts, 1), labels, scale, logits[rows, positions]


@torch.no_grad()
def attribute(model, tokens: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, centered: bool = False):
    """Direct logit attribution of `targets` (B,) at `positions` (B,) -> (terms (B, C), labels,
    ln bias term (B,), logit (B,)); terms.sum(1) + bias == logit. With `centered`, for the
    target logit minus the mean logit over the vocabulary."""
    comps, labels, scale, logits = components(model, tokens, positions)
    ln = model.ln_final
    direction = model.W_U[:, targets].T  # (B, D)
    if centered:
        direction = direction - model.W_U.mean(1)
    normed = (comps - comps.mean(-1, keepdim=True)) / scale[:, None] * ln.w  # (B, C, D)
    terms = torch.einsum("bcd,bd->bc", normed, direction)
    bias = direction @ ln.b  # (B,)
    logit = logits.gather(1, targets[:, None]).squeeze(1)
    if centered:
        logit = logit - logits.mean(1)
    return terms, labels, bias, logit


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

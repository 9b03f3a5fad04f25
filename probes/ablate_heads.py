"""Which heads and MLPs matter: ablate each in turn (zero, mean, resample) and measure the damage.

    python probes/ablate_heads.py --run runs/demo                  # the latest snapshot
    python probes/ablate_heads.py --run runs/demo --snapshot all   # importance map at every snapshot

Held-out loss is the mean next-token loss on the reply tokens of held-out chats (round-robin
over topics). Each head is ablated at its slice of `attn.hook_z`, each MLP at `hook_mlp_out`
(guppy.model.ablate semantics): zero; mean over the batch's real positions; resample = the same
position of another held-out chat (the batch rolled by one row). The persona-eval pass rate
(guppy.evaluate, greedy replies to held-out prompts) is measured at the last snapshot analysed,
for mean ablation by default (--eval-methods; zero works too, resample does not: it needs a
whole other chat at the same positions, which free generation lacks). Generation is the slow part.

Writes runs/<name>/probes/ablate_heads.csv (one row per step, method and site) and
ablate_heads.html (the layer x head importance map, with a slider over snapshots).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from guppy.analysis import probe_runner as A
from guppy.analysis.heldout import each_site_losses, heldout_batch
from guppy.cli import positive_int
from guppy.model.ablate import METHODS, ablate, ablation_sites
from guppy.record import head_scores as M

PROG = "ablate_heads.py"


def site_label(kind: str, layer: int, head: int) -> str:
    return f"L{layer}H{head}" if kind == "head" else f"L{layer} MLP"


@torch.no_grad()
def ablation_table(model, tokens: torch.Tensor, mask: torch.Tensor, methods=METHODS, pad_id: int | None = None) -> pd.DataFrame:
    """One row per method and site: loss over `mask` with that site ablated, and its change."""
    base = float((M.mean_loss_per_row(model(tokens), tokens, mask) * mask.sum(1)).sum() / mask.sum())
    rows = []
    for method in methods:
        losses = each_site_losses(model, tokens, mask, method, reference=tokens.roll(1, 0), pad_id=pad_id)
        for (kind, layer, head), loss in zip(ablation_sites(model.cfg), losses.tolist()):
            rows.append({"method": method, "site": site_label(kind, layer, head), "kind": kind, "layer": layer,
                         "head": head, "loss": loss, "base_loss": base, "delta_loss": loss - base})
    return pd.DataFrame(rows)


def pass_rates(model, run, table: pd.DataFrame, methods: list[str], prompts: int, topics: int) -> pd.DataFrame:
    """Persona-eval pass rate with each site ablated by each of `methods` (zero, mean), and its change."""
    from guppy.evaluate import persona_eval
    from guppy.run.reader import load_eval_data

    persona, chats = load_eval_data(run.path)
    keep = sorted({c.topic for c in chats})[:topics]
    chats = [c for c in chats if c.topic in keep]
    ref = heldout_batch(run, 32).tokens

    def rate():
        return persona_eval(model, run.tokenizer, persona, chats, per_topic=prompts).pass_rate

    base = rate()
    table = table.assign(pass_rate=np.nan, base_pass_rate=base, delta_pass_rate=np.nan)
    for i, r in table.iterrows():
        if r["method"] not in methods:
            continue
        heads = [(r["layer"], r["head"])] if r["kind"] == "head" else []
        mlps = [r["layer"]] if r["kind"] == "mlp" else []
        with ablate(model, heads=heads, mlps=mlps, method=r["method"], reference=ref, pad_id=run.tokenizer.pad_id):
            p = rate()
        table.loc[i, ["pass_rate", "delta_pass_rate"]] = [p, p - base]
    return table


def importance_figure(df: pd.DataFrame, cfg):
    """Animated (step slider) heatmaps of delta loss: one panel per method, rows layers,
    columns heads then the MLP; one colour scale for every frame."""
    import plotly.express as px

    steps, methods = sorted(df.step.unique()), list(dict.fromkeys(df.method))
    grid = np.full((len(steps), len(methods), cfg.n_layers, cfg.n_heads + 1), np.nan, np.float32)
    for r in df.itertuples():
        col = r.head if r.kind == "head" else cfg.n_heads
        grid[steps.index(r.step), methods.index(r.method), r.layer, col] = r.delta_loss
    bound = float(np.nanmax(np.abs(grid))) or 1.0
    fig = px.imshow(grid, animation_frame=0, facet_col=1, x=[f"H{h}" for h in range(cfg.n_heads)] + ["MLP"],
                    y=[f"L{l}" for l in range(cfg.n_layers)], zmin=-bound, zmax=bound,
                    color_continuous_scale="RdBu_r", aspect="auto", labels={"color": "delta loss"})
    for i, m in enumerate(methods):
        fig.layout.annotations[i].text = f"{m} ablation"
    for i, s in enumerate(steps if fig.layout.sliders else []):
        fig.layout.sliders[0].steps[i].label = f"step {s}"
    fig.update_layout(title="Increase in held-out reply loss when each head / MLP is ablated")
    return fig


def compute(run, steps, args):
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"--methods {args.methods!r}: expected some of {', '.join(METHODS)}")
    eval_methods = [m.strip() for m in args.eval_methods.split(",") if m.strip()]
    if any(m not in ("zero", "mean") for m in eval_methods):
        raise ValueError(f"--eval-methods {args.eval_methods!r}: expected some of zero, mean")
    batch = heldout_batch(run, args.chats)
    frames = []
    for step in steps:
        model = run.model(step)
        table = ablation_table(model, batch.tokens, batch.reply_mask, methods, batch.pad_id)
        if step == steps[-1] and args.eval_prompts > 0:
            table = pass_rates(model, run, table, eval_methods, args.eval_prompts, args.eval_topics)
        frames.append(table.assign(step=step))
    df = A.by_step(frames)
    last = df[df.step == steps[-1]].sort_values("delta_loss", ascending=False)
    cols = [c for c in ("method", "site", "loss", "delta_loss", "pass_rate", "delta_pass_rate") if c in last]
    print_rows = pd.concat([last[last.method == m].head(4) for m in methods])
    A.print_table(f"step {steps[-1]}: base held-out loss {last.base_loss.iloc[0]:.3f} on {len(batch.topics)} chats;"
                  f" the 4 most important sites per method", print_rows[cols], rows=4 * len(methods))
    return {"": df}, importance_figure(df, run.model_config)


def flags(p) -> None:
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated ablations (default zero,mean,resample)")
    p.add_argument("--chats", type=positive_int, default=32, help="held-out chats for the loss (default 32)")
    p.add_argument("--eval-prompts", type=int, default=1,
                   help="held-out prompts per topic for the pass rate at the last snapshot; 0 = skip (default 1)")
    p.add_argument("--eval-topics", type=positive_int, default=12, help="topics in the pass-rate eval (default 12)")
    p.add_argument("--eval-methods", default="mean", help="ablations whose pass rate is measured: zero, mean (default mean)")


def main(argv: list[str] | None = None) -> int:
    return A.run_probe(PROG, "Ablate every head and MLP: change in held-out loss and persona-eval pass rate.", compute,
                       argv, output="ablate_heads", extra_args=flags)


if __name__ == "__main__":
    sys.exit(main())

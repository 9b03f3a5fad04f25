"""Head metrics over training: layer x head heatmaps of each metric at a snapshot (slider / play),
and lines of chosen heads across training, where specialisation and phase changes show."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards.cache import RunHandle
from dashboards.shaping import ablated_heads, head_label, interventions, metric_range, top_heads
from dashboards.views.common import SEQUENTIAL, chart, heatmap_layout, snapshot_player

TITLES = {"entropy": "entropy (nats)", "prev_token": "previous-token", "induction": "induction",
          "first_token": "first-token", "duplicate_token": "duplicate-token", "out_norm": "output norm"}
DEFAULT = ["entropy", "prev_token", "induction", "first_token"]


def render(h: RunHandle, others=()) -> None:
    steps, cube = h.head_cube()  # {metric: (S, L, H)}
    if not steps or not cube:
        st.info("No head metrics yet: this run has no readable snapshots.")
        return
    cfg = h.run.model_config
    if done := interventions(h.run.meta):
        st.warning(f"Trained with {done} (guppy-train --ablate / --freeze): its maps show a model that had to do "
                   "without them; knocked-out heads are marked ✕.")
    have = [m for m in TITLES if m in cube]
    chosen = st.multiselect("metrics", have, default=[m for m in DEFAULT if m in have], format_func=TITLES.get,
                            key="heads_metrics") or have[:1]
    ranges = {m: metric_range(cube[m], m) for m in chosen}

    def draw(step: int) -> None:
        i = steps.index(step)
        chart(grids({m: cube[m][i] for m in chosen}, ranges, step, ablated_heads(h.run.meta)), key="heads_grid")

    snapshot_player("heads", steps, draw)

    all_heads = [head_label(l, hh) for l in range(cfg.n_layers) for hh in range(cfg.n_heads)]
    c1, c2 = st.columns([4, 1])
    picked = c1.multiselect("heads to follow over training", all_heads, default=top_heads(cube), key="heads_lines")
    log_x = c2.toggle("log step axis", value=True, key="heads_logx", help="Snapshots are log-spaced early on.")
    if picked:
        chart(lines(steps, {m: cube[m] for m in chosen}, picked, log_x), key="heads_lines_chart")


def grids(grid: dict[str, np.ndarray], ranges: dict, step: int, knocked_out=frozenset()) -> go.Figure:
    """One layer x head heatmap per metric; grid: {metric: (L, H)} at one snapshot; the heads in
    `knocked_out` ((layer, head): ablated while training) marked ✕."""
    metrics = list(grid)
    L, H = next(iter(grid.values())).shape
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[TITLES[m] for m in metrics],
                        horizontal_spacing=0.09)
    heads_x = [f"H{hh}" for hh in range(H)]
    layers_y = [f"L{l}" for l in range(L)]
    for i, m in enumerate(metrics):
        lo, hi = ranges[m]
        bar_x = fig.layout[f"xaxis{i + 1 if i else ''}"].domain[1] + 0.005
        fig.add_trace(go.Heatmap(z=grid[m].astype(np.float32), x=heads_x, y=layers_y, zmin=lo, zmax=hi,
                                 colorscale=SEQUENTIAL, colorbar=dict(len=0.9, x=bar_x, xanchor="left", thickness=10),
                                 hovertemplate=f"%{{y}}%{{x}}<br>{TITLES[m]} %{{z:.3f}}<extra></extra>"),
                      row=1, col=i + 1)
        if knocked_out:
            fig.add_trace(go.Scatter(x=[heads_x[hh] for _, hh in sorted(knocked_out)],
                                     y=[layers_y[l] for l, _ in sorted(knocked_out)], mode="text", text="✕",
                                     textfont=dict(size=18, color="red"), hoverinfo="skip", showlegend=False),
                          row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    return heatmap_layout(fig, f"head metrics at step {step} (fixed colour range across training)",
                          height=max(260, 45 * L + 120))


def lines(steps: list[int], cube: dict[str, np.ndarray], picked: list[str], log_x: bool) -> go.Figure:
    """Chosen heads' metrics across training; cube: {metric: (S, L, H)}."""
    x = np.asarray(steps)
    keep = x > 0 if log_x else np.ones(len(x), bool)  # step 0 has no place on a log axis
    metrics = list(cube)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[TITLES[m] for m in metrics],
                        horizontal_spacing=0.05)
    for i, m in enumerate(metrics):
        for j, name in enumerate(picked):
            l, hh = (int(v) for v in name[1:].split("H"))
            fig.add_trace(go.Scatter(x=x[keep], y=cube[m][keep, l, hh].astype(np.float32), name=name, legendgroup=name,
                                     showlegend=i == 0, mode="lines+markers", marker=dict(size=4),
                                     line=dict(color=f"hsl({int(360 * j / max(len(picked), 1))},65%,45%)"),
                                     hovertemplate=f"{name} step %{{x}}<br>{TITLES[m]} %{{y:.3f}}<extra></extra>"),
                          row=1, col=i + 1)
    fig.update_xaxes(type="log" if log_x else "linear", title_text="step")
    return heatmap_layout(fig, "chosen heads over training", height=340)

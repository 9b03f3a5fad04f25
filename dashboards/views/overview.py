"""Run overview: training curves (one run or two compared), the snapshot timeline, and the
fish's sampled replies at each snapshot side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import CURVES, user_prompt
from dashboards.views.common import chart
from guppy.run import format as R

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")  # up to 4 runs compared


def render(h: RunHandle, others: list[RunHandle]) -> None:
    runs = [h, *others]
    cfg = h.run.model_config
    status = h.run.status
    cols = st.columns(5)
    cols[0].metric("status", status)
    shape = (f"d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, n_ctx {cfg.n_ctx}; "
             f"{cfg.positional} positions, {cfg.norm}-LN, {cfg.act}")
    cols[1].metric("layers × heads", f"{cfg.n_layers} × {cfg.n_heads}", help=shape)
    cols[2].metric("parameters", f"{cfg.num_params():,}")
    m = h.metrics()
    cols[3].metric("last step", int(m.step.max()) if len(m) else 0)
    cols[4].metric("snapshots", len(h.steps))
    st.button("Walk through one reply: how the fish computes an answer, at any step of its training →",
              key="to_walkthrough", on_click=_open_walkthrough, type="primary")
    chart(curves(runs), key="overview_curves")
    if h.steps:
        chart(timeline(runs), key="overview_timeline")
    for r in runs:
        replies_table(r)


def _open_walkthrough() -> None:
    st.session_state["view"] = "Walkthrough"  # the sidebar's view radio; a callback runs before it is drawn


def curves(runs: list[RunHandle]) -> go.Figure:
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for _, t in CURVES], horizontal_spacing=0.06,
                        vertical_spacing=0.2)
    for i, r in enumerate(runs):
        m = r.metrics()
        for j, (col, title) in enumerate(CURVES):
            if col not in m:
                continue
            rows = m[["step", col]].dropna()
            fig.add_trace(go.Scatter(x=rows.step, y=rows[col].astype(np.float32), name=r.name, legendgroup=r.name,
                                     showlegend=j == 0, mode="lines+markers" if col.startswith(("eval", "persona")) else "lines",
                                     line=dict(color=COLOURS[i % len(COLOURS)]),
                                     hovertemplate=f"{r.name}<br>step %{{x}}<br>{title} %{{y:.4g}}<extra></extra>"),
                          row=j // 3 + 1, col=j % 3 + 1)
        held = m[["step", "eval_loss"]].dropna() if "eval_loss" in m else m.iloc[:0]
        if len(held) > 1:  # the held-out curve beside the training curve, where it was measured at every snapshot
            fig.add_trace(go.Scatter(x=held.step, y=held.eval_loss.astype(np.float32), name=r.name,
                                     legendgroup=r.name, showlegend=False, mode="lines+markers",
                                     line=dict(color=COLOURS[i % len(COLOURS)], dash="dot"),
                                     hovertemplate=f"{r.name}<br>step %{{x}}<br>held-out loss %{{y:.4g}}<extra></extra>"),
                          row=1, col=1)
    for j, (col, _) in enumerate(CURVES):
        fig.update_xaxes(title_text="step", row=j // 3 + 1, col=j % 3 + 1)
        if col in ("loss", "eval_loss", "grad_norm"):
            fig.update_yaxes(type="log", row=j // 3 + 1, col=j % 3 + 1)
    fig.update_layout(height=560, margin=dict(l=70, r=20, t=60, b=50), legend=dict(orientation="h", y=1.14))
    return fig


def timeline(runs: list[RunHandle]) -> go.Figure:
    """Every snapshot as a point: step against tokens seen, hover for epoch and time."""
    fig = go.Figure()
    for i, r in enumerate(runs):
        t = r.snapshot_table()
        t = t[t.step.isin(r.steps)]
        fig.add_trace(go.Scatter(
            x=t.step, y=[r.name] * len(t), mode="markers", name=r.name, marker=dict(size=11, color=COLOURS[i % len(COLOURS)]),
            customdata=np.stack([t.epoch.astype(float), t.tokens.astype(float), t.time.astype(float)], -1),
            hovertemplate="step %{x}<br>epoch %{customdata[0]:.3f}<br>tokens %{customdata[1]:,.0f}"
                          "<br>%{customdata[2]:.1f} s of training<extra></extra>"))
    fig.update_layout(title=dict(text="snapshot timeline", x=0, font=dict(size=14)), height=110 + 40 * len(runs),
                      margin=dict(l=90, r=20, t=40, b=50), showlegend=False, xaxis_title="step")
    return fig


def replies_table(r: RunHandle) -> None:
    """Rows: snapshots; columns: the fixed prompts; cells: the greedy reply at that snapshot."""
    if not r.steps:
        return
    try:
        p = r.watch()
        chats = [i for i, k in enumerate(p.kind) if k == "chat"]
        replies = {s: r.read(R.REPLIES, s) for s in r.steps}
    except READ_ERRORS as e:
        st.warning(f"{r.name}: no sampled replies ({e})")
        return
    n = max((len(v) for v in replies.values()), default=0)
    prompts = [user_prompt(p.text[i]) for i in chats[:n]]
    prompts += [f"prompt {j}" for j in range(len(prompts), n)]
    columns = [f"“{q}”" for q in prompts]
    table = pd.DataFrame([[str(x) for x in v] + [""] * (n - len(v)) for v in replies.values()],
                         index=pd.Index([f"step {s}" for s in replies], name="snapshot"), columns=columns)
    st.subheader(f"{r.name}: what the fish says at each snapshot")
    st.dataframe(table, width="stretch", height=min(38 + 35 * len(table), 600))

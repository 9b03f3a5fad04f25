"""Health: the per-layer signals over training on one page, spikes and the lead-up to a
divergence marked, and what the forensics found (the first bad hook point highlighted, the
parameters' last steps, the batch that broke). health.csv and run.json are read afresh on
every rerun (a few KB), so a run still training shows its new rows with auto-refresh on."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.views.common import chart
from guppy.run.format import LAYER_SIGNALS, SIGNAL_TITLES

LAYER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
BAD = "background-color: #ffd0d0; font-weight: bold"


def render(h: RunHandle, others=()) -> None:
    events = h.run.events
    spikes, divergence = events["spikes"], events["divergence"]
    if divergence:
        st.error(divergence.get("message") or f"diverged at step {divergence.get('step')}")
    for entry in events["history"]:
        changes = ", ".join(f"{k} {a} → {b}" for k, (a, b) in entry["changes"].items())
        st.info(f"resumed from step {entry['resumed_from_step']} with {changes} ({entry['time']})")
    health = h.run.health
    if health.empty:
        st.info("No health rows yet: a run writes one every --log-every steps (runs trained before "
                "guppy had health signals have none).")
    else:
        chart(signals(health, h.run.model_config.n_layers, spikes, divergence), key="health_signals")
    if spikes:
        st.subheader("loss spikes")
        st.dataframe(spikes, width="stretch", hide_index=True)
    if divergence:
        forensics(h)


def signals(health, n_layers: int, spikes: list[dict], divergence: dict | None) -> go.Figure:
    """Loss, then each per-layer signal (one line per layer, log axis), sharing the step axis;
    spikes dashed orange, the divergence red, the steps the forensics compared shaded."""
    titles = ["training loss (step)", *[SIGNAL_TITLES[s] for s in LAYER_SIGNALS]]
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.04)
    fig.add_trace(go.Scatter(x=health.step, y=health.loss.astype(np.float32), name="loss", mode="lines",
                             line=dict(color="black"), showlegend=False), row=1, col=1)
    for i, signal in enumerate(LAYER_SIGNALS, start=2):
        for l in range(n_layers):
            col = f"blocks.{l}.{signal}"
            if col not in health:
                continue
            fig.add_trace(go.Scatter(x=health.step, y=health[col].astype(np.float32), name=f"layer {l}",
                                     legendgroup=f"L{l}", showlegend=i == 2, mode="lines",
                                     line=dict(color=LAYER_COLOURS[l % len(LAYER_COLOURS)]),
                                     hovertemplate=f"L{l} {signal}<br>step %{{x}}<br>%{{y:.3g}}<extra></extra>"),
                          row=i, col=1)
    for r in range(1, len(titles) + 1):
        fig.update_yaxes(type="log", row=r, col=1)
    for s in spikes:
        fig.add_vline(x=s["step"], line_dash="dash", line_color="orange")
    if divergence:
        step = divergence["step"]
        start = divergence.get("baseline_step")
        if start is not None and start < step:
            fig.add_vrect(x0=start, x1=step, fillcolor="red", opacity=0.08, line_width=0,
                          annotation_text="lead-up", annotation_position="top left")
        fig.add_vline(x=step, line_color="red", annotation_text=f"diverged at {step}")
    fig.update_xaxes(title_text="step", row=len(titles), col=1)
    fig.update_layout(height=170 * len(titles), margin=dict(l=70, r=20, t=50, b=50),
                      legend=dict(orientation="h", y=1.03))
    return fig


def forensics(h: RunHandle) -> None:
    try:
        f = h.run.forensics()
    except READ_ERRORS as e:
        st.warning(f"no forensics to show: {e}")
        return
    st.subheader(f"forensics of step {f.step}: the broken batch replayed in float32")
    s = f.summary
    cols = st.columns(3)
    cols[0].metric(_kind(s.get("first_bad_kind")), s.get("first_bad_hook") or "none")
    cols[1].metric("largest update ratio", s.get("top_param") or "none",
                   help=f"{s.get('top_update_ratio')} at step {s.get('top_update_step')}")
    cols[2].metric("loss: training / fp32 replay", f"{s.get('loss')} / {s.get('replay_loss'):.4g}")
    st.caption(f"Every hook point in forward order on the last good weights (step {s.get('weights_step')}); "
               f"growth is max |x| against the same batch on the weights of step {s.get('baseline_step')}. "
               f"Files: `{f.folder}`.")
    table = f.hooks.drop(columns=["first_bad"]).set_index("hook")
    st.dataframe(table.style.apply(lambda row: [BAD if f.hooks.first_bad.iloc[int(row["order"])] else ""] * len(row),
                                   axis=1).format(precision=3),
                 width="stretch", height=min(38 + 35 * len(table), 520))
    last = f.params[f.params.step == f.params.step.max()].sort_values("update_ratio", ascending=False)
    st.markdown(f"**parameters at step {int(f.params.step.max()) if len(f.params) else '-'}** "
                "(the ring buffer holds the last steps; `run.forensics().params` has them all)")
    st.dataframe(last.head(12), width="stretch", hide_index=True)
    st.markdown("**the batch that broke**")
    st.dataframe(f.batch[["chat", "length", "text"]], width="stretch", hide_index=True,
                 height=min(38 + 35 * len(f.batch), 400))


def _kind(kind: str | None) -> str:
    return {"non-finite": "first non-finite hook point", "non-finite gradient": "first non-finite gradient",
            "fastest growth": "fastest-growing hook point"}.get(kind or "", "first bad hook point")

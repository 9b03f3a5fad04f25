"""Gradients: per-parameter gradient norm over training, per-activation gradient norms, and
update-to-weight ratios with the usual healthy range marked."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards.cache import RunHandle
from dashboards.shaping import HEALTHY_UPDATE_RATIO, hook_label, log10, over_training, param_group, param_label
from dashboards.views.common import DIVERGING, SEQUENTIAL, chart, heatmap_layout
from guppy.run import format as R


def render(h: RunHandle, others=()) -> None:
    if not h.steps:
        st.info("This run has no readable snapshots yet.")
        return
    last = h.steps[-1]
    if h.run.meta.get(R.POSTHOC_KEY):  # written by guppy-record
        st.info("Snapshots recorded after training (guppy-record): the gradients of the training batches and "
                "the update of each snapshot's last step are unknown, so those charts stay empty; the gradients "
                "per activation are measured on the fixed inputs.")
    params = [param_label(str(x)) for x in h.read(R.PARAM_NAMES, last)]
    grads = over_training(h.over_training(R.PARAM_GRAD_NORM), params)
    ratios = over_training(h.over_training(R.PARAM_UPDATE_RATIO), params)
    acts = [str(x) for x in h.read(R.ACT_GRAD_NAMES, last)]
    order = sorted(range(len(acts)), key=lambda i: _depth(acts[i]))
    act_grads = over_training({s: v[order] for s, v in h.over_training(R.ACT_GRAD_NORM).items()},
                              [hook_label(acts[i]) for i in order])

    chart(log_heatmap(grads, "gradient norm per parameter (log10, mean since the previous snapshot)",
                      SEQUENTIAL, "log10 ‖g‖"), key="grad_params")
    chart(log_heatmap(act_grads, "gradient norm per activation (log10, one backward pass on the watch set)",
                      SEQUENTIAL, "log10 ‖g‖"), key="grad_acts")
    lo, hi = HEALTHY_UPDATE_RATIO
    mid = float(np.sqrt(lo * hi))
    chart(log_heatmap(ratios, f"update / weight ratio (log10; diverging around the healthy {mid:g})",
                      DIVERGING, "log10 ratio", zmid=np.log10(mid), zrange=(np.log10(lo) - 1, np.log10(hi) + 1)),
          key="grad_ratio_map")
    chart(ratio_lines(ratios), key="grad_ratio_lines")


def _depth(name: str) -> tuple:
    """Order activation points by where they sit in the forward pass."""
    layer = R.layer_of(name)
    where = [R.act_name(k, layer) for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")] if layer is not None else []
    return (10**6 if layer is None else layer), where.index(name) if name in where else len(where)


def log_heatmap(frame, title: str, scale: str, bar: str, zmid: float | None = None, zrange=None) -> go.Figure:
    z = log10(frame.to_numpy())
    lo, hi = zrange if zrange else (np.nanmin(z) if np.isfinite(z).any() else 0, np.nanmax(z) if np.isfinite(z).any() else 1)
    fig = go.Figure(go.Heatmap(
        z=z.astype(np.float32), x=[f"step {s}" for s in frame.columns], y=list(frame.index), colorscale=scale,
        zmin=lo, zmax=hi, zmid=zmid, colorbar=dict(title=bar), customdata=frame.to_numpy(),
        hovertemplate="%{y}<br>%{x}<br>%{customdata:.3e}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    return heatmap_layout(fig, title, height=min(1200, 120 + 16 * len(frame)))


def ratio_lines(ratios) -> go.Figure:
    """One line per parameter, log axis, the healthy band shaded and 1e-3 dashed. The lines of a
    family (attention, MLP, ...) share one trace, broken by gaps: a few traces draw several
    times faster in the browser than one per parameter (76 in the guppy preset)."""
    lo, hi = HEALTHY_UPDATE_RATIO
    fig = go.Figure()
    steps = np.asarray(ratios.columns, dtype=np.float32)
    groups: dict[str, list[str]] = {}
    for name in ratios.index:
        groups.setdefault(param_group(name), []).append(name)
    for group, names in groups.items():
        n, S = len(names), len(steps)
        x = np.full((n, S + 1), np.nan, np.float32)  # a NaN after each parameter's line breaks it
        y = np.full((n, S + 1), np.nan, np.float32)
        x[:, :S] = steps
        y[:, :S] = ratios.loc[names].to_numpy(np.float32)
        fig.add_trace(go.Scatter(x=x.ravel(), y=y.ravel(), text=np.repeat(names, S + 1), name=f"{group} ({n})",
                                 mode="lines", line=dict(width=1), connectgaps=False,
                                 hovertemplate="%{text}<br>step %{x}<br>ratio %{y:.2e}<extra></extra>"))
    fig.add_hrect(y0=lo, y1=hi, fillcolor="green", opacity=0.08, line_width=0,
                  annotation_text="usual healthy range", annotation_position="top left")
    fig.add_hline(y=np.sqrt(lo * hi), line_dash="dash", line_color="green")
    fig.update_yaxes(type="log", title="‖Δw‖ / ‖w‖ per step")
    fig.update_xaxes(title="step")
    return heatmap_layout(fig, "update-to-weight ratio over training", height=380)

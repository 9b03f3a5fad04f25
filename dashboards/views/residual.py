"""Residual stream: norm per layer boundary and position over training; the logit lens (each
layer's top predicted tokens) for an input of the watch set; cosine similarity between layer boundaries."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import hook_label, input_names, layer_similarity, logit_lens, token_labels
from dashboards.views.common import DIVERGING, SEQUENTIAL, chart, heatmap_layout, snapshot_player
from guppy.run import format as R


def render(h: RunHandle, others=()) -> None:
    if not h.steps:
        st.info("This run has no readable snapshots yet.")
        return
    p = h.watch()
    points = [str(x) for x in h.read(R.RESID_POINTS, h.steps[-1])]
    labels = [hook_label(x) for x in points]
    norms = h.over_training(R.RESID_NORM)  # {step: (P, T)}, small
    T_real = int(p.lengths.max())
    zmax = float(max(np.nanmax(v[:, :T_real]) for v in norms.values()))

    st.plotly_chart(norm_lines(norms, labels), key="resid_norm_lines", config={"displaylogo": False})
    names = input_names(p.kind, p.topic, p.text, p.subset)
    k_input = st.selectbox("input (logit lens, layer similarity)", list(names), format_func=names.get,
                           key="resid_input")
    k = int(np.flatnonzero(p.subset == k_input)[0])
    length = int(p.lengths[k_input])
    ids = p.tokens[k_input, :length]
    vocab = h.vocab()
    tok_labels = token_labels(vocab, ids)
    stored = set(h.run.hook_names(h.steps[-1]))

    def draw(step: int) -> None:
        chart(norm_heatmap(norms[step][:, :T_real], labels, zmax, step), key="resid_norm_map")
        lens = logit_lens(h.read(R.LENS_TOP, step), k, ids, vocab)
        lens_loss = h.read(R.LENS_LOSS, step)
        chart(lens_chart(*lens, tok_labels, [f"{l}<br>loss {v:.2f}" for l, v in zip(labels, lens_loss)], step),
              key="resid_lens")
        if all(x in stored for x in points):
            sim = layer_similarity([h.acts(x, step, k) for x in points], 0, length)
            chart(similarity_chart(sim, labels, step), key="resid_sim")
        else:
            st.info("Layer similarity needs the residual stream stored (`--record-hooks blocks.*.hook_resid_pre`).")

    try:
        snapshot_player("resid", h.steps, draw)
    except READ_ERRORS as e:
        st.error(f"{h.name}: {e}")


def norm_lines(norms: dict[int, np.ndarray], labels: list[str]) -> go.Figure:
    """Mean norm over positions of each layer boundary, across training."""
    steps = sorted(norms)
    fig = go.Figure()
    for i, label in enumerate(labels):
        y = [float(np.nanmean(norms[s][i][norms[s][i] > 0])) if (norms[s][i] > 0).any() else np.nan for s in steps]
        fig.add_trace(go.Scatter(x=steps, y=y, name=label, mode="lines+markers",
                                 hovertemplate=f"{label}<br>step %{{x}}<br>mean norm %{{y:.2f}}<extra></extra>"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="mean ‖resid‖")
    return heatmap_layout(fig, "residual norm per layer over training", height=300)


def norm_heatmap(norm: np.ndarray, labels: list[str], zmax: float, step: int) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=norm.astype(np.float32), y=labels, zmin=0, zmax=zmax, colorscale=SEQUENTIAL,
                               colorbar=dict(title="‖x‖"),
                               hovertemplate="%{y}<br>position %{x}<br>norm %{z:.2f}<extra></extra>"))
    fig.update_xaxes(title="position (mean over the watch set)")
    fig.update_yaxes(autorange="reversed")
    return heatmap_layout(fig, f"residual norm by layer and position at step {step}", height=120 + 30 * len(labels))


def lens_chart(rank, top1, top5, tok_labels: list[str], columns: list[str], step: int) -> go.Figure:
    """A table as a heatmap: cell = the layer's top guess at that position, coloured by where
    the true next token ranks in its top 5 (dark: first; blank: not in the top 5)."""
    n = rank.shape[0]
    rows = [f"{tok_labels[i]} → {tok_labels[i + 1].split('·', 1)[1]}" for i in range(n)]
    fig = go.Figure(go.Heatmap(
        z=rank, x=columns, y=rows, zmin=1, zmax=5, colorscale=SEQUENTIAL, reversescale=True, text=top1,
        texttemplate="%{text}", textfont=dict(size=10), customdata=top5, colorbar=dict(title="rank of<br>truth"),
        hovertemplate="%{y}<br>%{x}<br>top 5: %{customdata}<br>true token rank %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), nticks=n)
    return heatmap_layout(fig, f"logit lens at step {step}: each layer's top next-token guess (row: token → next)",
                          height=min(1400, 140 + 18 * n))


def similarity_chart(sim: np.ndarray, labels: list[str], step: int) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=sim.astype(np.float32), x=labels, y=labels, zmin=-1, zmax=1, zmid=0,
                               colorscale=DIVERGING,
                               hovertemplate="%{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return heatmap_layout(fig, f"cosine similarity between layer boundaries at step {step} (mean over positions)",
                          height=160 + 40 * len(labels))

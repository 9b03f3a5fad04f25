"""Attention: every head's pattern for one input of the watch set at one snapshot as a grid of heatmaps, one head
enlarged with its tokens on the axes, and a slider / play button across training."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import head_label, input_names, input_pattern, tile_patterns, token_labels
from dashboards.views.common import SEQUENTIAL, chart, heatmap_layout, snapshot_player
from guppy.run.format import act_name


def render(h: RunHandle, others=()) -> None:
    cfg = h.run.model_config
    try:
        p = h.watch()
        hooks = [act_name("pattern", l) for l in range(cfg.n_layers)]
        stored = set(h.run.hook_names(h.steps[-1])) if h.steps else set()
    except READ_ERRORS as e:
        st.error(f"{h.name}: cannot read the watch set: {e}")
        return
    if h.steps and not all(x in stored for x in hooks):
        st.info("This run stored no attention patterns (record with `--record-hooks blocks.*.attn.hook_pattern`).")
        return
    names = input_names(p.kind, p.topic, p.text, p.subset)
    c1, c2, c3 = st.columns([3, 1, 1])
    k_input = c1.selectbox("input", list(names), format_func=names.get, key="attn_input")
    layer = c2.selectbox("enlarged head: layer", range(cfg.n_layers), key="attn_layer")
    head = c3.selectbox("head", range(cfg.n_heads), key="attn_head")
    k = int(np.flatnonzero(p.subset == k_input)[0])  # the input's row in the stored tensors
    length = int(p.lengths[k_input])
    labels = token_labels(h.vocab(), p.tokens[k_input, :length])

    def draw(step: int) -> None:
        patterns = [input_pattern(h.acts(name, step, k), 0, length) for name in hooks]  # L x (H, n, n)
        chart(grid(patterns, labels, step), key="attn_grid")
        chart(enlarged(patterns[layer][head], labels, layer, head, step), key="attn_head_chart")

    snapshot_player("attn", h.steps, draw)


def grid(patterns: list[np.ndarray], labels: list[str], step: int) -> go.Figure:
    """Rows: layers; columns: heads; within a tile query down, key across. Token text on hover."""
    z, x, y, (xv, xt), (yv, yt) = tile_patterns(patterns, labels)
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, zmin=0, zmax=1, colorscale=SEQUENTIAL, hoverongaps=False,
                               colorbar=dict(title="attn"),
                               hovertemplate="%{y}<br>%{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_xaxes(tickvals=xv, ticktext=xt, showgrid=False)
    fig.update_yaxes(tickvals=yv, ticktext=yt, autorange="reversed", showgrid=False)
    L, H = len(patterns), patterns[0].shape[0]
    return heatmap_layout(fig, f"every head at step {step} (rows: layers, columns: heads; query ↓, key →)",
                          height=int(min(1100, max(300, 1000 * L / H))), plot_bgcolor="white")


def enlarged(pattern: np.ndarray, labels: list[str], layer: int, head: int, step: int) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=pattern, x=labels, y=labels, zmin=0, zmax=1, colorscale=SEQUENTIAL,
                               colorbar=dict(title="attn"),
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    n = len(labels)
    fig.update_yaxes(autorange="reversed", title="query", tickfont=dict(size=9), nticks=n)
    fig.update_xaxes(title="key", tickfont=dict(size=9), tickangle=-60, nticks=n)
    return heatmap_layout(fig, f"{head_label(layer, head)} at step {step}", height=min(900, 260 + 13 * n))

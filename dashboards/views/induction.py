"""Induction: when the induction head formed, on a run with memory chats (`make demo-induction`).

From the run's recall.csv (guppy.analysis.memory_recall.RecallMonitor, measured every few steps): every head's
induction score on repeated random tokens over training (and the best head's inside the memory
chats, dashed), with the loss on the recalled items'
tokens and the training loss below it on the same step axis (the bump); the step the score
crossed 0.5; and the head's attention on a repeated sequence at the snapshots before and after.
A run where no head crosses 0.5 on random tokens but one copies inside the chats (the fish's
demo run: see docs/induction.md) shows that head instead: the step half way up its rise, and its
attention on a held-out memory chat at the snapshots before and after.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import input_pattern, token_labels
from dashboards.views.common import SEQUENTIAL, chart, heatmap_layout

THRESHOLD = 0.5


@st.cache_data(max_entries=16, show_spinner=False)
def recall_table(path: str, mtime: int) -> pd.DataFrame | None:
    from guppy.analysis.memory_recall import read_recall

    return read_recall(path)


def render(h: RunHandle, others=()) -> None:
    from guppy.analysis.memory_recall import RECALL_FILE, formation

    f = h.path / RECALL_FILE
    table = recall_table(str(h.path), f.stat().st_mtime_ns) if f.exists() else None
    if table is None or table.empty:
        st.info("This run has no recall.csv: it was not trained with memory chats and a RecallMonitor. "
                "Make one with `make demo-induction` (about 9 minutes on 2 CPU cores).")
        return
    formed = formation(table, THRESHOLD)
    c1, c2, c3, c4 = st.columns(4)
    if formed:
        c1.metric("induction head", formed["head"])
        c2.metric("formed at step", formed["step"], help=f"first measured step with induction score >= {THRESHOLD}")
        c3.metric("induction score", f"{formed['score_after']:.2f}", f"{formed['score_after'] - formed['score_before']:+.2f}")
    elif in_chats := formation(table, None, "chat_induction"):
        c1.metric("copy head (in the chats)", in_chats["head"],
                  help=f"no head's induction score on repeated random tokens reached {THRESHOLD}; this head's "
                       "copy score inside held-out memory chats rose the most")
        c2.metric("formed at step", in_chats["step"],
                  help="half way up its copy score's rise inside the chats (shaded: 10% to 90% of the rise)")
        c3.metric("copy score in the chats", f"{in_chats['score_after']:.2f}",
                  f"{in_chats['score_after'] - in_chats['score_before']:+.2f}")
    else:
        best = max((c for c in table.columns if c.startswith("induction.")), key=lambda c: table[c].max())
        c1.metric("best induction head", best.split(".", 1)[1])
        c2.metric("formed at step", "not yet", help=f"no head's induction score reached {THRESHOLD}")
        c3.metric("induction score", f"{table[best].iloc[-1]:.2f}")
    c4.metric("recall of held-out items", f"{table.recall_acc.iloc[-1]:.0%}",
              f"{table.recall_acc.iloc[-1] - table.recall_acc.iloc[0]:+.0%}")
    try:
        metrics = h.metrics()
    except READ_ERRORS:
        metrics = None
    rise = formed or in_chats
    chart(curves(table, metrics, rise), key="induction_curves")
    if formed and h.steps:
        patterns(h, formed)
    elif rise and h.steps:
        chat_patterns(h, rise)


def curves(table: pd.DataFrame, metrics: pd.DataFrame | None, formed: dict | None) -> go.Figure:
    """Top: each head's induction score (previous-token score of the earlier layers dotted);
    bottom: loss on the recalled tokens and the training loss. Shared step axis."""
    from guppy.analysis.memory_recall import previous_token_head

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45],
                        subplot_titles=["head scores on repeated random tokens",
                                        "loss on the recalled item's tokens (held out) and training loss"])
    heads = [c for c in table.columns if c.startswith("induction.")]
    for j, col in enumerate(heads):
        head = col.split(".", 1)[1]
        main = formed is not None and head == formed["head"]
        fig.add_trace(go.Scatter(x=table.step, y=table[col], name=f"{head} induction", mode="lines",
                                 line=dict(width=3 if main else 1.2, color=f"hsl({int(360 * j / len(heads))},65%,45%)")),
                      row=1, col=1)
    if formed and (best := previous_token_head(table, formed["layer"])):
        fig.add_trace(go.Scatter(x=table.step, y=table[best], name=f"{best.split('.', 1)[1]} previous-token",
                                 mode="lines", line=dict(dash="dot", color="black")), row=1, col=1)
    for metric, name, color in (("chat_induction", "copy score in memory chats", "crimson"),
                                ("chat_random_induction", "the same, item swapped for random tokens", "darkorange")):
        chat = [c for c in table.columns if c.startswith(f"{metric}.")]
        if chat:  # the same kind of score measured inside the memory chats, where copying is needed
            best = max(chat, key=lambda c: table[c].iloc[-1])
            fig.add_trace(go.Scatter(x=table.step, y=table[best], name=f"{best.split('.', 1)[1]} {name}",
                                     mode="lines", line=dict(dash="dash", color=color)), row=1, col=1)
    fig.add_hline(y=THRESHOLD, line_dash="dash", line_color="grey", row=1, col=1)
    fig.add_trace(go.Scatter(x=table.step, y=table.recall_loss, name="recall loss (held out)", mode="lines",
                             line=dict(color="crimson", width=2)), row=2, col=1)
    if metrics is not None and "loss" in metrics:
        m = metrics.dropna(subset=["loss"])
        fig.add_trace(go.Scatter(x=m.step, y=m.loss, name="training loss", mode="lines",
                                 line=dict(color="grey")), row=2, col=1)
    if formed:
        for row in (1, 2):
            fig.add_vrect(x0=formed["rise_from"], x1=formed["rise_to"], fillcolor="gold", opacity=0.25,
                          line_width=0, row=row, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    return heatmap_layout(fig, "the induction head forming (shaded: its score rising from 10% to 90%)", height=620)


def patterns(h: RunHandle, formed: dict) -> None:
    """The head's pattern on a repeated random sequence at a snapshot before and after it formed."""
    try:
        p = h.watch()
    except READ_ERRORS as e:
        st.error(f"{h.name}: cannot read the watch set: {e}")
        return
    rows = [int(i) for i in p.subset if p.kind[int(i)] == "repeat"]
    if not rows:
        return
    before = [s for s in h.steps if s <= formed["rise_from"]]
    after = [s for s in h.steps if s >= formed["rise_to"]]
    steps = [before[-1] if before else h.steps[0], after[0] if after else h.steps[-1], h.steps[-1]]
    steps = list(dict.fromkeys(steps))
    k_input = rows[0]
    k = int(np.flatnonzero(p.subset == k_input)[0])  # its row in the stored tensors
    length = int(p.lengths[k_input])
    labels = token_labels(h.vocab(), p.tokens[k_input, :length])
    hook = f"blocks.{formed['layer']}.attn.hook_pattern"
    cols = st.columns(len(steps))
    for col, step in zip(cols, steps):
        try:
            pat = input_pattern(h.acts(hook, step, k), 0, length)[formed["index"]]
        except READ_ERRORS:
            col.info(f"step {step}: no stored pattern")
            continue
        with col:
            chart(pattern(pat, labels, formed["head"], step, int(p.period[k_input])), key=f"induction_pattern_{step}")
    st.caption("A repeated random sequence (a start token, then 20 random tokens twice). An induction head "
               "attends from each token of the second copy to the token after its first occurrence: the "
               "off-diagonal stripe 19 positions back.")


def chat_patterns(h: RunHandle, rise: dict) -> None:
    """The copy head's attention on one held-out memory chat, from the snapshots' weights before,
    during and after its rise: rows predict the recalled item's tokens, columns are the chat."""
    from guppy.analysis.memory_recall import chat_pattern, example_chat, held_out_memory_chats, recall_batch

    try:
        chat = example_chat(held_out_memory_chats(h.path))
    except (OSError, ValueError, KeyError) as e:
        st.error(f"{h.name}: cannot rebuild its held-out memory chats: {e}")
        return
    tok = h.tokenizer()
    batch = recall_batch(tok, [chat], h.run.model_config.n_ctx)
    labels = [tok.decode([i]) for i in batch.tokens[0, :int(batch.lengths[0]) - 1].tolist()]
    steps = list(dict.fromkeys(min(h.steps, key=lambda s: abs(s - t))
                               for t in (rise["rise_from"], rise["rise_to"], h.steps[-1])))
    for step in steps:
        try:
            pat = chat_pattern(h.model(step), batch, rise["layer"], rise["index"])
        except READ_ERRORS:
            st.info(f"step {step}: no readable weights")
            continue
        fig = go.Figure(go.Heatmap(z=pat, x=list(range(len(labels))), zmin=0, zmax=1, colorscale=SEQUENTIAL,
                                   showscale=False, customdata=np.broadcast_to(np.array(labels), pat.shape),
                                   hovertemplate="key %{customdata}<br>attention %{z:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", showticklabels=False, title="predicting the item")
        fig.update_xaxes(title="position in the chat")
        chart(heatmap_layout(fig, f"{rise['head']} at step {step}", height=220), key=f"chat_pattern_{step}")
    st.caption(f"A held-out memory chat; the recalled item: '{chat.recall}'. A copying head attends from each "
               "position of the answer to the token after the same token's earlier occurrence: a diagonal "
               "across the told item.")


def pattern(p: np.ndarray, labels: list[str], head: str, step: int, period: int) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=p, x=labels, y=labels, zmin=0, zmax=1, colorscale=SEQUENTIAL, showscale=False,
                               hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", showticklabels=False, title="query")
    fig.update_xaxes(showticklabels=False, title="key")
    return heatmap_layout(fig, f"{head} at step {step}", height=360)

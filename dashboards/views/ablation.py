"""Ablation: load a snapshot's model, tick heads to ablate (zero or mean), and see live the
change in loss on the watch set and in the fish's reply to a prompt."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from dashboards import cache
from dashboards.cache import RunHandle
from dashboards.shaping import ablated_heads, head_label, input_names, interventions, user_prompt
from dashboards.views.common import DIVERGING, chart, heatmap_layout
from guppy.model.ablate import ablate
from guppy.model.generate import generate
from guppy.record.head_scores import mean_loss_per_row, reply_mask
from guppy.run import format as R


def _setup(path: str, step: int, mtime: int, heads: tuple, method: str):
    """The snapshot's model, the watch set (cut to its longest input: the model is causal, so
    trailing padding changes nothing before it and only costs time), and the context that
    ablates `heads` (none: the clean model, with no reference forward for mean ablation)."""
    model = cache.model(path, step, mtime)
    p = cache.watch(path, cache._mtime(R.watch_path(path)))
    tokens = torch.from_numpy(p.tokens[:, :int(p.lengths.max())])
    pad = cache.run_of(path).tokenizer.pad_id
    ctx = ablate(model, heads=list(heads), method=method, reference=tokens, pad_id=pad) if heads else nullcontext(model)
    return model, p, tokens, ctx


@st.cache_data(max_entries=64, show_spinner=False)
def input_losses(path: str, step: int, mtime: int, heads: tuple, method: str) -> np.ndarray:
    """Mean reply-token loss per input of the watch set (B,), with `heads` ablated (none: the clean model)."""
    model, p, tokens, ctx = _setup(path, step, mtime, heads, method)
    mask = reply_mask(torch.from_numpy(p.reply_start), torch.from_numpy(p.lengths), tokens.shape[1])
    with torch.no_grad(), ctx:
        return mean_loss_per_row(model(tokens), tokens, mask).numpy()


@st.cache_data(max_entries=64, show_spinner=False)
def reply(path: str, step: int, mtime: int, heads: tuple, method: str, prompt: str) -> str:
    model, _, _, ctx = _setup(path, step, mtime, heads, method)
    tok = cache.tokenizer(path, cache._mtime(cache.run_of(path).path / R.TOKENIZER_JSON))
    with ctx:
        new = generate(model, tok.encode_prompt(prompt), max_new_tokens=32, temperature=0.0, stop_token=tok.end_id)
    return tok.decode(new)


def render(h: RunHandle, others=()) -> None:
    if not h.steps:
        st.info("This run has no readable snapshots yet.")
        return
    cfg = h.run.model_config
    p = h.watch()
    chats = [i for i, k in enumerate(p.kind) if k == "chat"]
    c1, c2 = st.columns([3, 1])
    step = c1.select_slider("snapshot model (step)", options=h.steps, value=h.steps[-1], key="abl_step",
                            format_func=lambda s: f"step {s}")
    method = c2.radio("ablation", ["zero", "mean"], horizontal=True, key="abl_method",
                      help="zero: the head's output removed; mean: replaced by its mean over the watch set")
    prompt = st.text_input("prompt", value=user_prompt(p.text[chats[0]]) if chats else "hi guppy", key="abl_prompt")
    st.caption("Tick heads to ablate (rows: layers, columns: heads).")
    if done := interventions(h.run.meta):
        st.warning(f"Trained with {done} (guppy-train --ablate / --freeze); heads knocked out while it trained "
                   "are marked ✕ (their weights moved by weight decay alone).")
    knocked = ablated_heads(h.run.meta)
    heads = []
    for l in range(cfg.n_layers):
        cols = st.columns(cfg.n_heads + 1)
        cols[0].markdown(f"**L{l}**")
        for hh in range(cfg.n_heads):
            if cols[hh + 1].checkbox(head_label(l, hh) + (" ✕" if (l, hh) in knocked else ""), key=f"abl_{l}_{hh}"):
                heads.append((l, hh))
    heads = tuple(heads)
    path, mtime = str(h.path), h.snaps[step]

    with st.spinner("running the model…"):
        if heads:
            clean = input_losses(path, step, mtime, (), "zero")
            ablated = input_losses(path, step, mtime, heads, method)
        else:  # nothing ablated: the recorder measured these very losses (same inputs, same mask)
            clean = ablated = h.read(R.LOSS_BY_INPUT, step).astype(np.float32)
        said_clean = reply(path, step, mtime, (), "zero", prompt)
        said = reply(path, step, mtime, heads, method, prompt) if heads else said_clean

    chat_rows = np.array([k == "chat" for k in p.kind])
    m = st.columns(3)
    m[0].metric("reply loss, clean (chat inputs)", f"{clean[chat_rows].mean():.3f}")
    m[1].metric(f"ablated ({len(heads)} head{'s' * (len(heads) != 1)}, {method})", f"{ablated[chat_rows].mean():.3f}",
                delta=f"{(ablated - clean)[chat_rows].mean():+.3f}", delta_color="inverse")
    m[2].metric("repeated-token inputs Δloss", f"{(ablated - clean)[~chat_rows].mean():+.3f}" if (~chat_rows).any() else "–")
    r1, r2 = st.columns(2)
    r1.markdown(f"**clean reply**  \n> {said_clean or '(nothing)'}")
    r2.markdown(f"**ablated reply**  \n> {said or '(nothing)'}")
    names = input_names(p.kind, p.topic, p.text, range(len(p.kind)))
    chart(delta_chart(ablated - clean, [names[i] for i in range(len(p.kind))], step), key="abl_delta")


def delta_chart(delta: np.ndarray, names: list[str], step: int) -> go.Figure:
    """Δloss per input, coloured on a diverging scale centred on zero (red: ablation hurts)."""
    lim = float(max(np.abs(delta).max(), 1e-3))
    fig = go.Figure(go.Bar(x=delta.astype(np.float32), y=names, orientation="h",
                           marker=dict(color=delta.astype(np.float32), colorscale=DIVERGING, cmin=-lim, cmax=lim,
                                       cmid=0, colorbar=dict(title="Δ loss")),
                           hovertemplate="%{y}<br>Δ loss %{x:+.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    fig.update_xaxes(title="Δ reply loss (ablated − clean)", zeroline=True)
    return heatmap_layout(fig, f"change in loss per input at step {step}", height=min(1400, 120 + 18 * len(names)))

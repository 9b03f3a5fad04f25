"""Walkthrough: how the fish turned one prompt into its reply, at any checkpoint of its training.

Type a prompt (or pick a chat of the watch set) and a checkpoint; the page walks the forward pass
in order, each step a caption written from the numbers (`guppy.explain`) above its small picture:
the tokens, embedding and position, each layer (where its heads looked, what they and the MLP
pushed, what the logit lens would say after it), the output, then the reply token by token. A
toggle puts a second checkpoint beside it, with a sentence of what changed and where it came from.
Plain words first; the numbers are on hover (the ⓘ of each caption, and the pictures).
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards import cache
from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import token_labels, user_prompt
from dashboards.views.common import DIVERGING, SEQUENTIAL, chart, heatmap_layout
from guppy.analysis.captions import Caption, q, visible
from guppy.analysis.explain import Explanation, explain_model
from guppy.run import format as R

DEFAULT_PROMPT = "hi guppy"
ROLES = ("chat template", "your words", "said so far", "predicting from here")
ROLE_COLOURS = ("#d9d9d9", "#9ecae1", "#a1d99b", "#fd8d3c")


@st.cache_resource(max_entries=64, show_spinner=False)
def explanation(path: str, step: int, mtime: int, prompt: str) -> Explanation:
    """The explanation of `prompt` at checkpoint `step` (keyed by its weights file's mtime). One object
    shared by every rerun, not a copy: st.cache_data would unpickle it on each rerun (the reference
    fish's 32 reply tokens: ~0.3 MB, a fifth of a second on 2 cores). Nothing changes it: it is
    frozen and its arrays are read-only."""
    model = cache.model(path, step, mtime)
    tok = cache.tokenizer(path, cache._mtime(cache.run_of(path).path / R.TOKENIZER_JSON))
    return explain_model(model, tok, prompt, step=step, run=path)


@st.cache_data(max_entries=64, show_spinner=False)
def change(path: str, steps: tuple[int, int], mtimes: tuple[int, int], prompt: str):
    """What changed from the first checkpoint to the second, and which components it came from."""
    a, b = (explanation(path, s, m, prompt) for s, m in zip(steps, mtimes))
    return a.compare(b, models=[cache.model(path, s, m) for s, m in zip(steps, mtimes)])


@st.cache_resource(max_entries=256, show_spinner=False)
def pictures(path: str, step: int, mtime: int, prompt: str, i: int) -> tuple[tuple[Caption, go.Figure | None, str], ...]:
    """Reply token i's walk at one checkpoint: each caption with its picture (None: words only) and the
    picture's name, built once. A rerun that shows them again (the other column of two steps side by
    side, a slider moved back) only sends them; building a layer's subplots is what costs."""
    e = explanation(path, step, mtime, prompt)
    run = cache.run_of(path)
    vocab = cache.vocab(path, cache._mtime(run.path / R.TOKENIZER_JSON), run.model_config.d_vocab)
    pred = e.predictions[i]
    labels = token_labels(vocab, e.context_ids(i))  # unique axis labels: position · text
    out = []
    for c in e.captions(i):
        if c.title == "Tokens":
            out.append((c, token_strip(e, i, labels), "tokens"))
        elif c.title == "Embedding":
            out.append((c, guesses_chart(pred.embed_lens, "the embeddings alone would say", 150), "embed"))
        elif c.layer is not None:
            out.append((c, layer_chart(e, i, pred.layers[c.layer], labels), f"layer{c.layer}"))
        elif c.title == "Output":
            out.append((c, guesses_chart(pred.next_token, f"step {e.step}: the next token", 180), "output"))
        elif c.title == "Reply":
            out.append((c, reply_chart(e, i, token_labels(vocab, e.reply_ids)), "reply"))
        else:
            out.append((c, None, ""))
    return tuple(out)


def replies_line(e: Explanation) -> str:
    """The line above a step's walk: its reply, quoted as the captions quote tokens (whitespace made visible)."""
    return f"**At step {e.step} the fish replies:** {q(e.reply) if e.reply.strip() else '(nothing)'}"


def _pick_prompt() -> None:
    """The watch set's chat, picked: into the prompt box (a callback runs before the widgets are drawn)."""
    picked = st.session_state.get("walk_pick")
    if picked:
        st.session_state["walk_prompt"] = picked


def render(h: RunHandle, others=()) -> None:
    weights = h.checkpoints
    if not weights:
        st.info("This run has no checkpoint yet: the walkthrough needs a model's weights.")
        return
    steps = list(weights)
    try:
        p = h.watch()
        prompts = list(dict.fromkeys(user_prompt(t) for t, k in zip(p.text, p.kind) if k == "chat"))
    except READ_ERRORS:  # an imported run before guppy-record: no watch set, any prompt still works
        prompts = []
    st.session_state.setdefault("walk_prompt", prompts[0] if prompts else DEFAULT_PROMPT)
    c1, c2 = st.columns([3, 2])
    prompt = c1.text_input("prompt (press Enter)", key="walk_prompt", max_chars=400)
    if prompts:
        c2.selectbox("or a chat of the watch set", [""] + prompts, key="walk_pick", on_change=_pick_prompt,
                     format_func=lambda s: s or "—")
    for key, default in (("walk_step", steps[-1]), ("walk_step_b", steps[0])):  # another run: its own steps
        if st.session_state.get(key) not in steps:
            st.session_state[key] = default
    c3, c4 = st.columns([3, 2])
    step = c3.select_slider("checkpoint (training step)", options=steps, key="walk_step", format_func=lambda s: f"step {s}")
    both = c4.toggle("side by side with another step", key="walk_compare",
                     help="The same prompt at two checkpoints, and what changed between them.")
    chosen = [step]
    if both:
        chosen.append(c4.select_slider("other step", options=steps, key="walk_step_b", format_func=lambda s: f"step {s}"))
    path = str(h.path)
    try:
        with st.spinner("running the model…"):
            shown = [explanation(path, s, weights[s], prompt) for s in chosen]
    except ValueError as e:  # a prompt too long for the context
        st.error(str(e))
        return
    n = max(len(e.predictions) for e in shown)
    if st.session_state.get("walk_token", 0) >= n:
        st.session_state["walk_token"] = 0
    first = shown[0]
    labels = {i: f"{i + 1} · {visible(first.reply_tokens[i])}" if i < len(first.predictions) else f"{i + 1}"
              for i in range(n)}
    i = st.select_slider("reply token to walk through", options=list(range(n)), key="walk_token",
                         format_func=labels.get) if n > 1 else 0
    if both:
        early, late = sorted(shown, key=lambda e: e.step)
        what = change(path, (early.step, late.step), (weights[early.step], weights[late.step]), prompt)
        st.markdown(f"**What changed.** {what.text}", help=what.numbers)
        for j, (col, s) in enumerate(zip(st.columns(2), chosen)):
            with col:
                walk(path, s, weights[s], prompt, i, f"walk_side{j}")
    else:
        walk(path, step, weights[step], prompt, i, "walk")


def walk(path: str, step: int, mtime: int, prompt: str, i: int, key: str) -> None:
    """The forward pass that predicted reply token i, caption by caption, each with its picture."""
    e = explanation(path, step, mtime, prompt)
    st.markdown(replies_line(e))
    if i >= len(e.predictions):
        st.info(f"At step {e.step} the reply has only {len(e.predictions)} tokens.")
        return
    for c, fig, name in pictures(path, step, mtime, prompt, i):
        st.markdown(c.text, help=c.numbers)
        if fig is not None:
            chart(fig, key=f"{key}_{name}")


def token_strip(e: Explanation, i: int, labels: list[str]) -> go.Figure:
    """The tokens the model has read, one cell each, coloured by what they are."""
    ctx, (start, end), p = e.context(i), e.prompt_span, e.predictions[i].position
    role = [1 if start <= j < end else 2 if j >= len(e.tokens) else 0 for j in range(len(ctx))]
    role[p] = 3
    n = len(ROLES) - 1
    scale = [[r / n, c] for r, c in enumerate(ROLE_COLOURS) for _ in (0, 1)]
    fig = go.Figure(go.Heatmap(
        z=[role], x=labels, y=["tokens"], text=[[visible(t) for t in ctx]], texttemplate="%{text}",
        zmin=0, zmax=n, colorscale=scale, showscale=False, xgap=2,
        customdata=[[f"{ROLES[r]}, id {t}" for r, t in zip(role, e.context_ids(i))]],
        hovertemplate="position %{x}<br>%{customdata}<extra></extra>"))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, "grey: the chat template · blue: your words · green: said so far · orange: "
                               "predicting from here", height=110, margin=dict(l=10, r=10, t=30, b=10))


def _layout(fig: go.Figure, title: str, height: int, margin: dict) -> go.Figure:
    return heatmap_layout(fig, title, height).update_layout(margin=margin)  # small pictures: tighter margins


def guesses_chart(guesses, title: str, height: int) -> go.Figure:
    fig = go.Figure(go.Bar(x=[g.prob for g in guesses], y=[f"{j + 1}. {visible(g.text)}" for j, g in enumerate(guesses)],
                           orientation="h", marker_color="#6baed6",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=height, margin=dict(l=120, r=20, t=30, b=25))


def layer_chart(e: Explanation, i: int, layer, labels: list[str]) -> go.Figure:
    """Left: each head's attention from the predicting position (rows: heads); right, where the
    model is pre-LN: what each head and the MLP pushed the said token by (over the mean logit)."""
    p, said, ctx = e.predictions[i].position, e.predictions[i].said, e.context(i)
    x = labels[:p + 1]
    heads = [h.name for h in layer.heads]
    att = [h.attention for h in layer.heads]
    heat = go.Heatmap(z=att, x=x, y=heads, zmin=0, zmax=1, colorscale=SEQUENTIAL, colorbar=dict(title="attn", x=0.6, thickness=12),
                      hovertemplate=f"%{{y}} looked from {visible(ctx[p])} to %{{x}}: %{{z:.2f}}<extra></extra>")
    if layer.mlp is None:
        fig = go.Figure(heat)
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
        return _layout(fig, f"layer {layer.index}: attention from {visible(ctx[p])}",
                              height=140 + 18 * len(heads), margin=dict(l=60, r=20, t=40, b=70))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.66, 0.34], horizontal_spacing=0.2,
                        subplot_titles=[f"attention from {visible(ctx[p])}", f"push on {visible(said.text)}"])
    fig.add_trace(heat, row=1, col=1)
    names = heads + ["attn bias", "MLP"]
    pushes = [h.contribution.vs_mean for h in layer.heads] + [layer.attn_bias.vs_mean, layer.mlp.vs_mean]
    lim = max(1.0, max(abs(v) for v in pushes))
    fig.add_trace(go.Bar(x=pushes, y=names, orientation="h", showlegend=False,
                         marker=dict(color=pushes, colorscale=DIVERGING, cmin=-lim, cmax=lim),
                         hovertemplate="%{y}: %{x:+.2f} on the logit (over the mean)<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), row=1, col=1)
    fig.update_xaxes(zeroline=True, row=1, col=2)
    fig.update_annotations(font_size=12)
    return _layout(fig, f"layer {layer.index}", height=150 + 18 * len(names), margin=dict(l=60, r=20, t=50, b=70))


def reply_chart(e: Explanation, i: int, labels: list[str]) -> go.Figure:
    """How sure the fish was of each token it said; the one walked through above in orange."""
    colours = ["#fd8d3c" if j == i else "#6baed6" for j in range(len(e.predictions))]
    fig = go.Figure(go.Bar(x=labels, y=[pr.said.prob for pr in e.predictions], marker_color=colours,
                           hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title="probability")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    return _layout(fig, f"step {e.step}: the reply, token by token", height=230, margin=dict(l=60, r=20, t=30, b=70))

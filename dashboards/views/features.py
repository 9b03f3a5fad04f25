"""Features: the sparse autoencoders guppy-sae trained at every snapshot (guppy.features), read through
`run.features()`, `run.feature_topics()`, `run.feature_summary()` and `run.sae()`.

Top: topics found over training (the share of the persona's topics with a feature of F1 >= 0.8) and
the reconstruction. Then a search by topic ("which feature is the food feature, and when was it
born?"), and a feature card in the manner of SAE-Dashboard: its top-activating held-out chats with
each token shaded by the activation, its activation histogram, the tokens it promotes through the
unembedding, its best topic; beside it, its lifeline across snapshots, driven by the snapshot slider.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboards.cache import READ_ERRORS, RunHandle, _mtime
from dashboards.views.common import chart, heatmap_layout, snapshot_player
from guppy.features.lineage import birth_step, topic_births
from guppy.features.scoring import FOUND
from guppy.run import format as R


@st.cache_data(max_entries=16, show_spinner=False)
def tables(path: str, hook: str, key: tuple) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(features, topics, summary) of one hook, cached until an SAE lands or lineage.csv (written last) changes."""
    from dashboards.cache import run_of

    run = run_of(path)
    return run.features(hook), run.feature_topics(hook), run.feature_summary(hook)


@st.cache_data(max_entries=8, show_spinner=False)
def card_examples(path: str, hook: str, step: int, mtime: int, feature: int) -> tuple[dict, list[tuple[list[str], list[float]]]]:
    """The feature's histogram and its top held-out chats, each as (token texts, activations)."""
    from safetensors.torch import load_file

    from dashboards.cache import model, run_of
    from guppy.analysis.heldout import heldout_chats
    from guppy.features import store
    from guppy.features.activations import batch_of, hook_activations

    run = run_of(path)
    folder = R.sae_dir(path, hook, step)
    ex = {k: v.numpy() for k, v in load_file(folder / R.FEATURE_EXAMPLES_FILE).items()}
    n = store.settings_extra(path, hook).get("heldout_chats")
    chats = heldout_chats(run, n)
    rows = [int(i) for i, a in zip(ex["top_chats"][feature], ex["top_acts"][feature]) if a > 0]
    out = []
    if rows:
        batch = batch_of(run, [chats[i] for i in rows])
        coder = run.sae(step, hook)
        acts = coder.encode(hook_activations(model(path, step, mtime), batch.tokens, hook))[..., feature]  # (n, T)
        tok = run.tokenizer
        for r, length in enumerate(batch.lengths.tolist()):
            ids = batch.tokens[r, :length].tolist()
            out.append(([tok.decode([i], skip_special=False) for i in ids], acts[r, :length].tolist()))
    return {"hist": ex["hist"][feature], "hist_max": float(ex["hist_max"][feature])}, out


def render(h: RunHandle, others=()) -> None:
    hooks = h.run.feature_hooks
    if not hooks:
        st.info("No features computed for this run yet. Train a sparse autoencoder at every snapshot (on the run's "
                "own training chats, warm-started along training), then reload:")
        st.code(f"guppy-sae {h.path}", language="bash")
        return
    hook = st.selectbox("hook", hooks, key="features_hook") if len(hooks) > 1 else hooks[0]
    stamp = (_mtime(R.features_dir(h.path, hook) / R.LINEAGE_FILE), tuple(R.list_saes(h.path, hook)))
    try:
        feats, topics, summary = tables(str(h.path), hook, stamp)
    except READ_ERRORS as e:
        st.error(f"{h.name}: {e}")
        return
    if summary.empty:
        st.info(f"`{R.features_dir(h.path, hook)}` holds no finished SAE yet (guppy-sae is still on its first snapshot?).")
        return
    headline(feats, topics, summary)
    chart(over_training(summary), key="features_over_training")
    steps = [int(s) for s in summary.step]
    feature = search(feats, topics, steps)

    def draw(step: int) -> None:
        card(h, hook, feats, step, feature)

    snapshot_player("features", steps, draw)


def headline(feats: pd.DataFrame, topics: pd.DataFrame, summary: pd.DataFrame) -> None:
    first, last = summary.iloc[0], summary.iloc[-1]
    births = topic_births(feats, topics)
    found = births[(births.score >= FOUND) & births.born.notna()]
    c = st.columns(5)
    c[0].metric("topics found, first snapshot", f"{first.topics_found_share:.0%}", help="share of the persona's topics "
                f"with a feature of F1 >= {FOUND} at the last prompt token, on held-out chats")
    c[1].metric("topics found, last snapshot", f"{last.topics_found_share:.0%}",
                f"{last.topics_found_share - first.topics_found_share:+.0%}")
    c[2].metric("median topic feature born at", f"step {int(found.born.median())}" if len(found) else "-",
                help="over the topics found at the last snapshot: the first step of their feature's lineage")
    c[3].metric("explained variance", f"{last.explained_variance:.3f}", help="on the SAE's training tokens, last snapshot")
    c[4].metric("loss recovered", f"{last.loss_recovered:.2f}", help="spliced-in loss against clean and zero-ablated")


def over_training(summary: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    x = summary.step.clip(lower=0.5)  # step 0 on a log axis
    for col, name, color in (("topics_found_share", "topics found (F1 >= 0.8)", "crimson"),
                             ("explained_variance", "explained variance", "steelblue"),
                             ("loss_recovered", "loss recovered (spliced in)", "seagreen")):
        fig.add_trace(go.Scatter(x=x, y=summary[col], name=name, mode="lines+markers", line=dict(color=color),
                                 customdata=summary.step, hovertemplate=f"step %{{customdata}}<br>{name} %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="step")
    fig.update_yaxes(range=[0, 1.02])
    return heatmap_layout(fig, "the fish's features over training", height=320)


def search(feats: pd.DataFrame, topics: pd.DataFrame, steps: list[int]) -> int:
    """Pick a feature: the best one of a topic (searched by name), or any by its number."""
    names = sorted(topics.topic.unique())
    c1, c2 = st.columns([3, 1])
    query = c1.text_input("search by topic", key="features_query", placeholder="e.g. food")
    hits = [n for n in names if query.lower() in n.lower()] or names
    topic = c1.selectbox("topic", hits, key="features_topic")
    last = topics[(topics.step == steps[-1]) & (topics.topic == topic)].iloc[0]
    born = birth_step(feats, steps[-1], int(last.feature))
    st.caption(f"**{topic}**: best detected at the last snapshot by feature {int(last.feature)} (F1 {last.score:.2f}, "
               f"precision {last.precision:.2f}, recall {last.recall:.2f}); "
               + (f"its lineage was born at step {born}." if born is not None else "it is dead."))
    width = int(feats.feature.max()) + 1
    picked = c2.number_input("or feature", 0, width - 1, value=int(last.feature), key=f"features_pick_{topic}")
    per_step = topics[topics.topic == topic][["step", "feature", "score"]].rename(columns={"score": "F1"})
    with st.expander(f"{topic}: its best feature at every snapshot"):
        st.dataframe(per_step, hide_index=True, width="stretch")
    return int(picked)


def card(h: RunHandle, hook: str, feats: pd.DataFrame, step: int, feature: int) -> None:
    row = feats[(feats.step == step) & (feats.feature == feature)].iloc[0]
    left, right = st.columns([3, 2])
    with left:
        st.markdown(f"#### feature {feature} at step {step}")
        state = "dead" if row.dead else ("dense" if row.dense else f"lineage {int(row.lineage)} ({row.event})")
        st.caption(f"{state} · density {row.density:.2%} of training tokens · best topic **{row.topic}** "
                   f"(F1 {row.score:.2f}) · promotes `{row.promotes}`")
        try:
            hist, examples = card_examples(str(h.path), hook, step, h.snaps.get(step, 0), feature)
        except READ_ERRORS as e:
            st.error(f"{h.name}: cannot rebuild this feature's examples: {e}")
            return
        if not examples:
            st.info("It never fires on the held-out chats.")
        for tokens, acts in examples:
            st.markdown(highlighted(tokens, acts), unsafe_allow_html=True)
    with right:
        chart(histogram(hist, feature, step), key="features_histogram")
        chart(lifeline(feats, step, feature), key="features_lifeline")


def highlighted(tokens: list[str], acts: list[float]) -> str:
    """A chat with each token's background shaded by the feature's activation (SAE-Dashboard's style)."""
    top = max(max(acts), 1e-9)
    spans = [f'<span title="{a:.3f}" style="background: rgba(255,120,0,{a / top:.2f}); padding: 0 1px">'
             f"{html.escape(t).replace(chr(10), '⏎')}</span>" for t, a in zip(tokens, acts)]
    return f'<div style="font-family: monospace; font-size: 0.85em; line-height: 1.6">{"".join(spans)}</div>'


def histogram(hist: dict, feature: int, step: int) -> go.Figure:
    edges = np.linspace(0, hist["hist_max"], len(hist["hist"]) + 1)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=hist["hist"], marker_color="darkorange",
                           hovertemplate="activation %{x:.3f}<br>%{y} tokens<extra></extra>"))
    fig.update_xaxes(title_text="activation (held-out tokens where it fires)")
    return heatmap_layout(fig, f"feature {feature} at step {step}: activation histogram", height=240)


def lifeline(feats: pd.DataFrame, step: int, feature: int) -> go.Figure:
    """The feature's lineage (and those it came from or split into) across snapshots: F1 of its best topic."""
    from guppy.features.lineage import lifeline as rows_of

    row = feats[(feats.step == step) & (feats.feature == feature)].iloc[0]
    fig = go.Figure()
    if int(row.lineage) >= 0:
        life = rows_of(feats[feats.lineage >= 0], int(row.lineage))
        for (rel, lin), part in life.groupby(["relation", "lineage"]):
            fig.add_trace(go.Scatter(x=part.step.clip(lower=0.5), y=part.score, mode="lines+markers",
                                     name=f"{rel}: lineage {lin}", line=dict(width=3 if rel == "self" else 1),
                                     customdata=np.stack([part.step, part.feature, part.event, part.topic], -1),
                                     hovertemplate="step %{customdata[0]} · feature %{customdata[1]} (%{customdata[2]})"
                                                   "<br>%{customdata[3]}: F1 %{y:.2f}<extra></extra>"))
    fig.add_vline(x=max(step, 0.5), line_dash="dot", line_color="grey")
    fig.update_xaxes(type="log", title_text="step")
    fig.update_yaxes(range=[0, 1.02], title_text="F1 of its best topic")
    title = f"lineage {int(row.lineage)} of feature {feature}" if int(row.lineage) >= 0 else f"feature {feature} is dead here"
    return heatmap_layout(fig, title, height=300)

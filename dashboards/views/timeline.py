"""Timeline: what developed in the run and when, found by the tool (guppy.analysis.timeline).

The stages are bands over the loss curve, the births marks on it (hover for the evidence), the
LLC a line on its own axis where it was estimated; below, the events in plain words, each with a
button into the view that shows it at that step. Compared runs are drawn one above the other, with
a table of what formed earlier, later or not at all. A run without a cached timeline gets the quick
one (its snapshot files only, seconds); the full one (ablation, topic probes, essential dynamics)
is a button away, or `guppy-timeline RUN`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboards.cache import RunHandle
from dashboards.views.common import chart

BANDS = ("rgba(31,119,180,0.10)", "rgba(255,127,14,0.10)")
# which view shows an event, by the start of its id, and the session key of that view's step slider
WHERE = {"head:": ("Attention", "attn_step"), "ablate:": ("Ablation", None), "probe:": ("Probes", None),
         "lens:": ("Residual stream", "resid_step"), "recall": ("Induction", None), "icl": ("Induction", None),
         "stage:": ("Head metrics", "heads_step")}


@st.cache_data(max_entries=8, show_spinner=False)
def events(path: str, key: tuple, metrics_mtime: int, full: bool) -> tuple[pd.DataFrame, bool]:
    """(the timeline frame, whether it is the full one): the cached one if still true of the run,
    else (without `full`) the quick one from the snapshot files, else the full one measured now."""
    from guppy.analysis import timeline as T
    from guppy.run.reader import open_run

    run = open_run(path)
    hit = T.cached(run, quick=False)
    if hit is not None:
        return hit, True
    settings = T.TimelineSettings(quick=not full)
    return T.timeline(run, settings), full


def render(h: RunHandle, others: list[RunHandle]) -> None:
    runs = [h, *others]
    if not h.steps:
        st.info("No snapshots yet: the timeline is found in a run's snapshots (record one with `guppy-train --record`).")
        return
    frames = {}
    for r in runs:
        if not r.steps:
            st.warning(f"{r.name}: no snapshots, no timeline")
            continue
        asked = st.session_state.get(f"timeline_full_{r.name}", False)
        with st.spinner(f"finding what developed in {r.name}…"):
            frame, full = events(str(r.path), r.key, _mtime(r), asked)
        frames[r.name] = frame
        if not full:
            c1, c2 = st.columns([4, 1])
            c1.caption(f"{r.name}: the quick timeline, from the snapshot files only. The full one adds each head's "
                       f"and MLP's ablation, topic probes and the essential dynamics: `guppy-timeline {r.path}`, "
                       "or measure it here (about 5 s per snapshot).")
            c2.button("measure the full timeline", key=f"timeline_measure_{r.name}",
                      on_click=_ask_full, args=(r.name,))
        chart(figure(r, frame), key=f"timeline_chart_{r.name}")
    if len(frames) > 1:
        st.subheader("What formed earlier, later, or not at all")
        st.dataframe(compare(frames), hide_index=True, use_container_width=True)
    if h.name in frames:
        words(h, frames[h.name])


def _mtime(r: RunHandle) -> int:
    from guppy.run import format as R

    try:
        return (r.path / R.METRICS_CSV).stat().st_mtime_ns
    except OSError:
        return 0


def _ask_full(name: str) -> None:
    st.session_state[f"timeline_full_{name}"] = True


def figure(r: RunHandle, frame: pd.DataFrame) -> go.Figure:
    """The loss curves with the stages as bands and the births as marks; the LLC on a second axis."""
    m = r.metrics()
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    train = m[["step", "loss"]].dropna() if "loss" in m else pd.DataFrame(columns=["step", "loss"])
    fig.add_trace(go.Scatter(x=train.step, y=train.loss, name="train loss", mode="lines", line=dict(color="#1f77b4")))
    if "eval_loss" in m and m.eval_loss.notna().any():
        ev = m[["step", "eval_loss"]].dropna()
        fig.add_trace(go.Scatter(x=ev.step, y=ev.eval_loss, name="held-out loss", mode="lines+markers",
                                 line=dict(color="#ff7f0e", dash="dot")))
    stages = frame[frame.kind == "stage"]
    for i, s in enumerate(stages.itertuples(index=False)):
        fig.add_vrect(x0=s.step, x1=s.value, fillcolor=BANDS[i % 2], line_width=0, layer="below",
                      annotation_text=f"stage {i + 1}", annotation_position="top left")
    born = frame[frame.kind == "birth"]
    if len(born) and len(train):
        y = np.interp(born.step, train.step, train.loss)
        fig.add_trace(go.Scatter(x=born.step, y=y, mode="markers", name="births",
                                 marker=dict(symbol="diamond", size=9, color="#d62728"),
                                 text=[f"{w}<br>{e}" for w, e in zip(born.what, born.evidence)],
                                 hovertemplate="step %{x}<br>%{text}<extra></extra>"))
    llc = frame[frame.kind == "llc"]
    if len(llc):
        fig.add_trace(go.Scatter(x=llc.step, y=llc.value, name="LLC", mode="lines+markers",
                                 line=dict(color="#2ca02c")), secondary_y=True)
        fig.update_yaxes(title_text="LLC", secondary_y=True)
    log_x = len(r.steps) > 2 and r.steps[1] > 0 and r.steps[-1] / max(r.steps[1], 1) > 50
    fig.update_xaxes(title_text="training step", type="log" if log_x else "linear")
    fig.update_yaxes(title_text="loss (nats)", secondary_y=False)
    fig.update_layout(title=dict(text=f"{r.name}: {len(stages)} stages, {len(born)} births", x=0, font=dict(size=14)),
                      height=360, margin=dict(l=60, r=60, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def compare(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per birth seen in any run: its step in each run (blank: not formed), and which was first."""
    names = list(frames)
    births = {n: f[f.kind == "birth"].drop_duplicates("what").set_index("what").step for n, f in frames.items()}
    whats = sorted(set().union(*[set(b.index) for b in births.values()]),
                   key=lambda w: min(int(b[w]) for b in births.values() if w in b))
    rows = []
    for w in whats:
        at = {n: (int(births[n][w]) if w in births[n] else None) for n in names}
        got = {n: s for n, s in at.items() if s is not None}
        if len(got) < len(names):
            verdict = "only in " + ", ".join(got)
        elif len(set(got.values())) == 1:
            verdict = "same step"
        else:
            verdict = f"first in {min(got, key=got.get)}"
        rows.append({"birth": w, **{n: ("" if s is None else f"{s:,}") for n, s in at.items()}, "": verdict})
    return pd.DataFrame(rows)


def words(h: RunHandle, frame: pd.DataFrame) -> None:
    from guppy.analysis.timeline import plain_words

    st.subheader("What happened, in order")
    shown = frame[frame.kind != "llc"].reset_index(drop=True)
    lines = [w for w in plain_words(frame) if not w.startswith("LLC by step")]
    for i, (r, line) in enumerate(zip(shown.itertuples(index=False), lines)):
        c1, c2 = st.columns([6, 1])
        c1.markdown(("**" + line + "**") if r.kind == "stage" else line)
        view, slider = _where(r)
        if view:
            c2.button(f"→ {view}", key=f"timeline_go_{i}", on_click=_go, args=(view, slider, h.steps, int(r.step)),
                      help=f"open {view} at the first snapshot from step {int(r.step):,}")
    llc = [w for w in plain_words(frame) if w.startswith("LLC by step")]
    if llc:
        st.caption(llc[0])


def _where(r) -> tuple[str | None, str | None]:
    what = r.what
    if r.kind == "stage":
        return WHERE["stage:"]
    if " head" in what and what.startswith("L"):
        return WHERE["head:"]
    if "starts to matter" in what:
        return WHERE["ablate:"]
    if "topic becomes readable" in what:
        return WHERE["probe:"]
    if "logit lens" in what:
        return WHERE["lens:"]
    if "recall" in what or "in-context" in what:
        return WHERE["recall"]
    return None, None


def _go(view: str, slider: str | None, steps: list[int], step: int) -> None:
    st.session_state["view"] = view  # the sidebar's radio; a callback runs before it is drawn
    if slider:
        st.session_state[slider] = next((s for s in steps if s >= step), steps[-1])

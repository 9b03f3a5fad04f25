"""Shared pieces of the views: the snapshot slider with its play button, chart defaults."""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from dashboards.shaping import next_step

PLAY_SECONDS = 0.8
SEQUENTIAL = "Viridis"  # patterns, norms, scores: one direction of "more"
DIVERGING = "RdBu_r"  # deltas and similarities: a sign, centred on zero (or on a reference)


def snapshot_player(key: str, steps: list[int], draw: Callable[[int], None], label: str = "snapshot (training step)"):
    """A snapshot slider and a play toggle; `draw(step)` runs inside a fragment, so moving the
    slider reruns only this chart, not the page. While playing, the fragment reruns every
    PLAY_SECONDS and advances one snapshot, looping."""
    if not steps:
        st.info("This run has no readable snapshots yet (record one with `guppy-train --record`).")
        return
    playing = st.toggle("▶ play across training", key=f"{key}_play",
                        help="Step through the snapshots; the colour scale stays fixed so motion is real.")

    @st.fragment(run_every=PLAY_SECONDS if playing else None, key=f"{key}_fragment")
    def part():
        skey = f"{key}_step"
        if st.session_state.get(skey) not in steps:
            st.session_state[skey] = steps[-1]
        elif st.session_state.get(f"{key}_play"):
            st.session_state[skey] = next_step(steps, st.session_state[skey])
        step = st.select_slider(label, options=steps, key=skey, format_func=lambda s: f"step {s}")
        draw(step)

    part()


def heatmap_layout(fig: go.Figure, title: str, height: int, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=14)), height=height,
                      margin=dict(l=70, r=20, t=50, b=50), **kw)
    return fig


def chart(fig: go.Figure, key: str | None = None) -> None:
    st.plotly_chart(fig, key=key, theme=None, config={"displaylogo": False})

"""Sweep: what each varied setting did. Final eval loss and persona pass rate against each setting
(one point per run, the mean over seeds joined by a line with the seeds' spread as error bars),
and a metric over training per setting, coloured by the value of one setting, with a band from
the lowest to the highest seed where a setting has several. Read through `guppy.compare_runs`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

import guppy
from dashboards.alignment import list_sweeps
from dashboards.shaping import run_signature
from dashboards.views.common import chart, heatmap_layout
from guppy.run.compare import EVAL_LOSS, PERSONA_PASS
from guppy.run.format import RUN_JSON, SWEEP_FILE

OUTCOMES = ((EVAL_LOSS, "final eval loss"), (PERSONA_PASS, "final persona pass rate"))
# train loss first: logged every few steps, where eval points come only at epoch ends by default
CURVE_METRICS = {"loss": "train loss", EVAL_LOSS: "eval loss", PERSONA_PASS: "persona pass rate"}
HOW_TO = "guppy-sweep --name lr-study --vary lr=3e-3,3e-4 --seeds 0,1 -- --preset demo --epochs 1 --runs-dir {runs_dir}"


@st.cache_resource(max_entries=4, show_spinner=False)
def comparison(path: str, signature: tuple):
    """The sweep's Comparison, rebuilt whenever a run logs, finishes or starts (signature)."""
    return guppy.compare_runs(path)


def signature(folder: Path) -> tuple:
    sweep_file = folder / SWEEP_FILE
    parts = [sweep_file.stat().st_mtime_ns if sweep_file.exists() else 0]
    for d in sorted(folder.iterdir()):
        if d.is_dir() and (d / RUN_JSON).exists():
            parts.append(run_signature(d)[:2])  # metrics.csv and run.json
    return tuple(parts)


def render(runs_dir: Path, current: str) -> None:
    sweeps = list_sweeps(runs_dir)
    if not sweeps:
        st.info("No sweep here yet. A sweep is a grid of runs that differ in a few flags:")
        st.code(HOW_TO.format(runs_dir=runs_dir), language="bash")
        return
    mine = current.split("/")[0]
    name = st.selectbox("sweep", sweeps, index=sweeps.index(mine) if mine in sweeps else 0, key="sweep_name")
    folder = runs_dir / name
    try:
        cmp = comparison(str(folder), signature(folder))
    except (ValueError, OSError) as e:  # RunError is a ValueError
        st.error(f"Sweep **{name}** cannot be read: {e}")
        return
    planned = len(json.loads((folder / SWEEP_FILE).read_text()).get("runs", [])) if (folder / SWEEP_FILE).exists() \
        else len(cmp.runs)
    counts = pd.Series([run.status for run in cmp.runs.values()]).value_counts()
    st.caption(f"{planned} runs planned: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + (f", {planned - len(cmp.runs)} not started" if planned > len(cmp.runs) else "")
               + f" · varied: {', '.join(cmp.varied) or 'nothing'}")
    settings = cmp.groups or cmp.varied
    if not settings:
        st.info("These runs differ in nothing that the sweep view can plot.")
        return
    chart(outcomes(cmp, settings), key="sweep_outcomes")
    c1, c2 = st.columns(2)
    metric = c1.selectbox("over training", list(CURVE_METRICS), format_func=CURVE_METRICS.get, key="sweep_metric")
    colour_by = c2.selectbox("colour by", settings, key="sweep_colour")
    chart(curves(cmp, metric, colour_by), key="sweep_curves")
    for m, title in OUTCOMES:
        table = cmp.final(m)
        if len(table):
            st.markdown(f"**{title}** (over seeds)")
            st.dataframe(table, hide_index=True)


def _order(values) -> list:
    """Setting values sorted numerically where they are numbers (1e-4 before 3e-3)."""
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals, key=float)
    except (TypeError, ValueError):
        return sorted(vals, key=str)


def outcomes(cmp, settings: list[str]) -> go.Figure:
    """Rows: final eval loss, persona pass rate; columns: each varied setting. A dot per run;
    a line through the mean over seeds (error bars: their standard deviation) per combination of
    the other settings."""
    rows = [(m, t) for m, t in OUTCOMES if len(cmp.last(m))]
    fig = make_subplots(rows=max(1, len(rows)), cols=len(settings), horizontal_spacing=0.08, vertical_spacing=0.16,
                        subplot_titles=[f"{t} vs {s}" for _, t in rows for s in settings])
    for i, (metric, title) in enumerate(rows):
        last = cmp.last(metric)
        pooled = cmp.final(metric)
        for j, s in enumerate(settings):
            order = [str(v) for v in _order(last[s])]
            fig.add_trace(go.Scatter(x=last[s].astype(str), y=last.value, mode="markers", text=last.run,
                                     marker=dict(color="rgba(80,80,80,0.45)", size=7), showlegend=False,
                                     hovertemplate=f"%{{text}}<br>{s} %{{x}}<br>{title} %{{y:.4g}}<extra></extra>"),
                          row=i + 1, col=j + 1)
            others = [o for o in settings if o != s]
            for combo, part in (pooled.groupby(others, sort=True) if others else [((), pooled)]):
                part = part.set_index(part[s].astype(str)).reindex(order).dropna(subset=["mean"])
                label = ", ".join(f"{o}={v}" for o, v in zip(others, np.atleast_1d(combo))) or "mean over seeds"
                fig.add_trace(go.Scatter(x=part.index, y=part["mean"], mode="lines+markers", name=label, legendgroup=label,
                                         showlegend=i == 0 and j == 0, error_y=dict(array=part["std"].fillna(0))),
                              row=i + 1, col=j + 1)
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, title_text=s, row=i + 1, col=j + 1)
    return heatmap_layout(fig, "what each setting did (dots: runs; lines: mean over seeds ± std)",
                          height=320 * max(1, len(rows)) + 40)


def curves(cmp, metric: str, colour_by: str) -> go.Figure:
    """`metric` over training steps, one mean curve per setting, coloured by its `colour_by` value
    (a sequential scale: low values dark), a band from the lowest to the highest seed."""
    c = cmp.curves(metric, by="step")
    fig = go.Figure()
    if c.empty:
        return heatmap_layout(fig, f"no {CURVE_METRICS.get(metric, metric)} logged yet", height=200)
    values = _order(c[colour_by])
    colours = dict(zip(values, sample_colorscale("Viridis", list(np.linspace(0, 0.85, len(values)))
                                                 if len(values) > 1 else [0.0])))
    keys = cmp.groups or [colour_by]
    for combo, part in c.groupby(keys, sort=True):
        combo = dict(zip(keys, np.atleast_1d(combo)))
        colour = colours[combo[colour_by]]
        label = ", ".join(f"{k}={v}" for k, v in combo.items())
        part = part.sort_values("step")
        if (part.n > 1).any():
            band = colour.replace("rgb", "rgba").replace(")", ",0.18)")
            fig.add_trace(go.Scatter(x=part.step, y=part["max"], mode="lines", line=dict(width=0), showlegend=False,
                                     legendgroup=label, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=part.step, y=part["min"], mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor=band, showlegend=False, legendgroup=label, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=part.step, y=part["mean"], mode="lines+markers", name=label, legendgroup=label,
                                 line=dict(color=colour), marker=dict(size=4), customdata=part.n,
                                 hovertemplate=f"{label}<br>step %{{x}}<br>mean %{{y:.4g}} over %{{customdata}} seeds"
                                               "<extra></extra>"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=CURVE_METRICS.get(metric, metric), type="log" if "loss" in metric else "linear")
    return heatmap_layout(fig, f"{CURVE_METRICS.get(metric, metric)} over training, coloured by {colour_by} "
                               "(band: lowest to highest seed)", height=420)

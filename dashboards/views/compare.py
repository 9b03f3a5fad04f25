"""Compare mode: 2-4 runs side by side at matched training time (one slider by step, epoch or
tokens seen picks each run's latest snapshot at or before that point). Attention grids, head
metrics and ablation importance as one layer x head map per run, padded to the largest shape so
the same head sits in the same place in every run; residual norms, logit lens and gradient norms
as one line per run over the layers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards import cache
from dashboards.alignment import (
    TIME_AXES,
    by_layer,
    layer_order,
    matched_steps,
    pad_grid,
    pad_patterns,
    point,
    points_in_order,
    time_points,
)
from dashboards.cache import READ_ERRORS, RunHandle
from dashboards.shaping import head_label, input_names, input_pattern, interventions, metric_range, token_labels
from dashboards.views.attention import grid as attention_grid
from dashboards.views.common import DIVERGING, SEQUENTIAL, chart, heatmap_layout
from dashboards.views.heads import TITLES
from guppy.run import format as R

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")  # one per run, the same in every chart


def render(view: str, runs: list[RunHandle]) -> None:
    """Draw `view` ('attention', 'heads', 'residual', 'gradients', 'ablation') for every run."""
    empty = [r.name for r in runs if not r.steps]
    if empty:
        st.info(f"Left out, no readable snapshots (record with `guppy-train --record`): {', '.join(empty)}")
    runs = [r for r in runs if r.steps] or runs
    L = max(r.run.model_config.n_layers for r in runs)
    H = max(r.run.model_config.n_heads for r in runs)
    st.caption("Side by side: " + " · ".join(f":{_name(i)}[**{r.name}**] ({r.run.model_config.n_layers} layers × "
                                             f"{r.run.model_config.n_heads} heads"
                                             + (f"; {done}" if (done := interventions(r.run.meta)) else "") + ")"
                                             for i, r in enumerate(runs)))
    steps = time_control(runs)
    if steps is None:
        return
    {"attention": attention, "heads": heads, "residual": residual, "gradients": gradients,
     "ablation": ablation}[view](runs, steps, L, H)


def _name(i: int) -> str:
    return ("blue", "orange", "green", "red")[i % 4]


def time_control(runs: list[RunHandle]) -> dict[str, int | None] | None:
    """The shared training-time slider; {run name: matched snapshot step or None}."""
    tables = {r.name: r.snapshot_table()[lambda t, r=r: t.step.isin(r.steps)] for r in runs}
    if not any(len(t) for t in tables.values()):
        st.info("None of these runs has a readable snapshot yet.")
        return None
    c1, c2 = st.columns([1, 4])
    by = c1.radio("match by", TIME_AXES, horizontal=False, key="cmp_by",
                  help="Each run shows its latest snapshot at or before this point of training.")
    points = time_points(tables, by)
    if st.session_state.get("cmp_when") not in points:  # start where every run still has a snapshot
        st.session_state["cmp_when"] = time_points({"": min((t for t in tables.values() if len(t)),
                                                             key=lambda t: t[by].max())}, by)[-1]
    fmt = {"step": lambda v: f"step {v}", "epoch": lambda v: f"epoch {v:.3f}", "tokens": lambda v: f"{v:,} tokens"}[by]
    when = c2.select_slider("training time", options=points, key="cmp_when", format_func=fmt)
    return matched_steps(tables, when, by)


def _columns(runs, steps):
    """(column, run, step) for each run; a run with no snapshot there says so in its column."""
    for col, r in zip(st.columns(len(runs)), runs):
        step = steps[r.name]
        col.markdown(f"**{r.name}** · " + (f"step {step}" if step is not None else "—"))
        if step is None:
            col.info(f"No snapshot this early or this late (snapshots at steps {r.steps[0]}…{r.steps[-1]}).")
        yield col, r, step


# ---- layer x head maps ---------------------------------------------------------------------------


def attention(runs, steps, L, H) -> None:
    first = runs[0]
    try:
        p0 = first.watch()
    except READ_ERRORS as e:
        st.error(f"{first.name}: cannot read the watch set: {e}")
        return
    names = input_names(p0.kind, p0.topic, p0.text, p0.subset)
    k_input = st.selectbox("input (its place in each run's stored inputs)", list(names), format_func=names.get,
                           key="cmp_attn_input")
    k = int(np.flatnonzero(p0.subset == k_input)[0])
    for i, (col, r, step) in enumerate(_columns(runs, steps)):
        if step is None:
            continue
        p = r.watch()
        kp = int(p.subset[min(k, len(p.subset) - 1)])
        length = int(p.lengths[kp])
        labels = token_labels(r.vocab(), p.tokens[kp, :length])
        cfg = r.run.model_config
        try:
            pats = [input_pattern(r.acts(R.act_name("pattern", l), step, min(k, len(p.subset) - 1)), 0, length)
                    for l in range(cfg.n_layers)]
        except READ_ERRORS as e:
            col.warning(f"no attention patterns stored ({e})")
            continue
        fig = attention_grid(pad_patterns(pats, L, H), labels, step)
        fig.update_layout(height=int(min(900, max(300, 700 * L / H))), title=dict(text=f"{r.name} at step {step}"))
        with col:
            chart(fig, key=f"cmp_attn_{i}")


def heads(runs, steps, L, H) -> None:
    cubes = {r.name: r.head_cube() for r in runs}  # {run: (steps, {metric: (S, L, H)})}
    have = [m for m in TITLES if any(m in c for _, c in cubes.values())]
    if not have:
        st.info("No head metrics yet.")
        return
    metric = st.selectbox("metric", have, format_func=TITLES.get, key="cmp_heads_metric",
                          index=have.index("induction") if "induction" in have else 0)
    values = [c[metric].ravel() for _, c in cubes.values() if metric in c]
    lo, hi = metric_range(np.concatenate(values), metric)  # one colour range for every run and time
    for i, (col, r, step) in enumerate(_columns(runs, steps)):
        run_steps, cube = cubes[r.name]
        if step is None or metric not in cube:
            continue
        grid = pad_grid(cube[metric][run_steps.index(step)], L, H)
        with col:
            chart(layer_head_map(grid, f"{TITLES[metric]} at step {step}", lo, hi, SEQUENTIAL), key=f"cmp_heads_{i}")
    all_heads = [head_label(l, h) for l in range(L) for h in range(H)]
    picked = st.multiselect("heads to follow over training (every run)", all_heads, default=all_heads[:2],
                            key="cmp_heads_lines")
    by = st.session_state.get("cmp_by", "step")
    if picked:
        chart(trajectories(runs, cubes, metric, picked, by), key="cmp_heads_traj")


def layer_head_map(grid: np.ndarray, title: str, lo: float, hi: float, scale: str, mid: float | None = None) -> go.Figure:
    """grid: (Lmax, Hmax), NaN where the run has no such head."""
    L, H = grid.shape
    fig = go.Figure(go.Heatmap(z=grid, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], zmin=lo, zmax=hi,
                               zmid=mid, colorscale=scale, hoverongaps=False,
                               hovertemplate="%{y}%{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return heatmap_layout(fig, title, height=max(240, 40 * L + 120))


def trajectories(runs, cubes, metric: str, picked: list[str], by: str) -> go.Figure:
    """A picked head's metric over training, one colour per run, one dash per head; x in `by` units."""
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for i, r in enumerate(runs):
        run_steps, cube = cubes[r.name]
        if metric not in cube:
            continue
        table = r.snapshot_table().set_index("step", drop=False)
        x = [float(table.at[s, by]) if s in table.index else np.nan for s in run_steps]
        for j, name in enumerate(picked):
            l, h = (int(v) for v in name[1:].split("H"))
            if l >= cube[metric].shape[1] or h >= cube[metric].shape[2]:
                continue  # this run has no such head
            fig.add_trace(go.Scatter(x=x, y=cube[metric][:, l, h], name=f"{r.name} {name}", mode="lines+markers",
                                     line=dict(color=COLOURS[i % 4], dash=dashes[j % len(dashes)]), marker=dict(size=4)))
    fig.update_xaxes(title=by)
    fig.update_yaxes(title=TITLES[metric])
    return heatmap_layout(fig, f"{TITLES[metric]} over training (colour: run, dash: head)", height=360)


# ---- by layer: one line per run ------------------------------------------------------------------


def _lines(per_run: dict[str, dict[str, float]], order: list[str], title: str, y: str, log: bool = False) -> go.Figure:
    fig = go.Figure()
    for i, (name, values) in enumerate(per_run.items()):
        xs = [x for x in order if x in values]
        fig.add_trace(go.Scatter(x=xs, y=[values[x] for x in xs], name=name, mode="lines+markers",
                                 line=dict(color=COLOURS[i % 4])))
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    fig.update_yaxes(title=y, type="log" if log else "linear")
    return heatmap_layout(fig, title, height=340)


def _read_each(runs, steps, *keys):
    """(run, [each key's array]) at each run's matched step, for the runs with a snapshot there;
    a run whose snapshot cannot give them says so and is left out."""
    for r in runs:
        step = steps[r.name]
        if step is None:
            continue
        try:
            values = [r.read(k, step) for k in keys]
        except READ_ERRORS as e:
            st.warning(f"{r.name}: {e}")
            continue
        yield r, values


def residual(runs, steps, L, H) -> None:
    norms, lens, names = {}, {}, []
    # norms by position (P, T), 0 where no input reaches; logit-lens loss (P,)
    for r, (points, by_pos, loss) in _read_each(runs, steps, R.RESID_POINTS, R.RESID_NORM, R.LENS_LOSS):
        points = [str(x) for x in points]
        names += points
        norms[r.name] = {point(p)[1]: float(v[v > 0].mean()) if (v > 0).any() else np.nan for p, v in zip(points, by_pos)}
        lens[r.name] = {point(p)[1]: float(v) for p, v in zip(points, loss)}
    order = points_in_order(names)
    when = ", ".join(f"{n} step {steps[n]}" for n in norms)
    chart(_lines(norms, order, f"residual norm by layer ({when})", "mean ‖resid‖"), key="cmp_resid_norm")
    chart(_lines(lens, order, "logit lens: loss decoded at each layer", "loss"), key="cmp_resid_lens")


def gradients(runs, steps, L, H) -> None:
    acts, params, names = {}, {}, []
    keys = (R.ACT_GRAD_NAMES, R.ACT_GRAD_NORM, R.PARAM_NAMES, R.PARAM_GRAD_NORM)
    for r, (act_names, act_norm, param_names, param_norm) in _read_each(runs, steps, *keys):
        act_names, param_names = [str(x) for x in act_names], [str(x) for x in param_names]
        names += act_names
        acts[r.name] = {point(n)[1]: float(v) for n, v in zip(act_names, act_norm)}
        params[r.name] = by_layer(param_names, param_norm)
    order = points_in_order(names)
    chart(_lines(acts, order, "gradient norm per activation (one backward pass on the watch set)", "‖g‖", log=True),
          key="cmp_grad_acts")
    chart(_lines(params, layer_order(k for v in params.values() for k in v),
                 "gradient norm of each layer's parameters (mean since the previous snapshot)", "‖g‖", log=True),
          key="cmp_grad_params")


# ---- ablation importance -------------------------------------------------------------------------


@st.cache_data(max_entries=32, show_spinner=False)
def head_importance(path: str, step: int, mtime: int) -> np.ndarray:
    """(L, H): the rise in reply loss on the watch set when each head alone is zero-ablated,
    in one batched pass (guppy.analysis.heldout.each_site_losses)."""
    import torch

    from guppy.analysis.heldout import each_site_losses
    from guppy.record.head_scores import mean_loss_per_row, reply_mask

    run = cache.run_of(path)
    model = cache.model(path, step, mtime)
    p = run.watch
    tokens = torch.from_numpy(p.tokens[:, :int(p.lengths.max())])
    mask = reply_mask(torch.from_numpy(p.reply_start), torch.from_numpy(p.lengths), tokens.shape[1])
    weight = mask.float().sum(1)
    with torch.no_grad():
        base = float((mean_loss_per_row(model(tokens), tokens, mask) * weight).sum() / weight.sum())
    cfg = model.cfg
    heads = each_site_losses(model, tokens, mask, "zero")[: cfg.n_layers * cfg.n_heads]
    return (heads.numpy() - base).reshape(cfg.n_layers, cfg.n_heads)


def ablation(runs, steps, L, H) -> None:
    st.caption("Zero-ablating each head in turn: the rise in reply loss on the watch set (red: the head matters).")
    grids = {}
    with st.spinner("ablating every head…"):
        for r in runs:
            step = steps[r.name]
            if step is not None:
                grids[r.name] = head_importance(str(r.path), step, r.snaps[step])
    lim = max([float(np.nanmax(np.abs(g))) for g in grids.values()] + [1e-3])
    for i, (col, r, step) in enumerate(_columns(runs, steps)):
        if r.name in grids:
            with col:
                chart(layer_head_map(pad_grid(grids[r.name], L, H), f"Δ loss per head at step {step}", -lim, lim,
                                     DIVERGING, mid=0.0), key=f"cmp_abl_{i}")

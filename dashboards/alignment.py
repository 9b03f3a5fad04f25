"""Pure data shaping for comparing runs in the dashboard: sweeps on disk, matched training time,
and grids padded so that runs of different shapes line up by layer and head. No Streamlit.

Shapes: L layers, H heads, n tokens of an input; Lmax / Hmax the largest over the runs compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from guppy.run.compare import TIME_AXES, snapshot_at
from guppy.run.format import RUN_JSON, SEED_KEY, SWEEP_FILE, layer_of

__all__ = ["TIME_AXES", "snapshot_at"]


# ---- sweeps on disk --------------------------------------------------------------------------


def is_sweep(folder: Path) -> bool:
    """A sweep folder: guppy-sweep's (with sweep.json), or runs that a job scheduler trained from
    `guppy-sweep --list` into one folder (run folders inside, none of its own run.json)."""
    if (folder / SWEEP_FILE).is_file():
        return True
    return not (folder / RUN_JSON).exists() and any((d / RUN_JSON).exists() for d in _subdirs(folder))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    except OSError:
        return []


def list_sweeps(runs_dir: Path) -> list[str]:
    """Sweep folders under runs_dir, by name."""
    return [d.name for d in _subdirs(runs_dir) if is_sweep(d)]


def sweep_members(runs_dir: Path, sweep: str) -> list[tuple[str, dict]]:
    """('sweep/run', settings) of each run of a sweep that has started (has a run.json), in grid
    order; without a sweep.json, in name order, each run its own setting."""
    folder = runs_dir / sweep
    try:
        runs = json.loads((folder / SWEEP_FILE).read_text()).get("runs", [])
    except (OSError, json.JSONDecodeError):
        runs = [{"name": d.name, "settings": {"run": d.name}} for d in _subdirs(folder)]
    return [(f"{sweep}/{r['name']}", r.get("settings", {})) for r in runs if (folder / r["name"] / RUN_JSON).exists()]


def one_per_setting(members: list[tuple[str, dict]], limit: int = 4) -> list[str]:
    """The first run (seed) of each setting, at most `limit`: what fits side by side."""
    seen, out = set(), []
    for name, settings in members:
        key = json.dumps({k: v for k, v in settings.items() if k != SEED_KEY}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out[:limit]


# ---- matched training time -------------------------------------------------------------------


def time_points(tables: dict, by: str) -> list:
    """Every point along `by` (step, epoch or tokens) at which some run took a snapshot, sorted.
    tables: {run: its snapshot table (step, epoch, tokens, ...)}."""
    cast = float if by == "epoch" else int
    return sorted({cast(v) for t in tables.values() for v in t[by].dropna()})


def matched_steps(tables: dict, when, by: str) -> dict:
    """{run: the step of its latest snapshot at or before `when`, or None past its end}."""
    return {name: snapshot_at(t, when, by) for name, t in tables.items()}


# ---- lining up shapes ------------------------------------------------------------------------


def pad_grid(grid: np.ndarray, L: int, H: int) -> np.ndarray:
    """(l, h) -> (L, H) float32, NaN where this run has no such layer or head (drawn blank)."""
    out = np.full((L, H), np.nan, np.float32)
    out[:grid.shape[0], :grid.shape[1]] = grid
    return out


def pad_patterns(patterns: list[np.ndarray], L: int, H: int) -> list[np.ndarray]:
    """L' arrays (H', n, n) -> L arrays (H, n, n), the missing heads and layers NaN, so every run's
    attention grid has the same tiles in the same places."""
    n = patterns[0].shape[-1]
    out = []
    for l in range(L):
        p = np.full((H, n, n), np.nan, np.float32)
        if l < len(patterns):
            p[:patterns[l].shape[0]] = patterns[l]
        out.append(p)
    return out


def point(name: str) -> tuple[tuple, str]:
    """(sort key, label) of a hook point that lines up across models of any depth: a residual point
    is named by the layers behind it ('blocks.1.hook_resid_post' and 'blocks.2.hook_resid_pre' are
    both 'resid after 2 layers'), so a 2-layer run's last point sits beside a deeper run's third."""
    layer = layer_of(name)
    last = name.rsplit(".", 1)[-1]
    if layer is None:
        return ((-1 if "embed" in name else 10**6, 0), name.replace("hook_", ""))
    if last in ("hook_resid_pre", "hook_resid_post"):
        k = layer + (last == "hook_resid_post")
        return ((k, 0), f"resid after {k} layer{'s' * (k != 1)}")
    where = ["hook_attn_out", "hook_resid_mid", "hook_mlp_out"]
    return ((layer, 1 + (where.index(last) if last in where else len(where))), f"L{layer} {last.replace('hook_', '')}")


def points_in_order(names) -> list[str]:
    """The labels of hook points from several runs, once each, in forward-pass order."""
    return [label for _, label in sorted({point(n) for n in names})]


def by_layer(names: list[str], values: np.ndarray) -> dict[str, float]:
    """Per-parameter norms -> one norm per layer ({'L0': ..., 'other': ...}): the root of the sum of
    squares, so runs with different parameters per layer still compare layer by layer."""
    out: dict[str, float] = {}
    for name, v in zip(names, np.asarray(values, dtype=np.float64)):
        layer = layer_of(name)
        key = f"L{layer}" if layer is not None else "embed / final"
        out[key] = out.get(key, 0.0) + float(v) ** 2
    return {k: float(np.sqrt(v)) for k, v in out.items()}


def layer_order(labels) -> list[str]:
    """'embed / final' first, then L0, L1, ... in number order."""
    return sorted(set(labels), key=lambda s: (int(s[1:]) if s[1:].isdigit() else -1, s))

"""Pure data shaping for the dashboard: no Streamlit, no plotting, easy to test.

Shapes: K stored inputs of the watch set, H heads, L layers, T positions, P residual points (layer boundaries),
S snapshots. Arrays come from `guppy.open_run` and are returned as float32 for plotting.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dashboards.alignment import is_sweep, sweep_members
from guppy.analysis.captions import visible
from guppy.run import format as R

# Update-to-weight ratio per step: ~1e-3 is the usual healthy value (Karpathy's heuristic);
# far below learns too slowly, far above is unstable.
HEALTHY_UPDATE_RATIO = (1e-4, 1e-2)
CURVES = (("loss", "train loss"), ("eval_loss", "eval loss"), ("persona_pass", "persona eval pass rate"),
          ("lr", "learning rate"), ("grad_norm", "grad norm"), ("tokens_per_s", "tokens / s"))
MAKE_A_RUN = """guppy-train --preset demo --persona fish --record --runs-dir {runs_dir}
# or, for a run in seconds:
guppy-train --preset tiny --persona fish --n-chats 600 --steps 60 --record --record-every 10 --runs-dir {runs_dir}"""


# ---- runs on disk ---------------------------------------------------------------------------


def list_runs(runs_dir: Path) -> list[str]:
    """Run folder names under runs_dir, newest first (hidden folders skipped); a sweep's runs as
    'sweep/run', in name order."""
    if not runs_dir.is_dir():
        return []
    dirs = [d for d in runs_dir.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]
    dirs = [d for d in dirs if d.name != "artifacts" or (d / R.RUN_JSON).exists()]
    names = []
    for d in sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True):
        if is_sweep(d):  # a sweep: its runs, as sweep/run
            names += [name for name, _ in sweep_members(runs_dir, d.name)]
        else:
            names.append(d.name)
    return names


def safe_run_path(runs_dir: Path, name: str) -> Path:
    """runs_dir/name, refused (ValueError) unless it resolves to a folder inside runs_dir."""
    root = runs_dir.resolve()
    path = (runs_dir / name).resolve()
    if path == root or not path.is_relative_to(root):
        raise ValueError(f"refused {name!r}: only runs inside {runs_dir} can be opened")
    return path


def run_signature(run_dir: Path) -> tuple:
    """Changes whenever a live run lands a snapshot or logs metrics."""
    parts = []
    for f in [run_dir / R.METRICS_CSV, run_dir / R.RUN_JSON, *R.list_snapshots(run_dir).values()]:
        try:
            st = f.stat()
            parts.append((f.name, st.st_mtime_ns, st.st_size))
        except OSError:
            continue
    return tuple(parts)


# ---- labels ---------------------------------------------------------------------------------


def head_label(layer: int, head: int) -> str:
    return R.site_name(layer, head)


# ---- what was done to a run's model while it trained (guppy-train --ablate / --freeze) ----------


def interventions(meta: dict) -> str:
    """'L0H3 zero-ablated during steps 1000:; frozen: blocks.0.*' from run.json, '' if nothing."""
    cfg = meta.get("train_config") or {}
    parts = []
    if cfg.get("ablate"):
        steps = cfg.get("ablate_steps") or ""
        parts.append(f"{cfg['ablate'].replace(',', ', ')} {cfg.get('ablate_kind', 'zero')}-ablated "
                     + (f"during steps {steps}" if steps else "all along"))
    if cfg.get("freeze"):
        parts.append(f"frozen: {cfg['freeze'].replace(',', ', ')}")
    return "; ".join(parts)


def ablated_heads(meta: dict) -> set[tuple[int, int]]:
    """(layer, head) of every head knocked out while the run trained."""
    sites = R.parse_sites((meta.get("train_config") or {}).get("ablate", ""))
    return {(layer, head) for layer, head in sites if head is not None}


def _in_block(name: str) -> tuple[int | None, str]:
    """'blocks.2.attn.hook_z' -> (2, 'attn.hook_z'); a name outside the blocks -> (None, name)."""
    layer = R.layer_of(name)
    return layer, name if layer is None else name.split(".", 2)[2]


def hook_label(name: str) -> str:
    """'blocks.2.hook_resid_pre' -> 'L2 resid_pre'; 'blocks.0.attn.hook_pattern' -> 'L0 attn pattern'."""
    layer, rest = _in_block(name)
    if layer is None:
        return name.replace("hook_", "")
    return f"L{layer} {rest.replace('hook_', '').replace('.', ' ')}"


def param_label(name: str) -> str:
    """'blocks.0.attn.qkv.weight' -> 'L0 attn.qkv.weight'."""
    layer, rest = _in_block(name)
    return name if layer is None else f"L{layer} {rest}"


def param_group(name: str) -> str:
    """A parameter's family, for colouring many lines: attention, MLP, layer norm, embedding."""
    n = name.lower()
    for key, group in (("attn", "attention"), ("mlp", "MLP"), ("ln", "layer norm")):
        if key in n:
            return group
    return "embedding"


def token_labels(vocab: list[str], ids) -> list[str]:
    """Unique axis labels for an input's tokens: plotly merges equal category labels, so each is
    prefixed with its position."""
    return [f"{i}·{visible(vocab[t])}" for i, t in enumerate(ids)]


# ---- attention ------------------------------------------------------------------------------


def input_pattern(pattern: np.ndarray, k: int, length: int) -> np.ndarray:
    """One stored input's pattern (K, H, T, T) fp16 -> (H, n, n) float32 over its real tokens, with the
    causally masked (future) keys as NaN so they render blank rather than as zero attention."""
    p = pattern[k, :, :length, :length].astype(np.float32)
    future = np.triu(np.ones((length, length), dtype=bool), k=1)
    p[:, future] = np.nan
    return p


def tile_patterns(patterns: list[np.ndarray], labels: list[str]):
    """Every head's pattern in one (L*(n+1)-1, H*(n+1)-1) image, one NaN row/column between
    tiles: one heatmap draws far faster in the browser than L*H subplots with their own axes.
    patterns: L arrays (H, n, n). Axis labels are unique per tile row/column, so the tooltip
    names the layer, head and both tokens. Returns (z, x labels, y labels, x ticks, y ticks)."""
    L, (H, n, _) = len(patterns), patterns[0].shape
    z = np.full((L * (n + 1) - 1, H * (n + 1) - 1), np.nan, np.float32)
    for l, p in enumerate(patterns):
        for h in range(H):
            z[l * (n + 1): l * (n + 1) + n, h * (n + 1): h * (n + 1) + n] = p[h]
    x = [f"H{h} key {labels[j]}" if j < n else f"H{h} |" for h in range(H) for j in range(n + 1)][:-1]
    y = [f"L{l} query {labels[i]}" if i < n else f"L{l} |" for l in range(L) for i in range(n + 1)][:-1]
    xticks = ([x[h * (n + 1) + n // 2] for h in range(H)], [f"H{h}" for h in range(H)])
    yticks = ([y[l * (n + 1) + n // 2] for l in range(L)], [f"L{l}" for l in range(L)])
    return z, x, y, xticks, yticks


def next_step(steps: list[int], step: int) -> int:
    """The snapshot after `step`, wrapping to the first (the play button's loop)."""
    i = steps.index(step) if step in steps else -1
    return steps[(i + 1) % len(steps)]


# ---- head metrics ---------------------------------------------------------------------------


def metric_range(values: np.ndarray, metric: str) -> tuple[float, float]:
    """A colour range fixed across snapshots: [0, 1] for attention fractions, else the data's.
    values: (S, L, H), one metric at every snapshot."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if metric in R.FRACTION_METRICS:
        return 0.0, max(1.0, hi)
    return min(0.0, lo), hi if hi > lo else lo + 1.0


def top_heads(cube: dict[str, np.ndarray], n: int = 4) -> list[str]:
    """Heads whose previous-token, induction or first-token score ends highest: the specialists.
    cube: {metric: (S, L, H)}."""
    scores = [(float(v), l, h) for m in ("prev_token", "induction", "first_token") if m in cube
              for (l, h), v in np.ndenumerate(cube[m][-1]) if np.isfinite(v)]
    best: list[str] = []
    for _, l, h in sorted(scores, key=lambda x: -x[0]):
        if head_label(l, h) not in best:
            best.append(head_label(l, h))
    return best[:n]


# ---- residual stream ------------------------------------------------------------------------


def layer_similarity(resids: list[np.ndarray], k: int, length: int) -> np.ndarray:
    """Cosine similarity between residual points for one stored input, averaged over its positions.
    resids: P arrays (K, T, D) -> (P, P)."""
    x = np.stack([r[k, :length].astype(np.float32) for r in resids])  # (P, n, D)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.einsum("ptd,qtd->pq", x, x) / length


def logit_lens(top: np.ndarray, k: int, ids: np.ndarray, vocab: list[str]):
    """Logit lens for stored input k. top: (P, K, T, 5) ids of each point's top-5 next-token guesses.
    Returns (rank (n, P) float: where the true next token sits in the top 5, 1 = first, NaN =
    not in it; top1 (n, P) str; top5 (n, P) str for tooltips), over positions that have a next token."""
    n = len(ids) - 1
    guess = top[:, k, :n]  # (P, n, 5)
    target = np.asarray(ids[1:n + 1])  # (n,)
    hit = guess == target[None, :, None]  # (P, n, 5)
    rank = np.where(hit.any(-1), hit.argmax(-1) + 1.0, np.nan).T  # (n, P)
    top1 = np.array([[visible(vocab[t]) for t in row] for row in guess[:, :, 0].T])
    top5 = np.array([[" | ".join(visible(vocab[t]) for t in guess[p, i]) for p in range(guess.shape[0])]
                     for i in range(n)])
    return rank, top1, top5


# ---- gradients and updates ------------------------------------------------------------------


def over_training(values: dict[int, np.ndarray], names: list[str]):
    """{step: (N,) values} -> a pandas frame indexed by name with one column per step."""
    import pandas as pd  # loaded when first needed: views without tables start faster

    steps = sorted(values)
    return pd.DataFrame(np.stack([values[s] for s in steps], axis=1).astype(np.float32), index=names, columns=steps)


def log10(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)


# ---- the watch set ------------------------------------------------------------------------------


def input_names(kind: list[str], topic: list[str], text: list[str], indices) -> dict[int, str]:
    """Readable names for the inputs of the watch set: '#3 chat · food · hi guppy ...'."""
    out = {}
    for i in indices:
        i = int(i)
        what = f"chat · {topic[i]}" if kind[i] == "chat" else kind[i]
        snippet = user_prompt(text[i]) if kind[i] == "chat" else re.sub(r"<\|[^|]*\|>", " ", text[i]).strip()
        out[i] = f"#{i} {what} · {snippet[:48]}"
    return out


def user_prompt(chat_text: str) -> str:
    """The user's words in a chat rendered with the chat template."""
    m = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", chat_text, flags=re.S)
    return m.group(1) if m else chat_text

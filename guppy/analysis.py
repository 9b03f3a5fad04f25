"""Shared helpers for the interpretability probes in `probes/` (they never import each other).

    batch = heldout_batch(run, n=64)                      # held-out chats, padded, with a reply mask
    losses = each_site_losses(model, batch.tokens, batch.reply_mask, "mean", pad_id=batch.pad_id)
    scores = head_scores(model, tokens, lengths, period)  # {metric: (L, H)}
    W, b, mean, std = train_linear_probe(X, y, n_classes)   # train_linear_probes: P at once

Plumbing every probe shares: `probe_parser` (--run, --snapshot), `snapshot_steps`,
`write_outputs` (CSV + plotly HTML under runs/<name>/probes/, written atomically).
Shape legend as in guppy.model: B batch, T positions, L layers, H heads, E d_head, D d_model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch

from guppy import metrics as M
from guppy.ablate import ablation_sites, each_site_ablated
from guppy.runfiles import atomic_write
from guppy.runformat import PROBE_OUTPUTS_DIR, act_name
from guppy.cli import ArgumentParser, positive_int

T = TypeVar("T")

# ---- command line and outputs ---------------------------------------------------------------


def probe_parser(prog: str, description: str, allow_all: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--run", required=True, help="a recorded run folder (guppy-train --record), e.g. runs/demo")
    which = ("a snapshot step, comma-separated steps (e.g. 16,178,891), 'latest' or 'all'" if allow_all
             else "a snapshot step or 'latest'")
    p.add_argument("--snapshot", default="latest", help=f"{which} (default latest)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: the models are small, and on a busy 2-core machine a second "
                        "thread made greedy generation 15x and a probe fit 30x slower)")
    return p


@contextmanager
def torch_threads(threads: int):
    """torch on `threads` threads inside the block; the previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(body: Callable[[], T], threads: int) -> Callable[[], T]:
    """`body`, run with torch on `threads` threads (the previous count restored after)."""
    def run() -> T:
        with torch_threads(threads):
            return body()
    return run


def open_recorded_run(path: str):
    import guppy

    run = guppy.open_run(path)
    if not run.snapshot_files:
        raise ValueError(f"{run.path}: no snapshots (record the run with guppy-train --record)")
    return run


def snapshot_steps(run, spec: str, allow_all: bool = True) -> list[int]:
    """Steps named by --snapshot: 'latest', one step, or (where allowed) 'all' or steps separated by
    commas (a few log-spaced snapshots: the slow probes on every snapshot of a long run take minutes)."""
    steps = list(run.snapshot_files)
    if spec == "latest":
        return [steps[-1]]
    parts = spec.split(",")
    if not allow_all and (spec == "all" or len(parts) > 1):
        raise ValueError(f"--snapshot {spec}: more than one snapshot is not supported by this probe; "
                         "give a step or 'latest'")
    if spec == "all":
        return steps
    chosen = [int(p) if p.strip().isdigit() else None for p in parts]
    if any(step not in steps for step in chosen):
        many = ", all, steps separated by commas" if allow_all else ""
        raise ValueError(f"--snapshot {spec!r}: expected 'latest'{many} or one of steps {', '.join(map(str, steps))}")
    return sorted(set(chosen))


def output_dir(run) -> Path:
    out = Path(run.path) / PROBE_OUTPUTS_DIR
    out.mkdir(exist_ok=True)
    return out


def write_outputs(run, name: str, tables: dict[str, pd.DataFrame], fig=None) -> list[Path]:
    """`name.csv` (table key "") or `name_<key>.csv` per table, and `name.html` from a plotly figure.
    The HTML loads plotly.min.js from the same folder (written once), so it works offline."""
    out, written = output_dir(run), []
    for key, df in tables.items():
        path = out / (f"{name}_{key}.csv" if key else f"{name}.csv")
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
        written.append(path)
    if fig is not None:
        path = out / f"{name}.html"
        atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=False, full_html=True, auto_play=False))
        # point at the shared bundle (plotly's "directory" mode would name it after the temp file)
        html = path.read_text().replace("<head>", '<head><script src="plotly.min.js"></script>', 1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(html))
        bundle = out / "plotly.min.js"
        if not bundle.exists():
            from plotly.offline import get_plotlyjs

            atomic_write(bundle, lambda tmp: Path(tmp).write_text(get_plotlyjs()))
        written.append(path)
    return written


def step_colours(steps) -> dict[str, str]:
    """One colour per snapshot step, early to late along Viridis, keyed by str(step) (plotly
    express's color_discrete_map); a discrete sequence would wrap and repeat past 10 steps."""
    from plotly.colors import sample_colorscale

    steps = sorted(steps)
    where = [i / max(len(steps) - 1, 1) for i in range(len(steps))]
    return dict(zip(map(str, steps), sample_colorscale("Viridis", where)))


def print_table(title: str, df: pd.DataFrame, rows: int = 12) -> None:
    print(title)
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.head(rows).to_string(index=False))


# ---- held-out chats -------------------------------------------------------------------------


@dataclass
class ChatBatch:
    tokens: torch.Tensor  # (B, T) padded with pad_id
    lengths: torch.Tensor  # (B,)
    reply_start: torch.Tensor  # (B,) index of each reply's first token
    topics: list[str]
    prompts: list[str]
    pad_id: int

    @property
    def reply_mask(self) -> torch.Tensor:
        """(B, T-1) bool over next-token targets: the reply tokens and the end token."""
        return M.reply_mask(self.reply_start, self.lengths, self.tokens.shape[1])


def encode_batch(tokenizer, chats, n_ctx: int) -> ChatBatch:
    ids, starts = tokenizer.encode_chats([c.prompt for c in chats], [c.reply for c in chats], [c.history for c in chats])
    ids = [x[:n_ctx] for x in ids]
    tokens = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_id, dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = torch.tensor(x)
    return ChatBatch(tokens, torch.tensor([len(x) for x in ids]), torch.tensor(starts),
                     [c.topic for c in chats], [c.prompt for c in chats], tokenizer.pad_id)


def heldout_chats(run, n: int | None = None) -> list:
    """Held-out chats taken round-robin over topics (every topic shows up before any repeats)."""
    from guppy.runs import load_eval_data

    _, chats = load_eval_data(run.path)
    by_topic: dict[str, list] = {}
    for c in chats:
        by_topic.setdefault(c.topic, []).append(c)
    order = [c for i in range(max(map(len, by_topic.values()))) for t in sorted(by_topic)
             for c in by_topic[t][i:i + 1]]
    return order[:n] if n else order


def heldout_batch(run, n: int = 64) -> ChatBatch:
    return encode_batch(run.tokenizer, heldout_chats(run, n), run.model_config.n_ctx)


# ---- ablating each head and MLP in turn ------------------------------------------------------


@torch.no_grad()
def each_site_losses(model, tokens: torch.Tensor, mask: torch.Tensor, method: str = "zero",
                     reference: torch.Tensor | None = None, pad_id: int | None = None,
                     max_logits: int = 40_000_000) -> torch.Tensor:
    """Loss (mean over `mask`) with each site of `ablation_sites` ablated in turn -> (n_sites,),
    batched by `guppy.ablate.each_site_ablated`."""
    sites = ablation_sites(model.cfg)
    m = mask.float().sum(1)  # weight rows by their target count: the mean over all targets
    out = []
    for _, logits in each_site_ablated(model, tokens, sites, method, reference, pad_id, max_logits):
        k, B = logits.shape[:2]
        per_row = M.mean_loss_per_row(logits.flatten(0, 1), tokens.repeat(k, 1), mask.repeat(k, 1)).view(k, B)
        out.append((per_row * m).sum(1) / m.sum())
    return torch.cat(out)


# ---- head types -----------------------------------------------------------------------------

# A head gets the first type in this order whose score reaches its threshold, else "other".
# Scores are mean attention masses (0..1); induction and duplicate-token are measured on the
# repeated random sequences only, the others on every input.
HEAD_TYPES = {  # type: (score, threshold, what it means)
    "induction": ("induction", 0.3, "attends to the token after the previous copy of the current token"),
    "duplicate_token": ("duplicate_token", 0.3, "attends to the previous copy of the current token"),
    "previous_token": ("prev_token", 0.4, "attends to the position just before"),
    "first_token": ("first_token", 0.5, "rests on position 0"),
    "local": ("local", 0.6, "attends within the last 4 positions, itself included"),
}
LOCAL_WINDOW = 4


def local_score(pattern: torch.Tensor, lengths: torch.Tensor, window: int = LOCAL_WINDOW) -> torch.Tensor:
    """Mean attention mass on keys q-window+1 .. q -> (H,)."""
    return sum(_offset_mass(pattern, lengths, o) for o in range(window))


def _offset_mass(pattern, lengths, offset):
    # offset_score averages over queries q >= offset; for a mass over a window every query counts
    B, H, T, _ = pattern.shape
    diag = pattern.float().diagonal(offset=-offset, dim1=-2, dim2=-1)  # (B, H, T - offset)
    full = torch.zeros(B, H, T)
    full[..., offset:] = diag
    m = M.valid_queries(lengths, T)[:, None, :].float()
    return (full * m).sum((0, 2)) / m.sum((0, 2)).clamp(min=1)


@torch.no_grad()
def head_scores(model, tokens: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> dict[str, np.ndarray]:
    """Every head score of every layer on a batch of inputs -> {score: (L, H)}."""
    _, cache = model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    scores: dict[str, list] = {}
    for l in range(model.cfg.n_layers):
        pattern = cache[act_name("pattern", l)]  # (B, H, T, T)
        values = M.head_metrics(pattern, lengths, period) | {"local": local_score(pattern, lengths)}
        for name, v in values.items():
            scores.setdefault(name, []).append(v.numpy())
    return {k: np.stack(v) for k, v in scores.items()}


def classify_heads(scores: dict[str, np.ndarray]) -> np.ndarray:
    """(L, H) array of type names from `head_scores`, by HEAD_TYPES order and thresholds."""
    L, H = scores["induction"].shape
    labels = np.full((L, H), "other", dtype=object)
    for kind, (score, threshold, _) in reversed(list(HEAD_TYPES.items())):  # earlier types win
        labels[scores[score] >= threshold] = kind
    return labels


# ---- linear probes --------------------------------------------------------------------------


def train_linear_probes(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-2,
                        steps: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """P independent multinomial logistic regressions on standardised features, fitted at once
    (full-batch L-BFGS): X (P, N, D), y (P, N) -> (W (P, D, C), b (P, 1, C), mean, std (P, 1, D)).

    The objective is the sum of the P problems' losses; they share no parameter, so each W[p]
    minimises its own loss, and one optimiser run replaces P of them. Run on one thread: the
    matmuls are tiny and a second thread only spins (a 30x slowdown on a busy 2-core machine)."""
    X = X.float()
    mean, std = X.mean(1, keepdim=True), X.std(1, keepdim=True).clamp(min=1e-6)
    Xs = (X - mean) / std
    P, _, D = X.shape
    W = torch.zeros(P, D, n_classes, requires_grad=True)
    b = torch.zeros(P, 1, n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = Xs @ W + b  # (P, N, C)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()
        loss = loss + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch_threads(1), torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach(), mean, std


def train_linear_probe(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-2,
                       steps: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One multinomial logistic regression: X (N, D), y (N,) -> (W (D, C), b (C,), mean, std (D,))."""
    W, b, mean, std = train_linear_probes(X[None], y[None], n_classes, weight_decay, steps)
    return W[0], b[0, 0], mean[0, 0], std[0, 0]


def probe_predict(probe, X: torch.Tensor) -> torch.Tensor:
    """Predicted classes: X (N, D) -> (N,) for one probe, X (P, N, D) -> (P, N) for P probes."""
    W, b, mean, std = probe
    return (((X.float() - mean) / std) @ W + b).argmax(-1)

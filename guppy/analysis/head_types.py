"""Head types: each head's attention scores on the watch set's inputs, and the type they give it.

    scores = head_scores(model, tokens, lengths, period)   # {score: (L, H)}
    labels = classify_heads(scores)                        # (L, H) names from HEAD_TYPES

Shape legend as in guppy.model.transformer: B batch, T positions, L layers, H heads.
"""

from __future__ import annotations

import numpy as np
import torch

from guppy.record import head_scores as M
from guppy.run.format import act_name

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



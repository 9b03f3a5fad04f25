"""Logit lens: what the residual stream would predict if the model stopped at a layer boundary.

    logits, cache = model.run_with_cache(tokens, names=lens_points(model.cfg))
    ids, probs = lens_top(model, cache, positions, k=5)          # (P, N, k) at chosen positions
    stats = lens_stats(model, cache, tokens, mask)               # per point: reply loss, top-1 accuracy
    stats, tops = lens(model, tokens, mask, positions)           # both, one forward (probes/logit_lens.py)

Each point (blocks.l.hook_resid_pre for every l, then the last hook_resid_post: `lens_points`)
is decoded as the output is: through ln_final with its own scale at that point (as
TransformerLens' logit lens does) and the tied unembedding (`guppy.record.head_scores.logit_lens`).
Point l + 1 is the residual after layer l. Used by probes/logit_lens.py and guppy.analysis.explain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guppy.record import head_scores as M
from guppy.run.format import resid_points


def lens_points(cfg) -> list[str]:
    """The residual stream at every layer boundary: before layer 0 (the embeddings) .. after the last."""
    return resid_points(cfg.n_layers)


@torch.no_grad()
def lens_top(model, cache, positions: torch.Tensor, k: int = 5, rows: torch.Tensor | None = None):
    """Each point's top-k next tokens at `positions` (N,) of batch `rows` (N,; default 0..N-1) ->
    (ids (P, N, k), probabilities (P, N, k) float32)."""
    rows = torch.arange(len(positions)) if rows is None else rows
    ids, probs = [], []
    for name in lens_points(model.cfg):
        p = M.logit_lens(model, cache[name][rows, positions]).float().softmax(-1)  # (N, V)
        top = p.topk(k, -1)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids), torch.stack(probs)


@torch.no_grad()
def lens_stats(model, cache, tokens: torch.Tensor, mask: torch.Tensor) -> list[dict]:
    """Per point: next-token loss and top-1 accuracy over the targets where `mask` (B, T-1) holds."""
    targets = tokens[:, 1:][mask]
    stats = []
    for name in lens_points(model.cfg):
        at = M.logit_lens(model, cache[name][:, :-1][mask])  # (N, V): the masked targets only
        stats.append({"point": name, "loss": float(F.cross_entropy(at.float(), targets)),
                      "accuracy": float((at.argmax(-1) == targets).float().mean())})
    return stats


@torch.no_grad()
def lens(model, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None, k: int = 5):
    """One forward: `lens_stats` over `mask`, and the top-k token ids at `positions` (B,), one per
    row -> (list of dicts, (points, B, k) ids or None)."""
    _, cache = model.run_with_cache(tokens, names=lens_points(model.cfg))
    tops = lens_top(model, cache, positions, k)[0] if positions is not None else None
    return lens_stats(model, cache, tokens, mask), tops

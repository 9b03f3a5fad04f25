"""Direct logit attribution: how much each head, MLP and embedding writes one token's logit.

    logits, cache = model.run_with_cache(tokens, names=attribution_hooks(model))
    terms, labels, bias, logit = logit_attribution(model, cache, logits, positions, targets)
    terms, labels, bias, logit = attribute(model, tokens, positions, targets)   # the same, one call

The final residual at a position is a sum of components: the token embedding, the position
embedding (where the model adds one), per layer each head's output (z_h @ W_O[h]), the
attention bias b_O, and the MLP output. The final LayerNorm is linear once its scale is fixed,
so (as TransformerLens' `apply_ln_to_stack`) each component c contributes

    ((c - mean_D(c)) / scale) * w  .  direction

with `scale` the one ln_final.hook_scale measured in the real forward and `direction`
W_U[:, target] (the target's logit), minus mean_v W_U[:, v] (`baseline="mean"`: the logit
above the mean over the vocabulary, which ignores what raises every token alike), or minus
W_U[:, other] (`baseline=` other token ids: one token's logit over another's). These terms
plus the constant `ln_final.b . direction` (the 'ln bias' term, reported apart) sum exactly
to that logit (difference).

Only a pre-LN model is such a sum: `attribution_limit(cfg)` says why the others are not.
Used by probes/attribution.py and guppy.analysis.explain.
"""

from __future__ import annotations

import torch

from guppy.run.format import act_name


def attribution_limit(cfg) -> str | None:
    """Why direct logit attribution cannot split this model's logits, or None when it can."""
    if cfg.norm != "pre":
        return (f"direct logit attribution needs a pre-LN model: with norm={cfg.norm!r} the final residual "
                f"is a LayerNorm's output, not a sum of what each head and MLP wrote")
    return None


def embed_hooks(model) -> list[str]:
    """The embedding hooks a model has: rotary and no-position models add no position embedding."""
    return [n for n in ("hook_embed", "hook_pos_embed") if n in model.hook_dict]


def attribution_hooks(model) -> list[str]:
    """The hook names `logit_attribution` reads from a cache."""
    return [*embed_hooks(model), "ln_final.hook_scale", "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out"]


def component_labels(model) -> list[str]:
    """embed, pos_embed (where there is one), then per layer L0H0.., 'L0 attn bias', 'L0 MLP'."""
    labels = [n.removeprefix("hook_") for n in embed_hooks(model)]
    for l in range(model.cfg.n_layers):
        labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)] + [f"L{l} attn bias", f"L{l} MLP"]
    return labels


def _rows(positions: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(len(positions)) if rows is None else rows


@torch.no_grad()
def split_residual(model, cache, positions: torch.Tensor, rows: torch.Tensor | None = None):
    """The final residual at `positions` (N,) of batch `rows` (N,; default 0..N-1) split into
    components -> ((N, C, D), labels, ln_final scale (N, 1)). `cache` holds `attribution_hooks`."""
    limit = attribution_limit(model.cfg)
    if limit:
        raise ValueError(limit)
    rows = _rows(positions, rows)
    N = len(positions)
    parts = [cache[n][rows, positions][:, None] for n in embed_hooks(model)]
    for l in range(model.cfg.n_layers):
        parts.append(cache.head_results(l)[rows, positions])  # (N, H, D)
        parts.append(model.blocks[l].attn.b_O.expand(N, 1, -1))
        parts.append(cache[act_name("mlp_out", l)][rows, positions][:, None])
    return torch.cat(parts, 1), component_labels(model), cache["ln_final.hook_scale"][rows, positions]


@torch.no_grad()
def logit_attribution(model, cache, logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
                      rows: torch.Tensor | None = None, baseline: str | torch.Tensor | None = None):
    """Direct logit attribution of `targets` (N,) at `positions` (N,) of batch `rows` -> (terms (N, C),
    labels, ln bias term (N,), logit (N,)); terms.sum(1) + bias == logit. `baseline`: None for the
    target's logit, "mean" for it minus the mean logit, token ids (N,) for it minus theirs."""
    comps, labels, scale = split_residual(model, cache, positions, rows)
    rows = _rows(positions, rows)
    ln, W_U = model.ln_final, model.W_U
    direction = W_U[:, targets].T  # (N, D)
    at = logits[rows, positions]  # (N, V)
    logit = at.gather(1, targets[:, None]).squeeze(1)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline {baseline!r}: expected None, 'mean' or token ids")
        direction, logit = direction - W_U.mean(1), logit - at.mean(1)
    elif baseline is not None:
        direction, logit = direction - W_U[:, baseline].T, logit - at.gather(1, baseline[:, None]).squeeze(1)
    normed = (comps - comps.mean(-1, keepdim=True)) / scale[:, None] * ln.w  # (N, C, D)
    terms = torch.einsum("ncd,nd->nc", normed, direction)
    return terms, labels, direction @ ln.b, logit


@torch.no_grad()
def components(model, tokens: torch.Tensor, positions: torch.Tensor):
    """One forward of `tokens` (B, T); the final residual at `positions` (B,), one per row, split ->
    ((B, C, D), labels, ln_final scale (B, 1), logits (B, V) of the real forward)."""
    limit = attribution_limit(model.cfg)
    if limit:
        raise ValueError(limit)
    logits, cache = model.run_with_cache(tokens, names=attribution_hooks(model))
    comps, labels, scale = split_residual(model, cache, positions)
    return comps, labels, scale, logits[torch.arange(len(positions)), positions]


@torch.no_grad()
def attribute(model, tokens: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, centered: bool = False):
    """One forward; direct logit attribution of `targets` (B,) at `positions` (B,), one per row ->
    (terms (B, C), labels, ln bias term (B,), logit (B,)). `centered`: minus the mean logit."""
    limit = attribution_limit(model.cfg)
    if limit:
        raise ValueError(limit)
    logits, cache = model.run_with_cache(tokens, names=attribution_hooks(model))
    return logit_attribution(model, cache, logits, positions, targets, baseline="mean" if centered else None)

"""Ablation of heads, MLPs and whole layers: zero, mean or resample.

    with ablate(model, heads=[(1, 2)], method="mean", reference=tokens):
        loss = ...                                   # head 2 of layer 1 replaced by its mean
    logits = model.run_with_hooks(tokens, fwd_hooks=ablation_hooks(model, heads=[(0, 3)]))

A head is ablated at `blocks.l.attn.hook_z` (its slice of z, before W_O), so zero-ablating
head h equals zeroing W_O[h]; an MLP at `blocks.l.hook_mlp_out`; a layer is its attention
and its MLP. Mean ablation uses the mean over a reference batch's real positions (one vector
per head or MLP, the same at every position); resample ablation takes the activation a
reference batch produced (row i takes reference row i mod its size, at the same positions).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch

METHODS = ("zero", "mean", "resample")


def _sites(model, heads, mlps, layers) -> tuple[dict[int, list[int]], list[int]]:
    cfg = model.cfg
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ValueError(f"no head L{layer}H{head} in a model of {cfg.n_layers} layers x {cfg.n_heads} heads")
        by_layer.setdefault(layer, []).append(head)
    mlps = list(mlps)
    for layer in layers:
        by_layer.setdefault(layer, []).extend(range(cfg.n_heads))
        mlps.append(layer)
    for layer in mlps:
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"no layer {layer} in a model of {cfg.n_layers} layers")
    return {l: sorted(set(h)) for l, h in by_layer.items()}, sorted(set(mlps))


@torch.no_grad()
def reference_activations(model, reference: torch.Tensor, names: list[str], pad_id: int | None = None):
    """Activations of `reference` at `names`, plus the mean over its real positions."""
    _, cache = model.run_with_cache(reference, names=names)
    real = torch.ones(reference.shape, dtype=torch.bool) if pad_id is None else reference != pad_id
    means = {n: cache[n][real].mean(0) for n in names}  # z: (H, E); mlp_out: (D,)
    return dict(cache), means


def ablation_hooks(model, heads: Iterable[tuple[int, int]] = (), mlps: Iterable[int] = (),
                   layers: Iterable[int] = (), method: str = "zero", reference: torch.Tensor | None = None,
                   pad_id: int | None = None) -> list[tuple[str, callable]]:
    """(hook name, fn) pairs for `run_with_hooks` / `model.hooks` that ablate the given sites."""
    if method not in METHODS:
        raise ValueError(f"ablation method {method!r}; expected one of {', '.join(METHODS)}")
    head_sites, mlp_sites = _sites(model, heads, mlps, layers)
    names = [f"blocks.{l}.attn.hook_z" for l in head_sites] + [f"blocks.{l}.hook_mlp_out" for l in mlp_sites]
    if method != "zero":
        if reference is None:
            raise ValueError(f"{method} ablation needs a reference batch of tokens")
        ref_acts, ref_means = reference_activations(model, reference, names, pad_id)

    def replacement(name: str, x: torch.Tensor) -> torch.Tensor:
        if method == "zero":
            return torch.zeros_like(x)
        if method == "mean":
            return ref_means[name].to(x.dtype).expand_as(x)
        ref = ref_acts[name]
        rows = torch.arange(x.shape[0]) % ref.shape[0]
        T = min(x.shape[1], ref.shape[1])
        out = torch.zeros_like(x)
        out[:, :T] = ref[rows, :T].to(x.dtype)
        return out

    def head_hook(layer: int):
        idx = head_sites[layer]

        def fn(z, hook):  # z (B, T, H, E)
            z = z.clone()
            z[:, :, idx] = replacement(hook.name, z)[:, :, idx]
            return z
        return fn

    def mlp_hook(out, hook):  # (B, T, D)
        return replacement(hook.name, out)

    return [(f"blocks.{l}.attn.hook_z", head_hook(l)) for l in head_sites] + \
           [(f"blocks.{l}.hook_mlp_out", mlp_hook) for l in mlp_sites]


@contextmanager
def ablate(model, heads: Iterable[tuple[int, int]] = (), mlps: Iterable[int] = (), layers: Iterable[int] = (),
           method: str = "zero", reference: torch.Tensor | None = None, pad_id: int | None = None):
    """Context manager: inside it, every forward of `model` runs with the sites ablated."""
    hooks = ablation_hooks(model, heads, mlps, layers, method, reference, pad_id)
    with model.hooks(fwd_hooks=hooks):
        yield model


def each_head_ablated(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits with each head zero-ablated in turn, in one batched forward -> (L*H, B, T, V).

    The batch is repeated once per head; a per-copy mask on hook_z removes one head per copy."""
    cfg = model.cfg
    n = cfg.n_layers * cfg.n_heads
    B = tokens.shape[0]
    big = tokens.repeat(n, 1)  # (n*B, T)
    keep = torch.ones(n, cfg.n_layers, cfg.n_heads)
    keep.view(n, n)[torch.arange(n), torch.arange(n)] = 0  # copy i drops head i
    keep = keep.repeat_interleave(B, dim=0)  # (n*B, L, H)

    def mask(layer: int):
        def fn(z, hook):  # (n*B, T, H, E)
            return z * keep[:, layer][:, None, :, None].to(z.dtype)
        return fn

    hooks = [(f"blocks.{l}.attn.hook_z", mask(l)) for l in range(cfg.n_layers)]
    logits = model.run_with_hooks(big, fwd_hooks=hooks)
    return logits.view(n, B, *logits.shape[1:])

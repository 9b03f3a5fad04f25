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

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from guppy.run.format import act_name, layer_of

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


def _site_names(head_layers: Iterable[int], mlp_layers: Iterable[int]) -> list[str]:
    return [act_name("z", l) for l in head_layers] + [act_name("mlp_out", l) for l in mlp_layers]


def _replacements(model, names: list[str], method: str, reference: torch.Tensor | None, pad_id: int | None):
    """`replace(name, x, rows)`: what replaces activation x (rows, T, ...) at hook `name`, the
    same semantics for one ablation and for a batch of copies. `rows` is the batch size of one
    copy: resample gives row i the reference's row (i mod rows) mod its size."""
    if method not in METHODS:
        raise ValueError(f"ablation method {method!r}; expected one of {', '.join(METHODS)}")
    if method != "zero" and reference is None:
        raise ValueError(f"{method} ablation needs a reference batch of tokens")
    ref_acts, ref_means = reference_activations(model, reference, names, pad_id) if method != "zero" else ({}, {})

    def replace(name: str, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        if method == "zero":
            return torch.zeros_like(x)
        if method == "mean":
            return ref_means[name].to(x.dtype).expand_as(x)
        ref, rows = ref_acts[name], rows or x.shape[0]
        out = torch.zeros_like(x)
        T = min(x.shape[1], ref.shape[1])
        out[:, :T] = ref[(torch.arange(x.shape[0]) % rows) % ref.shape[0], :T].to(x.dtype)
        return out
    return replace


def ablation_hooks(model, heads: Iterable[tuple[int, int]] = (), mlps: Iterable[int] = (),
                   layers: Iterable[int] = (), method: str = "zero", reference: torch.Tensor | None = None,
                   pad_id: int | None = None) -> list[tuple[str, callable]]:
    """(hook name, fn) pairs for `run_with_hooks` / `model.hooks` that ablate the given sites."""
    head_sites, mlp_sites = _sites(model, heads, mlps, layers)
    replace = _replacements(model, _site_names(head_sites, mlp_sites), method, reference, pad_id)

    def head_hook(z, hook):  # z (B, T, H, E)
        idx = head_sites[layer_of(hook.name)]
        z = z.clone()
        z[:, :, idx] = replace(hook.name, z)[:, :, idx]
        return z

    def mlp_hook(out, hook):  # (B, T, D)
        return replace(hook.name, out)

    return [(act_name("z", l), head_hook) for l in head_sites] + [(act_name("mlp_out", l), mlp_hook) for l in mlp_sites]


@contextmanager
def ablate(model, heads: Iterable[tuple[int, int]] = (), mlps: Iterable[int] = (), layers: Iterable[int] = (),
           method: str = "zero", reference: torch.Tensor | None = None, pad_id: int | None = None):
    """Context manager: inside it, every forward of `model` runs with the sites ablated."""
    hooks = ablation_hooks(model, heads, mlps, layers, method, reference, pad_id)
    with model.hooks(fwd_hooks=hooks):
        yield model


# ---- every site ablated in turn, batched --------------------------------------------------------


def ablation_sites(cfg, mlps: bool = True) -> list[tuple[str, int, int]]:
    """(kind, layer, head) of every head, then (with `mlps`) every MLP (head -1)."""
    heads = [("head", l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return heads + ([("mlp", l, -1) for l in range(cfg.n_layers)] if mlps else [])


@torch.no_grad()
def each_site_ablated(model, tokens: torch.Tensor, sites: list[tuple[str, int, int]], method: str = "zero",
                      reference: torch.Tensor | None = None, pad_id: int | None = None,
                      max_logits: int = 40_000_000) -> Iterator[tuple[int, torch.Tensor]]:
    """Logits with each site ablated in turn: yields (first site index, logits (k, B, T, V)) for
    chunks of k sites. One forward per chunk: the batch is repeated once per site and a per-copy
    mask swaps one head's slice of hook_z (or one hook_mlp_out) for its replacement; chunks
    keep the logits under `max_logits` numbers. Semantics as `ablate`; the reference defaults
    to `tokens`."""
    cfg = model.cfg
    L = cfg.n_layers
    reference = tokens if reference is None else reference
    names = _site_names(range(L), range(L))
    replace = _replacements(model, names, method, reference, pad_id)
    B, T = tokens.shape
    chunk = max(1, max_logits // (B * T * cfg.d_vocab))
    for s0 in range(0, len(sites), chunk):
        part = sites[s0:s0 + chunk]
        k = len(part)
        keep_z = torch.ones(k, L, cfg.n_heads)
        keep_mlp = torch.ones(k, L)
        for i, (kind, l, h) in enumerate(part):
            if kind == "head":
                keep_z[i, l, h] = 0
            else:
                keep_mlp[i, l] = 0
        keep_z, keep_mlp = keep_z.repeat_interleave(B, 0), keep_mlp.repeat_interleave(B, 0)  # (k*B, L, ...)

        def z_hook(z, hook):  # (k*B, T, H, E)
            keep = keep_z[:, layer_of(hook.name)][:, None, :, None].to(z.dtype)
            return z * keep + replace(hook.name, z, B) * (1 - keep)

        def mlp_hook(x, hook):  # (k*B, T, D)
            keep = keep_mlp[:, layer_of(hook.name)][:, None, None].to(x.dtype)
            return x * keep + replace(hook.name, x, B) * (1 - keep)

        logits = model.run_with_hooks(tokens.repeat(k, 1), fwd_hooks=[(names[:L], z_hook), (names[L:], mlp_hook)])
        yield s0, logits.view(k, B, *logits.shape[1:])


def each_head_ablated(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits with each head zero-ablated in turn, in one batched forward -> (L*H, B, T, V)."""
    sites = ablation_sites(model.cfg, mlps=False)
    return torch.cat([logits for _, logits in each_site_ablated(model, tokens, sites, max_logits=1 << 62)])

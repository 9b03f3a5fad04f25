"""Sampling with a KV cache: temperature, top-k, top-p, a token budget, stop on an end token.

Hooks attached to the model fire during generation too (the prefill sees the whole prompt,
each later step one position). A prompt longer than the context keeps its last tokens, with a
warning; when the context fills up, generation continues on a sliding window without the cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """One token id from a (V,) row of logits; temperature 0 is greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(model, prompt_tokens: Sequence[int], max_new_tokens: int = 64, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_token: int | None = None,
             seed: int | None = None, use_kv_cache: bool = True) -> list[int]:
    """Continue `prompt_tokens`; returns the new tokens (ending with `stop_token` if it came)."""
    n_ctx = model.cfg.n_ctx
    ids = list(prompt_tokens)
    if not ids:
        raise ValueError("generate needs at least one prompt token")
    if len(ids) > n_ctx:
        warnings.warn(f"prompt of {len(ids)} tokens is longer than the context ({n_ctx}); keeping its last {n_ctx}",
                      stacklevel=3)  # 3: past torch.no_grad's wrapper, to the caller
        ids = ids[-n_ctx:]
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    new: list[int] = []
    past = None
    try:
        for _ in range(max_new_tokens):
            if use_kv_cache and len(ids) <= n_ctx:
                if past is None:  # prefill
                    logits, past = model(torch.tensor([ids], device=device), return_kv=True)
                else:
                    logits, past = model(torch.tensor([[ids[-1]]], device=device), past_kv=past, return_kv=True)
            else:  # no cache, or the context is full: a full forward over the last n_ctx tokens
                logits = model(torch.tensor([ids[-n_ctx:]], device=device))
            token = sample_next(logits[0, -1].cpu(), temperature, top_k, top_p, generator)
            ids.append(token)
            new.append(token)
            if token == stop_token:
                break
            if use_kv_cache and len(ids) > n_ctx:
                past = None  # the cache cannot hold more positions than learned; slide instead
    finally:
        model.train(was_training)
    return new


@torch.no_grad()
def greedy_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                 stop_token: int | None = None) -> list[list[int]]:
    """Greedy continuations of many prompts, each what `generate(..., temperature=0)` gives it:
    the prompts of one length are decoded together, one KV cache for the group and no padding (a
    padded row would shift the learned positions), each row's tokens kept up to its stop token. A
    prompt whose reply could outgrow the context goes through `generate` alone (its sliding window).
    The persona eval's 60-720 prompts come in a few dozen lengths: one forward per token of a group
    instead of one per token of every prompt."""
    n_ctx = model.cfg.n_ctx
    device = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if not len(p):
            raise ValueError("generate needs at least one prompt token")
        if len(p) + max_new_tokens > n_ctx:
            out[i] = generate(model, p, max_new_tokens=max_new_tokens, temperature=0.0, stop_token=stop_token)
        else:
            groups.setdefault(len(p), []).append(i)
    was_training = model.training
    model.eval()
    try:
        for idx in groups.values():
            logits, past = model(torch.tensor([list(prompts[i]) for i in idx], device=device), return_kv=True)
            new: list[list[int]] = [[] for _ in idx]
            done = [False] * len(idx)
            for step in range(max_new_tokens):
                tokens = logits[:, -1].argmax(-1)
                for j, t in enumerate(tokens.tolist()):
                    if not done[j]:
                        new[j].append(t)
                        done[j] = t == stop_token
                if all(done) or step == max_new_tokens - 1:
                    break
                logits, past = model(tokens[:, None], past_kv=past, return_kv=True)
            for i, n in zip(idx, new):
                out[i] = n
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]

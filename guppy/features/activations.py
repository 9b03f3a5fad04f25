"""The activations an SAE learns from and is scored on: one hook of a snapshot's model, on chats.

    chats = training_chats(run, n_tokens=40_000, seed=0)   # the run's own training chats, regenerated
    batch = encode_batch(run.tokenizer, chats, n_ctx)      # padded (guppy.analysis.heldout)
    acts = hook_activations(model, batch.tokens, hook)     # (B, T, D): the model runs only up to the hook
    x = acts[real_positions(batch)]                        # (N, D): every real token but position 0

Training chats come from the run's data config (guppy.run.reader.load_run_dataset: the same
generator, seed and split as training), drawn at random and encoded with the run's own tokenizer;
scoring uses the held-out chats (guppy.analysis.heldout), never seen in training. Position 0 is the
chat's start token: its residual is the same vector in every chat (it attends only to itself), one
point repeated once per chat, so it is left out of training, scoring and the spliced-in loss.
Shape legend: B chats, T positions, D d_model.
"""

from __future__ import annotations

import numpy as np
import torch

from guppy.analysis.heldout import ChatBatch, encode_batch
from guppy.run.format import act_name, layer_of

HOOK_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")  # (B, T, D) points of a block


def hook_choices(n_layers: int) -> list[str]:
    return [act_name(kind, layer) for layer in range(n_layers) for kind in HOOK_KINDS]


def default_hook(n_layers: int) -> str:
    """The residual stream half way up: blocks.{L/2 - 1}.hook_resid_post (blocks.2 of the 6-layer fish)."""
    return act_name("resid_post", max(n_layers // 2 - 1, 0))


def check_hook(hook: str, n_layers: int) -> str:
    if hook not in hook_choices(n_layers):
        kinds = ", ".join(f"blocks.L.hook_{k}" for k in HOOK_KINDS)
        raise ValueError(f"--hook {hook!r}: expected a d_model-wide point of a block, one of {kinds} "
                         f"with L in 0..{n_layers - 1}")
    return hook


def training_chats(run, n_tokens: int, seed: int) -> list:
    """Train chats drawn at random (seeded) until they hold about n_tokens tokens besides their start tokens."""
    from guppy.run.reader import load_run_dataset

    data = load_run_dataset(run.path)
    lengths = np.asarray(data.train.lengths)
    order = np.random.default_rng(seed).permutation(len(lengths))
    n = int(np.searchsorted(np.cumsum(lengths[order] - 1), n_tokens)) + 1
    return [data.chats.train[int(i)] for i in np.sort(order[:n])]  # sorted: the chats file is read front to back


def batch_of(run, chats) -> ChatBatch:
    return encode_batch(run.tokenizer, chats, run.model_config.n_ctx)


def real_positions(batch: ChatBatch) -> torch.Tensor:
    """(B, T) bool: the real tokens of each chat but the first (the start token)."""
    t = torch.arange(batch.tokens.shape[1])
    return (t[None] >= 1) & (t[None] < batch.lengths[:, None])


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, hook: str, chunk: int = 256) -> torch.Tensor:
    """The hook's activations on padded chats (B, T) -> (B, T, D) float32; the model runs only up to
    the hook's block (stop_at_layer), a chunk of chats at a time."""
    stop = layer_of(hook) + 1
    out = []
    for i in range(0, len(tokens), chunk):
        part = tokens[i:i + chunk]
        if hook.endswith("hook_resid_post"):  # the residual leaving the block is what stop_at_layer returns
            out.append(model(part, stop_at_layer=stop).float())
        else:
            _, cache = model.run_with_cache(part, names=[hook], stop_at_layer=stop)
            out.append(cache[hook].float())
    return torch.cat(out)

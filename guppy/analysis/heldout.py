"""Held-out chats as padded batches, and the held-out loss with each head and MLP ablated in turn.

    batch = heldout_batch(run, n=64)   # held-out chats round-robin over topics, padded, with a reply mask
    losses = each_site_losses(model, batch.tokens, batch.reply_mask, "mean", pad_id=batch.pad_id)

Shape legend as in guppy.model.transformer: B batch, T positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from guppy.model.ablate import ablation_sites, each_site_ablated
from guppy.record import head_scores as M

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
    _, chats = run.eval_data()
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
    batched by `guppy.model.ablate.each_site_ablated`."""
    sites = ablation_sites(model.cfg)
    m = mask.float().sum(1)  # weight rows by their target count: the mean over all targets
    out = []
    for _, logits in each_site_ablated(model, tokens, sites, method, reference, pad_id, max_logits):
        k, B = logits.shape[:2]
        per_row = M.mean_loss_per_row(logits.flatten(0, 1), tokens.repeat(k, 1), mask.repeat(k, 1)).view(k, B)
        out.append((per_row * m).sum(1) / m.sum())
    return torch.cat(out)



"""Head and residual metrics shared by the recorder, the probes and the dashboard.

Shapes: B inputs, H heads, T positions (queries q, keys k), L layers. Patterns are softmax
attention (B, H, Tq, Tk) in float32; `lengths` (B,) says how many positions of each input are
real (the rest is padding and never counted). Every metric is a mean over real positions.
"""

from __future__ import annotations

import torch


def valid_queries(lengths: torch.Tensor, T: int, start: int = 0) -> torch.Tensor:
    """(B, T) bool: query positions q with start <= q < length."""
    q = torch.arange(T, device=lengths.device)
    return (q[None, :] >= start) & (q[None, :] < lengths[:, None])


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values (B, H, T) averaged over the (B, T) positions where mask holds -> (H,)."""
    m = mask[:, None, :].to(values.dtype)
    return (values * m).sum(dim=(0, 2)) / m.sum(dim=(0, 2)).clamp(min=1)


def attention_entropy(pattern: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of each head's attention distribution -> (H,)."""
    p = pattern.float()
    ent = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)  # (B, H, Tq)
    return _mean_over(ent, valid_queries(lengths, p.shape[-2]))


def offset_score(pattern: torch.Tensor, lengths: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean attention from each query q to key q - offset -> (H,)."""
    diag = pattern.float().diagonal(offset=-offset, dim1=-2, dim2=-1)  # (B, H, T - offset): [q, q - offset]
    return _mean_over(diag, valid_queries(lengths, pattern.shape[-2])[:, offset:])


def prev_token_score(pattern: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return offset_score(pattern, lengths, 1)


def first_token_score(pattern: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean attention to position 0 from every later query (the 'resting' position)."""
    q = pattern.float()[..., 0]  # (B, H, Tq)
    return _mean_over(q, valid_queries(lengths, pattern.shape[-2], start=1))


def induction_score(pattern: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """On sequences that repeat with `period` n (B,): attention from q to q - n + 1, the token
    that followed the previous occurrence of the current token. Probes with period 0 are ignored."""
    B, H, T, _ = pattern.shape
    q = torch.arange(T, device=pattern.device)
    second_copy = (q[None, :] >= period[:, None] + 1) & (period[:, None] > 0)  # (B, Tq)
    mask = valid_queries(lengths, T) & second_copy
    k = (q[None, :] - period[:, None] + 1).clamp(0, T - 1)
    gathered = pattern.float().gather(-1, k[:, None, :, None].expand(B, H, T, 1)).squeeze(-1)
    return _mean_over(gathered, mask)


def duplicate_token_score(pattern: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """On repeated sequences: attention from q to q - n, the previous copy of the same token."""
    B, H, T, _ = pattern.shape
    q = torch.arange(T, device=pattern.device)
    mask = valid_queries(lengths, T) & (q[None, :] >= period[:, None]) & (period[:, None] > 0)
    k = (q[None, :] - period[:, None]).clamp(min=0)
    gathered = pattern.float().gather(-1, k[:, None, :, None].expand(B, H, T, 1)).squeeze(-1)
    return _mean_over(gathered, mask)


def head_metrics(pattern: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every attention metric (runformat.ATTENTION_METRICS) of one layer's pattern -> {name: (H,)}."""
    return {
        "entropy": attention_entropy(pattern, lengths),
        "prev_token": prev_token_score(pattern, lengths),
        "induction": induction_score(pattern, lengths, period),
        "first_token": first_token_score(pattern, lengths),
        "duplicate_token": duplicate_token_score(pattern, lengths, period),
    }


def reply_mask(reply_start: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T-1) bool over next-token targets: the reply tokens and the end token (a target at
    position p is token p, so p runs from 1)."""
    pos = torch.arange(1, T, device=lengths.device)
    return (pos[None, :] >= reply_start[:, None]) & (pos[None, :] < lengths[:, None])


def logit_lens(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits read off a residual stream point as if it were the last (..., D) -> (..., V):
    the final LayerNorm with its own statistics, then the unembedding."""
    return model.unembed(model.ln_final(resid))


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token loss at each position (B, T-1), float32."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")


def mean_loss_per_row(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the (B, T-1) targets where mask holds, per row of the batch -> (B,)."""
    losses = token_losses(logits, tokens)  # (B, T-1)
    m = mask.float()
    return (losses * m).sum(1) / m.sum(1).clamp(min=1)

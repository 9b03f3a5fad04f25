"""Position encodings other than the learned table: fixed sinusoids and rotary q/k.

    table = sinusoids(n_ctx, d_model)          # (n_ctx, D), added to the token embeddings
    rotary = Rotary(d_head, n_ctx); q = rotary(q, start)   # q (B, T, H, E) at positions start..

Both are functions of the position alone, so they are buffers, not parameters: checkpoints do
not store them and a model rebuilt from its config has them back. The model picks one at
construction (guppy.model.transformer); nothing here knows about the rest of the model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

ROTARY_BASE = 10_000  # RoFormer's, GPT-NeoX's and TransformerLens's default


def sinusoids(n_ctx: int, d_model: int, base: float = 10_000.0) -> torch.Tensor:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/D)), PE[p, 2i+1] = cos(the same) -> (n_ctx, D)."""
    pos = torch.arange(n_ctx, dtype=torch.float64)[:, None]  # (n_ctx, 1)
    freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(D/2),)
    table = torch.zeros(n_ctx, d_model + d_model % 2, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table[:, :d_model].float()  # an odd d_model drops the last cosine


class Rotary(nn.Module):
    """Rotary position embedding (Su et al., RoFormer) in GPT-NeoX's layout, as TransformerLens's
    default (`rotary_adjacent_pairs=False`, `rotary_dim = d_head`, base 10000): dimension i pairs
    with i + E/2 and the pair turns by position * base^(-2i/E). A query at position p and a key at
    position s then score by their offset p - s alone."""

    def __init__(self, d_head: int, n_ctx: int, base: float = ROTARY_BASE):
        super().__init__()
        if d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {d_head}")
        half = d_head // 2
        freq = base ** (-torch.arange(half, dtype=torch.float64) / half)  # (E/2,)
        angles = torch.arange(n_ctx, dtype=torch.float64)[:, None] * freq  # (n_ctx, E/2)
        angles = torch.cat([angles, angles], -1)  # (n_ctx, E): both halves of a pair turn alike
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, T, H, E) at absolute positions start..start+T-1 -> the same, turned."""
        T, half = x.shape[1], x.shape[-1] // 2
        cos = self.cos[start:start + T, None].to(x.dtype)  # (T, 1, E), broadcast over heads
        sin = self.sin[start:start + T, None].to(x.dtype)
        turned = torch.cat([-x[..., half:], x[..., :half]], -1)  # (x1, x2) -> (-x2, x1)
        return x * cos + turned * sin

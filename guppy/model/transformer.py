"""The guppy transformer: decoder-only, every activation through a named HookPoint.

By default: token + learned position embeddings -> n_layers x [pre-LN attention, pre-LN ReLU
MLP] -> final LayerNorm -> unembedding tied to the token embedding. Pure: no I/O, no printing.

Variants (ModelConfig.positional / norm / act) are chosen once, at construction: positions
added as a fixed sinusoid table, or turned into q and k (`RotaryAttention`, which adds
`attn.hook_rot_q` / `hook_rot_k`), or absent; LayerNorm after each residual add (`PostLNBlock`);
a GELU MLP; token embeddings times `embed_scale` (sqrt(d_model) for the sinusoid table, as the
2017 paper; hook_embed holds the scaled ones). The final LayerNorm stays in every variant (the 2017 post-LN decoder has none;
keeping it keeps the logit lens and every reader of ln_final the same).

Shape legend: B batch, T positions (Tq queries, Tk keys), D d_model, H heads, E d_head,
M d_mlp, V d_vocab. Hook names and shapes follow TransformerLens (see shared/DESIGN.md).

Unused hooks cost (almost) nothing: attention runs `F.scaled_dot_product_attention` unless a
hook is attached to its scores or pattern, then the explicit path (same numbers, tested; CPU
training takes the explicit path too, which is faster there);
LayerNorm runs fused unless its scale/normalized hooks are in use; the per-head output
`attn.hook_result` (B, T, H, D) is computed only when hooked.

Incremental decoding (used by guppy.model.generate):
    logits, kv = model(prompt, return_kv=True)            # kv: a KVCache, advanced in place
    logits, kv = model(next_tokens, past_kv=kv, return_kv=True)
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn as nn
import torch.nn.functional as F

from guppy.config import ModelConfig
from guppy.model.hooks import HookedMixin, HookPoint, name_hook_points
from guppy.model.positional import Rotary, sinusoids


class KVCache:
    """Keys and values of every position seen so far, per layer, for incremental decoding.

    Buffers are sized for n_ctx once, so a decoding step writes one position instead of
    concatenating the whole history. The cache is advanced in place by each forward that
    receives it; `clone()` one to branch."""

    def __init__(self, n_layers: int, n_ctx: int):
        self.n_ctx, self.length = n_ctx, 0
        self.k: list[torch.Tensor | None] = [None] * n_layers  # each (B, H, n_ctx, E)
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k, v (B, H, T, E); return all positions so far (B, H, Tk, E)."""
        if self.k[layer] is None:
            B, H, _, E = k.shape
            self.k[layer] = k.new_empty(B, H, self.n_ctx, E)
            self.v[layer] = v.new_empty(B, H, self.n_ctx, E)
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def clone(self) -> "KVCache":
        other = KVCache(len(self.k), self.n_ctx)
        other.length = self.length
        other.k = [None if t is None else t.clone() for t in self.k]
        other.v = [None if t is None else t.clone() for t in self.v]
        return other


# hook names in the order the forward pass reaches them (within a block, then overall); a
# variant has the ones that apply to it (rotary adds hook_rot_q/k, no table drops hook_pos_embed)
BLOCK_ORDER = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
               "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
               "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale",
               "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


class LayerNorm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.ln_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()  # (B, T, 1)
        self.hook_normalized = HookPoint()  # (B, T, D), before w and b (as TransformerLens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.hook_scale.active or self.hook_normalized.active):
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return torch.addcmul(self.b, self.hook_normalized(x / scale), self.w)  # one pass for * w + b


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, E, D = cfg.n_heads, cfg.d_head, cfg.d_model
        # fused Q, K, V projection: one matmul; W_Q/W_K/W_V below are views in TL layout
        self.qkv = nn.Linear(D, 3 * H * E)
        self.out = nn.Linear(H * E, D)
        self.dropout = cfg.dropout
        for name in ("hook_q", "hook_k", "hook_v", "hook_z"):  # (B, T, H, E)
            setattr(self, name, HookPoint())
        self.hook_attn_scores = HookPoint()  # (B, H, Tq, Tk), masked with -inf
        self.hook_pattern = HookPoint()  # (B, H, Tq, Tk)
        self.hook_result = HookPoint()  # (B, T, H, D), per-head output; computed only when hooked

    # TransformerLens-layout views of the weights
    @property
    def W_Q(self) -> torch.Tensor:  # (H, D, E)
        return self._in_weight(0)

    @property
    def W_K(self) -> torch.Tensor:
        return self._in_weight(1)

    @property
    def W_V(self) -> torch.Tensor:
        return self._in_weight(2)

    def _in_weight(self, i: int) -> torch.Tensor:
        w = self.qkv.weight.view(3, self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model)[i]  # (H, E, D)
        return w.transpose(1, 2)

    def in_bias(self, i: int) -> torch.Tensor:  # (H, E)
        return self.qkv.bias.view(3, self.cfg.n_heads, self.cfg.d_head)[i]

    @property
    def W_O(self) -> torch.Tensor:  # (H, E, D)
        return einops.rearrange(self.out.weight, "d (h e) -> h e d", h=self.cfg.n_heads)

    @property
    def b_O(self) -> torch.Tensor:
        return self.out.bias

    def positions(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k (B, T, H, E) at positions start.. as the scores see them: unchanged here, the
        positions are in the residual (or nowhere); RotaryAttention turns them."""
        return q, k

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        # unbind, not qkv[0], qkv[1], qkv[2]: the backward of three selects zero-fills the whole
        # (B, T, 3, H, E) gradient three times; unbind's is one stack (benchmarks/bench_train.py measures the step)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.cfg.n_heads, self.cfg.d_head)).unbind(2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # (B, T, H, E)
        past = cache is not None and cache.length > 0
        q, k = self.positions(q, k, cache.length if past else 0)  # before the cache: it keeps turned keys
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, E)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, Tk, E), every position so far
        Tq, Tk = q.shape[2], k.shape[2]
        drop = self.dropout if self.training else 0.0
        # explicit path when its hooks need it, and for CPU training: at our short sequences
        # torch's CPU flash-attention backward is slower than plain matmuls (benchmarks/bench_train.py)
        explicit = self.training and x.device.type == "cpu" and torch.is_grad_enabled()
        if explicit or self.hook_attn_scores.active or self.hook_pattern.active:
            scores = (q / math.sqrt(self.cfg.d_head)) @ k.transpose(-1, -2)  # (B, H, Tq, Tk); scale the smaller side
            future = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).triu(Tk - Tq + 1)
            scores = self.hook_attn_scores(scores.masked_fill_(future, float("-inf")))  # in place: a fresh tensor
            pattern = self.hook_pattern(scores.softmax(-1))
            z = F.dropout(pattern, drop, self.training) @ v  # (B, H, Tq, E)
        else:
            if not past:  # a plain causal forward
                z = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
            elif Tq == 1:  # one new query after a cache sees every key
                z = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            else:  # several new queries after a cache: causal with an offset
                future = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).triu(Tk - Tq + 1)
                z = F.scaled_dot_product_attention(q, k, v, attn_mask=~future, dropout_p=drop)
        z = self.hook_z(z.transpose(1, 2))  # (B, T, H, E)
        if self.hook_result.active:
            # the out projection split by head: the same multiply-adds as one matmul, then attn_out
            # as the sum over heads (a hook that patches result patches attn_out, as in TransformerLens)
            B = z.shape[0]
            per_head = torch.bmm(einops.rearrange(z, "b t h e -> h (b t) e"), self.W_O)  # (H, B*T, D)
            result = self.hook_result(einops.rearrange(per_head, "h (b t) d -> b t h d", b=B))  # a view
            out = result.sum(2) + self.out.bias  # (B, T, D)
        else:
            out = self.out(z.flatten(2))  # (B, T, D)
        return out


class RotaryAttention(Attention):
    """Attention whose q and k are turned by their absolute position (guppy.model.positional.Rotary),
    so scores depend on the offset between query and key. A cached key is stored turned by its
    own position; a new query is turned by its position after the cache. Hook names and shapes
    as TransformerLens (hook_rot_k here holds the new positions' keys, TL's the cache's too)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rotary = Rotary(cfg.d_head, cfg.n_ctx)
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()  # (B, T, H, E)

    def positions(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hook_rot_q(self.rotary(q, start)), self.hook_rot_k(self.rotary(k, start))


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # gelu: the exact erf form, TransformerLens's act_fn="gelu"


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]
        self.hook_pre = HookPoint()  # (B, T, M)
        self.hook_post = HookPoint()  # (B, T, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.hook_post(self.act(self.hook_pre(self.W_in(x)))))


class Block(nn.Module):
    """Pre-LN (GPT-2): each sublayer reads a normalized copy and adds to the raw residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg)
        self.attn = RotaryAttention(cfg) if cfg.positional == "rotary" else Attention(cfg)
        self.ln2, self.mlp = LayerNorm(cfg), MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())  # (B, T, D)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.attn(self.ln1(x), cache, layer)
        x = self.hook_resid_mid(x + self.dropout(self.hook_attn_out(attn_out)))
        return self.hook_resid_post(x + self.dropout(self.hook_mlp_out(self.mlp(self.ln2(x)))))


class PostLNBlock(Block):
    """Post-LN (Vaswani et al. 2017): x = LN(x + sublayer(x)), so the residual itself is normalized
    after each add. resid_mid is ln1's output (what the MLP reads), resid_post ln2's."""

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        attn_out = self.attn(x, cache, layer)
        x = self.hook_resid_mid(self.ln1(x + self.dropout(self.hook_attn_out(attn_out))))
        return self.hook_resid_post(self.ln2(x + self.dropout(self.hook_mlp_out(self.mlp(x)))))


BLOCKS = {"pre": Block, "post": PostLNBlock}


class Unembed(nn.Module):
    """Logits from the final residual, through the token embedding (tied weights)."""

    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self._embed = [embed]  # a list, so the tied weight is registered once (under embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._embed[0].weight.T  # (B, T, V)


class GuppyLM(HookedMixin, nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.embed_scale = cfg.embed_scale  # hook_embed sees the scaled embedding, what the residual gets
        self.hook_embed = HookPoint()  # (B, T, D)
        # positions added to the embeddings: a learned table, or fixed sinusoids (a buffer: not in
        # checkpoints); rotary and none add nothing here, so they have no W_pos and no hook_pos_embed
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        else:
            table = sinusoids(cfg.n_ctx, cfg.d_model) if cfg.positional == "sinusoidal" else None
            self.register_buffer("W_pos", table, persistent=False)
        if self.W_pos is not None:
            self.hook_pos_embed = HookPoint()  # (B, T, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(BLOCKS[cfg.norm](cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(self.embed)
        self.hook_logits = HookPoint()  # (B, T, V)
        self._init_weights()
        points = name_hook_points(self)
        order = ["hook_embed", "hook_pos_embed"]
        order += [f"blocks.{i}.{n}" for i in range(cfg.n_layers) for n in BLOCK_ORDER]
        order += ["ln_final.hook_scale", "ln_final.hook_normalized", "hook_logits"]
        assert set(points) <= set(order), "BLOCK_ORDER is out of date with the modules"
        self.hook_dict = {name: points[name] for name in order if name in points}

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith(".b") or name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(".w"):
                nn.init.ones_(p)
            else:
                # GPT-2: residual-writing projections scaled down by depth
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("out.weight", "W_out.weight")) else 1
                nn.init.normal_(p, std=std * scale)

    @property
    def W_E(self) -> torch.Tensor:  # (V, D)
        return self.embed.weight

    @property
    def W_U(self) -> torch.Tensor:  # (D, V)
        return self.embed.weight.T

    def forward(self, tokens: torch.Tensor, past_kv: KVCache | None = None, return_kv: bool = False,
                stop_at_layer: int | None = None):
        """tokens (B, T) -> logits (B, T, V).

        Incremental decoding: `return_kv=True` also returns a KVCache, (logits, kv); passing it
        back as `past_kv` continues those positions with only the new tokens (and advances it).
        `stop_at_layer=L` (as TransformerLens) returns the residual stream entering block L,
        (B, T, D), without running the rest; L = n_layers gives the final residual before ln_final."""
        if stop_at_layer is not None and (return_kv or past_kv is not None):
            raise ValueError("stop_at_layer runs part of the model: it cannot fill or use a KV cache")
        if return_kv and past_kv is None:
            past_kv = KVCache(self.cfg.n_layers, self.cfg.n_ctx)
        start = past_kv.length if past_kv is not None else 0
        T = tokens.shape[1]
        if start + T > self.cfg.n_ctx:
            raise ValueError(f"{start + T} positions exceed n_ctx={self.cfg.n_ctx}")
        x = self.embed(tokens)  # (B, T, D)
        if self.embed_scale != 1:  # sqrt(d_model) with sinusoidal positions (2017): tokens as loud as the table
            x = x * self.embed_scale
        x = self.hook_embed(x)
        if self.W_pos is not None:  # a table of positions: learned or sinusoidal
            x = x + self.hook_pos_embed(self.W_pos[start:start + T].expand_as(x))  # (B, T, D)
        x = self.drop(x)
        for i, block in enumerate(self.blocks[:stop_at_layer]):
            x = block(x, past_kv, i)
        if stop_at_layer is not None:
            return x
        if past_kv is not None:
            past_kv.length += T
        logits = self.hook_logits(self.unembed(self.ln_final(x)))
        return (logits, past_kv) if return_kv else logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

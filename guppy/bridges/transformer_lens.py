"""Export to TransformerLens (3.x `HookedTransformer`): the same weights, the same hook names.

    pip install 'guppy[interop]'
    tl_model = guppy.bridges.transformer_lens.to_transformer_lens(model)

TransformerLens is our correctness oracle: tests check logits and every shared hook agree.
Variants: rotary maps to TL's `positional_embedding_type="rotary"` (GPT-NeoX half split over
all of d_head, base 10000: TL's defaults), gelu to `act_fn="gelu"` (the erf form). TL has no
sinusoidal or position-free type, but both are a fixed table added to the residual, so they
export exactly as TL's learned table holding that table (zeros for none). TL has no post-LN
block of the 2017 kind (its post-norm, OLMo 2's, normalizes a sublayer's output before the add),
so a post-LN model is refused.
"""

from __future__ import annotations

import warnings

import torch

from guppy.model.positional import ROTARY_BASE
from guppy.model.transformer import GuppyLM

TL_POSITIONAL = {"learned": "standard", "sinusoidal": "standard", "none": "standard", "rotary": "rotary"}
TL_ACT = {"relu": "relu", "gelu": "gelu"}


def check_convertible(model: GuppyLM) -> None:
    """One clear line when TransformerLens has no equivalent of this model's variant."""
    if model.cfg.norm != "pre":
        raise ValueError(f"TransformerLens has no post-LN block (LayerNorm after each residual add); "
                         f"only norm='pre' models convert, this one has norm={model.cfg.norm!r}")


def transformer_lens_state_dict(model: GuppyLM) -> dict[str, torch.Tensor]:
    """Our weights under TransformerLens names and layouts."""
    check_convertible(model)
    cfg = model.cfg
    # TL's W_E and W_U are apart: an embedding scale goes into W_E, the tied unembedding stays as it is
    sd = {"embed.W_E": model.W_E * cfg.embed_scale, "ln_final.w": model.ln_final.w, "ln_final.b": model.ln_final.b,
          "unembed.W_U": model.W_U, "unembed.b_U": torch.zeros(cfg.d_vocab)}
    if TL_POSITIONAL[cfg.positional] == "standard":  # learned, sinusoidal, or nothing (zeros) added
        sd["pos_embed.W_pos"] = model.W_pos if model.W_pos is not None else torch.zeros(cfg.n_ctx, cfg.d_model)
    for i, block in enumerate(model.blocks):
        a, p = block.attn, f"blocks.{i}."
        sd |= {p + "ln1.w": block.ln1.w, p + "ln1.b": block.ln1.b, p + "ln2.w": block.ln2.w, p + "ln2.b": block.ln2.b}
        for j, name in enumerate("QKV"):
            sd[p + f"attn.W_{name}"] = a._in_weight(j)  # (H, D, E)
            sd[p + f"attn.b_{name}"] = a.in_bias(j)  # (H, E)
        sd[p + "attn.W_O"], sd[p + "attn.b_O"] = a.W_O, a.b_O
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = block.mlp.W_in.weight.T, block.mlp.W_in.bias  # (D, M)
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = block.mlp.W_out.weight.T, block.mlp.W_out.bias  # (M, D)
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_transformer_lens(model: GuppyLM, device: str = "cpu"):
    """A TransformerLens HookedTransformer holding this model's weights (eval mode)."""
    check_convertible(model)
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:
        raise ImportError("TransformerLens 3.x is needed: pip install 'guppy[interop]'") from e
    cfg = model.cfg
    rotary = {"rotary_dim": cfg.d_head, "rotary_adjacent_pairs": False, "rotary_base": ROTARY_BASE} \
        if cfg.positional == "rotary" else {}
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, act_fn=TL_ACT[cfg.act], normalization_type="LN", eps=cfg.ln_eps,
        positional_embedding_type=TL_POSITIONAL[cfg.positional], default_prepend_bos=False, device=device,
        seed=None, **rotary,
    )
    with warnings.catch_warnings():  # 3.x deprecates the class we target on purpose (4.x removed it)
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(tl_cfg)
    missing, unexpected = tl.load_state_dict(transformer_lens_state_dict(model), strict=False)
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos"))]
    if real_missing or unexpected:
        raise RuntimeError(f"TransformerLens layout changed: missing {real_missing[:4]}, unexpected {unexpected[:4]}")
    return tl.eval()

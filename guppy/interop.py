"""Export to TransformerLens (3.x `HookedTransformer`): the same weights, the same hook names.

    pip install 'guppy[interop]'
    tl_model = guppy.interop.to_transformer_lens(model)

TransformerLens is our correctness oracle: tests check logits and every shared hook agree.
"""

from __future__ import annotations

import warnings

import torch

from guppy.model import GuppyLM


def transformer_lens_state_dict(model: GuppyLM) -> dict[str, torch.Tensor]:
    """Our weights under TransformerLens names and layouts."""
    cfg = model.cfg
    sd = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos,
          "ln_final.w": model.ln_final.w, "ln_final.b": model.ln_final.b,
          "unembed.W_U": model.W_U, "unembed.b_U": torch.zeros(cfg.d_vocab)}
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
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:
        raise ImportError("TransformerLens 3.x is needed: pip install 'guppy[interop]'") from e
    cfg = model.cfg
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, act_fn="relu", normalization_type="LN", eps=cfg.ln_eps,
        positional_embedding_type="standard", default_prepend_bos=False, device=device, seed=None,
    )
    with warnings.catch_warnings():  # 3.x deprecates the class we target on purpose (4.x removed it)
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(tl_cfg)
    missing, unexpected = tl.load_state_dict(transformer_lens_state_dict(model), strict=False)
    real_missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
    if real_missing or unexpected:
        raise RuntimeError(f"TransformerLens layout changed: missing {real_missing[:4]}, unexpected {unexpected[:4]}")
    return tl.eval()

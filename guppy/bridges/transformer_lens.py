"""guppy in TransformerLens, for the major that is installed: the same weights, the same hook names.

    pip install 'guppy[interop]'                      # TransformerLens 4.x, transformers 5.x, nnsight
    tl = guppy.to_transformer_lens(model_or_run)      # a GuppyLM, a run folder or an open_run(...)
    logits, cache = tl.run_with_cache(tokens)

TransformerLens is our correctness oracle: tests check logits and every hook both sides have.

- **4.x: a `TransformerBridge`** around the transformers model `guppy-export --to hf` writes, built
  in memory from the same state dict (guppy.bridges.export.transformers_model): GPT-2 for the
  models whose positions are a table added to the residual (learned; sinusoidal and none export as
  a GPT-2 table holding the sinusoids or zeros), GPT-NeoX with a sequential residual and rotary
  over all of d_head (base 10000, half split) for rotary. Built by TL's `build_bridge_from_module`
  with TL's own GPT-2 / GPT-NeoX adapters; a run's tokenizer comes along (`bridge.to_tokens`).
  Not a bridge on our own modules: TL 4's adapters are written for transformers' module trees and
  calls (a block gets `hidden_states` and returns a tuple, the driver calls `model(input_ids)`), and
  the GPT-2 and GPT-NeoX ones are those TL checks every release. The bridge holds a copy of the
  weights: editing it leaves the GuppyLM as it was.
  Hook names: the bridge's canonical names (`blocks.0.hook_in`, `blocks.0.attn.hook_out`, ...) and
  its legacy aliases (`blocks.0.hook_resid_pre`, ...); `bridge_hook_names` pairs each with ours.
  TL 4.3 fires no `hook_rot_q` / `hook_rot_k` for GPT-NeoX (it exposes the rotary tables as
  `hook_cos` / `hook_sin`), and `hook_result` only after `bridge.set_use_attn_result(True)`.
- **3.x: a `HookedTransformer`** (the class 4.0 removed). Rotary maps to TL's
  `positional_embedding_type="rotary"` (GPT-NeoX half split over all of d_head, base 10000: TL's
  defaults), gelu to `act_fn="gelu"` (the erf form); sinusoidal and none export as TL's learned
  table holding that table (zeros for none).

Neither has a post-LN block of the 2017 kind (TL's post-norm, OLMo 2's, normalizes a sublayer's
output before the add), so a post-LN model is refused in one line.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version

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


def tl_version() -> str:
    """The installed TransformerLens's version, or one line saying how to install it."""
    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        raise ImportError("TransformerLens is not installed: pip install 'guppy[interop]' (4.x), "
                          "or 'transformer-lens>=3,<4' for HookedTransformer") from None


def to_transformer_lens(model_or_run, device: str = "cpu", checkpoint: str | int = "latest"):
    """The model (a GuppyLM, a run folder, or a Run) in the installed TransformerLens, eval mode:
    a TransformerBridge on 4.x, a HookedTransformer on 3.x. A run's tokenizer comes along on 4.x."""
    model, tokenizer = _model_and_tokenizer(model_or_run, checkpoint)
    check_convertible(model)
    tl = tl_version()
    major = int(tl.split(".")[0])
    if major >= 4:
        return transformer_bridge(model, tokenizer, device)
    if major == 3:
        return hooked_transformer(model, device)
    raise ImportError(f"TransformerLens {tl} is installed; guppy converts to 3.x and 4.x")


def _model_and_tokenizer(model_or_run, checkpoint):
    if isinstance(model_or_run, GuppyLM):
        return model_or_run, None
    path = getattr(model_or_run, "path", model_or_run)  # a Run (guppy.open_run) knows its folder
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"to_transformer_lens: expected a GuppyLM, a run folder or a Run, "
                        f"got {type(model_or_run).__name__}")
    from guppy.run.reader import load_for_inference

    model, tokenizer, _ = load_for_inference(path, checkpoint)
    return model, tokenizer


# ---- TransformerLens 4.x: a TransformerBridge --------------------------------------------------


def transformer_bridge(model: GuppyLM, tokenizer=None, device: str = "cpu"):
    """A TL 4 TransformerBridge around this model's transformers twin (GPT-2, or GPT-NeoX for
    rotary); `tokenizer` (a ChatTokenizer) becomes the bridge's, for `to_tokens` and `generate`."""
    check_convertible(model)
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    from guppy.bridges.export import transformers_model, transformers_tokenizer

    hf = transformers_model(model, tokenizer).to(device)
    # TL reloads a tokenizer by its name_or_path unless it already adds a BOS (get_tokenizer_with_bos):
    # this one does, so TL keeps it, sees that it prepends one, and to_tokens strips it again
    hf_tok = None if tokenizer is None else transformers_tokenizer(tokenizer, add_bos_token=True, name_or_path="guppy")
    bridge = build_bridge_from_module(hf, type(hf).__name__, hf_config=hf.config, tokenizer=hf_tok,
                                      device=device, model_name="guppy")
    bridge.cfg.default_prepend_bos = False  # a chat's first token comes from its template, as in training
    return bridge.eval()


def _renamed(n_layers: int) -> dict[str, str]:
    """Bridge hook points that hold one of our activations under another name, on a HookPoint of
    their own (names sharing one HookPoint, TL's aliases, are found from hook_dict)."""
    names = {"ln_final.hook_in": f"blocks.{n_layers - 1}.hook_resid_post", "unembed.hook_out": "hook_logits"}
    for i in range(n_layers):
        p = f"blocks.{i}."
        names |= {p + "ln1.hook_in": p + "hook_resid_pre", p + "attn.hook_hidden_states": p + "hook_attn_out",
                  p + "attn.o.hook_out": p + "hook_attn_out", p + "mlp.out.hook_out": p + "hook_mlp_out"}
    return names


def bridge_hook_names(bridge, model: GuppyLM) -> dict[str, str]:
    """Every hook name of a TL 4 bridge (canonical names and legacy aliases) whose activation guppy
    also hooks -> that guppy hook's name. A hook that only fires with a flag on (hook_result) or not
    at all in this TL release (GPT-NeoX's hook_rot_q) is listed too: compare what a cache holds."""
    ours, renamed = model.hook_dict, _renamed(model.cfg.n_layers)
    groups = defaultdict(list)  # names that share one HookPoint
    for name, point in bridge.hook_dict.items():
        groups[id(point)].append(name)
    pairs = {}
    for names in groups.values():
        mine = [renamed.get(n, n) for n in names if renamed.get(n, n) in ours]
        pairs |= {n: mine[0] for n in names} if mine else {}
    return pairs


# ---- TransformerLens 3.x: a HookedTransformer --------------------------------------------------


def transformer_lens_state_dict(model: GuppyLM) -> dict[str, torch.Tensor]:
    """Our weights under HookedTransformer's names and layouts."""
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


def hooked_transformer(model: GuppyLM, device: str = "cpu"):
    """A TransformerLens 3.x HookedTransformer holding this model's weights (eval mode)."""
    check_convertible(model)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

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

"""The transformer itself: parameter count, fused vs explicit paths, masking, config."""

import pytest
import torch
import torch.nn.functional as F

from guppy.config import ModelConfig, model_preset
from guppy.model.transformer import GuppyLM


def test_guppy_preset_reproduces_the_reference_fish():
    cfg = model_preset("guppy")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == \
        (6, 384, 6, 64, 768, 128, 4096)
    model = GuppyLM(cfg)
    assert model.num_params() == cfg.num_params() == 8_726_016


def test_unembedding_is_tied_and_saved_once(tiny_model):
    assert tiny_model.W_U.data_ptr() == tiny_model.W_E.data_ptr()
    assert [k for k in tiny_model.state_dict() if "embed" in k] == ["embed.weight"]


def test_explicit_attention_path_equals_sdpa(tiny_model):
    tokens = torch.randint(0, 512, (3, 20))
    fused = tiny_model(tokens)
    explicit, cache = tiny_model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    for l in range(2):  # and the pattern is a causal distribution
        p = cache[f"blocks.{l}.attn.hook_pattern"]
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
        assert p.triu(1).abs().max() == 0


def test_attention_matches_an_independent_implementation(tiny_model):
    """Recompute layer 0's attention output from its weights with plain torch ops."""
    x = torch.randn(2, 10, 32)
    attn = tiny_model.blocks[0].attn
    q = torch.einsum("btd,hde->bhte", x, attn.W_Q) + attn.in_bias(0)[None, :, None]
    k = torch.einsum("btd,hde->bhte", x, attn.W_K) + attn.in_bias(1)[None, :, None]
    v = torch.einsum("btd,hde->bhte", x, attn.W_V) + attn.in_bias(2)[None, :, None]
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, E)
    expected = torch.einsum("bhte,hed->btd", ref, attn.W_O) + attn.b_O
    out = attn(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_layernorm_hooked_path_equals_fused(tiny_model):
    tokens = torch.randint(0, 512, (2, 12))
    plain = tiny_model(tokens)
    hooked, cache = tiny_model.run_with_cache(tokens, names=["*ln*", "blocks.0.hook_resid_pre"])
    torch.testing.assert_close(plain, hooked, atol=1e-5, rtol=1e-5)
    assert cache["ln_final.hook_scale"].shape == (2, 12, 1)
    x = cache["blocks.0.hook_resid_pre"]  # hook_normalized is before w and b, as in TransformerLens
    expected = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(cache["blocks.0.ln1.hook_normalized"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hooked", [False, True])  # SDPA and explicit attention paths
def test_kv_cache_continuation_equals_one_full_forward(tiny_model, hooked):
    tokens = torch.randint(0, 512, (2, 20))
    hooks = [("blocks.*.attn.hook_pattern", lambda x, hook: None)] if hooked else []
    with tiny_model.hooks(fwd_hooks=hooks):
        full = tiny_model(tokens)
        first, kv = tiny_model(tokens[:, :8], return_kv=True)  # prefill
        branch = kv.clone()
        chunk, kv = tiny_model(tokens[:, 8:15], past_kv=kv, return_kv=True)  # several at once
        steps = [tiny_model(tokens[:, t:t + 1], past_kv=kv, return_kv=True)[0] for t in range(15, 20)]
        assert kv.length == 20 and branch.length == 8
        torch.testing.assert_close(tiny_model(tokens[:, 8:9], past_kv=branch), full[:, 8:9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, chunk, *steps], 1), full, atol=1e-5, rtol=1e-5)


def test_future_tokens_never_change_the_past(tiny_model):
    a = torch.randint(0, 512, (1, 16))
    b = a.clone()
    b[0, 10:] = torch.randint(0, 512, (6,))
    torch.testing.assert_close(tiny_model(a)[0, :10], tiny_model(b)[0, :10])


def test_dropout_only_in_training():
    model = GuppyLM(model_preset("tiny").replace(dropout=0.5))
    tokens = torch.randint(0, 512, (2, 8))
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


def test_stop_at_layer_returns_the_residual_entering_that_block(tiny_model):
    tokens = torch.randint(0, 512, (2, 12))
    _, cache = tiny_model.run_with_cache(tokens, names="blocks.*.hook_resid_*")
    torch.testing.assert_close(tiny_model(tokens, stop_at_layer=1), cache["blocks.1.hook_resid_pre"])
    final = tiny_model(tokens, stop_at_layer=tiny_model.cfg.n_layers)
    torch.testing.assert_close(final, cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(tiny_model.unembed(tiny_model.ln_final(final)), tiny_model(tokens))
    fired = []
    tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: fired.append(1))],
                              stop_at_layer=1)
    assert not fired  # block 1 never ran
    with pytest.raises(ValueError, match="KV cache"):
        tiny_model(tokens, stop_at_layer=1, return_kv=True)


def test_too_long_input_is_refused_clearly(tiny_model):
    with pytest.raises(ValueError, match="exceed n_ctx=64"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=30), "n_heads \\* d_head"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**model_preset("tiny").to_dict(), **bad})
    with pytest.raises(ValueError, match="unknown ModelConfig keys: colour"):
        ModelConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown model preset 'huge'; expected one of: guppy"):
        model_preset("huge")

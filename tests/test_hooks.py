"""Hook points: names, caching, patching, backward hooks, removal, errors."""

import pytest
import torch


def test_every_design_hook_name_exists(tiny_model):
    names = set(tiny_model.hook_names)
    per_block = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                 "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
                 "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
                 "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
    expected = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized", "hook_logits"}
    expected |= {f"blocks.{l}.{n}" for l in range(2) for n in per_block}
    assert names == expected


def test_cache_shapes_and_the_residual_adds_up(tiny_model):
    tokens = torch.randint(0, 512, (2, 9))
    logits, cache = tiny_model.run_with_cache(tokens)
    assert cache["blocks.0.attn.hook_q"].shape == (2, 9, 4, 8)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 9, 9)
    assert cache["blocks.0.attn.hook_result"].shape == (2, 9, 4, 32)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 9, 64)
    for l in range(2):  # resid_post = resid_pre + attn_out + mlp_out; attn_out = sum of heads + b_O
        c = lambda n: cache[f"blocks.{l}.{n}"]
        torch.testing.assert_close(c("hook_resid_post"), c("hook_resid_pre") + c("hook_attn_out") + c("hook_mlp_out"))
        b_O = tiny_model.blocks[l].attn.b_O
        torch.testing.assert_close(c("attn.hook_result").sum(2) + b_O, c("hook_attn_out"), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.head_results(l), c("attn.hook_result"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["hook_logits"], logits)


def test_hooked_result_gives_the_same_attn_out_and_patching_it_reaches_attn_out(tiny_model):
    """With hook_result in use, attn_out is the per-head results summed (not the fused out projection)."""
    tokens = torch.randint(0, 512, (2, 9))
    fused_logits, fused = tiny_model.run_with_cache(tokens, names="blocks.*.hook_attn_out")
    logits, split = tiny_model.run_with_cache(tokens, names=["blocks.*.attn.hook_result", "blocks.*.hook_attn_out"])
    torch.testing.assert_close(logits, fused_logits, atol=1e-5, rtol=1e-5)
    for l in range(2):
        torch.testing.assert_close(split[f"blocks.{l}.hook_attn_out"], fused[f"blocks.{l}.hook_attn_out"],
                                   atol=1e-5, rtol=1e-5)

    def drop_head(x, hook):  # in place, returning None, as TransformerLens users patch
        x[:, :, 1] = 0

    _, patched = tiny_model.run_with_cache(tokens, names="blocks.0.hook_attn_out",
                                           fwd_hooks=[("blocks.0.attn.hook_result", drop_head)])
    expected = fused["blocks.0.hook_attn_out"] - split["blocks.0.attn.hook_result"][:, :, 1]
    torch.testing.assert_close(patched["blocks.0.hook_attn_out"], expected, atol=1e-5, rtol=1e-5)


def test_names_accept_list_glob_and_predicate(tiny_model):
    tokens = torch.randint(0, 512, (1, 5))
    _, a = tiny_model.run_with_cache(tokens, names="blocks.*.attn.hook_pattern")
    _, b = tiny_model.run_with_cache(tokens, names=["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    _, c = tiny_model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    _, d = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))  # TransformerLens's keyword
    assert list(a) == list(b) == list(c) == list(d) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert torch.equal(a["blocks.1.attn.hook_pattern"], d["blocks.1.attn.hook_pattern"])
    with pytest.raises(TypeError, match="not both"):
        tiny_model.run_with_cache(tokens, names="hook_embed", names_filter="hook_embed")


def test_unknown_name_lists_close_names(tiny_model):
    with pytest.raises(KeyError, match="no hook point matches 'blocks.0.attn.hook_patern'; close: blocks.0.attn.hook_pattern"):
        tiny_model.run_with_cache(torch.zeros(1, 3, dtype=torch.long), names="blocks.0.attn.hook_patern")
    assert not any(h.active for h in tiny_model.hook_points().values())


def test_stack_accumulated_resid_and_moves(tiny_model):
    tokens = torch.randint(0, 512, (2, 6))
    _, cache = tiny_model.run_with_cache(tokens)
    assert cache.stack("attn.hook_pattern").shape == (2, 2, 4, 6, 6)
    resid, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert cache.accumulated_resid(1, incl_mid=True, return_labels=True)[1] == \
        ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"]  # as TransformerLens
    final = tiny_model.unembed(cache.accumulated_resid(apply_ln=True)[-1])
    torch.testing.assert_close(final, cache["hook_logits"], atol=1e-5, rtol=1e-5)
    half = cache.half()
    assert half["blocks.0.hook_resid_pre"].dtype == torch.float16 and half.cpu()["hook_embed"].device.type == "cpu"
    stacked, heads = cache.stack_head_results()
    assert stacked.shape == (8, 2, 6, 32) and heads[:2] == ["L0H0", "L0H1"]


def test_a_hook_can_replace_its_tensor(tiny_model):
    tokens = torch.randint(0, 512, (1, 5))
    zero = lambda x, hook: torch.zeros_like(x)
    logits, cache = tiny_model.run_with_cache(tokens, names="blocks.1.hook_resid_post",
                                              fwd_hooks=[("blocks.1.hook_resid_post", zero)])
    assert cache["blocks.1.hook_resid_post"].abs().max() == 0  # the cache sees the patched value
    bias_only = tiny_model.unembed(tiny_model.ln_final(torch.zeros(1, 5, 32)))
    torch.testing.assert_close(logits, bias_only)


def test_hooks_are_called_as_transformer_lens_calls_them(tiny_model):
    """fn(x, hook=hook_point): a TransformerLens hook with a keyword-only `hook` works unchanged,
    forward and backward, and so does a positional `def f(x, hook)`."""
    seen = []

    def tl_style(x, *, hook):
        seen.append((hook.name, tuple(x.shape)))

    def positional(x, hook):
        seen.append(hook.name)

    tokens = torch.randint(0, 512, (1, 5))
    with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", tl_style), ("hook_embed", positional)],
                          bwd_hooks=[("blocks.1.hook_resid_post", tl_style)]):
        tiny_model.train()
        tiny_model(tokens).sum().backward()
        tiny_model.eval()
    assert ("blocks.0.attn.hook_z", (1, 5, 4, 8)) in seen and "hook_embed" in seen
    assert ("blocks.1.hook_resid_post", (1, 5, 32)) in seen  # the gradient, through the backward hook


def test_hooks_are_removed_even_when_the_forward_raises(tiny_model):
    def boom(x, hook):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        tiny_model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[("blocks.*.hook_resid_pre", boom)])
    assert not any(h.active for h in tiny_model.hook_points().values())
    with pytest.raises(RuntimeError):
        with tiny_model.hooks(fwd_hooks=[("hook_embed", boom)]):
            tiny_model(torch.zeros(1, 3, dtype=torch.long))
    assert not any(h.active for h in tiny_model.hook_points().values())


def test_backward_hooks_give_the_gradient(tiny_model):
    tokens = torch.randint(0, 512, (2, 7))
    grads = {}
    keep = lambda g, hook: grads.__setitem__(hook.name, g.detach())
    with tiny_model.hooks(bwd_hooks=[("blocks.1.hook_resid_mid", keep)]):
        tiny_model(tokens).logsumexp(-1).sum().backward()  # the hooks() block spans the backward pass
    # autograd's own answer: make that activation a leaf and differentiate with respect to it
    leaf = {}
    def make_leaf(x, hook):
        leaf["x"] = x.detach().requires_grad_(True)
        return leaf["x"]
    out = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", make_leaf)])
    (ref,) = torch.autograd.grad(out.logsumexp(-1).sum(), [leaf["x"]])
    torch.testing.assert_close(grads["blocks.1.hook_resid_mid"], ref)


def test_backward_hook_can_replace_the_gradient(tiny_model):
    tokens = torch.randint(0, 512, (1, 4))
    with tiny_model.hooks(bwd_hooks=[("hook_embed", lambda g, hook: torch.zeros_like(g))]):
        tiny_model(tokens).sum().backward()
    assert tiny_model.embed.weight.grad is not None  # still flows through the unembedding
    tiny_model.zero_grad()
    with tiny_model.hooks(bwd_hooks=[("blocks.*.hook_resid_post", lambda g, hook: torch.zeros_like(g))]):
        tiny_model(tokens).sum().backward()
    assert tiny_model.blocks[0].mlp.W_in.weight.grad.abs().max() == 0  # cut off above it


def test_hooks_context_removes_only_its_own(tiny_model):
    mine = lambda x, hook: None
    tiny_model.hook_dict["hook_embed"].fwd.append(mine)
    with tiny_model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: None)]):
        assert len(tiny_model.hook_dict["hook_embed"].fwd) == 2
    assert tiny_model.hook_dict["hook_embed"].fwd == [mine]
    tiny_model.hook_dict["hook_embed"].fwd.clear()

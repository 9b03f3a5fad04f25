"""Ablation: zero, mean and resample, checked against hand-made references."""

import pytest
import torch

from guppy.model.ablate import ablate, ablation_hooks, each_head_ablated


def test_zero_ablating_a_head_equals_zeroing_its_W_O_slice(tiny_model):
    tokens = torch.randint(0, 512, (3, 10))
    with ablate(tiny_model, heads=[(1, 2)]):
        ablated = tiny_model(tokens)
    with torch.no_grad():
        w = tiny_model.blocks[1].attn.out.weight
        saved = w.clone()
        w[:, 2 * 8:3 * 8] = 0  # W_O[2] in the fused (D, H*E) layout
        by_hand = tiny_model(tokens)
        w.copy_(saved)
    torch.testing.assert_close(ablated, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ablated, tiny_model(tokens))  # and the hooks are gone after the block


def test_mean_ablation_uses_the_reference_mean(tiny_model):
    tokens, reference = torch.randint(0, 512, (2, 6)), torch.randint(0, 512, (5, 6))
    _, ref_cache = tiny_model.run_with_cache(reference, names="blocks.0.hook_mlp_out")
    mean = ref_cache["blocks.0.hook_mlp_out"].mean((0, 1))
    _, cache = tiny_model.run_with_cache(tokens, names="blocks.0.hook_mlp_out",
                                         fwd_hooks=ablation_hooks(tiny_model, mlps=[0], method="mean", reference=reference))
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], mean.expand(2, 6, -1))


def test_resample_ablation_takes_reference_activations(tiny_model):
    tokens, reference = torch.randint(0, 512, (4, 6)), torch.randint(0, 512, (2, 6))
    _, ref_cache = tiny_model.run_with_cache(reference, names="blocks.1.attn.hook_z")
    hooks = ablation_hooks(tiny_model, heads=[(1, 0)], method="resample", reference=reference)
    _, cache = tiny_model.run_with_cache(tokens, names="blocks.1.attn.hook_z", fwd_hooks=hooks)
    _, clean = tiny_model.run_with_cache(tokens, names="blocks.1.attn.hook_z")
    z, zr, zc = cache["blocks.1.attn.hook_z"], ref_cache["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"]
    torch.testing.assert_close(z[:, :, 0], zr[torch.tensor([0, 1, 0, 1]), :, 0])
    torch.testing.assert_close(z[:, :, 1:], zc[:, :, 1:])


def test_layer_ablation_removes_attention_and_mlp(tiny_model):
    tokens = torch.randint(0, 512, (1, 5))
    with ablate(tiny_model, layers=[0]):
        _, cache = tiny_model.run_with_cache(tokens, names=["blocks.0.*"])
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_pre"]
                               + tiny_model.blocks[0].attn.b_O)


def test_each_head_in_one_batched_forward_matches_one_at_a_time(tiny_model):
    tokens = torch.randint(0, 512, (2, 7))
    batched = each_head_ablated(tiny_model, tokens)
    assert batched.shape == (8, 2, 7, 512)
    for i, (l, h) in enumerate([(l, h) for l in range(2) for h in range(4)]):
        with ablate(tiny_model, heads=[(l, h)]):
            torch.testing.assert_close(batched[i], tiny_model(tokens), atol=1e-5, rtol=1e-5)


def test_bad_requests_are_refused(tiny_model):
    with pytest.raises(ValueError, match="no head L5H0"):
        ablation_hooks(tiny_model, heads=[(5, 0)])
    with pytest.raises(ValueError, match="mean ablation needs a reference"):
        ablation_hooks(tiny_model, heads=[(0, 0)], method="mean")
    with pytest.raises(ValueError, match="expected one of zero, mean, resample"):
        ablation_hooks(tiny_model, heads=[(0, 0)], method="noise")

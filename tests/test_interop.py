"""TransformerLens is the oracle: same weights, same logits, same activations at every hook."""

import pytest
import torch

pytest.importorskip("transformer_lens")

from guppy.interop import to_transformer_lens  # noqa: E402


def test_transformer_lens_agrees_on_logits_and_every_shared_hook(tiny_model):
    tl = to_transformer_lens(tiny_model)
    tl.set_use_attn_result(True)  # so TL computes hook_result too
    tokens = torch.randint(0, 512, (3, 17))
    logits, ours = tiny_model.run_with_cache(tokens)
    tl_logits, theirs = tl.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, atol=1e-5, rtol=1e-5)
    shared = [n for n in ours if n in theirs]
    assert set(ours) - set(shared) == {"hook_logits"}  # TL has no hook on its logits
    for name in shared:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def test_cache_views_agree_with_transformer_lens(tiny_model):
    tl = to_transformer_lens(tiny_model)
    tokens = torch.randint(0, 512, (2, 11))
    _, ours = tiny_model.run_with_cache(tokens)
    _, theirs = tl.run_with_cache(tokens)
    for layer in (0, 1, 2, None):
        a, labels = ours.accumulated_resid(layer, incl_mid=True, return_labels=True)
        b, tl_labels = theirs.accumulated_resid(layer, incl_mid=True, return_labels=True)
        assert len(labels) == len(tl_labels)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.accumulated_resid(apply_ln=True), theirs.accumulated_resid(apply_ln=True),
                               atol=1e-5, rtol=1e-5)  # the logit lens
    a, labels = ours.stack_head_results()
    b, tl_labels = theirs.stack_head_results(layer=-1, return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_agreement_holds_for_a_trained_model(tiny_run):
    from guppy.runs import load_for_inference

    model, tok, _ = load_for_inference(tiny_run)
    tl = to_transformer_lens(model)
    tokens = torch.tensor([tok.encode_prompt("hello pebble")])
    torch.testing.assert_close(model(tokens), tl(tokens), atol=1e-4, rtol=1e-4)

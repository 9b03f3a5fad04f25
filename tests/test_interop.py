"""TransformerLens is the oracle: same weights, same logits, same activations at every hook."""

import pytest
import torch

pytest.importorskip("transformer_lens")

from guppy.interop import to_transformer_lens  # noqa: E402


def test_transformer_lens_agrees_on_logits_and_every_shared_hook(tiny_model):
    tl = to_transformer_lens(tiny_model)
    tokens = torch.randint(0, 512, (3, 17))
    logits, ours = tiny_model.run_with_cache(tokens)
    tl_logits, theirs = tl.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, atol=1e-5, rtol=1e-5)
    shared = [n for n in ours if n in theirs]
    assert len(shared) >= 36  # everything but hook_result (TL computes it only with use_attn_result) and logits
    for name in shared:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def test_agreement_holds_for_a_trained_model(tiny_run):
    from guppy.runs import load_for_inference

    model, tok, _ = load_for_inference(tiny_run)
    tl = to_transformer_lens(model)
    tokens = torch.tensor([tok.encode_prompt("hello pebble")])
    torch.testing.assert_close(model(tokens), tl(tokens), atol=1e-4, rtol=1e-4)

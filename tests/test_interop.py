"""TransformerLens 3.x is the oracle: same weights, same logits, same activations at every hook of its
HookedTransformer. The main environment holds 3.x (beside SAELens, which needs it); TransformerLens 4's
TransformerBridge is checked in tests/test_transformer_lens4.py, in .venv-tl4."""

import pytest
import torch

pytest.importorskip("transformer_lens")

from conftest import assert_resid_views_agree  # noqa: E402

from guppy.bridges.transformer_lens import tl_version, to_transformer_lens  # noqa: E402
from guppy.model.transformer import GuppyLM  # noqa: E402

if not tl_version().startswith("3."):
    pytest.skip(f"TransformerLens {tl_version()} is installed: this file checks 3.x's HookedTransformer "
                "(tests/test_transformer_lens4.py checks 4.x)", allow_module_level=True)


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
    assert_resid_views_agree(ours, theirs)
    a, labels = ours.stack_head_results()
    b, tl_labels = theirs.stack_head_results(layer=-1, return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_agreement_holds_for_a_trained_model(tiny_run):
    from transformer_lens import HookedTransformer

    from guppy.run.reader import load_for_inference

    model, tok, _ = load_for_inference(tiny_run)
    tl = to_transformer_lens(tiny_run)  # a run folder: its latest checkpoint
    assert isinstance(tl, HookedTransformer)
    tokens = torch.tensor([tok.encode_prompt("hello pebble")])
    torch.testing.assert_close(model(tokens), tl(tokens), atol=1e-4, rtol=1e-4)


# ---- variants: each one TransformerLens has (rotary, GELU), and the fixed tables it can hold ----

# init_std 0.2: sharp attention, so a wrong position convention moves the logits by whole units
@pytest.mark.parametrize("variant", [dict(positional="rotary"), dict(act="gelu"), dict(positional="sinusoidal"),
                                     dict(positional="sinusoidal", embed_scale=32 ** 0.5),
                                     dict(positional="none"), dict(positional="rotary", act="gelu")],
                         ids=lambda v: "-".join(map(str, v.values())))
def test_transformer_lens_agrees_for_each_variant(tiny_cfg, variant):
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(init_std=0.2, **variant)).eval()
    tl = to_transformer_lens(model)
    tl.set_use_attn_result(True)
    tokens = torch.randint(0, 512, (3, 17))
    logits, ours = model.run_with_cache(tokens)
    tl_logits, theirs = tl.run_with_cache(tokens)
    torch.testing.assert_close(logits, tl_logits, atol=1e-4, rtol=1e-4)
    shared = [n for n in ours if n in theirs]
    assert set(ours) - set(shared) == {"hook_logits"}
    for name in shared:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-4, msg=name)
    if model.cfg.positional == "rotary":
        assert {"blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"} <= set(shared)
        # the convention matters: GPT-J's adjacent pairs instead of GPT-NeoX's halves is far off
        tl.cfg.rotary_adjacent_pairs = True
        for block in tl.blocks:
            sin, cos = block.attn.calculate_sin_cos_rotary(tiny_cfg.d_head, tiny_cfg.n_ctx)
            block.attn.rotary_sin.copy_(sin)
            block.attn.rotary_cos.copy_(cos)
        assert (tl(tokens) - logits).abs().max() > 0.1


def test_gelu_is_the_exact_form_not_the_tanh_approximation(tiny_cfg):
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(init_std=0.5, act="gelu")).eval()
    tl = to_transformer_lens(model)
    tokens = torch.randint(0, 512, (2, 9))
    torch.testing.assert_close(model(tokens), tl(tokens), atol=1e-4, rtol=1e-4)
    from transformer_lens.utilities.activation_functions import gelu_new

    for block in tl.blocks:  # TL's act_fn="gelu_new" (GPT-2's tanh form) would not match
        block.mlp.act_fn = gelu_new
    assert (tl(tokens) - model(tokens)).abs().max() > 1e-4


def test_post_ln_is_refused_in_one_line(tiny_cfg):
    with pytest.raises(ValueError, match="TransformerLens has no post-LN block") as e:
        to_transformer_lens(GuppyLM(tiny_cfg.replace(norm="post")))
    assert "\n" not in str(e.value)


def test_a_missing_or_old_transformer_lens_is_named_in_one_line(tiny_model, monkeypatch):
    from importlib.metadata import PackageNotFoundError

    import guppy.bridges.transformer_lens as bridges

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(bridges, "version", missing)
    with pytest.raises(ImportError, match=r"TransformerLens is not installed: pip install 'guppy\[interop\]'") as e:
        to_transformer_lens(tiny_model)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(bridges, "version", lambda name: "2.16.1")
    with pytest.raises(ImportError, match="TransformerLens 2.16.1 is installed; guppy converts to 3.x and 4.x"):
        to_transformer_lens(tiny_model)

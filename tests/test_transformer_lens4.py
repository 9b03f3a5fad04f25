"""TransformerLens 4's TransformerBridge is the oracle: same logits, same activations at every hook
both sides have, under its canonical names and its legacy aliases. Runs in .venv-tl4 (make test);
the main environment holds TransformerLens 3.x (tests/test_interop.py) and skips this file."""

import os

import pytest
import torch

from guppy.bridges.transformer_lens import bridge_hook_names, tl_version, to_transformer_lens
from guppy.model.transformer import GuppyLM

if os.environ.get("GUPPY_TL4_RUN") != "1":  # make test's .venv-tl4 run: no TransformerLens 4 is a failure there
    pytest.importorskip("transformer_lens")
    if int(tl_version().split(".")[0]) < 4:
        pytest.skip(f"TransformerLens {tl_version()} is installed: this file checks 4.x (make test runs it in "
                    ".venv-tl4)", allow_module_level=True)
assert int(tl_version().split(".")[0]) >= 4, f"TransformerLens {tl_version()} in the TransformerLens 4 run"

from conftest import assert_resid_views_agree  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

# a rotary bridge (GPT-NeoX) fires no hook_rot_q/k in TL 4.3: the scores after rotation are compared instead
NOT_FIRED = ("attn.hook_rot_q", "attn.hook_rot_k")


def assert_parity(model: GuppyLM, bridge, tokens: torch.Tensor, atol: float, unfired: tuple = ()) -> dict[str, str]:
    """Logits and every activation a bridge hook and a guppy hook both hold agree; every guppy hook but
    the `unfired` kinds is covered by some bridge name. Returns the pairs compared (bridge name -> ours)."""
    logits, ours = model.run_with_cache(tokens)
    tl_logits, theirs = bridge.run_with_cache(tokens)
    torch.testing.assert_close(tl_logits, logits, atol=atol, rtol=atol)
    pairs = {n: mine for n, mine in bridge_hook_names(bridge, model).items() if n in theirs}
    expected_missing = {n for n in ours if n.endswith(NOT_FIRED + unfired)}
    assert set(ours) - set(pairs.values()) == expected_missing
    for name, mine in pairs.items():
        a, b = ours[mine], theirs[name]
        if mine.endswith("hook_attn_scores"):  # ours masks with -inf, transformers with the dtype's minimum
            future = torch.isinf(a)
            assert (b[future] < -1e30).all(), name
            a, b = a[~future], b[~future]
        torch.testing.assert_close(b, a, atol=atol, rtol=atol, msg=f"{name} (ours: {mine})")
    return pairs


def test_to_transformer_lens_gives_a_bridge_that_agrees_at_every_shared_hook(tiny_model):
    bridge = to_transformer_lens(tiny_model)
    assert isinstance(bridge, TransformerBridge)
    tokens = torch.randint(0, 512, (3, 17))
    plain = assert_parity(tiny_model, bridge, tokens, atol=1e-5, unfired=("attn.hook_result",))
    assert plain["blocks.0.attn.o.hook_out"] == "blocks.0.hook_attn_out"  # fired only without the flag below
    bridge.set_use_attn_result(True)  # so the bridge computes hook_result too
    pairs = assert_parity(tiny_model, bridge, tokens, atol=1e-5)
    # canonical names and legacy aliases of one activation are both compared
    for canonical, legacy, mine in [("blocks.1.hook_in", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre"),
                                    ("blocks.0.attn.hook_out", "blocks.0.hook_attn_out", "blocks.0.hook_attn_out"),
                                    ("blocks.0.mlp.in.hook_out", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre"),
                                    ("unembed.hook_out", "hook_unembed", "hook_logits")]:
        assert pairs[canonical] == pairs[legacy] == mine


def test_cache_views_agree_with_the_bridge(tiny_model):
    bridge = to_transformer_lens(tiny_model)
    tokens = torch.randint(0, 512, (2, 11))
    _, ours = tiny_model.run_with_cache(tokens)
    _, theirs = bridge.run_with_cache(tokens)
    assert_resid_views_agree(ours, theirs)
    bridge.set_use_attn_result(True)
    _, theirs = bridge.run_with_cache(tokens)
    a, labels = ours.stack_head_results()
    b, tl_labels = theirs.stack_head_results(layer=-1, return_labels=True)
    assert labels == tl_labels
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# init_std 0.2: sharp attention, so a wrong position convention moves the logits by whole units
@pytest.mark.parametrize("variant", [dict(positional="rotary"), dict(act="gelu"), dict(positional="sinusoidal"),
                                     dict(positional="none"), dict(positional="rotary", act="gelu")],
                         ids=lambda v: "-".join(v.values()))
def test_the_bridge_agrees_for_each_variant(tiny_cfg, variant):
    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(init_std=0.2, **variant)).eval()
    bridge = to_transformer_lens(model)
    bridge.set_use_attn_result(True)
    tokens = torch.randint(0, 512, (3, 17))
    assert_parity(model, bridge, tokens, atol=1e-4)
    if model.cfg.positional == "rotary":  # the tables the bridge turns q and k by are ours
        _, theirs = bridge.run_with_cache(tokens)
        rotary = model.blocks[1].attn.rotary
        torch.testing.assert_close(theirs["blocks.1.attn.hook_cos"][0], rotary.cos[:17], atol=1e-6, rtol=0)
        torch.testing.assert_close(theirs["blocks.1.attn.hook_sin"][0], rotary.sin[:17], atol=1e-6, rtol=0)


def test_a_run_opens_with_its_tokenizer(tiny_run):
    from guppy.model.generate import generate
    from guppy.run.reader import load_for_inference, open_run

    model, tok, _ = load_for_inference(tiny_run)
    for source in (tiny_run, str(tiny_run), open_run(tiny_run)):
        bridge = to_transformer_lens(source)
        ids = tok.encode("hello pebble")
        assert bridge.to_tokens("hello pebble")[0].tolist() == ids  # no BOS prepended: the template opens chats
        prompt = tok.encode_prompt("hello pebble")
        torch.testing.assert_close(bridge(torch.tensor([prompt])), model(torch.tensor([prompt])), atol=1e-4, rtol=1e-4)
    out = bridge.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=tok.end_id,
                          verbose=False)
    want = generate(model, prompt, max_new_tokens=8, temperature=0.0, stop_token=tok.end_id)
    assert out[0, len(prompt):].tolist()[:len(want)] == want  # greedy, token for token


def test_post_ln_and_strangers_are_refused_in_one_line(tiny_cfg):
    with pytest.raises(ValueError, match="TransformerLens has no post-LN block") as e:
        to_transformer_lens(GuppyLM(tiny_cfg.replace(norm="post")))
    assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="expected a GuppyLM, a run folder or a Run, got int"):
        to_transformer_lens(3)


def test_the_docs_transformer_lens_snippet_runs(tiny_run):
    from docs_snippets import run_snippet

    from guppy.run.reader import load_for_inference

    names = run_snippet("guppylm.md", "# TransformerLens 4", {"runs/fish": tiny_run})
    assert isinstance(names["bridge"], TransformerBridge)
    model, tok, _ = load_for_inference(tiny_run)
    _, ours = model.run_with_cache(torch.tensor([tok.encode("hi guppy")]))
    torch.testing.assert_close(names["pattern"], ours["blocks.0.attn.hook_pattern"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(names["resid"], ours["blocks.1.hook_resid_pre"], atol=1e-5, rtol=1e-5)

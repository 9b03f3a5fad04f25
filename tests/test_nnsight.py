"""nnsight on the fish: a GuppyLM traced as it is (nnsight.NNsight), and the transformers export
through nnsight's TransformersModel; a head's output is saved and an intervention on it equals our
own ablation (guppy.model.ablate). Runs in .venv-tl4 (make test); skipped where nnsight is missing."""

import importlib
import os

import pytest
import torch

from guppy.model.ablate import ablate
from guppy.model.transformer import GuppyLM

# make test's .venv-tl4 run (GUPPY_TL4_RUN=1): no nnsight is a failure there, elsewhere a skip
nnsight = importlib.import_module("nnsight") if os.environ.get("GUPPY_TL4_RUN") == "1" else pytest.importorskip("nnsight")


def head_slice(model, head: int) -> slice:
    """Head `head`'s columns of z flattened (B, T, H*E): the input of the out projection."""
    E = model.cfg.d_head
    return slice(head * E, (head + 1) * E)


@pytest.fixture
def sharp_model(tiny_cfg) -> GuppyLM:
    torch.manual_seed(0)
    return GuppyLM(tiny_cfg.replace(init_std=0.2)).eval()  # sharp attention: an ablated head moves the logits


def test_nnsight_traces_a_guppy_model_and_saves_a_heads_output(sharp_model):
    model, L, h = sharp_model, 1, 2
    tokens = torch.randint(0, 512, (3, 17))
    traced = nnsight.NNsight(model)
    with torch.no_grad(), traced.trace(tokens):
        z = traced.blocks[L].attn.out.input.save()  # (B, T, H*E)
        logits = traced.output.save()
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(z[:, :, head_slice(model, h)], cache[f"blocks.{L}.attn.hook_z"][:, :, h],
                               atol=1e-5, rtol=1e-5)
    # the head's output into the residual stream: its z through its rows of W_O, our hook_result
    out = z[:, :, head_slice(model, h)] @ model.blocks[L].attn.W_O[h]
    torch.testing.assert_close(out, cache[f"blocks.{L}.attn.hook_result"][:, :, h], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_an_nnsight_intervention_equals_our_ablation(sharp_model, method):
    model, L, h = sharp_model, 1, 2
    tokens, reference = torch.randint(0, 512, (3, 17)), torch.randint(0, 512, (4, 17))
    traced = nnsight.NNsight(model)
    with torch.no_grad():
        with traced.trace(reference):
            ref_z = traced.blocks[L].attn.out.input.save()
        value = 0.0 if method == "zero" else ref_z[:, :, head_slice(model, h)].mean((0, 1))  # (E,)
        with traced.trace(tokens):
            traced.blocks[L].attn.out.input[:, :, head_slice(model, h)] = value
            patched = traced.output.save()
        with ablate(model, heads=[(L, h)], method=method, reference=reference):
            want = model(tokens)
    torch.testing.assert_close(patched, want, atol=1e-5, rtol=1e-5)
    assert (patched - model(tokens)).abs().max() > 0.1  # the intervention did something


def test_the_transformers_export_in_nnsight(tiny_run, tmp_path):
    from nnsight.modeling.transformers import TransformersModel

    from guppy.bridges.export import export_run
    from guppy.run.reader import load_for_inference

    export_run(tiny_run, "hf", tmp_path / "hf")
    model, tok, _ = load_for_inference(tiny_run)
    lm = TransformersModel(str(tmp_path / "hf"), task="text-generation", device_map="cpu", dispatch=True)
    ids = torch.tensor([tok.encode_prompt("hello pebble")])
    L, h = 1, 2
    with torch.no_grad():
        with lm.trace(ids):
            z = lm.transformer.h[L].attn.c_proj.input.save()
            logits = lm.lm_head.output.save()
        _, cache = model.run_with_cache(ids)
        torch.testing.assert_close(z[:, :, head_slice(model, h)], cache[f"blocks.{L}.attn.hook_z"][:, :, h],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, model(ids), atol=1e-5, rtol=1e-5)
        with lm.trace(ids):
            lm.transformer.h[L].attn.c_proj.input[:, :, head_slice(model, h)] = 0
            patched = lm.lm_head.output.save()
        with ablate(model, heads=[(L, h)]):
            torch.testing.assert_close(patched, model(ids), atol=1e-5, rtol=1e-5)
        # a chat goes in as messages, through the export's chat template
        with lm.trace([{"role": "user", "content": "hello pebble"}]):
            chat_logits = lm.lm_head.output.save()
        torch.testing.assert_close(chat_logits, logits, atol=1e-5, rtol=1e-5)


def test_the_docs_nnsight_snippet_runs(tiny_run, tmp_path):
    from docs_snippets import run_snippet

    from guppy.bridges.export import export_run
    from guppy.run.reader import load_for_inference

    export_run(tiny_run, "hf", tmp_path / "hf")
    names = run_snippet("guppylm.md", "# nnsight", {"runs/fish": tiny_run, "out/fish-hf": tmp_path / "hf"})
    model, tok, _ = load_for_inference(tiny_run)
    tokens = torch.tensor([tok.encode_prompt("hi guppy")])
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(names["head"], cache["blocks.1.attn.hook_z"][:, :, 2], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), ablate(model, heads=[(1, 2)]):
        torch.testing.assert_close(names["ablated"], model(tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(names["mlp"], cache["blocks.0.mlp.hook_post"], atol=1e-5, rtol=1e-5)

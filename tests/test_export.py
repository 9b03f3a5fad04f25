"""A run out to other tools: GuppyLM's hub layout (round trip through guppy-import, and GuppyLM's
forward), ONNX checked with onnxruntime, transformers' GPT-2 with equal logits and the chat prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from guppylm_files import MINI_DATA, guppylm_forward, series_run, tokens  # noqa: F401

from guppy.bridges.guppylm_format import GuppyLMConfig, refuse_unexpressible
from guppy.bridges.guppylm_import import import_guppylm
from guppy.config import ModelConfig
from guppy.run.reader import load_for_inference


def test_guppylm_export_round_trips_and_matches_guppylms_forward(tiny_run, tmp_path):
    from guppy.bridges.export import export_run

    out = tmp_path / "hub"
    export_run(tiny_run, "guppylm", out)
    assert {f.name for f in out.iterdir()} == {"pytorch_model.bin", "model.safetensors", "config.json", "tokenizer.json"}
    sd = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert sd["lm_head.weight"].data_ptr() == sd["tok_emb.weight"].data_ptr()  # tied, as GuppyLM saves it
    hub = json.loads((out / "config.json").read_text())
    assert hub["hidden_size"] == 32 and hub["num_attention_heads"] == 4 and hub["intermediate_size"] == 64
    cfg = GuppyLMConfig.from_dict(hub, "hub").to_dict()
    original, tok, _ = load_for_inference(tiny_run)
    x = tokens(2, 30, original.cfg.d_vocab)
    torch.testing.assert_close(guppylm_forward(sd, cfg, x), original(x), atol=1e-5, rtol=1e-5)
    back = import_guppylm(out, tmp_path / "runs" / "back", data=MINI_DATA)
    again, tok2, _ = load_for_inference(back)
    assert torch.equal(again(x), original(x))  # identical logits after export -> import
    assert tok2.encode_prompt("Hi Guppy") == tok.encode_prompt("Hi Guppy")


def test_export_refuses_what_the_target_cannot_express(tiny_run, tmp_path, capsys):
    from dataclasses import dataclass

    from guppy.bridges.export import main as export_main

    @dataclass(frozen=True)
    class Rotary(ModelConfig):
        positional: str = "learned"

    with pytest.raises(ValueError, match="GPT-2 cannot express positional='rotary'"):
        refuse_unexpressible(Rotary(positional="rotary"), "GPT-2")
    refuse_unexpressible(Rotary(), "GPT-2")
    with pytest.raises(ValueError, match="ln_eps"):
        GuppyLMConfig.of_model(ModelConfig(ln_eps=1e-6), 0, 1, 2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert export_main([str(tiny_run), "--to", "hf", str(tmp_path / "full")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("guppy-export: error:") and "already exists" in err and err.count("\n") == 1


def test_onnx_export_matches_onnxruntime(tiny_run, tmp_path):
    import onnxruntime

    from guppy.bridges.export import export_run

    facts = export_run(tiny_run, "onnx", tmp_path / "onnx")
    assert facts["onnx_max_diff"] <= 1e-4 and facts["files"] == ["model.onnx"]  # one file, for a web page
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model, _, _ = load_for_inference(tiny_run)
    for B, T in ((1, 1), (4, 9), (2, model.cfg.n_ctx)):  # dynamic batch and length
        x = tokens(B, T, model.cfg.d_vocab, seed=B)
        got = session.run(None, {"input_ids": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["guppy", "imported"])
def test_transformers_export_gives_equal_logits_and_the_chat_prompt(which, tiny_run, series_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guppy.bridges.export import export_run
    from guppy.model.generate import generate

    run = tiny_run if which == "guppy" else series_run[0]  # ours, and GuppyLM's through import
    export_run(run, "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    model, tok, _ = load_for_inference(run)
    x = tokens(3, 25, model.cfg.d_vocab)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=1e-5)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    prompt = "Hi Guppy" if which == "imported" else "hi guppy"
    ids = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == tok.encode_prompt(prompt)
    out = hf.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_id)
    want = generate(model, list(ids), max_new_tokens=5, temperature=0.0, stop_token=tok.end_id)
    assert out[0, len(ids):].tolist()[:len(want)] == want


HISTORY = [("hi guppy", "hello. the water is nice."), ("do you like cats?", "cats are big.")]


@pytest.mark.parametrize("which", ["guppy", "imported"])
def test_the_chat_template_is_multi_turn_as_in_training(which, tiny_run, series_run, tmp_path):
    from transformers import AutoTokenizer

    from guppy.bridges.export import export_run

    run = tiny_run if which == "guppy" else series_run[0]
    export_run(run, "hf", tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    _, tok, _ = load_for_inference(run)
    messages = [m for user, reply in HISTORY for m in ({"role": "user", "content": user},
                                                       {"role": "assistant", "content": reply})]
    chat = messages + [{"role": "user", "content": "what is the meaning of life?"}]
    ids = hf_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == tok.encode_prompt("what is the meaning of life?", history=HISTORY)
    whole = chat + [{"role": "assistant", "content": "food. always food."}]  # a whole chat, as it is trained
    ids = hf_tok.apply_chat_template(whole, tokenize=True, return_dict=True)["input_ids"]
    (want,), _ = tok.encode_chats(["what is the meaning of life?"], ["food. always food."], [HISTORY])
    assert list(ids) == want
    for bad in ([{"role": "system", "content": "be a cat"}] + chat, chat[:1] + chat[:1]):
        with pytest.raises(Exception, match="alternate user and assistant turns"):
            hf_tok.apply_chat_template(bad, tokenize=False)


def test_transformers_chats_as_guppy_chat_does(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guppy.bridges.export import export_run
    from guppy.chat import main as chat_main
    from guppy.model.generate import generate

    export_run(tiny_run, "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    model, tok, _ = load_for_inference(tiny_run)
    max_new = model.cfg.n_ctx // 2  # guppy-chat's longest reply at this n_ctx (64 tokens, at most half of it)
    for prompt in ("hi guppy", "do you like cats?"):
        assert chat_main(["--run", str(tiny_run), "--temperature", "0", "--max-tokens", str(max_new), "-p", prompt]) == 0
        said = capsys.readouterr().out.splitlines()[1].split(": ", 1)[1]
        assert said  # a reply, token for token below
        ids = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        out = hf.generate(**ids, max_new_tokens=max_new, do_sample=False)
        assert hf_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == said
    # a second turn: the same greedy tokens as our generate after the same first turn
    (user, reply), = HISTORY[:1]
    ids = hf_tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": reply},
                                      {"role": "user", "content": "is the water cold?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    max_new = model.cfg.n_ctx - ids["input_ids"].shape[1]  # the rest of the context
    assert max_new >= 8
    out = hf.generate(**ids, max_new_tokens=max_new, do_sample=False)
    want = generate(model, ids["input_ids"][0].tolist(), max_new_tokens=max_new, temperature=0.0, stop_token=tok.end_id)
    assert out[0, ids["input_ids"].shape[1]:].tolist()[:len(want)] == want


# init_std 0.2: sharp attention, so a wrong position convention or activation moves the logits by whole units
@pytest.mark.parametrize("variant", [dict(positional="rotary"), dict(act="gelu"), dict(positional="sinusoidal"),
                                     dict(positional="none"), dict(positional="rotary", act="gelu")],
                         ids=lambda v: "-".join(v.values()))
def test_each_pre_ln_variant_exports_to_transformers(variant, tiny_cfg, tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from guppy.bridges.export import export_hf
    from guppy.model.transformer import GuppyLM

    torch.manual_seed(0)
    model = GuppyLM(tiny_cfg.replace(init_std=0.2, **variant)).eval()
    _, tok, _ = load_for_inference(tiny_run)
    export_hf(model, tok, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(hf).__name__ == ("GPTNeoXForCausalLM" if model.cfg.positional == "rotary" else "GPT2LMHeadModel")
    x = tokens(3, 25, model.cfg.d_vocab)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_post_ln_is_refused_before_anything_is_written(tiny_cfg, tmp_path):
    from guppy.bridges.export import refuse_for_transformers

    with pytest.raises(ValueError, match="only norm='pre' models export, this one has norm='post'") as e:
        refuse_for_transformers(tiny_cfg.replace(norm="post"))
    assert "\n" not in str(e.value)


def test_the_docs_transformers_snippet_runs(tiny_run, tmp_path, capsys):
    from docs_snippets import run_snippet

    from guppy.bridges.export import main as export_main
    from guppy.model.generate import generate

    assert export_main([str(tiny_run), "--to", "hf", str(tmp_path / "hf")]) == 0  # the docs' guppy-export line
    capsys.readouterr()
    names = run_snippet("guppylm.md", "# transformers", {"out/fish-hf": tmp_path / "hf"})
    model, tok, _ = load_for_inference(tiny_run)
    ids = tok.encode_prompt("are you hungry?", history=[("hi guppy", "hello. the water is nice.")])
    assert names["ids"]["input_ids"][0].tolist() == ids
    want = generate(model, ids, max_new_tokens=20, temperature=0.0, stop_token=tok.end_id)
    assert capsys.readouterr().out.strip() == tok.decode(want).strip()

"""`guppy-export`: a run's weights for other tools.

    guppy-export runs/demo --to guppylm out/fish-guppylm   # GuppyLM's hub layout: its own code loads it
    guppy-export runs/demo --to onnx out/fish-onnx         # logits for a token batch, for onnxruntime (web)
    guppy-export runs/demo --to hf out/fish-hf             # transformers: GPT-2 (GPT-NeoX for rotary) + fast tokenizer

guppylm: `pytorch_model.bin` (a state dict under GuppyLM's keys, lm_head tied), `model.safetensors`
(the same tensors), `config.json` (Hugging Face keys) and `tokenizer.json`.
onnx: `model.onnx` (input_ids (batch, seq) int64 -> logits (batch, seq, d_vocab), batch and seq
dynamic up to n_ctx), checked against our forward with onnxruntime before it is kept.
hf: our model *is* GPT-2 with a ReLU (or GELU) MLP of width d_mlp, tied embeddings and no dropout:
the fused qkv rows are GPT-2's c_attn order and its Conv1D weights are our Linear weights transposed;
a fixed position table (sinusoidal) goes into GPT-2's wpe, no table (none) as zeros. A rotary model is
GPT-NeoX with a sequential residual and rotary over all of d_head. The tokenizer carries a multi-turn
chat template. TransformerLens 4 bridges this same model (guppy.bridges.transformer_lens).

The folder appears only when complete (written beside it, then renamed); an existing one is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import einops
import torch

from guppy.bridges.guppylm_format import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    STATE_DICT_FILE,
    TOKENIZER_FILE,
    GuppyLMConfig,
    from_guppy,
)
from guppy.model.positional import ROTARY_BASE

TARGETS = ("guppylm", "onnx", "hf")
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4  # largest |logit difference| onnxruntime may show against our forward


def export_guppylm(model, tok, out: Path) -> None:
    from safetensors.torch import save_file

    cfg = GuppyLMConfig.of_model(model.cfg, tok.pad_id, tok.start_id, tok.end_id)
    state = from_guppy(model.state_dict(), model.cfg.n_layers)
    torch.save(state, out / STATE_DICT_FILE)  # tok_emb and lm_head share one storage, as in GuppyLM's own save
    save_file({k: v.clone() for k, v in state.items()}, str(out / SAFETENSORS_FILE))  # safetensors refuses shared storage
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_hub(), indent=2))
    tok.tok.save(str(out / TOKENIZER_FILE))  # specials are parsed from text again there: GuppyLM's code relies on it


class _Logits(torch.nn.Module):
    """The plain forward, tokens -> logits, as the one graph ONNX needs (no KV cache, no hooks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def export_onnx(model, out: Path) -> float:
    """model.onnx with dynamic batch and length; returns the largest |logit difference| that
    onnxruntime shows on a batch of another shape than the one traced."""
    import contextlib
    import io
    import logging
    import warnings

    import numpy as np
    import onnxruntime

    cfg = model.cfg
    wrapper = _Logits(model).eval()
    T = min(16, cfg.n_ctx)
    example = torch.randint(0, cfg.d_vocab, (2, T))
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1, max=cfg.n_ctx)
    quiet = logging.getLogger("torch.onnx")  # its notes on packages we do not use (torchvision) are noise here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # and its progress lines
            warnings.simplefilter("ignore")
            # one file (external_data=False): a web page fetches one URL; fine below ONNX's 2 GB limit
            torch.onnx.export(wrapper, (example,), str(out / ONNX_FILE), input_names=["input_ids"],
                              output_names=["logits"], dynamic_shapes=({0: batch, 1: seq},), dynamo=True,
                              external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    check = torch.randint(0, cfg.d_vocab, (3, max(1, min(cfg.n_ctx, T + 5))))
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": check.numpy()})[0]
    with torch.no_grad():
        want = model(check).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX export disagrees with the model: max |logit difference| {diff:.2e} > {ONNX_TOLERANCE}")
    return diff


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names; Conv1D holds (in, out), the transpose of a Linear's weight.
    A fixed table (sinusoidal) goes into wpe as it is, no table (none) as zeros."""
    W_pos = model.W_pos if model.W_pos is not None else torch.zeros(model.cfg.n_ctx, model.cfg.d_model)
    sd = {"transformer.wte.weight": model.embed.weight, "transformer.wpe.weight": W_pos,
          "transformer.ln_f.weight": model.ln_final.w, "transformer.ln_f.bias": model.ln_final.b}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        sd |= {p + "ln_1.weight": b.ln1.w, p + "ln_1.bias": b.ln1.b, p + "ln_2.weight": b.ln2.w, p + "ln_2.bias": b.ln2.b,
               p + "attn.c_attn.weight": b.attn.qkv.weight.T, p + "attn.c_attn.bias": b.attn.qkv.bias,  # (D, 3 H E)
               p + "attn.c_proj.weight": b.attn.out.weight.T, p + "attn.c_proj.bias": b.attn.out.bias,
               p + "mlp.c_fc.weight": b.mlp.W_in.weight.T, p + "mlp.c_fc.bias": b.mlp.W_in.bias,  # (D, M)
               p + "mlp.c_proj.weight": b.mlp.W_out.weight.T, p + "mlp.c_proj.bias": b.mlp.W_out.bias}
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}


def gpt_neox_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under GPT-NeoX's names (nn.Linear, as ours); its fused qkv rows are per head,
    (H, 3, E), where ours are (3, H, E)."""
    cfg = model.cfg
    H, E = cfg.n_heads, cfg.d_head
    sd = {"gpt_neox.embed_in.weight": model.embed.weight, "gpt_neox.final_layer_norm.weight": model.ln_final.w,
          "gpt_neox.final_layer_norm.bias": model.ln_final.b}
    for i, b in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        qkv_w = einops.rearrange(b.attn.qkv.weight, "(three h e) d -> (h three e) d", three=3, h=H, e=E)  # (H*3*E, D)
        qkv_b = einops.rearrange(b.attn.qkv.bias, "(three h e) -> (h three e)", three=3, h=H, e=E)
        sd |= {p + "input_layernorm.weight": b.ln1.w, p + "input_layernorm.bias": b.ln1.b,
               p + "post_attention_layernorm.weight": b.ln2.w, p + "post_attention_layernorm.bias": b.ln2.b,
               p + "attention.query_key_value.weight": qkv_w, p + "attention.query_key_value.bias": qkv_b,
               p + "attention.dense.weight": b.attn.out.weight, p + "attention.dense.bias": b.attn.out.bias,
               p + "mlp.dense_h_to_4h.weight": b.mlp.W_in.weight, p + "mlp.dense_h_to_4h.bias": b.mlp.W_in.bias,
               p + "mlp.dense_4h_to_h.weight": b.mlp.W_out.weight, p + "mlp.dense_4h_to_h.bias": b.mlp.W_out.bias}
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}


def refuse_for_transformers(cfg) -> None:
    """One line when transformers has no model of this variant (GPT-2 and GPT-NeoX are pre-LN)."""
    if cfg.norm != "pre":
        raise ValueError(f"transformers has no GPT-2 or GPT-NeoX block with LayerNorm after each residual add; "
                         f"only norm='pre' models export, this one has norm={cfg.norm!r}")


def transformers_model(model, tok=None):
    """The transformers model our weights are, eval mode on the CPU: GPT2LMHeadModel (a ReLU or
    GELU MLP of width d_mlp, tied embeddings, no dropout; a position table in wpe), or for rotary
    positions GPTNeoXForCausalLM with a sequential residual and rotary over all of d_head, base
    10000 (GPT-NeoX's half split, as ours). `tok` (a ChatTokenizer) sets the special token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = model.cfg
    refuse_for_transformers(cfg)
    ids = {} if tok is None else dict(bos_token_id=tok.start_id, eos_token_id=tok.end_id, pad_token_id=tok.pad_id)
    if cfg.positional == "rotary":
        # rotary_pct / rotary_emb_base: GPT-NeoX's own names, read by transformers 4.x and 5.x alike
        hf = GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=cfg.d_vocab, max_position_embeddings=cfg.n_ctx, hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_mlp,
            hidden_act=cfg.act, layer_norm_eps=cfg.ln_eps, use_parallel_residual=False, rotary_pct=1.0,
            rotary_emb_base=ROTARY_BASE, attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=True, **ids))
        state = gpt_neox_state_dict(model)
    else:
        hf = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.act, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=cfg.ln_eps, tie_word_embeddings=True, **ids))
        state = gpt2_state_dict(model)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise RuntimeError(f"{type(hf).__name__} layout changed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf.eval()


def chat_template(fmt) -> str:
    """The run's chat format as a Jinja chat template, multi-turn: user and assistant turns
    alternate from a user turn; a user turn is wrapped as in training (the template's end is the
    assistant's header, so a chat ending on a user turn is ready for generation, with or without
    add_generation_prompt), an assistant turn is its text and the end token, and the turn
    separator stands between a reply and the next turn. Other roles are refused."""
    before, after = fmt.prompt.split("{prompt}")

    def raw(text: str) -> str:
        return "{% raw %}" + text + "{% endraw %}" if text else ""

    refuse = "{{ raise_exception('guppy chats alternate user and assistant turns, from a user turn') }}"
    return ("{% for message in messages %}"
            "{% if message['role'] != ['user', 'assistant'][loop.index0 % 2] %}" + refuse + "{% endif %}"
            "{% if message['role'] == 'user' %}" + raw(before) + "{{ message['content'] }}" + raw(after) +
            "{% else %}{{ message['content'] }}" + raw(fmt.end) +
            "{% if not loop.last %}" + raw(fmt.turn_sep) + "{% endif %}{% endif %}{% endfor %}")


def transformers_tokenizer(tok, **settings):
    """A ChatTokenizer as transformers' fast tokenizer, with the chat template above; `settings` go
    to PreTrainedTokenizerFast as they are."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fmt = tok.format
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.tok.to_str()), bos_token=fmt.start,
                                   eos_token=fmt.end, pad_token=fmt.pad, **settings)
    fast.chat_template = chat_template(fmt)
    return fast


def export_hf(model, tok, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one folder of one shard: a bar per file is noise
    transformers_model(model, tok).save_pretrained(str(out))
    transformers_tokenizer(tok).save_pretrained(str(out))


def _need(target: str, module: str):
    """Import an optional package, or one line saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"--to {target} needs {module.split('.')[0]}: pip install 'guppy[export]' ({e})") from None


def export_run(run_dir: str | Path, target: str, out: str | Path, checkpoint: str | int = "latest") -> dict:
    """Write `out` for `target` from a run's checkpoint; returns facts for the report."""
    from guppy.run.reader import load_for_inference

    out = Path(out)
    if target not in TARGETS:
        raise ValueError(f"--to: {target!r} is not one of {', '.join(TARGETS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists; pick another folder")
    for module in {"onnx": ("onnxruntime", "onnxscript"), "hf": ("transformers",)}.get(target, ()):
        _need(target, module)
    model, tok, path = load_for_inference(run_dir, checkpoint)
    if target == "hf":
        refuse_for_transformers(model.cfg)
    elif target == "guppylm":
        GuppyLMConfig.of_model(model.cfg, tok.pad_id, tok.start_id, tok.end_id)  # refuse before writing anything
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    facts = {"checkpoint": str(path)}
    try:
        if target == "guppylm":
            export_guppylm(model, tok, tmp)
        elif target == "onnx":
            facts["onnx_max_diff"] = export_onnx(model, tmp)
        else:
            export_hf(model, tok, tmp)
        if out.exists():
            out.rmdir()  # empty: checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    facts["files"] = sorted(f.name for f in out.iterdir())
    return facts


def main(argv: list[str] | None = None) -> int:
    from guppy.cli import ArgumentParser, run_main

    p = ArgumentParser(prog="guppy-export", description="Export a run's weights: GuppyLM's hub layout, ONNX, or a "
                                                        "Hugging Face transformers folder.")
    p.add_argument("run", help="run folder")
    p.add_argument("--to", required=True, choices=TARGETS, help="guppylm (pytorch_model.bin + config.json + "
                                                               "tokenizer.json), onnx (model.onnx) or hf (save_pretrained)")
    p.add_argument("out", help="folder to write (must not exist, or be empty)")
    p.add_argument("--checkpoint", default="latest", help="checkpoint step or 'latest' (default)")
    args = p.parse_args(argv)

    def body():
        facts = export_run(args.run, args.to, args.out, args.checkpoint)
        extra = f"; onnxruntime agrees to {facts['onnx_max_diff']:.1e}" if "onnx_max_diff" in facts else ""
        print(f"exported {facts['checkpoint']} to {args.out} ({', '.join(facts['files'])}){extra}")

    return run_main("guppy-export", body)


if __name__ == "__main__":
    sys.exit(main())

"""GuppyLM's files, made here for the tests: random weights under its state-dict keys, a byte-level
BPE with its specials, its training script's step_<N>.pt series, the hub layout, and a forward
written plainly from its state-dict layout to check ours against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from guppy.bridges.guppylm_format import GuppyLMConfig
from guppy.bridges.guppylm_import import import_guppylm
from guppy.data.dataset import DataConfig

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "mini.toml"
MINI_DATA = DataConfig(persona=str(MINI), n_chats=600)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
# tiny GuppyLM shapes: d_model 32 in 4 heads of 8; the vocabulary is larger than the tokenizer's, as
# GuppyLM's 4096 are (about 2.4K used)
TINY = dict(vocab_size=400, max_seq_len=48, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, dropout=0.1,
            pad_id=0, bos_id=1, eos_id=2)
CHATS = [("Hi Guppy", "hello. the water is nice today."), ("what is the meaning of life?", "food. always food."),
         ("do you like cats?", "cats are big. i hide in the plant."), ("IS IT COLD?", "the water is a bit cold.")]


def guppylm_tokenizer(path: Path) -> Path:
    """A byte-level BPE as GuppyLM trains its own: no normalizer, <pad>=0 <|im_start|>=1 <|im_end|>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>" for p, r in CHATS] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIALS, min_frequency=2,
                                                       show_progress=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def guppylm_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under GuppyLM's keys, LayerNorms non-trivial, lm_head tied (one tensor)."""
    g = torch.Generator().manual_seed(seed)
    D, M, V = cfg["d_model"], cfg["ffn_hidden"], cfg["vocab_size"]

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"tok_emb.weight": r(V, D), "pos_emb.weight": r(cfg["max_seq_len"], D),
          "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}."
        sd |= {p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D), p + "attn.qkv.weight": r(3 * D, D),
               p + "attn.qkv.bias": r(3 * D), p + "attn.out.weight": r(D, D), p + "attn.out.bias": r(D),
               p + "norm2.weight": 1 + r(D), p + "norm2.bias": r(D), p + "ffn.up.weight": r(M, D),
               p + "ffn.up.bias": r(M), p + "ffn.down.weight": r(D, M), p + "ffn.down.bias": r(D)}
    sd["lm_head.weight"] = sd["tok_emb.weight"]
    return sd


def guppylm_forward(sd: dict, cfg: dict, idx: torch.Tensor) -> torch.Tensor:
    """GuppyLM's forward, written plainly from its state-dict layout (eval mode: no dropout)."""
    B, T = idx.shape
    D, H = cfg["d_model"], cfg["n_heads"]
    hd = D // H
    x = F.embedding(idx, sd["tok_emb.weight"]) + sd["pos_emb.weight"][:T]
    mask = torch.tril(torch.ones(T, T))
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, T, D), sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        h = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        up = F.relu(F.linear(h, sd[p + "ffn.up.weight"], sd[p + "ffn.up.bias"]))
        x = x + F.linear(up, sd[p + "ffn.down.weight"], sd[p + "ffn.down.bias"])
    return F.linear(F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], 1e-5), sd["lm_head.weight"])


def training_layout(root: Path, steps=(2, 4, 6), final=7) -> dict[int, dict]:
    """GuppyLM's training output: checkpoints/step_<N>.pt, best_model.pt, final_model.pt; data/tokenizer.json."""
    guppylm_tokenizer(root / "data" / "tokenizer.json")
    ck = root / "checkpoints"
    ck.mkdir(parents=True)
    states = {}
    for n in (*steps, final):
        states[n] = guppylm_state(TINY, seed=n)
    for n in steps:
        torch.save({"step": n, "model_state_dict": states[n], "config": dict(TINY)}, ck / f"step_{n}.pt")
    best = steps[len(steps) // 2]
    torch.save({"step": best, "model_state_dict": states[best], "config": dict(TINY), "eval_loss": 2.5},
               ck / "best_model.pt")
    losses = [5.0 - 0.1 * i for i in range(final)]
    torch.save({"step": final, "model_state_dict": states[final], "config": dict(TINY), "train_losses": losses},
               ck / "final_model.pt")
    return states


def hub_layout(root: Path, cfg: dict, seed: int = 11) -> dict:
    """The published model as its download step stores it: checkpoints/best_model.pt (a bare state
    dict), checkpoints/config.json in Hugging Face keys, data/tokenizer.json."""
    guppylm_tokenizer(root / "data" / "tokenizer.json")
    (root / "checkpoints").mkdir(parents=True)
    sd = guppylm_state(cfg, seed)
    torch.save(sd, root / "checkpoints" / "best_model.pt")
    hub = GuppyLMConfig(**cfg).to_hub()
    (root / "checkpoints" / "config.json").write_text(json.dumps(hub))
    return sd


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("guppylm_series")
    states = training_layout(root / "guppylm")
    run = import_guppylm(root / "guppylm" / "checkpoints", root / "runs" / "fish", data=MINI_DATA)
    return run, states


def tokens(n: int, T: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))

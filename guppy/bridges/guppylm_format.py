"""GuppyLM's checkpoint format, both ways: its state-dict keys, its config, its files.

GuppyLM (the public model ours descends from) is our architecture under other names:

    GuppyLM                                   guppy
    tok_emb.weight (V, D)                     embed.weight
    pos_emb.weight (n_ctx, D)                 W_pos
    blocks.{i}.norm1.{weight,bias}            blocks.{i}.ln1.{w,b}
    blocks.{i}.attn.qkv.{weight,bias}         blocks.{i}.attn.qkv.{weight,bias}  rows (three, head, d_head) in both
    blocks.{i}.attn.out.{weight,bias}         blocks.{i}.attn.out.{weight,bias}
    blocks.{i}.norm2.{weight,bias}            blocks.{i}.ln2.{w,b}
    blocks.{i}.ffn.up.{weight,bias} (M, D)    blocks.{i}.mlp.W_in.{weight,bias}
    blocks.{i}.ffn.down.{weight,bias} (D, M)  blocks.{i}.mlp.W_out.{weight,bias}
    norm.{weight,bias}                        ln_final.{w,b}
    lm_head.weight (tied to tok_emb.weight)   (the unembedding reads embed.weight)

Its training script saves `torch.save({"step", "model_state_dict", "config", ...})` as
`step_<N>.pt`, `best_model.pt` (+ "eval_loss") and `final_model.pt` (+ "train_losses"); the
published model is a bare state dict (`pytorch_model.bin`) with a `config.json` in Hugging Face
keys. Files are read with `torch.load(weights_only=True)` only: a file that needs code to unpickle
is refused. Every problem is one `FormatError` line naming the file and the key.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from guppy.config import ModelConfig
from guppy.run.format import TOKENIZER_JSON

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")  # the training script's series: checkpoints/step_500.pt, ...
CONFIG_FILE = "config.json"
TOKENIZER_FILE = TOKENIZER_JSON  # GuppyLM's hub layout names it as a guppy run does
STATE_DICT_FILE = "pytorch_model.bin"
SAFETENSORS_FILE = "model.safetensors"
LN_EPS = 1e-5  # nn.LayerNorm's default, which GuppyLM uses
# GuppyLM's own config keys <- the Hugging Face keys of its hub config.json
HF_KEYS = {"vocab_size": "vocab_size", "max_position_embeddings": "max_seq_len", "hidden_size": "d_model",
           "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads", "intermediate_size": "ffn_hidden",
           "hidden_dropout_prob": "dropout", "pad_token_id": "pad_id", "bos_token_id": "bos_id",
           "eos_token_id": "eos_id"}
PREFIXES = ("_orig_mod.", "module.")  # left on keys by torch.compile and DistributedDataParallel


class FormatError(ValueError):
    """A GuppyLM file that cannot be read as one; the message names the file and the key."""


@dataclass(frozen=True)
class GuppyLMConfig:
    """GuppyLM's model config, under its own names (defaults: the published 8.7M fish)."""

    vocab_size: int = 4096
    max_seq_len: int = 128
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    ffn_hidden: int = 768
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "GuppyLMConfig":
        """GuppyLM's keys or the hub's Hugging Face keys (its own loader reads both, with these
        defaults for absent ones); other keys are ignored, as GuppyLM ignores them."""
        if isinstance(d.get("model"), dict):  # {"model": {...}, "train": {...}} written beside some runs
            d = d["model"]
        values = {}
        for key, value in d.items():
            name = HF_KEYS.get(key, key)
            if name in {f.name for f in fields(cls)}:
                values[name] = value
        for name, v in values.items():
            number = name == "dropout"
            if isinstance(v, bool) or not isinstance(v, (int, float) if number else int):
                raise FormatError(f"{source}: config {name} = {v!r}, expected {'a number' if number else 'an integer'}")
        cfg = cls(**values)
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "ffn_hidden"):
            if getattr(cfg, name) < 1:
                raise FormatError(f"{source}: config {name} = {getattr(cfg, name)} must be positive")
        if cfg.d_model % cfg.n_heads:
            raise FormatError(f"{source}: config d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
        if not 0 <= cfg.dropout < 1:
            raise FormatError(f"{source}: config dropout = {cfg.dropout} must be in [0, 1)")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def to_hub(self) -> dict:
        """The hub config.json: Hugging Face keys."""
        own = self.to_dict()
        return {hf: own[name] for hf, name in HF_KEYS.items()}

    def model_config(self) -> ModelConfig:
        return ModelConfig(d_vocab=self.vocab_size, n_ctx=self.max_seq_len, d_model=self.d_model,
                           n_layers=self.n_layers, n_heads=self.n_heads, d_head=self.d_model // self.n_heads,
                           d_mlp=self.ffn_hidden, dropout=float(self.dropout), ln_eps=LN_EPS)

    @classmethod
    def of_model(cls, cfg: ModelConfig, pad_id: int, bos_id: int, eos_id: int) -> "GuppyLMConfig":
        refuse_unexpressible(cfg, "GuppyLM")
        if cfg.ln_eps != LN_EPS:
            raise ValueError(f"GuppyLM cannot express ln_eps={cfg.ln_eps}: its LayerNorms use {LN_EPS}")
        return cls(vocab_size=cfg.d_vocab, max_seq_len=cfg.n_ctx, d_model=cfg.d_model, n_layers=cfg.n_layers,
                   n_heads=cfg.n_heads, ffn_hidden=cfg.d_mlp, dropout=cfg.dropout, pad_id=pad_id, bos_id=bos_id,
                   eos_id=eos_id)


# ModelConfig fields that a GPT-2-shaped model (GuppyLM, transformers' GPT2LMHeadModel) expresses;
# any other field (a variant such as rotary positions or post-LN) must keep its default
PLAIN_FIELDS = {"d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_mlp", "dropout", "ln_eps", "init_std"}


def refuse_unexpressible(cfg: ModelConfig, target: str) -> None:
    """ValueError naming the first setting of `cfg` that `target` (a vanilla pre-LN GPT with learned
    positions, a ReLU MLP and a tied unembedding) has no way to hold."""
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        raise ValueError(f"{target} cannot express n_heads * d_head ({cfg.n_heads} * {cfg.d_head}) != d_model "
                         f"({cfg.d_model}): its heads split d_model")
    default = type(cfg)()
    for f in fields(cfg):
        if f.name not in PLAIN_FIELDS and getattr(cfg, f.name) != getattr(default, f.name):
            raise ValueError(f"{target} cannot express {f.name}={getattr(cfg, f.name)!r} "
                             f"(only {f.name}={getattr(default, f.name)!r})")


# ---- state dicts ----------------------------------------------------------------------------

_TOP = {"tok_emb.weight": "embed.weight", "pos_emb.weight": "W_pos", "norm.weight": "ln_final.w",
        "norm.bias": "ln_final.b"}
_BLOCK = {"norm1.weight": "ln1.w", "norm1.bias": "ln1.b", "attn.qkv.weight": "attn.qkv.weight",
          "attn.qkv.bias": "attn.qkv.bias", "attn.out.weight": "attn.out.weight", "attn.out.bias": "attn.out.bias",
          "norm2.weight": "ln2.w", "norm2.bias": "ln2.b", "ffn.up.weight": "mlp.W_in.weight",
          "ffn.up.bias": "mlp.W_in.bias", "ffn.down.weight": "mlp.W_out.weight", "ffn.down.bias": "mlp.W_out.bias"}


def key_map(n_layers: int) -> dict[str, str]:
    """GuppyLM key -> guppy key, for every parameter but the tied lm_head."""
    keys = dict(_TOP)
    for i in range(n_layers):
        keys |= {f"blocks.{i}.{g}": f"blocks.{i}.{o}" for g, o in _BLOCK.items()}
    return keys


def expected_shapes(cfg: GuppyLMConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """GuppyLM key -> (shape, the config fields that set it)."""
    D, M, V = cfg.d_model, cfg.ffn_hidden, cfg.vocab_size
    shapes = {"tok_emb.weight": ((V, D), "vocab_size, d_model"), "pos_emb.weight": ((cfg.max_seq_len, D), "max_seq_len, d_model"),
              "norm.weight": ((D,), "d_model"), "norm.bias": ((D,), "d_model")}
    block = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
             "attn.out.weight": (D, D), "attn.out.bias": (D,), "norm2.weight": (D,), "norm2.bias": (D,),
             "ffn.up.weight": (M, D), "ffn.up.bias": (M,), "ffn.down.weight": (D, M), "ffn.down.bias": (D,)}
    for i in range(cfg.n_layers):
        for k, shape in block.items():
            shapes[f"blocks.{i}.{k}"] = (shape, "ffn_hidden, d_model" if "ffn.up" in k or "ffn.down.w" in k else "d_model")
    return shapes


def to_guppy(state: dict[str, torch.Tensor], cfg: GuppyLMConfig, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """GuppyLM state dict -> our state dict (float32), checked against `cfg`; also the keys ignored.

    Missing keys, wrong shapes, blocks beyond n_layers and an untied lm_head are FormatErrors."""
    state = {_strip(k): v for k, v in state.items()}
    shapes = expected_shapes(cfg)
    for key, (shape, by) in shapes.items():
        if key not in state:
            raise FormatError(f"{source}: missing key {key} (a GuppyLM state dict of {cfg.n_layers} layers has it)")
        got = tuple(state[key].shape)
        if got != shape:
            raise FormatError(f"{source}: {key} has shape {got}, but the config ({by}) gives {shape}")
    ignored = []
    for key in state:
        m = re.match(r"blocks\.(\d+)\.", key)
        if m and int(m.group(1)) >= cfg.n_layers:
            raise FormatError(f"{source}: {key} is a block beyond the config's n_layers = {cfg.n_layers}")
        if key not in shapes and key != "lm_head.weight":
            ignored.append(key)
    head = state.get("lm_head.weight")
    if head is not None and not torch.equal(head, state["tok_emb.weight"]):
        raise FormatError(f"{source}: lm_head.weight differs from tok_emb.weight; GuppyLM ties them and so does guppy")
    out = {ours: state[theirs].detach().to(torch.float32).contiguous() for theirs, ours in key_map(cfg.n_layers).items()}
    return out, ignored


def from_guppy(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Our state dict -> GuppyLM's, with lm_head.weight the very tensor of tok_emb.weight (tied)."""
    out = {theirs: state[ours].detach().to("cpu", torch.float32).contiguous().clone()
           for theirs, ours in key_map(n_layers).items()}
    out["lm_head.weight"] = out["tok_emb.weight"]
    return out


def _strip(key: str) -> str:
    for p in PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


# ---- files ----------------------------------------------------------------------------------


@dataclass
class GuppyLMFile:
    """What one GuppyLM file holds: its state dict, and what the training script saved beside it."""

    path: Path
    state: dict[str, torch.Tensor]
    step: int | None = None  # None for a bare state dict
    config: dict | None = None
    eval_loss: float | None = None
    train_losses: list[float] | None = None


def load_file(path: str | Path) -> GuppyLMFile:
    """Read a GuppyLM checkpoint or bare state dict with torch.load(weights_only=True)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: a folder, expected a checkpoint file") from None
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a pickle at all ("Unsupported operand"): a damaged or foreign file
            raise FormatError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
        raise FormatError(f"{path}: refused: unpickling it needs code ({_first_line(e)}); guppy loads tensors and "
                          f"plain data only (torch.load weights_only=True)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, expected a GuppyLM checkpoint dict or a state dict")
    if "model_state_dict" in obj:
        state = obj["model_state_dict"]
        step, config = obj.get("step"), obj.get("config")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise FormatError(f"{path}: step = {step!r}, expected a non-negative integer")
        if config is not None and not isinstance(config, dict):
            raise FormatError(f"{path}: config is a {type(config).__name__}, expected a plain dict")
        losses = obj.get("train_losses")
        losses = [float(x) for x in losses] if isinstance(losses, (list, tuple)) and \
            all(isinstance(x, (int, float)) for x in losses) else None
        eval_loss = obj.get("eval_loss")
        eval_loss = float(eval_loss) if isinstance(eval_loss, (int, float)) else None
    else:
        state, step, config, losses, eval_loss = obj, None, None, None, None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise FormatError(f"{path}: neither a GuppyLM checkpoint (a dict with model_state_dict) nor a state dict "
                          f"(names -> tensors)")
    return GuppyLMFile(path, state, step, config, eval_loss, losses)


def _first_line(e: BaseException) -> str:
    """The informative part of torch.load's many-line message: the global it refused, the operand."""
    text = " ".join(str(e).split())
    m = re.search(r"GLOBAL (\S+)", text) or re.search(r"(Unsupported operand \S+)", text)
    if m:
        return f"it asks for {m.group(1)}" if m.group(0).startswith("GLOBAL") else m.group(1)
    return text[:200] or type(e).__name__


def read_config_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FormatError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: unreadable config ({e})") from None
    if not isinstance(d, dict):
        raise FormatError(f"{path}: expected a JSON object of config keys")
    return d


def series(folder: Path) -> dict[int, Path]:
    """The training script's step_<N>.pt files of `folder`, by step."""
    found = {}
    for f in Path(folder).iterdir():
        m = STEP_FILE.match(f.name)
        if m and f.is_file():
            found[int(m.group(1))] = f
    return dict(sorted(found.items()))

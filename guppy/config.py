"""Configs: frozen dataclasses, one per concern; presets are plain functions.

    model_preset("guppy")   # the reference fish: 6 layers, d_model 384, 8,726,016 parameters
    TrainConfig(preset="demo", epochs=1)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from guppy.run.format import parse_sites, parse_steps, site_name

# architectural variants (guppy-train --positional/--norm/--act; ModelConfig fields of the same names)
POSITIONAL = ("learned", "sinusoidal", "rotary", "none")
NORMS = ("pre", "post")
ACTIVATIONS = ("relu", "gelu")
MIN_N_CTX = 16  # the chat template, a few words of prompt and a short reply


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a decoder-only transformer (TransformerLens names) and its variants.

    positional: learned table added to the embeddings (GPT-2), fixed sinusoids added (Vaswani et
    al. 2017), rotary q/k (RoFormer; GPT-NeoX's half split over all of d_head, base 10000, as
    TransformerLens), or none (causal attention alone). norm: LayerNorm before each sublayer
    (pre, GPT-2) or after each residual add (post, 2017). act: MLP ReLU or GELU (erf form).
    embed_scale: the token embeddings times this before positions are added (the 2017 paper's
    sqrt(d_model), which guppy-train sets for sinusoidal positions: without it a table of amplitude
    1 drowns embeddings of std 0.02). Runs written before these fields existed load with the
    defaults, which is what they were."""

    d_vocab: int = 4096
    n_ctx: int = 128
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    d_head: int = 64
    d_mlp: int = 768
    dropout: float = 0.1
    ln_eps: float = 1e-5
    init_std: float = 0.02
    positional: str = "learned"
    norm: str = "pre"
    act: str = "relu"
    embed_scale: float = 1.0

    def __post_init__(self):
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_mlp"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(f"ModelConfig: n_heads * d_head ({self.n_heads} * {self.d_head}) must equal "
                             f"d_model ({self.d_model})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ValueError(f"ModelConfig.init_std must be positive, got {self.init_std}")
        if not self.embed_scale > 0:
            raise ValueError(f"ModelConfig.embed_scale must be positive, got {self.embed_scale}")
        for name, choices in (("positional", POSITIONAL), ("norm", NORMS), ("act", ACTIVATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"ModelConfig.{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"ModelConfig: positional rotary turns pairs of dimensions; d_head {self.d_head} "
                             f"must be even")

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def num_params(self) -> int:
        """Parameters with the unembedding tied to the token embedding."""
        D, per_block = self.d_model, 0
        per_block += 2 * 2 * D  # two LayerNorms
        per_block += 3 * (D * D + D) + (D * D + D)  # Q, K, V, O with biases
        per_block += (D * self.d_mlp + self.d_mlp) + (self.d_mlp * D + D)  # MLP in and out
        table = self.n_ctx * D if self.positional == "learned" else 0  # the others learn no positions
        return self.d_vocab * D + table + self.n_layers * per_block + 2 * D


def guppy() -> ModelConfig:
    """The reference fish: 6 layers, d_model 384, 6 heads of 64, d_mlp 768 -> 8,726,016 params."""
    return ModelConfig()


def demo() -> ModelConfig:
    """Small enough to train a talking fish on a 2-core CPU in a few minutes. Two layers learn
    the fish faster than four at equal wall time (1 epoch: eval loss 0.79 vs 0.91)."""
    return ModelConfig(d_vocab=2304, n_layers=2, d_model=256, n_heads=4, d_head=64, d_mlp=512, dropout=0.0)


def induction() -> ModelConfig:
    """For watching an induction head form on memory chats (`make demo-induction`): two layers (an
    induction head needs a previous-token head in an earlier layer), a small vocabulary so the
    remembered names and numbers are several tokens each, and room for a 4-turn chat (<= 167 tokens)."""
    return ModelConfig(d_vocab=1024, n_ctx=192, d_model=128, n_layers=2, n_heads=4, d_head=32, d_mlp=512, dropout=0.0)


def small() -> ModelConfig:
    return ModelConfig(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024)


def tiny() -> ModelConfig:
    """For tests: 2 layers, d_model 32; vocab big enough for a small BPE tokenizer."""
    return ModelConfig(d_vocab=512, n_ctx=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, dropout=0.0)


PRESETS = {"guppy": guppy, "demo": demo, "induction": induction, "small": small, "tiny": tiny}


def model_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# ---- training ---------------------------------------------------------------------------------


def _f(default, help: str, **meta):
    """A config field carrying its command-line help (flags are built from these)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every field is a `guppy-train` flag (`lr` -> `--lr`)."""

    preset: str = _f("demo", "model preset", choices=tuple(PRESETS))
    # the architecture: each flag overrides one field of the preset (see model_config)
    n_layers: int = _f(0, "transformer blocks; 0 = the preset's")
    d_model: int = _f(0, "residual stream width; 0 = the preset's, or n_heads * d_head when both are given")
    n_heads: int = _f(0, "attention heads per layer; 0 = the preset's, or d_model / d_head")
    d_head: int = _f(0, "width of each attention head; 0 = d_model / n_heads")
    d_mlp: int = _f(0, "MLP hidden width; 0 = d_model times the preset's d_mlp / d_model")
    n_ctx: int = _f(0, f"context length in tokens, at least {MIN_N_CTX} (longer chats are cut); 0 = the preset's")
    positional: str = _f("learned", "positions: a learned table added to the embeddings (GPT-2), fixed sinusoids "
                         "added (2017), rotary q and k (RoFormer), or none", choices=POSITIONAL)
    norm: str = _f("pre", "LayerNorm before each sublayer (pre, GPT-2) or after each residual add (post, 2017)",
                   choices=NORMS)
    act: str = _f("relu", "MLP activation; gelu is the exact erf form", choices=ACTIVATIONS)
    init_std: float = _f(0.0, "std of the normal initialisation of weight matrices; 0 = the preset's (0.02)")
    embed_scale: float = _f(0.0, "multiply the token embeddings by this; 0 = sqrt(d_model) with sinusoidal positions "
                                 "(as Vaswani et al. 2017), 1 with the others")
    persona: str = _f("fish", "persona: a shipped name (fish, fern) or a path to a .toml file")
    n_chats: int = _f(60_000, "chats to generate, split equally over topics")
    data_seed: int = _f(0, "seed of the generated chats")
    memory_fraction: float = _f(0.0, "share of chats that are multi-turn memory chats (the persona's [memory] tables)")
    memory_kinds: str = _f("", "comma-separated memory kinds to use (fish: name, food, flakes, words, poem); empty = all")
    copy_fraction: float = _f(0.0, "share of chats that are say-it-back chats of random tokens of the whole vocabulary "
                                   "(guppy.data.copy_chats; train only)")
    vocab_size: int = _f(0, "BPE tokenizer target vocabulary; 0 = the preset's d_vocab")
    epochs: float = _f(1.0, "passes over the train split (ignored when --steps is given)")
    steps: int = _f(0, "optimizer steps to run; 0 = derive from --epochs")
    batch_size: int = _f(64, "chats per micro-batch: the most one forward pass holds (a step's chats "
                                "are cut where padding would cost more than another pass)")
    grad_accum: int = _f(1, "micro-batches per optimizer step: a step is batch_size x grad_accum chats")
    lr: float = _f(3e-3, "peak learning rate")
    warmup_steps: int = _f(50, "linear warmup steps before the cosine decay")
    min_lr: float = _f(3e-4, "learning rate at the end of the cosine decay")
    weight_decay: float = _f(0.1, "AdamW weight decay, applied to weight matrices only")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 = off")
    seed: int = _f(0, "seed of initialisation, data order and dropout")
    dropout: float = _f(-1.0, "dropout probability; negative = the preset's")
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = _f("auto", "auto (bf16 where the hardware has it, fp16 on older GPUs), fp32, bf16, fp16",
                        choices=("auto", "fp32", "bf16", "fp16"))
    loss_on: str = _f("reply", "train on the reply tokens only, or on every token", choices=("reply", "all"))
    eval_every: int = _f(0, "also evaluate every N steps; 0 = at each epoch end and at the end only")
    eval_chats: int = _f(600, "held-out chats used for the eval loss")
    eval_prompts: int = _f(1, "held-out prompts per topic for the persona eval during training; 0 = skip")
    eval_at_snapshots: int = _f(100, "with --record, also evaluate at every snapshot step on this many held-out "
                                     "chats (and the persona eval on 20 of the topics), so the held-out curve has a "
                                     "point at each; 0 = off")
    log_every: int = _f(10, "write a metrics row (and a health.csv row) every N steps")
    spike_factor: float = _f(4.0, "a step whose loss is above this x the median of the last 50 steps is a spike: "
                                  "noted in run.json and, when recording, snapshotted; 0 = off")
    # interventions while training (guppy.train.interventions)
    ablate: str = _f("", "knock out a site while training: a head L0H3 or an MLP L1.mlp; repeat the flag or join "
                         "sites with + (L0H3+L1.mlp); none = nothing", repeat=True)
    ablate_kind: str = _f("zero", "what an ablated site outputs: zero, or its mean over the batch's real positions",
                          choices=("zero", "mean"))
    ablate_steps: str = _f("", "optimizer steps the ablation lasts, as a slice: A:B, A: (from step A on) or :B; "
                               "empty = all")
    freeze: str = _f("", "parameters that never change: a glob of parameter names (blocks.0.*, embed.weight); "
                         "repeat the flag or join globs with +; none = nothing", repeat=True)
    record: bool = _f(False, "snapshot the model's insides to HDF5 (see --record-every, --record-hooks)")
    record_every: int = _f(0, "snapshot every N steps, besides step 0, powers of two and epoch ends; 0 = total/10")
    record_log_spaced: bool = _f(True, "also snapshot at steps 1, 2, 4, 8, ... when structure forms")
    record_hooks: str = _f("blocks.*.attn.hook_pattern,blocks.*.hook_resid_pre,blocks.*.hook_resid_post",
                           "comma-separated hook names or globs whose full tensors are stored")
    record_inputs: int = _f(12, "inputs of the watch set whose full tensors are stored (metrics use every input)")
    run_name: str = _f("", "run folder name under --runs-dir; empty = preset and timestamp")
    runs_dir: str = _f("runs", "where runs are written")

    def __post_init__(self):
        checks = {
            "n_chats": self.n_chats >= 1, "memory_fraction": 0 <= self.memory_fraction < 1, "copy_fraction": 0 <= self.copy_fraction < 1 - self.memory_fraction,
            "vocab_size": self.vocab_size == 0 or self.vocab_size >= 300, "epochs": self.epochs > 0, "steps": self.steps >= 0,
            "batch_size": self.batch_size >= 1, "grad_accum": self.grad_accum >= 1, "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0, "min_lr": 0 <= self.min_lr <= self.lr,
            "weight_decay": self.weight_decay >= 0, "grad_clip": self.grad_clip >= 0,
            "dropout": self.dropout < 1, "eval_every": self.eval_every >= 0, "eval_chats": self.eval_chats >= 1,
            "eval_prompts": self.eval_prompts >= 0,
            "eval_at_snapshots": self.eval_at_snapshots >= 0, "log_every": self.log_every >= 1,
            "spike_factor": self.spike_factor == 0 or self.spike_factor > 1,
            "record_every": self.record_every >= 0, "record_inputs": self.record_inputs >= 3,
            "n_layers": self.n_layers >= 0, "d_model": self.d_model >= 0, "n_heads": self.n_heads >= 0,
            "d_head": self.d_head >= 0, "d_mlp": self.d_mlp >= 0, "n_ctx": self.n_ctx == 0 or self.n_ctx >= MIN_N_CTX,
            "init_std": self.init_std >= 0, "embed_scale": self.embed_scale >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: bad value {getattr(self, name)!r} ({fields_help()[name]})")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}: {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        # one spelling of each list: "L0H3+L1.mlp", "L0H3,L1.mlp" and "none" -> "L0H3,L1.mlp" / ""
        object.__setattr__(self, "ablate", ",".join(site_name(*s) for s in parse_sites(self.ablate)))
        object.__setattr__(self, "freeze", ",".join(_items(self.freeze)))
        parse_steps(self.ablate_steps)
        if "/" in self.run_name or self.run_name.startswith("."):
            raise ValueError(f"run_name: {self.run_name!r} must be a plain folder name")
        model_config(self)  # a bad combination of architecture flags is refused here, before any run folder

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_preset(cls, **given) -> "TrainConfig":
        """The fields given, over their preset's measured recipe (PRESET_RECIPES), over the defaults:
        what `guppy-train --preset guppy` runs. TrainConfig(...) itself applies no recipe."""
        return cls(**PRESET_RECIPES.get(given.get("preset", cls.preset), {}) | given)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = LEGACY_TRAIN_DEFAULTS | {LEGACY_TRAIN_KEYS.get(k, k): v for k, v in d.items()}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {', '.join(sorted(unknown))}")
        return cls(**d)


# What a preset trains best with where it differs from the defaults (tuned on the demo preset);
# guppy-train applies it under the flags given. The guppy preset's bare defaults learned far less in
# one epoch; docs/reference.md has the grid of learning rates, batches and losses this was chosen from.
PRESET_RECIPES = {
    "guppy": dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, loss_on="all", dropout=0.0),
}

# run.json files of schema 1 name some fields as they were then
LEGACY_TRAIN_KEYS = {"record_probes": "record_inputs"}
# what a run.json written before a field existed trained with, where the field's default differs
# (embed_scale 0 now scales sinusoidal runs by sqrt(d_model); before the field they had 1)
LEGACY_TRAIN_DEFAULTS = {"embed_scale": 1.0}


def _items(text: str) -> list[str]:
    """A repeatable flag's value as its items: 'a+b,c' -> ['a', 'b', 'c']; '' and 'none' -> []."""
    items = [t.strip() for t in text.replace("+", ",").split(",") if t.strip()]
    return [] if items == ["none"] else list(dict.fromkeys(items))


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The run's model: its preset with the architecture flags applied (0 = the preset's)."""
    base = model_preset(cfg.preset)
    d_model, n_heads, d_head = _attention_shape(base, cfg.d_model, cfg.n_heads, cfg.d_head)
    # a wider model keeps the preset's MLP ratio, so width sweeps change one thing
    d_mlp = cfg.d_mlp or max(1, round(d_model * base.d_mlp / base.d_model))
    changes = dict(n_layers=cfg.n_layers or base.n_layers, n_ctx=cfg.n_ctx or base.n_ctx, d_model=d_model,
                   n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, positional=cfg.positional, norm=cfg.norm, act=cfg.act)
    if cfg.dropout >= 0:
        changes["dropout"] = cfg.dropout
    if cfg.init_std > 0:
        changes["init_std"] = cfg.init_std
    changes["embed_scale"] = cfg.embed_scale or (math.sqrt(d_model) if cfg.positional == "sinusoidal" else 1.0)
    try:
        return base.replace(**changes)
    except ValueError as e:
        raise ValueError(str(e).replace("ModelConfig.", "").replace("ModelConfig: ", "")) from None


def _attention_shape(base: ModelConfig, d_model: int, n_heads: int, d_head: int) -> tuple[int, int, int]:
    """d_model = n_heads * d_head from the flags given (0 = not given): any two set the third; one
    alone keeps the preset's d_model (d_model alone keeps the preset's n_heads)."""
    if d_model and n_heads and d_head:
        if n_heads * d_head != d_model:
            raise ValueError(f"d_model: {d_model} is not n_heads * d_head ({n_heads} * {d_head}); "
                             f"give two of the three")
        return d_model, n_heads, d_head
    if n_heads and d_head:
        return n_heads * d_head, n_heads, d_head
    d_model = d_model or base.d_model
    if d_head:
        if d_model % d_head:
            raise ValueError(f"d_head: {d_head} does not divide d_model {d_model}; pass --n-heads or --d-model too")
        return d_model, d_model // d_head, d_head
    n_heads = n_heads or base.n_heads
    if d_model % n_heads:
        raise ValueError(f"n_heads: d_model {d_model} does not split into {n_heads} heads; "
                         f"pass --d-head too, or a d_model that is a multiple of {n_heads}")
    return d_model, n_heads, d_model // n_heads


def fields_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}

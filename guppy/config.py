"""Configs: frozen dataclasses, one per concern; presets are plain functions.

    model_preset("guppy")   # the reference fish: 6 layers, d_model 384, 8,726,016 parameters
    TrainConfig(preset="demo", epochs=1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a vanilla decoder-only transformer (TransformerLens names)."""

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

    def __post_init__(self):
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads", "d_head", "d_mlp"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(f"ModelConfig: n_heads * d_head ({self.n_heads} * {self.d_head}) must equal "
                             f"d_model ({self.d_model})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

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
        return self.d_vocab * D + self.n_ctx * D + self.n_layers * per_block + 2 * D


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
    persona: str = _f("fish", "persona: a shipped name (fish, fern) or a path to a .toml file")
    n_chats: int = _f(60_000, "chats to generate, split equally over topics")
    data_seed: int = _f(0, "seed of the generated chats")
    memory_fraction: float = _f(0.0, "share of chats that are multi-turn memory chats (the persona's [memory] tables)")
    memory_kinds: str = _f("", "comma-separated memory kinds to use (fish: name, food, flakes, words, poem); empty = all")
    vocab_size: int = _f(0, "BPE tokenizer target vocabulary; 0 = the preset's d_vocab")
    epochs: float = _f(1.0, "passes over the train split (ignored when --steps is given)")
    steps: int = _f(0, "optimizer steps to run; 0 = derive from --epochs")
    batch_size: int = _f(64, "chats per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
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
    log_every: int = _f(10, "write a metrics row every N steps")
    record: bool = _f(False, "snapshot the model's insides to HDF5 (see --record-every, --record-hooks)")
    record_every: int = _f(0, "snapshot every N steps, besides step 0, powers of two and epoch ends; 0 = total/10")
    record_log_spaced: bool = _f(True, "also snapshot at steps 1, 2, 4, 8, ... when structure forms")
    record_hooks: str = _f("blocks.*.attn.hook_pattern,blocks.*.hook_resid_pre,blocks.*.hook_resid_post",
                           "comma-separated hook names or globs whose full tensors are stored")
    record_probes: int = _f(12, "probes whose full tensors are stored (metrics always use every probe)")
    run_name: str = _f("", "run folder name under --runs-dir; empty = preset and timestamp")
    runs_dir: str = _f("runs", "where runs are written")

    def __post_init__(self):
        checks = {
            "n_chats": self.n_chats >= 1, "memory_fraction": 0 <= self.memory_fraction < 1, "vocab_size": self.vocab_size == 0 or self.vocab_size >= 300, "epochs": self.epochs > 0, "steps": self.steps >= 0,
            "batch_size": self.batch_size >= 1, "grad_accum": self.grad_accum >= 1, "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0, "min_lr": 0 <= self.min_lr <= self.lr,
            "weight_decay": self.weight_decay >= 0, "grad_clip": self.grad_clip >= 0,
            "dropout": self.dropout < 1, "eval_every": self.eval_every >= 0, "eval_chats": self.eval_chats >= 1,
            "eval_prompts": self.eval_prompts >= 0, "log_every": self.log_every >= 1,
            "record_every": self.record_every >= 0, "record_probes": self.record_probes >= 3,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: bad value {getattr(self, name)!r} ({fields_help()[name]})")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}: {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        if "/" in self.run_name or self.run_name.startswith("."):
            raise ValueError(f"run_name: {self.run_name!r} must be a plain folder name")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def fields_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}

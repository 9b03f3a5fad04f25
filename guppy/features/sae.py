"""Sparse autoencoders on one hook's activations: trained with SAELens, saved in its format, read back light.

    settings = SAESettings(hook="blocks.2.hook_resid_post", width=1536, k=16)
    sae = train_sae(acts, settings, init=previous)      # SAELens's TopKTrainingSAE and SAETrainer
    save_sae(sae, folder, extra={...})                  # cfg.json + sae_weights.safetensors (+ guppy's files), atomic
    coder = SparseCoder.load(folder)                    # encode / decode from the file, without importing SAELens

- **SAELens does the training.** Its `SAETrainer` takes any iterator of raw activation batches
  (its `DataProvider`), so guppy hands it the fish's activations from memory and uses SAELens's
  own TopK SAE (Gao et al. 2024: exactly k latents fire per token, an auxiliary loss revives
  dead ones) and its optimiser, schedule, dead-latent bookkeeping and saving. Nothing of the
  SAELens language-model runner is used: it wants a TransformerLens model and a HF dataset.
- **Inputs are scaled to norm sqrt(d_in)** (SAELens's `expected_average_only_in`, the factor
  computed here from the snapshot's own activations): the residual grows several-fold over
  training, and one learning rate then fits every snapshot. SAELens folds the factor into the
  saved weights, so the saved SAE takes raw activations.
- **Warm starts** (SAE-Track, arXiv 2412.17626): a snapshot's SAE starts from the previous
  snapshot's saved one, unfolded into this snapshot's scale and its decoder bias moved as far as
  the activations' mean moved, so features can be followed across training and later snapshots
  need fewer steps. A warm start trains at a lower rate (`warm_lr`), warmed up: its Adam starts
  afresh, and at the cold start's rate its first steps undo the SAE it was given (measured on the
  reference fish: explained variance 0.83 before 5 steps at 2e-3, 0.15 after).
- **`SparseCoder`** reads the saved safetensors with plain torch: importing SAELens costs ~10 s
  of CPU (it imports TransformerLens and transformers), too slow for a dashboard. A test checks
  that SAELens's `SAE.load_from_disk` reconstructs exactly what it does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from guppy.run import format as R

ARCHITECTURE = "topk"


@dataclass(frozen=True)
class SAESettings:
    """What every SAE of one hook is trained with (features/<hook>/settings.json)."""

    hook: str
    width: int = 0  # latents; 0 = 4 x d_model
    k: int = 16  # latents firing per token
    tokens: int = 24_000  # training-chat tokens gathered per snapshot (position 0, the same in every chat, left out)
    first_steps: int = 400  # SAE steps for the first snapshot's SAE (a cold start)
    warm_steps: int = 100  # for every later one (warm-started from the previous snapshot's SAE)
    batch: int = 1024  # activations per SAE step
    lr: float = 2e-3  # the cold start's rate
    warm_lr: float = 5e-4  # a warm start's
    seed: int = 0

    def __post_init__(self):
        bad = {"width": self.width >= 0, "k": self.k >= 1, "tokens": self.tokens >= 1, "batch": self.batch >= 1,
               "first_steps": self.first_steps >= 0, "warm_steps": self.warm_steps >= 0, "lr": self.lr > 0,
               "warm_lr": self.warm_lr > 0}
        wrong = [name for name, ok in bad.items() if not ok]
        if wrong:
            raise ValueError(f"SAE settings: {wrong[0]}={getattr(self, wrong[0])} is out of range")

    def resolved(self, d_in: int) -> "SAESettings":
        """The settings with width 0 made 4 x d_in; refuses k > width."""
        from dataclasses import replace

        s = replace(self, width=self.width or 4 * d_in)
        if s.k > s.width:
            raise ValueError(f"--k {s.k} is more than --width {s.width}: at most width latents can fire")
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAESettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- training (SAELens) ---------------------------------------------------------------------


def scale_factor(acts: torch.Tensor) -> float:
    """The factor that brings these activations to mean norm sqrt(d_in) (SAELens's expected_average_only_in)."""
    return float(acts.shape[-1] ** 0.5 / acts.norm(dim=-1).mean().clamp(min=1e-12))


def new_training_sae(d_in: int, settings: SAESettings, init: SparseCoder | None = None, scale: float = 1.0,
                     model_name: str = "guppy", shift: torch.Tensor | None = None):
    """A SAELens TopKTrainingSAE in the space of activations times `scale`; from `init`'s weights if given,
    its decoder bias moved by `shift` (D,) in raw units (how far the activations' mean moved since init's)."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(settings.seed)
    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=settings.width, k=settings.k, dtype="float32", device="cpu")
    cfg.metadata.model_name = model_name
    cfg.metadata.hook_name = settings.hook
    sae = TopKTrainingSAE(cfg)
    if init is not None:
        if init.W_enc.shape != sae.W_enc.shape:
            raise ValueError(f"warm start: the previous SAE is {tuple(init.W_enc.shape)}, this one "
                             f"{tuple(sae.W_enc.shape)}; give the same --width (or a new hook folder)")
        state = init.state_dict()
        if shift is not None:
            state["b_dec"] = state["b_dec"] + shift.to(state["b_dec"].dtype)
        sae.load_state_dict(state)
        # init takes raw activations; the trainer feeds activations times `scale`: unfold it (SAELens folds s
        # as W_enc *= s, W_dec /= s, b_dec /= s, so folding 1/s is the inverse)
        sae.fold_activation_norm_scaling_factor(1.0 / scale)
    return sae


def train_sae(acts: torch.Tensor, settings: SAESettings, init: SparseCoder | None = None, steps: int | None = None,
              model_name: str = "guppy", progress: bool = False, init_mean: torch.Tensor | None = None):
    """Train a TopK SAE on acts (N, D) float32 with SAELens's SAETrainer; from `init` (a warm start) if given,
    its decoder bias moved by acts.mean(0) - init_mean when init_mean (D,), the mean of the activations init
    was trained on, is given. Returns the trained SAELens TrainingSAE, its input scale folded in (it takes
    raw activations)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if steps is None:
        steps = settings.first_steps if init is None else settings.warm_steps
    scale = scale_factor(acts)
    shift = acts.mean(0) - init_mean if init is not None and init_mean is not None else None
    sae = new_training_sae(acts.shape[1], settings, init, scale, model_name, shift)
    batch = min(settings.batch, len(acts))
    if steps == 0:  # nothing to train (a warm start kept as it is): only the scale to fold back
        sae.fold_activation_norm_scaling_factor(scale)
        return sae.eval()
    # a constant rate, warmed up, the last fifth decaying linearly to 0 (SAELens's schedule); a warm start at
    # warm_lr, warmed up over its first fifth (its Adam's moments start from nothing)
    lr = settings.lr if init is None else settings.warm_lr
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr,
                           lr_end=lr, lr_scheduler_name="constant", lr_decay_steps=steps // 5,
                           lr_warm_up_steps=steps // 5 if init is not None else steps // 20,
                           dead_feature_window=max(10, steps // 4), feature_sampling_window=max(10, steps),
                           device="cpu")
    trainer = SAETrainer(cfg, sae, _batches(acts, batch, settings.seed))
    trainer.activation_scaler.scaling_factor = scale  # given, not estimated: fit() folds it in at the end
    with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):  # its own bar
        trainer.fit()  # ends by folding the scale into the weights
    sae.eval()
    return sae


def _batches(acts: torch.Tensor, batch: int, seed: int):
    """Shuffled batches of acts, pass after pass (SAELens's DataProvider: an endless iterator)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            yield acts[order[i:i + batch]]


# ---- saving (SAELens's format) and reading back ---------------------------------------------


def save_sae(sae, folder: Path, extra: dict[str, callable] | None = None) -> None:
    """Write the SAE with SAELens's `save_inference_model` (cfg.json, sae_weights.safetensors, the decoder
    norms folded in), then `extra` {file name: write(path)}, into a temporary folder renamed onto `folder`
    when whole: a killed run leaves no half-written SAE."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sae.save_inference_model(tmp)
        for name, write in (extra or {}).items():
            write(tmp / name)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():  # a recomputed snapshot: replace the old folder
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class SparseCoder:
    """A saved TopK SAE read with plain torch: W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,), k.
    Shape legend: N activations, D d_in, F latents (width)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int
    hook: str = ""

    @classmethod
    def load(cls, folder: Path) -> "SparseCoder":
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            cfg = json.loads((folder / R.SAE_CFG_FILE).read_text())
            w = load_file(folder / R.SAE_WEIGHTS_FILE)
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: not a readable SAE folder ({e})") from None
        if cfg.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{folder / R.SAE_CFG_FILE}: architecture {cfg.get('architecture')!r}, guppy reads {ARCHITECTURE!r}")
        if cfg.get("apply_b_dec_to_input") is False or cfg.get("normalize_activations", "none") != "none":
            raise ValueError(f"{folder / R.SAE_CFG_FILE}: guppy reads TopK SAEs that subtract b_dec and normalise nothing")
        scale = w["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else None
        if scale is not None and not torch.allclose(scale, torch.ones_like(scale), atol=1e-4):
            raise ValueError(f"{folder}: decoder norms not folded in (saved with save_model, not save_inference_model?)")
        return cls(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], int(cfg["k"]), cfg.get("metadata", {}).get("hook_name", ""))

    @classmethod
    def from_sae(cls, sae) -> "SparseCoder":
        """The SparseCoder of a SAELens SAE in memory (a TrainingSAE's decoder norms folded into a copy)."""
        sd = {k: v.detach().clone() for k, v in sae.state_dict().items()}
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            n = sd["W_dec"].norm(dim=-1).clamp(min=1e-8)
            sd["b_enc"], sd["W_dec"], sd["W_enc"] = sd["b_enc"] * n, sd["W_dec"] / n[:, None], sd["W_enc"] * n[None]
        return cls(sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"], int(sae.cfg.k), sae.cfg.metadata.hook_name or "")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., F): the k largest pre-activations, ReLU'd; the rest zero."""
        pre = (x.float() - self.b_dec) @ self.W_enc + self.b_enc  # (..., F)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())

    @torch.no_grad()
    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec  # (..., D)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

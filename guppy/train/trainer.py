"""The training loop and `guppy-train`.

    guppy-train --preset demo --epochs 1            # a new run under runs/
    guppy-train --resume runs/demo-20261124-1512    # continue a stopped run where it stopped
    torchrun --standalone --nproc_per_node=4 -m guppy.train.trainer --preset demo   # 4 processes, one run

A run folder holds run.json (config, versions, status), tokenizer.json, metrics.csv (one row
per logged step) and checkpoints/ (safetensors). The loop knows nothing about recording:
observers plug in through `guppy.train.callbacks.Callback` and see a frozen `TrainView`.

Under torchrun (see guppy.train.distributed) --batch-size is the global batch: every rank walks the
same batches in the same order and takes every world_size-th chat of each, and the loss is
divided by the target tokens of the whole global batch, so steps, schedule and gradients are
those of one process. Rank 0 alone evaluates, checkpoints, records and writes the run folder.

Data order: an optimizer step takes batch_size x grad_accum chats drawn at random (a fresh
permutation each pass), sorted by length inside the step and cut into the forward passes that cost
least (`guppy.data.dataset.step_passes`: padding against one more pass, each pass at most batch_size
chats, so at least grad_accum of them). So --batch-size 64 --grad-accum 1 and 16 x 4 see the same
chats in the same steps and end at the same weights (to float rounding; tested). What may change
the model while it trains (--ablate, --freeze) is `guppy.train.interventions`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from guppy.config import PRESET_RECIPES, TrainConfig, model_config
from guppy.data.dataset import Dataset, collate, count_targets, data_config, load_dataset, random_batches, step_passes
from guppy.health.forensics import Diverged  # noqa: F401 (re-exported: the loop raises it)
from guppy.health.watchdog import Watchdog, resume_config
from guppy.model.precision import BF16_CPU_MIN_SPEEDUP, cpu_bf16_speedup  # noqa: F401 (re-exported)
from guppy.model.transformer import GuppyLM
from guppy.run import writer as run_writer
from guppy.run.checkpoint import load_state, read_weights, save_state, save_weights
from guppy.run.format import METRICS_CSV, checkpoint_path, list_checkpoints, state_path
from guppy.train import distributed
from guppy.train.callbacks import TrainView
from guppy.train.interventions import Interventions, check_interventions


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device; expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but no CUDA device is available")
    return dev


# bf16 autocast on a CPU pays a cast of every weight on every forward; it is worth it only where
def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware runs it fast (CUDA with bf16; a CPU whose bf16 matmul is at
    least BF16_CPU_MIN_SPEEDUP x its fp32, measured), fp16 on older GPUs, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_bf16_speedup() >= BF16_CPU_MIN_SPEEDUP else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not norms, biases, position embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "pos" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one pass over each tensor instead of ~9 foreach passes (benchmarks/bench_train.py)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def target_loss(model: torch.nn.Module, inputs, targets, mask, reduction: str = "sum") -> torch.Tensor:
    """Cross entropy of the target tokens where `mask` holds (fp32), summed by default.

    The unembedding is the largest matmul of a small model (d_vocab x d_model), so it runs only
    where the loss is taken: at the target tokens, never at padding (decoding every position was a
    large share of a demo-preset step: benchmarks/bench_train.py profiles it). `hook_logits` does not fire here; ln_final's hooks do."""
    lm = getattr(model, "module", model)  # the GuppyLM, also under a DistributedDataParallel wrapper
    resid = model(inputs, stop_at_layer=lm.cfg.n_layers)  # (B, T, D), through the wrapper for DDP
    logits = lm.unembed(lm.ln_final(resid[mask]))  # (N, V): masked positions only
    return F.cross_entropy(logits.float(), targets[mask], reduction=reduction)


# the persona eval at the snapshots between evals asks this many topics (spread over all of them,
# the same ones every time): a curve of the pass rate at a third of the cost of all 60 (measured in
# docs/timeline.md, "The held-out curve"); the evals at epoch ends and the end ask every topic
SNAPSHOT_PERSONA_TOPICS = 20


def clip_by_norms(params: list[torch.Tensor], norms: torch.Tensor, clip: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` from the per-parameter gradient norms the Watchdog took
    already (one pass over the gradients fewer), scaling them only when the total is over `clip`
    (torch's multiplies every gradient on every step, by 1 when under): the total norm, as torch's
    returns it. `clip` <= 0: no clipping. A non-finite total is left to the caller (the GradScaler
    skips that step; without one the Watchdog has raised already)."""
    total = float(torch.linalg.vector_norm(norms.float()))
    if 0 < clip < total and math.isfinite(total):
        torch._foreach_mul_([p.grad for p in params if p.grad is not None], clip / (total + 1e-6))
    return total


class Trainer:
    """Runs one TrainConfig into one run folder; `fit()` returns the final status."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dataset: Dataset, callbacks=(), show_progress: bool = True):
        self.cfg, self.run_dir, self.data = cfg, Path(run_dir), dataset
        self.watchdog = Watchdog(cfg.spike_factor)  # health rows, spikes, forensics: part of the loop, always on
        self.callbacks = list(callbacks)
        self.show_progress = show_progress
        self.ranks = distributed.current()
        self.device = distributed.rank_device(pick_device(cfg.device), self.ranks)
        self.dtype = pick_precision(cfg.precision, self.device)
        mcfg = model_config(cfg)  # the preset with the architecture flags applied
        if dataset.tokenizer.vocab_size > mcfg.d_vocab:
            raise ValueError(f"tokenizer has {dataset.tokenizer.vocab_size} tokens but preset {cfg.preset} "
                             f"has d_vocab {mcfg.d_vocab}; pass a smaller --vocab-size")
        torch.manual_seed(cfg.seed)
        self.model = GuppyLM(mcfg).to(self.device)
        # --freeze before the optimizer and DDP see the parameters; --ablate's hooks come and go by step
        self.interventions = Interventions(self.model, cfg, dataset.tokenizer.pad_id)
        self.train_model = distributed.wrap(self.model, self.device)  # what the training step calls
        if self.ranks.rank:  # dropout masks differ between ranks; rank 0 keeps the one-process stream
            torch.manual_seed(cfg.seed + 7919 * self.ranks.rank)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.pass_lengths = np.minimum(dataset.train.lengths, mcfg.n_ctx + 1)  # as collate cuts them
        self.steps_per_epoch = len(self._epoch_steps(0))
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        # loop position: everything needed to continue exactly where a stop left off
        self.step, self.epoch, self.epoch_step, self.tokens, self.elapsed = 0, 0, 0, 0, 0.0
        self.window_loss, self.window_steps = 0.0, 0  # training loss summed since the last metrics row
        self.step_loss = float("nan")  # the loss of the step just taken (or just broken)
        self.metrics = run_writer.MetricsWriter(self.run_dir / METRICS_CSV)
        self.last_checkpoint: Path | None = None

    # ---- data order --------------------------------------------------------------------------

    def _epoch_steps(self, epoch: int) -> list[np.ndarray]:
        """The chats of each optimizer step of a pass: random draws of batch_size x grad_accum."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return random_batches(len(self.data.train), self.cfg.batch_size * self.cfg.grad_accum, rng)

    def _steps(self):
        """Yield each step's chats as its forward passes (sorted by length inside the step and cut
        where padding would cost more than a pass), from the current position on, crossing epochs."""
        while True:
            steps = self._epoch_steps(self.epoch)
            while self.epoch_step < len(steps):
                self.epoch_step += 1
                yield step_passes(steps[self.epoch_step - 1], self.pass_lengths, self.cfg.batch_size)
            self.epoch, self.epoch_step = self.epoch + 1, 0

    def _collate_share(self, idx: np.ndarray):
        """This rank's part of global batch `idx`, collated. A rank left without a chat (a short
        last batch) runs one with an empty loss mask: it must still take part in the all-reduce."""
        own = self.ranks.shard(idx)
        inputs, targets, mask = collate(self.data.train, own if len(own) else idx[:1], self.data.tokenizer.pad_id,
                                        self.model.cfg.n_ctx, self.cfg.loss_on == "reply")
        if not len(own):
            mask[:] = False
        return inputs, targets, mask

    # ---- resume ------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the newest checkpoint that has its training state. Under torchrun rank 0 reads it
        and sends it to the other ranks, whatever their number: the loop position counts global
        batches, so a run may continue on more or fewer ranks than it started on."""
        def read() -> dict:
            usable = [p for p in list_checkpoints(self.run_dir).values() if state_path(p).exists()]
            if not usable:
                raise ValueError(f"{self.run_dir}: no checkpoint with training state to resume from")
            _, tensors, _ = read_weights(usable[-1])
            self.model.load_state_dict(tensors)
            loop = load_state(state_path(usable[-1]), self.optimizer, self.scaler)
            self.last_checkpoint = usable[-1]
            self.metrics.truncate_after(loop["step"])
            if self.ranks.world_size == 1:
                return {"loop": loop}
            return {"loop": loop, "model": tensors, "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict()}

        state = distributed.share(read)
        if not self.ranks.is_main:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        loop = state["loop"]
        self.step, self.epoch = loop["step"], loop["epoch"]
        # a checkpoint from before steps were drawn whole counted micro-batches of its pass
        self.epoch_step = loop["epoch_step"] if "epoch_step" in loop else loop["batch_index"] // self.cfg.grad_accum
        self.tokens, self.elapsed = loop["tokens"], loop["elapsed"]
        self.window_loss, self.window_steps = loop["window_loss"], loop["window_steps"]

    def save_checkpoint(self) -> Path:
        path = checkpoint_path(self.run_dir, self.step)
        save_weights(self.model, path, self.step, {"epoch": str(self.epoch), "tokens": str(self.tokens)})
        loop = {"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                "tokens": self.tokens, "elapsed": self.elapsed,
                "window_loss": self.window_loss, "window_steps": self.window_steps}
        save_state(state_path(path), self.optimizer, loop, self.scaler)
        for old in list_checkpoints(self.run_dir).values():  # keep one training state: it is large
            if old != path:
                state_path(old).unlink(missing_ok=True)
        self.last_checkpoint = path
        run_writer.update_run_json(self.run_dir, step=self.step, last_checkpoint=path.name)
        return path

    # ---- the loop ----------------------------------------------------------------------------

    def fit(self) -> str:
        cfg, model = self.cfg, self.model
        main = self.ranks.is_main  # only rank 0 writes the run folder
        if main:
            run_writer.update_run_json(self.run_dir, status="running", total_steps=self.total_steps, device=str(self.device),
                                     precision=str(self.dtype).replace("torch.", ""), world_size=self.ranks.world_size)
        interrupts = distributed.defer_interrupts()  # under torchrun, every rank stops after the same step
        stream = self._steps()
        bar = run_writer.progress(self.total_steps, self.step, self.show_progress)
        window_tokens, window_start = 0, time.perf_counter()
        status, position = "finished", None
        try:
            self.interventions.at_step(self.step)  # a step-0 snapshot sees the model its first step trains
            for cb in self.callbacks:
                cb.on_train_start(self.view())
            self.watchdog.on_train_start(self)
            snapshot_evals, self.snapshot_eval_s = self._snapshot_evals(), 0.0
            if main and self.step == 0 and 0 in snapshot_evals:  # a resumed run has its rows already
                self._snapshot_eval()
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                position = (self.epoch, self.epoch_step)  # restored if this step is interrupted
                model.train()
                self.interventions.at_step(self.step)
                micro = next(stream)  # the step's global micro-batches of chat indices
                # the loss is a mean over the target tokens of the whole step, on every rank together;
                # tokens seen are the chats' real inputs (padding aside): both the same on every rank
                n_targets = sum(count_targets(self.data.train, idx, model.cfg.n_ctx, cfg.loss_on == "reply")
                                for idx in micro)
                n_tokens = sum(count_targets(self.data.train, idx, model.cfg.n_ctx, reply_only=False) for idx in micro)
                lr = lr_at(self.step, self.total_steps, cfg)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                loss_sum = 0.0
                for k, idx in enumerate(micro):
                    inputs, targets, mask = self._collate_share(idx)
                    x, y, m = (torch.from_numpy(a).to(self.device) for a in (inputs, targets, mask))
                    with distributed.no_sync(self.train_model, skip=k < len(micro) - 1):
                        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                            loss = target_loss(self.train_model, x, y, m) / n_targets
                        # DDP averages the gradients of the ranks; times world_size gives their sum
                        self.scaler.scale(loss * self.ranks.world_size).backward()
                    loss_sum += loss.item()
                loss_sum, stop = distributed.all_sum(loss_sum, interrupts.requested)
                if stop:
                    raise KeyboardInterrupt
                self.step_loss = loss_sum
                if not math.isfinite(loss_sum):
                    raise Diverged(f"loss became {loss_sum} at step {self.step + 1}")
                self.scaler.unscale_(self.optimizer)
                self.interventions.after_backward(self.optimizer)  # an ablated site gets no gradient
                for cb in self.callbacks:
                    cb.on_after_backward(self.view())
                norms = self.watchdog.on_after_backward(self)  # every parameter's gradient norm
                grad_norm = clip_by_norms(list(model.parameters()), norms, cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                position = None
                self.tokens += n_tokens
                self.elapsed += time.perf_counter() - t0
                self.window_loss += loss_sum
                self.window_steps += 1
                window_tokens += n_tokens
                for cb in self.callbacks:
                    cb.on_step_end(self.view())
                self.watchdog.on_step_end(self)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    row = {"step": self.step, "epoch": self.epoch_progress, "tokens": self.tokens, "lr": lr,
                           "loss": self.window_loss / self.window_steps, "grad_norm": grad_norm,
                           "tokens_per_s": tps, "elapsed_s": self.elapsed}
                    if main:
                        self.metrics.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{tps:,.0f}")
                    self.window_loss, self.window_steps = 0.0, 0
                    window_tokens, window_start = 0, time.perf_counter()
                bar.update(1)
                epoch_end = self.epoch_step == self.steps_per_epoch
                at_eval = (cfg.eval_every and self.step % cfg.eval_every == 0) or epoch_end \
                    or self.step == self.total_steps
                if at_eval and main:
                    self.evaluate()
                    self.save_checkpoint()
                elif main and self.step in snapshot_evals:  # the held-out curve, a point per snapshot
                    self._snapshot_eval()
        except Diverged:
            status = "diverged"
            self.optimizer.zero_grad(set_to_none=True)
            self.message = self.watchdog.diverged(self, micro)  # forensics written, the one line back
        except KeyboardInterrupt:
            status = "interrupted"
            self.optimizer.zero_grad(set_to_none=True)  # drop a half-done step and its batches
            if position is not None:
                self.epoch, self.epoch_step = position
            if main:
                self.save_checkpoint()
            self.message = f"interrupted at step {self.step}; continue with: guppy-train --resume {self.run_dir}"
        except BaseException as e:  # a bug or a full disk: say so in run.json, then let it surface
            if main:
                run_writer.update_run_json(self.run_dir, status="failed", step=self.step, message=f"{type(e).__name__}: {e}")
            raise
        else:
            self.message = f"finished {self.step} steps in {self.elapsed:.0f}s of training" + (
                f" (and {self.snapshot_eval_s:.0f}s of evals at its snapshots)" if self.snapshot_eval_s else "")
        finally:
            interrupts.restore()
            bar.close()
            self.metrics.close()
        if main:
            run_writer.update_run_json(self.run_dir, status=status, step=self.step, message=self.message)
        for cb in self.callbacks:
            cb.on_train_end(self.view(), status)
        self.watchdog.on_train_end(self, status)
        self.interventions.close()  # the model leaves the loop as its weights say, hooks off
        return status

    def view(self) -> TrainView:
        """What callbacks see of the run now."""
        return TrainView(self.run_dir, self.model, self.data, self.total_steps, self.steps_per_epoch,
                         self.step, self.epoch, self.epoch_step, self.tokens, self.elapsed)

    @property
    def epoch_progress(self) -> float:
        return round(self.epoch + self.epoch_step / self.steps_per_epoch, 4)

    def _snapshot_evals(self) -> set[int]:
        """The steps of the recorder's schedule, where an eval on `eval_at_snapshots` chats runs too."""
        cfg = self.cfg
        if not (cfg.record and cfg.eval_at_snapshots):
            return set()
        from guppy.record.recorder import snapshot_schedule

        return snapshot_schedule(self.total_steps, cfg.record_every, cfg.record_log_spaced)

    def _snapshot_eval(self) -> None:
        """The small eval at a snapshot step (eval_at_snapshots chats, SNAPSHOT_PERSONA_TOPICS topics), timed."""
        t = time.perf_counter()
        self.evaluate(chats=self.cfg.eval_at_snapshots, topics=SNAPSHOT_PERSONA_TOPICS)
        self.snapshot_eval_s += time.perf_counter() - t

    @torch.no_grad()
    def evaluate(self, chats: int | None = None, topics: int | None = None) -> dict:
        """Held-out loss and perplexity on `chats` held-out chats (default eval_chats), and the
        persona eval (on `topics` topics spread over all, default every topic); logged as a
        metrics row."""
        from guppy.evaluate import persona_eval

        model, cfg = self.model, self.cfg
        model.eval()
        split = self.data.eval
        idx = np.arange(min(chats or cfg.eval_chats, len(split)))
        total, count = 0.0, 0
        for s in range(0, len(idx), 64):
            inputs, targets, mask = collate(split, idx[s:s + 64], self.data.tokenizer.pad_id, model.cfg.n_ctx,
                                            cfg.loss_on == "reply")
            x, y, m = (torch.from_numpy(a).to(self.device) for a in (inputs, targets, mask))
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                total += float(target_loss(model, x, y, m))
            count += int(mask.sum())
        metrics = {"step": self.step, "epoch": self.epoch_progress, "tokens": self.tokens,
                   "eval_loss": total / count, "eval_ppl": math.exp(min(total / count, 50))}
        if cfg.eval_prompts:
            result = persona_eval(model, self.data.tokenizer, self.data.persona, self.data.chats.eval,
                                  per_topic=cfg.eval_prompts, topics=topics)
            metrics["persona_pass"] = result.pass_rate
        self.metrics.write(metrics)
        for cb in self.callbacks:
            cb.on_eval(self.view(), metrics)
        self.watchdog.on_eval(self, metrics)
        return metrics


def check_config(cfg: TrainConfig) -> None:
    """What TrainConfig cannot check alone, checked before anything is written: the model
    builds, --record-hooks names hook points it has, --ablate sites it has and --freeze globs
    parameters it has."""
    mcfg = model_config(cfg)  # a bad combination of architecture flags is one ValueError here
    with torch.device("meta"):  # names only: no memory, no initialisation
        meta = GuppyLM(mcfg)
    check_interventions(cfg, meta)
    if cfg.record:
        from guppy.record.recorder import stored_hooks

        stored_hooks(meta.hook_names, cfg.record_hooks)


def start_run(cfg: TrainConfig, callbacks=(), show_progress: bool = True, resume_dir: str | Path | None = None,
              cache_dir=None, resume_changes: dict | None = None) -> Trainer:
    """Create (or reopen, with `resume_dir`) a run folder and a Trainer for it. Under torchrun
    rank 0 names the folder and reads it; the other ranks are told. Every setting is checked
    before the run folder exists. `resume_changes` (a diverged run only: lr, warmup_steps,
    grad_clip, min_lr) are kept in run.json's history."""
    ranks = distributed.current()
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        cfg = distributed.share(lambda: resume_config(run_dir, resume_changes or {}))
    else:  # named, not made: the folder appears in write_new_run, after every check
        run_dir = distributed.share(lambda: run_writer.new_run_dir(cfg))  # one timestamp for all ranks
    if cfg.batch_size < ranks.world_size:
        raise ValueError(f"batch_size: {cfg.batch_size} chats per step cannot be shared by {ranks.world_size} "
                         f"ranks; --batch-size is the global batch, use {ranks.world_size} or more")
    check_config(cfg)
    data = distributed.main_first(lambda: load_dataset(data_config(cfg), cache_dir=cache_dir))
    if cfg.record and ranks.is_main:
        from guppy.record.recorder import Recorder

        callbacks = [*callbacks, Recorder(cfg.record_every, cfg.record_hooks, cfg.record_inputs, cfg.record_log_spaced)]
    trainer = Trainer(cfg, run_dir, data, callbacks, show_progress and ranks.is_main)
    if resume_dir is not None:
        trainer.resume()
    else:
        distributed.share(lambda: run_writer.write_new_run(run_dir, cfg, trainer.model.cfg, data))
    return trainer


def build_parser():
    """One flag per TrainConfig field, with its help; plus --resume and --quiet."""
    import argparse
    from dataclasses import fields

    from guppy.cli import ArgumentParser

    p = ArgumentParser(prog="guppy-train", description="Train a guppy model on a persona's chats.")
    for f in fields(TrainConfig):
        recipes = "".join(f"; --preset {name}: {r[f.name]}" for name, r in PRESET_RECIPES.items() if f.name in r)
        flag, help = f"--{f.name.replace('_', '-')}", f"{f.metadata['help']} (default: {f.default}{recipes})"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif f.metadata.get("repeat"):  # --ablate L0H3 --ablate L1.mlp: given_flags joins them
            p.add_argument(flag, action="append", default=None, help=help)
        else:
            p.add_argument(flag, type=type(f.default), default=None, choices=f.metadata.get("choices"), help=help)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the stopped run in RUN_DIR with its own config "
                   "(a diverged run: from its last good checkpoint, and --lr, --warmup-steps, --grad-clip, "
                   "--min-lr may change)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dist-backend", default="auto", choices=distributed.BACKENDS,
                   help="under torchrun: how ranks talk; auto = nccl for CUDA tensors where there are GPUs, "
                        "else gloo (default: auto)")
    return p


NOT_CONFIG = ("resume", "quiet", "dist_backend")  # guppy-train flags that are no TrainConfig field


def given_flags(args) -> dict:
    """The TrainConfig fields these parsed flags set; a repeated flag's values joined by commas."""
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in vars(args).items()
            if v is not None and k not in NOT_CONFIG}


def main(argv: list[str] | None = None) -> int:
    import sys

    from guppy.cli import run_main

    args = build_parser().parse_args(argv)
    given = given_flags(args)

    def body():
        cfg = TrainConfig() if args.resume else TrainConfig.for_preset(**given)  # a resumed run's flags: resume_config judges
        with distributed.process_group(args.dist_backend) as ranks:
            trainer = start_run(cfg, show_progress=not args.quiet, resume_dir=args.resume,
                                resume_changes=given if args.resume else None)
            n_params = sum(p.numel() for p in trainer.model.parameters())
            on = f"{ranks.world_size} ranks, {ranks.backend}" if ranks.world_size > 1 else trainer.device
            if ranks.is_main:
                print(f"run: {trainer.run_dir}  ({n_params:,} parameters, {on}, "
                      f"{str(trainer.dtype).replace('torch.', '')}, {trainer.total_steps} steps)", file=sys.stderr)
            status = trainer.fit()
        if ranks.is_main:
            line = trainer.message if status == "diverged" else f"{status}: {trainer.message}"  # "diverged at step N: ..."
            print(line, file=sys.stderr if status != "finished" else sys.stdout)
        return {"finished": 0, "interrupted": 130, "diverged": 3}[status]

    if distributed.is_main_process():
        return run_main("guppy-train", body)
    return distributed.run_quietly(body)  # rank 0 reports what went wrong


if __name__ == "__main__":
    raise SystemExit(main())

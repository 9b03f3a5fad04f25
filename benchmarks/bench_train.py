"""Training throughput: guppy's loop vs a plain reference loop of the same model, same run.

    python benchmarks/bench_train.py [--preset guppy] [--steps 12] [--device cuda]

Reference loop (what nanoGPT and the public fish do on a CPU): fp32, random batches padded to
the longest chat, torch's default AdamW (foreach). guppy's loop (the Trainer's step): the same
random draws of chats (a step's chats are one random draw: guppy.train.trainer), cut as the
Trainer cuts them into the forward passes that cost least (`guppy.data.dataset.step_passes`), the
Trainer's precision (`pick_precision("auto")`: bf16 autocast on a GPU, and on a CPU only where its
bf16 matmul is measured >= 1.5x its fp32), fused AdamW. More rows run guppy's loop in the other
precision, on each draw in one pass (padded to its longest chat, as the reference), and on
length-bucketed batches (chats of one length together: the Trainer's order before its steps were
random draws, kept to measure what the draws cost in padding). All
train on every target token, the same model, from the same initial weights.
Throughput counts non-padding target tokens per second. MFU compares the model FLOPs
(6 x matmul parameters per token, plus attention) to the peak of the loop's own precision (bf16
or fp32), measured here over the step's own matrix products (every linear map's forward and both
backward products at the step's sizes, the best of several runs of each, and a large square
product): a peak the step cannot beat, so an MFU above 100% would be a bug of this script, not a
fast CPU.

Health: a third loop is guppy's step with the Trainer's Watchdog (guppy.health.watchdog: health
signals every --log-every steps, the per-parameter ring buffer and finiteness check every
step), interleaved with the other two; its cost is printed against guppy's plain step, both
as the difference of the two loops and as the time spent inside the Watchdog's calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import load_note  # noqa: E402  (benchmarks/machine.py)

from guppy.config import model_config  # noqa: E402
from guppy.data.dataset import DataConfig, collate, load_dataset, padding_fraction, random_batches, step_passes  # noqa: E402
from guppy.health.watchdog import Watchdog  # noqa: E402
from guppy.model.transformer import GuppyLM  # noqa: E402
from guppy.train.trainer import (  # noqa: E402
    BF16_CPU_MIN_SPEEDUP,
    TrainConfig,
    build_optimizer,
    clip_by_norms,
    cpu_bf16_speedup,
    pick_precision,
    target_loss,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_products(cfg, rows: int, targets: int, device: torch.device) -> list[tuple[str, int, int, int]]:
    """(name, rows, in, out) of every linear map of a training step at `rows` positions (the
    unembedding at the `targets` decoded ones), and a large square product."""
    D, M, V = cfg.d_model, cfg.d_mlp, cfg.d_vocab
    square = 8192 if device.type == "cuda" else 2048
    return [("qkv", rows, D, 3 * D), ("attn out", rows, D, D), ("mlp in", rows, D, M), ("mlp out", rows, M, D),
            ("unembed", targets, D, V), ("square", square, square, square)]


def matmul_peak(dtype: torch.dtype, products, device: torch.device, reps: int = 5) -> tuple[float, str]:
    """The fastest FLOP/s among the step's products in `dtype`, each timed as the step runs it:
    forward x W^T, input gradient g W and weight gradient g^T x (W as a Linear holds it), the
    best of `reps` runs each; and which product gave it."""
    best, where = 0.0, ""
    for name, r, i, o in products:
        x, w, g = (torch.randn(*shape, dtype=dtype, device=device) for shape in ((r, i), (o, i), (r, o)))
        forms = {"forward": (x, w.T), "input grad": (g, w), "weight grad": (g.T, x)}
        if name == "square":  # one form: a large product is a large product (and slow where a dtype is)
            forms = {"forward": forms["forward"]}
        for form, (a, b) in forms.items():
            a @ b  # warm-up: the first call of a shape picks its kernel
            sync(device)
            for _ in range(reps):
                t = time.perf_counter()
                a @ b
                sync(device)
                flops = 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t)
                if flops > best:
                    best, where = flops, f"{name} {form} ({a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]})"
    return best, where


def length_bucketed(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 64) -> list:
    """The Trainer's batches before a step became a random draw: chats shuffled, sorted by length
    inside windows of `window` batches and cut, the batches shuffled (little padding, but a batch
    holds chats of one length, a biased sample of topics and templates)."""
    order, batches = rng.permutation(len(lengths)), []
    for s in range(0, len(order), batch_size * window):
        chunk = order[s:s + batch_size * window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def flops_per_token(cfg, mean_len: float) -> float:
    """Forward + backward FLOPs per token: 6 per matmul weight, plus attention scores and mix."""
    matmul_params = cfg.n_layers * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_vocab * cfg.d_model
    attention_fwd = cfg.n_layers * 2 * 2 * (mean_len / 2) * cfg.d_model  # QK^T and AV over ~T/2 causal keys
    return 6 * matmul_params + 3 * attention_fwd


def plain_loss(model, x, y, m) -> torch.Tensor:
    """nanoGPT's loss: logits at every position, padding ignored by the cross entropy."""
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")[m.flatten()].mean()


def guppy_loss(model, x, y, m) -> torch.Tensor:
    """The Trainer's loss: the unembedding runs at real target positions only."""
    return target_loss(model, x, y, m, reduction="mean")


class Watched:
    """The Trainer's Watchdog around this script's step: the same calls at the same points
    (after backward, after the update), through the few trainer attributes it reads."""

    def __init__(self, model, total_steps: int, log_every: int):
        run_dir = Path(tempfile.mkdtemp(prefix="bench-health-"))
        (run_dir / "run.json").write_text(json.dumps({}))
        device = next(model.parameters()).device
        self.view = SimpleNamespace(model=model, step=0, total_steps=total_steps, cfg=SimpleNamespace(log_every=log_every),
                                    scaler=torch.amp.GradScaler(device.type, enabled=False), step_loss=float("nan"),
                                    run_dir=run_dir, ranks=SimpleNamespace(is_main=True), callbacks=[], show_progress=False)
        self.dog = Watchdog(spike_factor=4.0)
        self.dog.on_train_start(self.view)
        self.seconds = 0.0  # inside the Watchdog's calls (its forward hooks excepted)

    def after_backward(self) -> torch.Tensor:
        t = time.perf_counter()
        norms = self.dog.on_after_backward(self.view)
        self.seconds += time.perf_counter() - t
        return norms

    def after_step(self, loss: float) -> None:
        t = time.perf_counter()
        self.view.step += 1
        self.view.step_loss = loss
        self.dog.on_step_end(self.view)
        self.seconds += time.perf_counter() - t


def train_step(model, opt, loss_fn, data, passes, pad_id, dtype, watch: Watched | None = None) -> int:
    """One optimizer step on the chats `passes` (one array of chat indices: one forward pass; a
    list of them: a pass each, the step's loss the mean over all their targets), loss on every
    real token; returns the non-padding target tokens it saw."""
    passes = passes if isinstance(passes, list) else [passes]
    device = next(model.parameters()).device
    batches = [tuple(torch.from_numpy(a).to(device) for a in collate(data.train, idx, pad_id, model.cfg.n_ctx,
                                                                       reply_only=False)) for idx in passes]
    total = sum(int(m.sum()) for _, _, m in batches)
    value = 0.0
    for x, y, m in batches:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(model, x, y, m) * (int(m.sum()) / total)
        loss.backward()
        value += loss.item()  # as the Trainer reads it (and the Watchdog's spike check needs it)
    if watch:  # as the Trainer: it clips by the norms the Watchdog took
        clip_by_norms(list(model.parameters()), watch.after_backward(), 1.0)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if watch:
        watch.after_step(value)
    return total


def run_loops(loops: dict, steps: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Steps of every loop in alternation (so drift hits all alike), after `warmup` steps each;
    returns {name: (target tokens per second, seconds per step)}."""
    seconds, targets = dict.fromkeys(loops, 0.0), dict.fromkeys(loops, 0)
    for i in range(warmup + steps):
        for name, (model, opt, loss_fn, batches, dtype, data, pad_id, *watch) in loops.items():
            model.train()
            device = next(model.parameters()).device
            sync(device)
            t = time.perf_counter()
            n = train_step(model, opt, loss_fn, data, batches[i], pad_id, dtype, *watch)
            sync(device)
            if i >= warmup:
                seconds[name] += time.perf_counter() - t
                targets[name] += n
    return {k: (targets[k] / seconds[k], seconds[k] / steps) for k in loops}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product",
              "aten::_flash_attention", "aten::_efficient_attention", "aten::linear")


def where_time_goes(loop: tuple, steps: int = 4) -> list[tuple[str, float]]:
    """The profiler's self time of a few steps of `loop` by operator, as shares of the total: the
    matrix products together, then the largest others."""
    from torch.profiler import ProfilerActivity, profile

    model, opt, loss_fn, batches, dtype, data, pad_id = loop[:7]
    cuda = next(model.parameters()).device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for idx in batches[-steps:]:
            train_step(model, opt, loss_fn, data, idx, pad_id, dtype)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    times = {e.key: getattr(e, attr) for e in prof.key_averages() if getattr(e, attr) > 0}
    total = sum(times.values()) or 1.0
    matmul = sum(t for k, t in times.items() if k.startswith(MATMUL_OPS))
    others = sorted(((k, t) for k, t in times.items() if not k.startswith(MATMUL_OPS)), key=lambda kv: -kv[1])
    return [("matrix products", matmul / total)] + [(k, t / total) for k, t in others[:4]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="guppy")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each loop")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=10, help="health rows every N steps, as guppy-train's default")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--skip-other-precision", action="store_true",
                   help="no row for the other precision (on a CPU without bf16 units a bf16 step is ~20x slower)")
    args = p.parse_args()

    device = torch.device(args.device)
    cfg = model_config(TrainConfig.for_preset(preset=args.preset))  # as guppy-train builds it: the recipe's dropout
    data = load_dataset(DataConfig(vocab_size=min(DataConfig().vocab_size, cfg.d_vocab)))  # demo: 2304 tokens
    pad = data.tokenizer.pad_id
    rng = np.random.default_rng(0)
    lengths = data.train.lengths
    draws = random_batches(len(lengths), args.batch_size, rng)  # the Trainer's steps, and the reference's
    capped = np.minimum(lengths, cfg.n_ctx + 1)  # as collate cuts them
    cut = [step_passes(idx, capped, args.batch_size) for idx in draws[:args.steps + 8]]  # the Trainer's passes
    bucketed = length_bucketed(lengths, args.batch_size, rng)
    fast_dtype = pick_precision("auto", device)
    other_dtype = torch.float32 if fast_dtype != torch.float32 else torch.bfloat16

    torch.manual_seed(0)
    ref = GuppyLM(cfg).to(device)
    copies = {}
    for name in ("ours", "other", "health", "bucketed", "whole"):
        copies[name] = GuppyLM(cfg).to(device)
        copies[name].load_state_dict(ref.state_dict())
    watch = Watched(copies["health"], args.steps + 2, args.log_every)
    tcfg = TrainConfig()
    # the reference loop: fp32, pad-to-longest random batches, loss on every token, plain AdamW
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=tcfg.lr, betas=(0.9, 0.95), weight_decay=tcfg.weight_decay)
    loops = {"ref": (ref, ref_opt, plain_loss, draws, torch.float32, data, pad),
             "ours": (copies["ours"], build_optimizer(copies["ours"], tcfg), guppy_loss, cut, fast_dtype, data, pad),
             "other": (copies["other"], build_optimizer(copies["other"], tcfg), guppy_loss, cut, other_dtype, data, pad),
             "health": (copies["health"], build_optimizer(copies["health"], tcfg), guppy_loss, cut, fast_dtype,
                        data, pad, watch),
             "whole": (copies["whole"], build_optimizer(copies["whole"], tcfg), guppy_loss, draws, fast_dtype, data, pad),
             "bucketed": (copies["bucketed"], build_optimizer(copies["bucketed"], tcfg), guppy_loss, bucketed,
                          fast_dtype, data, pad)}
    if args.skip_other_precision:
        del loops["other"]
    timed = run_loops(loops, args.steps)
    (ref_tps, _), (our_tps, our_step), (_, watched_step) = timed["ref"], timed["ours"], timed["health"]
    shares = where_time_goes(loops["ours"])

    timed_draws = draws[:args.steps + 2]
    inputs = capped - 1  # inputs (and targets) per chat
    rows = int(np.median([len(b) * inputs[b].max() for b in timed_draws]))
    targets = int(np.median([inputs[b].sum() for b in timed_draws]))
    products = step_products(cfg, rows, targets, device)
    (peak_bf16, where_bf16), (peak_fp32, where_fp32) = (matmul_peak(d, products, device)
                                                        for d in (torch.bfloat16, torch.float32))
    fpt = flops_per_token(cfg, float(lengths.mean()))
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"preset {args.preset}: {sum(p.numel() for p in ref.parameters()):,} parameters, dropout {cfg.dropout}, "
          f"batch {args.batch_size}, "
          f"{args.steps} timed steps, {threads}")
    # MFU against the peak of the precision the loop runs in (an fp32 loop against a CPU's bf16
    # peak, where bf16 is emulated, would read far above 100% and mean nothing)
    peaks = {torch.bfloat16: peak_bf16, torch.float32: peak_fp32}
    print(f"{'loop':<50}{'s/step':>8}{'tokens/s':>11}{'MFU':>8}")
    table = (("reference (fp32, pad-to-longest)", torch.float32, *timed["ref"]),
             (f"guppy ({str(fast_dtype)[6:]}, random draws cut; the Trainer's)", fast_dtype, *timed["ours"]),
             *([(f"guppy ({str(other_dtype)[6:]}, random draws cut)", other_dtype, *timed["other"])]
               if "other" in timed else []),
             (f"guppy ({str(fast_dtype)[6:]}, random draws, one pass)", fast_dtype, *timed["whole"]),
             (f"guppy ({str(fast_dtype)[6:]}, length-bucketed: before)", fast_dtype, *timed["bucketed"]))
    for name, dtype, tps, step in table:
        print(f"{name:<50}{step:>8.3f}{tps:>11,.0f}{tps * fpt / peaks[dtype]:>8.1%}")
    print(f"speedup (tokens/s): {our_tps / ref_tps:.2f}x   (target >= 2x)")
    passes = [p for c in cut[:args.steps + 2] for p in c]
    print(f"padding of the timed steps: random draws in one pass {padding_fraction(inputs, timed_draws):.1%}, cut into "
          f"the Trainer's passes {padding_fraction(inputs, passes):.1%} ({len(passes) / len(timed_draws):.1f} passes a "
          f"step), length-bucketed {padding_fraction(inputs, bucketed[:args.steps + 2]):.1%}; the Trainer's tokens/s "
          f"{our_tps / timed['whole'][0]:.2f}x one pass's, {our_tps / timed['bucketed'][0]:.2f}x the bucketed "
          f"batches'")
    if device.type == "cpu":
        print(f"bf16 / fp32 matmul speed measured by the Trainer's precision choice: {cpu_bf16_speedup():.2f}x "
              f"(bf16 autocast from {BF16_CPU_MIN_SPEEDUP}x)")
    print("where guppy's step spends its time (profiler, self time): "
          + ", ".join(f"{k} {v:.0%}" for k, v in shares))
    inside = watch.seconds / (args.steps + 2) / our_step  # its calls on every step, warmup included
    print(f"health signals + forensics ring (Watchdog, health row every {args.log_every} steps): "
          f"{watched_step / our_step - 1:+.1%} s/step against guppy's plain step, {inside:.1%} of a step inside "
          f"its calls   (target <= 2%)")
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    print(f"matmul peaks measured here over the step's products ({rows} rows, {targets} decoded): bf16 "
          f"{peak_bf16 / scale:.0f} {unit} ({where_bf16}), fp32 {peak_fp32 / scale:.0f} {unit} ({where_fp32}); "
          f"model FLOPs/token {fpt / 1e6:.1f} M")
    print(load_note())


if __name__ == "__main__":
    main()

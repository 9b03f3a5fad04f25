"""What observability costs: guppy's forward with no hooks, with a full cache, vs a plain forward.

    python benchmarks/bench_hooks.py [--preset guppy] [--batch 32] [--seq 128] [--repeats 7]
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_hooks.py   # torch's CPU allocator on huge pages

All figures come from this one run, on the same weights, fp32, no grad. A full cache keeps
every activation alive (about 1 GB here), so its cost is mostly the kernel handing out fresh
pages; torch's `THP_MEM_ALLOC_ENABLE=1` makes that several times cheaper (printed below).
Peak memory is measured in two child processes (one plain forward, one full-cache forward). The plain forward is
a hook-free nanoGPT-style module defined below (fused QKV, SDPA, F.layer_norm). TransformerLens
3.x is measured too when installed. Targets (issue 3): no hooks <= 1.02x plain, full cache
<= 1.15x, guppy full cache >= 1.5x faster than TransformerLens run_with_cache, KV-cached
generation of 64 tokens >= 5x faster than re-running the full forward per token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guppy.config import model_preset  # noqa: E402
from guppy.generate import generate  # noqa: E402
from guppy.model import GuppyLM  # noqa: E402


class PlainGPT(nn.Module):
    """The same architecture with no hooks and nothing optional: the baseline."""

    def __init__(self, model: GuppyLM):
        super().__init__()
        self.m = model  # shares the weights; uses none of its hook machinery

    def forward(self, tokens):
        m, cfg = self.m, self.m.cfg
        B, T = tokens.shape
        x = m.embed(tokens) + m.W_pos[:T]
        for blk in m.blocks:
            h = F.layer_norm(x, (cfg.d_model,), blk.ln1.w, blk.ln1.b, cfg.ln_eps)
            q, k, v = blk.attn.qkv(h).view(B, T, 3, cfg.n_heads, cfg.d_head).permute(2, 0, 3, 1, 4)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, cfg.d_model)
            x = x + blk.attn.out(z)
            h = F.layer_norm(x, (cfg.d_model,), blk.ln2.w, blk.ln2.b, cfg.ln_eps)
            x = x + blk.mlp.W_out(F.relu(blk.mlp.W_in(h)))
        x = F.layer_norm(x, (cfg.d_model,), m.ln_final.w, m.ln_final.b, cfg.ln_eps)
        return x @ m.embed.weight.T


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls, after two warmup calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median time of each function, measured in alternation so drift hits all alike."""
    for fn in fns.values():
        fn(), fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.inference_mode()
def greedy_batch(model, prompts: torch.Tensor, new: int, use_cache: bool) -> torch.Tensor:
    """Greedy continuation of a batch of equal-length prompts, with or without the KV cache."""
    seq, past = prompts, None
    for _ in range(new):
        if use_cache:
            logits, past = model(seq if past is None else seq[:, -1:], past_kv=past, return_kv=True)
        else:
            logits = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def peak_rss_mb(args, what: str) -> float:
    """Peak resident memory (MB) of a fresh process that runs one forward of `what`."""
    cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--seq", str(args.seq),
           "--memory-probe", what]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def memory_probe(args) -> None:
    torch.manual_seed(0)
    model = GuppyLM(model_preset(args.preset)).eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq))
    with torch.inference_mode():
        out = model.run_with_cache(tokens) if args.memory_probe == "cache" else PlainGPT(model)(tokens)
    del out
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) / 1024)  # kB -> MB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="guppy", help="model preset")
    p.add_argument("--batch", type=int, default=32, help="sequences per forward")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per variant (median reported)")
    p.add_argument("--memory-probe", choices=("plain", "cache"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    load_before = os.getloadavg()[0]

    torch.manual_seed(0)
    cfg = model_preset(args.preset)
    model = GuppyLM(cfg).eval()
    plain = PlainGPT(model).eval()
    tokens = torch.randint(0, cfg.d_vocab, (args.batch, args.seq))
    cache_bytes = {}

    def full_cache():
        _, cache = model.run_with_cache(tokens)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}
        cache_bytes["n"] = sum(storages.values())  # views (q/k/v of one matmul, pos_embed) counted once

    fns = {"plain": lambda: plain(tokens), "guppy": lambda: model(tokens), "guppy_cache": full_cache}
    tl = None
    try:
        from guppy.interop import to_transformer_lens

        tl = to_transformer_lens(model)
        fns |= {"tl": lambda: tl(tokens), "tl_cache": lambda: tl.run_with_cache(tokens)}
    except ImportError:
        pass
    with torch.inference_mode():
        torch.testing.assert_close(plain(tokens), model(tokens), atol=1e-4, rtol=1e-4)
        t = interleaved(fns, args.repeats)
        new = min(64, cfg.n_ctx // 2)  # 64 new tokens after a 32-token prompt on the guppy preset
        n_prompt = min(32, cfg.n_ctx - new)
        prompt = torch.randint(3, cfg.d_vocab, (n_prompt,)).tolist()
        gen_cached = timed(lambda: generate(model, prompt, new, temperature=0), 3)
        gen_full = timed(lambda: generate(model, prompt, new, temperature=0, use_kv_cache=False), 3)
        batch = torch.randint(3, cfg.d_vocab, (8, n_prompt))
        assert torch.equal(greedy_batch(model, batch, 8, True), greedy_batch(model, batch, 8, False))
        batch_cached = timed(lambda: greedy_batch(model, batch, new, True), 3)
        batch_full = timed(lambda: greedy_batch(model, batch, new, False), 3)

    base = t["plain"]
    print(f"preset {args.preset} ({model.num_params():,} params), batch {args.batch} x {args.seq}, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'forward':<44}{'ms':>9}{'x plain':>9}  target")
    rows = [("plain (no hook machinery)", base, ""), ("guppy, no hooks attached", t["guppy"], "<= 1.02x"),
            (f"guppy, full cache ({len(model.hook_names)} hook points)", t["guppy_cache"], "<= 1.15x")]
    if tl is not None:
        rows += [("TransformerLens forward", t["tl"], ""), ("TransformerLens run_with_cache", t["tl_cache"], "")]
    for name, sec, target in rows:
        print(f"{name:<44}{sec * 1e3:>9.1f}{sec / base:>9.3f}  {target}")
    if tl is not None:
        print(f"guppy full cache vs TransformerLens run_with_cache: {t['tl_cache'] / t['guppy_cache']:.2f}x faster "
              f"(target >= 1.5x)")
    print(f"generation of {new} tokens (prompt {n_prompt}): KV cache {gen_cached * 1e3:.0f} ms, full forward per token "
          f"{gen_full * 1e3:.0f} ms: {gen_full / gen_cached:.1f}x faster (target >= 5x)")
    print(f"  the same for a batch of 8 prompts: KV cache {batch_cached * 1e3:.0f} ms, full forward "
          f"{batch_full * 1e3:.0f} ms: {batch_full / batch_cached:.1f}x faster")
    rss_plain, rss_cache = peak_rss_mb(args, "plain"), peak_rss_mb(args, "cache")
    print(f"full cache holds {cache_bytes['n'] / 2**20:.0f} MB of activations; peak RSS of a process running one "
          f"forward: plain {rss_plain:.0f} MB, full cache {rss_cache:.0f} MB (+{rss_cache - rss_plain:.0f} MB)")
    cores, load = os.cpu_count(), max(load_before, os.getloadavg()[0])
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; load average {load:.1f} on "
          f"{cores} cores" + ("  ** other processes compete for the CPU: timings are noisy **" if load > cores else ""))


if __name__ == "__main__":
    main()

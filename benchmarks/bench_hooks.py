"""What observability costs: guppy's forward with no hooks, with a full cache, vs a plain forward.

    python benchmarks/bench_hooks.py [--preset guppy] [--batch 32] [--seq 128] [--repeats 7] [--gen-repeats 2]

Targets (issue 3), same run, CPU, guppy preset, batch 32 x 128, fp32, each a ratio to a plain forward of
the same weights (a hook-free nanoGPT-style module defined below: fused QKV, SDPA, F.layer_norm):
no hooks <= 1.02x; full cache of every hook point <= 1.15x; guppy's full cache >= 1.5x faster than
TransformerLens `run_with_cache` (measured here when TransformerLens 3.x is installed, printed both for
all hook points and for the points TransformerLens itself caches, which exclude hook_result); KV-cached
generation of 64 tokens >= 5x faster than re-running the full forward each step (batch 1, 8, and 32 prompts
of 64 tokens, which fills the 128-token context of the forward config; greedy, outputs asserted equal);
peak memory of a full cache.

Timings are medians of calls interleaved in one process, so drift and other load hit every variant alike;
the load average is printed with each section, since on a shared machine it moves every figure.
What a full cache costs beyond the extra arithmetic (explicit attention for the pattern, unfused
LayerNorm for its scale, the per-head result) is the kernel handing out fresh pages for the activations
it keeps. glibc gives allocations over 32 MB (each layer's hook_result) back to the kernel when freed, so
every call faults them in again; the last section re-measures in child processes started with torch's
THP_MEM_ALLOC_ENABLE=1 or with glibc told to keep freed memory (MALLOC_MMAP_THRESHOLD_/
MALLOC_TRIM_THRESHOLD_). Both are process-wide allocator settings (glibc's can also be changed in a running
process through mallopt), so they are left to the program that embeds guppy, not switched on by a library.
Whether glibc hands the pages back varies between otherwise identical processes: the default row has
measured anywhere from 0 to ~260,000 faults per full-cache call (1.08x to 1.87x) on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import load_note  # noqa: E402  (benchmarks/machine.py)

from guppy.config import model_preset  # noqa: E402
from guppy.model.generate import generate  # noqa: E402
from guppy.model.transformer import GuppyLM  # noqa: E402


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


ALLOCATORS = {  # child-process environments for the allocator section
    "default": {},
    "THP_MEM_ALLOC_ENABLE=1": {"THP_MEM_ALLOC_ENABLE": "1"},
    "glibc keeps freed memory": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)},
}


def allocator_probe(args) -> None:
    """Child process: plain vs full cache, interleaved; prints ratios and page faults per call."""
    torch.manual_seed(0)
    model = GuppyLM(model_preset(args.preset)).eval()
    plain = PlainGPT(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq))
    no_result = [n for n in model.hook_names if not n.endswith("hook_result")]
    fns = {"plain": lambda: plain(tokens), "guppy": lambda: model(tokens),
           "cache": lambda: model.run_with_cache(tokens), "no_result": lambda: model.run_with_cache(tokens, no_result)}
    with torch.inference_mode():
        t = interleaved(fns, args.repeats)
        faults = {}
        for k, fn in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fn()
            faults[k] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"ms": {k: v * 1e3 for k, v in t.items()}, "faults": faults}))


def generation(model, batch: int, n_prompt: int, new: int, repeats: int) -> tuple[float, float]:
    """Seconds to greedily generate `new` tokens for `batch` random prompts, with the KV cache and with a
    full forward over the whole sequence at every step; both must produce the same tokens."""
    prompts = torch.randint(3, model.cfg.d_vocab, (batch, n_prompt))
    if batch == 1:  # the public API: guppy.model.generate on one prompt
        prompt = prompts[0].tolist()
        kv = lambda: generate(model, prompt, new, temperature=0)  # noqa: E731
        full = lambda: generate(model, prompt, new, temperature=0, use_kv_cache=False)  # noqa: E731
    else:
        kv = lambda: greedy_batch(model, prompts, new, True)  # noqa: E731
        full = lambda: greedy_batch(model, prompts, new, False)  # noqa: E731
    a, b = kv(), full()  # also the warm-up
    assert a == b if batch == 1 else torch.equal(a, b), "KV-cached and full-forward generation differ"
    times = {"kv": [], "full": []}
    for _ in range(repeats):
        for k, fn in (("kv", kv), ("full", full)):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return statistics.median(times["kv"]), statistics.median(times["full"])


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="guppy", help="model preset")
    p.add_argument("--batch", type=int, default=32, help="sequences per forward")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per forward variant (median reported)")
    p.add_argument("--gen-repeats", type=int, default=2, help="timed runs per generation variant (median reported)")
    p.add_argument("--skip-allocators", action="store_true", help="skip the allocator child processes")
    p.add_argument("--memory-probe", choices=("plain", "cache"), help=argparse.SUPPRESS)
    p.add_argument("--allocator-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    if args.allocator_probe:
        return allocator_probe(args)

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

    n_all = len(model.hook_names)
    fns = {"plain": lambda: plain(tokens), "guppy": lambda: model(tokens), "guppy_cache": full_cache}
    tl = None
    try:
        from guppy.bridges.transformer_lens import to_transformer_lens

        tl, tl_result = to_transformer_lens(model), to_transformer_lens(model)
        tl_result.set_use_attn_result(True)
        with torch.inference_mode():
            tl_names = [n for n in model.hook_names if n in tl.run_with_cache(tokens[:1, :4])[1]]
        fns |= {"guppy_tl_points": lambda: model.run_with_cache(tokens, names=tl_names),
                "tl": lambda: tl(tokens), "tl_cache": lambda: tl.run_with_cache(tokens),
                "tl_cache_result": lambda: tl_result.run_with_cache(tokens)}
    except ImportError:
        pass
    header = (f"preset {args.preset} ({model.num_params():,} params), batch {args.batch} x {args.seq}, fp32, "
              f"{torch.get_num_threads()} threads on {os.cpu_count()} cores, torch {torch.__version__}")
    print(header, flush=True)
    with torch.inference_mode():
        torch.testing.assert_close(plain(tokens), model(tokens), atol=1e-4, rtol=1e-4)
        load_before = load()
        # TransformerLens with use_attn_result keeps GBs of per-head results: timed on its own afterwards,
        # since interleaved with the others its allocations churn the heap for whatever runs next
        # (measured: guppy's full cache 1.13x -> 1.5x a plain forward when interleaved with it)
        slow = {k: fns.pop(k) for k in ["tl_cache_result"] if k in fns}
        t = interleaved(fns, args.repeats)
        t |= interleaved(slow, max(3, args.repeats // 2))
        load_after = load()

    base = t["plain"]
    print(f"\nforward, median of {args.repeats} interleaved calls ({load_before} before, {load_after} after)")
    print(f"{'':<70}{'ms':>8}{'x plain':>9}  target")
    rows = [("plain (no hook machinery)", "plain", ""), ("guppy, no hooks attached", "guppy", "<= 1.02x"),
            (f"guppy, full cache ({n_all} hook points)", "guppy_cache", "<= 1.15x")]
    if tl is not None:
        rows += [(f"guppy, cache of TransformerLens's {len(tl_names)} points (no hook_result)", "guppy_tl_points", ""),
                 ("TransformerLens forward", "tl", ""),
                 (f"TransformerLens run_with_cache ({len(tl_names)} points)", "tl_cache", ""),
                 (f"TransformerLens run_with_cache, use_attn_result ({len(tl_names) + cfg.n_layers} points)",
                  "tl_cache_result", "")]
    for name, key, target in rows:
        ok = "" if not target else ("  met" if t[key] / base <= float(target.split()[1][:-1]) else "  MISSED")
        print(f"{name:<70}{t[key] * 1e3:>8.1f}{t[key] / base:>9.3f}  {target}{ok}")
    if tl is not None:
        print("guppy vs TransformerLens (x faster; target >= 1.5x):")
        for name, ours, theirs in [(f"full cache ({n_all}) vs TL run_with_cache ({len(tl_names)})", "guppy_cache",
                                    "tl_cache"),
                                   (f"same {len(tl_names)} points vs TL run_with_cache", "guppy_tl_points", "tl_cache"),
                                   (f"full cache ({n_all}) vs TL run_with_cache with hook_result", "guppy_cache",
                                    "tl_cache_result")]:
            x = t[theirs] / t[ours]
            print(f"  {name:<64}{x:>6.2f}x  {'met' if x >= 1.5 else 'MISSED'}")

    new = min(64, cfg.n_ctx // 2)
    gens = [(1, min(32, cfg.n_ctx - new), "batch 1 (guppy.model.generate)"), (8, min(32, cfg.n_ctx - new), "batch 8"),
            (args.batch, cfg.n_ctx - new, f"batch {args.batch}, fills the {cfg.n_ctx}-token context")]
    print(f"\ngreedy generation of {new} tokens, KV cache vs a full forward over the whole sequence each step "
          f"(median of {args.gen_repeats}; outputs asserted equal; target >= 5x)")
    with torch.inference_mode():
        for batch, n_prompt, label in gens:
            before = load()
            kv, full = generation(model, batch, n_prompt, new, args.gen_repeats)
            print(f"  {label + f', prompt {n_prompt} + {new}':<56} KV cache {kv * 1e3:>7.0f} ms, full forward "
                  f"{full * 1e3:>7.0f} ms: {full / kv:>5.1f}x  {'met' if full / kv >= 5 else 'MISSED'}  "
                  f"({before} before, {load()} after)", flush=True)

    rss_plain, rss_cache = peak_rss_mb(args, "plain"), peak_rss_mb(args, "cache")
    print(f"\nmemory: the full cache holds {cache_bytes['n'] / 2**20:.0f} MB of activations; peak RSS of a process "
          f"running one forward: plain {rss_plain:.0f} MB, full cache {rss_cache:.0f} MB "
          f"(+{rss_cache - rss_plain:.0f} MB)")

    if not args.skip_allocators:
        print(f"\nallocator settings (child processes, median of {args.repeats}; ratios to their own plain forward;"
              f" faults = minor page faults in one call, 4 KiB each unless huge pages)")
        for label, env in ALLOCATORS.items():
            before = load()
            cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--seq",
                   str(args.seq), "--repeats", str(args.repeats), "--allocator-probe"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ | env).stdout
            r = json.loads(out.splitlines()[-1])
            ms, f = r["ms"], r["faults"]
            x = {k: v / ms["plain"] for k, v in ms.items()}
            print(f"  {label:<26} plain {ms['plain']:6.1f} ms ({f['plain']:>6} faults); no hooks {x['guppy']:.3f}x; "
                  f"full cache {x['cache']:.3f}x ({f['cache']:>6} faults); without hook_result {x['no_result']:.3f}x  "
                  f"({before} before, {load()} after)", flush=True)
    print("\n" + load_note())


if __name__ == "__main__":
    main()

"""What opening the fish in TransformerLens costs: building the bridge, and its forward against ours.

    .venv-tl4/bin/python benchmarks/bench_bridges.py [--preset guppy] [--batch 8] [--seq 128] [--repeats 7]
    .venv/bin/python benchmarks/bench_bridges.py      # TransformerLens 3.x: the HookedTransformer instead

Prints, for the installed TransformerLens: the time to_transformer_lens takes (for 4.x split into the
transformers model it is built on and TL's build_bridge_from_module), then a plain forward and a
run_with_cache of every hook point, ours and TL's, with TL's as a ratio to ours. Timings are medians of
calls interleaved in one process, so drift and other load hit both alike; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from guppy.bridges.transformer_lens import tl_version, to_transformer_lens
from guppy.config import model_preset
from guppy.model.transformer import GuppyLM


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="guppy", help="model preset (default guppy, 8.7M parameters)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    model = GuppyLM(model_preset(args.preset)).eval()
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, min(args.seq, model.cfg.n_ctx)))
    tl = tl_version()
    print(f"TransformerLens {tl}, preset {args.preset} ({model.num_params() / 1e6:.1f}M parameters), "
          f"batch {tuple(tokens.shape)}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")

    builds = [seconds(lambda: to_transformer_lens(model)) for _ in range(3)]
    print(f"to_transformer_lens: {statistics.median(builds):.2f} s (median of 3)")
    if tl.startswith("4."):
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        from guppy.bridges.export import transformers_model

        hf_s = statistics.median(seconds(lambda: transformers_model(model)) for _ in range(3))
        hf = transformers_model(model)
        bridge_s = seconds(lambda: build_bridge_from_module(hf, type(hf).__name__, hf_config=hf.config))
        print(f"  of which the transformers model {hf_s:.2f} s, build_bridge_from_module {bridge_s:.2f} s")
    bridge = to_transformer_lens(model)

    runs = {"ours forward": lambda: model(tokens), "TL forward": lambda: bridge(tokens),
            "ours run_with_cache": lambda: model.run_with_cache(tokens), "TL run_with_cache": lambda: bridge.run_with_cache(tokens)}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(seconds(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    for kind in ("forward", "run_with_cache"):
        ours, theirs = median[f"ours {kind}"], median[f"TL {kind}"]
        print(f"{kind:>15}: ours {ours * 1e3:7.1f} ms, TL {theirs * 1e3:7.1f} ms ({theirs / ours:.2f}x ours)")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

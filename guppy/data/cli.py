"""`guppy-data`: generate a persona's chats, train the tokenizer, print statistics and samples.

    guppy-data --persona fish --samples 5
"""

from __future__ import annotations

import random
import sys
import time

from guppy.cli import ArgumentParser, positive_int, run_main
from guppy.data.dataset import DataConfig, load_dataset


def build_parser() -> ArgumentParser:
    d = DataConfig()
    p = ArgumentParser(prog="guppy-data", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--persona", default=d.persona, help="shipped persona name (fish, fern) or path to a persona .toml file")
    # the flags guppy-train has for the same settings (--chats and --seed are their old names here)
    p.add_argument("--n-chats", "--chats", dest="n_chats", type=positive_int, default=d.n_chats,
                   help="total chats, split equally over topics (default %(default)s)")
    p.add_argument("--data-seed", "--seed", dest="data_seed", type=int, default=d.seed,
                   help="seed of the generated chats (default %(default)s)")
    p.add_argument("--vocab-size", type=positive_int, default=d.vocab_size, help="BPE target vocabulary size (default %(default)s)")
    p.add_argument("--memory-fraction", type=float, default=d.memory_fraction,
                   help="share of multi-turn memory chats, from the persona's [memory] tables (default %(default)s)")
    p.add_argument("--samples", type=int, default=5, help="how many eval chats to print (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="where token arrays are cached (default $GUPPY_CACHE_DIR or ~/.cache/guppy)")
    p.add_argument("--no-cache", action="store_true", help="regenerate everything and write no cache")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        cfg = DataConfig(persona=args.persona, n_chats=args.n_chats, seed=args.data_seed, vocab_size=args.vocab_size,
                         memory_fraction=args.memory_fraction)
        t0 = time.perf_counter()
        ds = load_dataset(cfg, cache_dir=args.cache_dir, use_cache=not args.no_cache)
        elapsed = time.perf_counter() - t0
        where = f"cache {ds.cache_dir}" if ds.cache_dir else "not cached"
        print(f"dataset ready in {elapsed:.2f}s ({where})")
        width = max(map(len, ds.stats))
        for key, value in ds.stats.items():
            print(f"  {key:<{width}}  {value}")
        rng = random.Random(args.data_seed)
        for chat in rng.sample(ds.chats.eval, min(args.samples, len(ds.chats.eval))):
            print(f"\n[{chat.topic}]")
            for user, reply in (*chat.history, (chat.prompt, chat.reply)):
                print(f"  user: {user}\n  {ds.persona.name}: {reply}")

    return run_main("guppy-data", body)


if __name__ == "__main__":
    sys.exit(main())

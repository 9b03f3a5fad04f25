"""Data at scale: peak memory, time and disk of building the dataset and of starting to train
on it, at 1x and 10x the default 60,000 chats, measured in the same run.

    python benchmarks/bench_data.py                  # 60,000 and 600,000 chats (~3 min on 2 cores)
    python benchmarks/bench_data.py --scales 1,10,30 # and 1.8M

Every figure comes from a fresh process whose own peak resident memory is read when it ends
(os.wait4), so one measurement never inherits another's high-water mark:

    floor   python importing torch and guppy.train.trainer: what any run costs before data
    build   guppy-data --n-chats N (generate, train the tokenizer, tokenize, write the cache)
    load    load_dataset from that cache (what every training process does first)
    train   guppy-train --preset demo --n-chats N --steps 20 from that cache

Peak RSS counts the pages of the memory-mapped token files a process has touched, so "train"
includes what 20 steps read. The cache is built in a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHATS = 60_000
VOCAB = 2304  # the demo preset's d_vocab: guppy-train --preset demo asks for this tokenizer


def measure(args: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one fresh Python process running `args`."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"bench_data: {' '.join(args[:3])} failed ({proc.returncode}):\n{out.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is KiB on Linux


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="1,10", help="multiples of the default 60,000 chats (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="training steps of the 'train' measurement (default %(default)s)")
    args = p.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    env = os.environ | {"PYTHONPATH": str(ROOT), "GUPPY_CACHE_DIR": str(tmp / "cache")}
    try:
        floor, _ = measure(["-c", "import torch, guppy.train.trainer"], env)
        print(f"floor (python + torch + guppy.train.trainer imported): {floor:,.0f} MiB peak RSS\n")
        print(f"{'chats':>9} {'step':>6} {'peak MiB':>9} {'seconds':>8}  notes")
        for scale in scales:
            n = int(DEFAULT_CHATS * scale)
            before = set((tmp / "cache").glob("*")) if (tmp / "cache").exists() else set()
            rss, wall = measure(["-m", "guppy.data.cli", "--n-chats", str(n), "--vocab-size", str(VOCAB),
                                 "--samples", "0"], env)
            (folder,) = set((tmp / "cache").glob("*")) - before
            tokens = (folder / "train.tokens.npy").stat().st_size
            print(f"{n:>9,} {'build':>6} {rss:>9,.0f} {wall:>8.1f}  cache {folder_bytes(folder) / 2**20:,.0f} MiB on disk "
                  f"(train tokens {tokens / 2**20:,.0f} MiB)")
            code = (f"import numpy as np; from guppy.data.dataset import DataConfig, load_dataset; "
                    f"ds = load_dataset(DataConfig(n_chats={n}, vocab_size={VOCAB})); "
                    f"assert isinstance(ds.train.tokens, np.memmap) and len(ds.train) > 0")
            rss, wall = measure(["-c", code], env)
            print(f"{n:>9,} {'load':>6} {rss:>9,.0f} {wall:>8.1f}  memory-mapped; train chats left on disk")
            rss, wall = measure(["-m", "guppy.train.trainer", "--preset", "demo", "--n-chats", str(n), "--steps", str(args.steps),
                                 "--eval-prompts", "0", "--eval-chats", "64", "--runs-dir", str(tmp / "runs"),
                                 "--run-name", f"x{scale:g}", "--quiet"], env)
            print(f"{n:>9,} {'train':>6} {rss:>9,.0f} {wall:>8.1f}  demo preset, {args.steps} steps from the cache")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The CPU's two settings: whether it runs bf16 fast enough to use it (measured, once per process),
and how many threads torch uses.

    if cpu_bf16_speedup() >= BF16_CPU_MIN_SPEEDUP: ...   # the Trainer's "auto" precision, the timeline's ablations
    with torch_threads(1): ...                            # the probes' and commands' --threads
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# bf16 matmuls are much faster than fp32 (AMX). CPUs that merely have AVX512-BF16 differ: on some
# bf16 is slower than fp32, so it is measured here (cpu_bf16_speedup; benchmarks/bench_train.py prints both peaks).
BF16_CPU_MIN_SPEEDUP = 1.5


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies a training step's matrices in bf16 than in fp32
    (2048 x 384 by 384 x 1536, best of 3 after a warm-up; ~0.1 s, once per process)."""
    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(2048, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
        a @ b
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)
    return best(torch.float32) / best(torch.bfloat16)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on `threads` threads inside the block; the previous count is restored after.

    One thread is often the faster choice here: the models are small, and each parallel region
    on a busy 2-core machine waits for a descheduled second thread (benchmarks/bench_hooks.py and
    the probes' --threads flag measure it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

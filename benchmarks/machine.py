"""What the benchmarks say about the machine they ran on (imported by the bench_*.py scripts)."""

from __future__ import annotations

import os


def load_note(load: float | None = None) -> str:
    """'load average X on N cores', flagged when other processes compete for the CPU: a
    benchmark's own threads raise the load to at most the core count."""
    load = os.getloadavg()[0] if load is None else load
    cores = os.cpu_count()
    return f"load average {load:.1f} on {cores} cores" + (
        "  ** other processes compete for the CPU: timings are noisy **" if load > cores else "")

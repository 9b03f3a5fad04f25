"""What the benchmarks say about the machine they ran on (imported by the bench_*.py scripts)."""

from __future__ import annotations

import os


def cpu_name() -> str:
    """The CPU's model name and its bf16 matrix units, as /proc/cpuinfo says (benchmarks differ by CPU)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    units = [u for u in ("amx_bf16", "avx512_bf16") if f" {u}" in info]
    return f"{name} ({', '.join(units) or 'no bf16 units'})"


def load_note(load: float | None = None) -> str:
    """'<CPU>; load average X on N cores', flagged when other processes compete for the CPU: a
    benchmark's own threads raise the load to at most the core count."""
    load = os.getloadavg()[0] if load is None else load
    cores = os.cpu_count()
    return f"{cpu_name()}; load average {load:.1f} on {cores} cores" + (
        "  ** other processes compete for the CPU: timings are noisy **" if load > cores else "")

"""A 4-run sweep of short demo runs, one at a time against --parallel 2, measured in the same run:
wall time, runs per hour and the peak memory of the whole sweep (guppy-sweep and its runs).

    python benchmarks/bench_sweep.py                 # 4 runs of 40 demo steps, sequential then parallel
    python benchmarks/bench_sweep.py --steps 100 --repeats 2 --parallel 1,2,4

Each mode is a fresh `guppy-sweep` into a temporary runs folder (deleted at the end), with
OMP_NUM_THREADS unset so that guppy-sweep splits the cores itself (cores / N threads per run).
Modes alternate when --repeats > 1, so a change in the machine's load hits every mode alike.
Peak memory is the largest sum of resident memory over guppy-sweep and every process below it,
sampled every 0.1 s from /proc (Linux): what N runs at once cost together. A warm-up run builds
the data cache first, so no mode pays for generating the chats.
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
sys.path.insert(0, str(ROOT))

from machine import load_note  # noqa: E402  (benchmarks/machine.py)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, MiB (0 for processes gone meanwhile)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        ppid = int(fields.get("PPid", "0").strip() or 0)
        children.setdefault(ppid, []).append(int(d.name))
        rss[int(d.name)] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024


def run_sweep(parallel: int, steps: int, runs_dir: Path, env: dict) -> tuple[float, float]:
    """(wall s, peak MiB) of one 4-run sweep."""
    name = f"bench-p{parallel}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "guppy.train.sweep", "--name", name, "--vary", "lr=2e-3,1e-3", "--seeds", "0,1",
           "--parallel", str(parallel), "--runs-dir", str(runs_dir),
           "--", "--preset", "demo", "--steps", str(steps), "--eval-prompts", "1", "--log-every", "10"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mib(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        sys.exit(f"bench_sweep: --parallel {parallel} failed ({proc.returncode}):\n{out[-3000:]}")
    shutil.rmtree(runs_dir / name)
    return wall, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps per run (default: 40)")
    p.add_argument("--parallel", default="1,2", help="modes to time, comma-separated (default: 1,2)")
    p.add_argument("--repeats", type=int, default=1, help="times each mode runs, alternating (default: 1)")
    args = p.parse_args()
    modes = [int(x) for x in args.parallel.split(",")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    cores = len(os.sched_getaffinity(0))
    print(f"bench_sweep: 4 runs of {args.steps} demo-preset steps (recorded), {cores} cores; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        runs_dir = Path(tmp)
        subprocess.run([sys.executable, "-m", "guppy.train.trainer", "--preset", "demo", "--steps", "1", "--eval-prompts", "0",
                        "--quiet", "--runs-dir", str(runs_dir / "warmup")], cwd=ROOT, env=env, check=True,
                       capture_output=True)  # builds the data cache if missing
        results: dict[int, list[tuple[float, float]]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for m in modes:
                results[m].append(run_sweep(m, args.steps, runs_dir, env))
                wall, peak = results[m][-1]
                print(f"  --parallel {m}: {wall:6.1f} s, peak {peak:,.0f} MiB", flush=True)
    print(f"\n{'mode':<14}{'threads/run':>12}{'wall s':>10}{'runs/hour':>11}{'peak MiB':>10}{'vs --parallel ' + str(modes[0]):>20}")
    base = min(w for w, _ in results[modes[0]])
    for m in modes:
        wall = min(w for w, _ in results[m])  # the least disturbed repeat
        peak = max(pk for _, pk in results[m])
        print(f"{'--parallel ' + str(m):<14}{max(1, cores // m):>12}{wall:>10.1f}{4 * 3600 / wall:>11.0f}{peak:>10,.0f}"
              f"{base / wall:>19.2f}x")
    print(f"({load_note()} at the end)")


if __name__ == "__main__":
    main()

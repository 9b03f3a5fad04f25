"""The probe scripts' shared runner: one command line, one way to open a run, pick snapshots and write outputs.

    def compute(run, steps, args):                    # the probe's science, on the chosen snapshots
        ...
        return {"": table}, figure                    # tables (CSV) and a plotly figure (HTML)

    def main(argv=None):
        return run_probe(PROG, "What it does.", compute, argv, output="my_probe",
                         extra_args=lambda p: p.add_argument("--chats", type=positive_int, default=64))

`run_probe` parses --run, --snapshot and --threads (plus the probe's own flags), opens the recorded
run, resolves the snapshot steps, runs `compute` on that many torch threads, writes the outputs
atomically under runs/<name>/probes/ and prints what it wrote; a user mistake is one line and exit 1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from guppy.cli import ArgumentParser, positive_int, run_main, torch_threads
from guppy.run.format import PROBE_OUTPUTS_DIR
from guppy.run.writer import atomic_write

Outputs = tuple[dict[str, pd.DataFrame], object]  # tables by key ("" = name.csv), a plotly figure or None


def run_probe(prog: str, description: str, compute: Callable[[object, list[int], argparse.Namespace], Outputs],
              argv: list[str] | None = None, *, output: str,
              extra_args: Callable[[ArgumentParser], object] | None = None, allow_all: bool = True) -> int:
    """A probe script's whole `main`: parse, open, compute on the snapshots, write, report (see the module doc)."""
    p = probe_parser(prog, description, allow_all)
    if extra_args is not None:
        extra_args(p)
    args = p.parse_args(argv)

    def body() -> None:
        t0 = time.perf_counter()
        run = open_recorded_run(args.run)
        steps = snapshot_steps(run, args.snapshot, allow_all)
        with torch_threads(args.threads):
            tables, fig = compute(run, steps, args)
        written = write_outputs(run, output, tables, fig)
        print(f"wrote {', '.join(str(w) for w in written)} ({time.perf_counter() - t0:.1f} s)")

    return run_main(prog, body)


def by_step(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-snapshot tables (each with a `step` column) as one, `step` first."""
    df = pd.concat(frames, ignore_index=True)
    return df[["step"] + [c for c in df.columns if c != "step"]]


# ---- command line and outputs ---------------------------------------------------------------


def probe_parser(prog: str, description: str, allow_all: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--run", required=True, help="a recorded run folder (guppy-train --record), e.g. runs/demo")
    which = ("a snapshot step, comma-separated steps (e.g. 16,178,891), 'latest' or 'all'" if allow_all
             else "a snapshot step or 'latest'")
    p.add_argument("--snapshot", default="latest", help=f"{which} (default latest)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: the models are small, and on a busy 2-core machine a second "
                        "thread mostly waits)")
    return p


def open_recorded_run(path: str):
    import guppy

    run = guppy.open_run(path)
    if not run.snapshot_files:
        raise ValueError(f"{run.path}: no snapshots (record the run with guppy-train --record)")
    return run


def snapshot_steps(run, spec: str, allow_all: bool = True) -> list[int]:
    """Steps named by --snapshot: 'latest', one step, or (where allowed) 'all' or steps separated by
    commas (a few log-spaced snapshots: the slow probes on every snapshot of a long run take minutes)."""
    steps = list(run.snapshot_files)
    if spec == "latest":
        return [steps[-1]]
    parts = spec.split(",")
    if not allow_all and (spec == "all" or len(parts) > 1):
        raise ValueError(f"--snapshot {spec}: more than one snapshot is not supported by this probe; "
                         "give a step or 'latest'")
    if spec == "all":
        return steps
    chosen = [int(p) if p.strip().isdigit() else None for p in parts]
    if any(step not in steps for step in chosen):
        many = ", all, steps separated by commas" if allow_all else ""
        raise ValueError(f"--snapshot {spec!r}: expected 'latest'{many} or one of steps {', '.join(map(str, steps))}")
    return sorted(set(chosen))


def output_dir(run) -> Path:
    out = Path(run.path) / PROBE_OUTPUTS_DIR
    out.mkdir(exist_ok=True)
    return out


def write_outputs(run, name: str, tables: dict[str, pd.DataFrame], fig=None) -> list[Path]:
    """`name.csv` (table key "") or `name_<key>.csv` per table, and `name.html` from a plotly figure.
    The HTML loads plotly.min.js from the same folder (written once), so it works offline."""
    out, written = output_dir(run), []
    for key, df in tables.items():
        path = out / (f"{name}_{key}.csv" if key else f"{name}.csv")
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
        written.append(path)
    if fig is not None:
        path = out / f"{name}.html"
        atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=False, full_html=True, auto_play=False))
        # point at the shared bundle (plotly's "directory" mode would name it after the temp file)
        html = path.read_text().replace("<head>", '<head><script src="plotly.min.js"></script>', 1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(html))
        bundle = out / "plotly.min.js"
        if not bundle.exists():
            from plotly.offline import get_plotlyjs

            atomic_write(bundle, lambda tmp: Path(tmp).write_text(get_plotlyjs()))
        written.append(path)
    return written


def step_colours(steps) -> dict[str, str]:
    """One colour per snapshot step, early to late along Viridis, keyed by str(step) (plotly
    express's color_discrete_map); a discrete sequence would wrap and repeat past 10 steps."""
    from plotly.colors import sample_colorscale

    steps = sorted(steps)
    where = [i / max(len(steps) - 1, 1) for i in range(len(steps))]
    return dict(zip(map(str, steps), sample_colorscale("Viridis", where)))


def print_table(title: str, df: pd.DataFrame, rows: int = 12) -> None:
    print(title)
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.head(rows).to_string(index=False))



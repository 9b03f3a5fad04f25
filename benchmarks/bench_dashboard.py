"""Dashboard speed in a real browser (headless Chromium via Playwright, /usr/bin/chromium).

    python benchmarks/bench_dashboard.py --run runs/guppy20          # an existing recorded run
    python benchmarks/bench_dashboard.py --make runs/guppy20         # first record one: guppy preset, 20 snapshots

Measures, on a freshly started server:
  cold start   the first page load (Python imports of torch/streamlit/plotly included)
  first view   each view in a new browser page (that view's data read from disk: caches cold)
  slider move  ArrowLeft on the snapshot slider until the chart shows the other snapshot and
               the app is idle again (median and max of --moves moves; the first moves read
               files, later ones hit the cache)
Targets from the issue: first view < 3 s, slider move < 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboards import browser as B  # noqa: E402

# view: (charts on the page, index of the chart the slider redraws)
SLIDER_VIEWS = {"Attention": (2, 0), "Head metrics": (2, 0), "Residual stream": (3, 1)}
OTHER_VIEWS = {"Run overview": (2, 0), "Gradients": (4, 0)}


def make_run(path: Path) -> None:
    """The guppy preset with 20 snapshots (steps 0, 2, ..., 38): a few minutes on 2 CPU cores."""
    cmd = [str(Path(sys.executable).parent / "guppy-train"), "--preset", "guppy", "--persona", "fish",
           "--n-chats", "3000", "--steps", "38", "--batch-size", "16", "--record", "--record-every", "2",
           "--no-record-log-spaced", "--eval-prompts", "0", "--runs-dir", str(path.parent),
           "--run-name", path.name, "--quiet"]
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a recorded run folder to measure")
    ap.add_argument("--make", type=Path, help="record a 20-snapshot guppy-preset run here first, then measure it")
    ap.add_argument("--moves", type=int, default=6, help="slider moves per view (default: 6)")
    ap.add_argument("--screenshot", type=Path, default=ROOT / "runs" / "artifacts" / "bench-attention.png",
                    help="where to save a screenshot of the attention view")
    args = ap.parse_args(argv)
    if why := B.missing():
        sys.exit(f"bench_dashboard: cannot drive a browser: {why}")
    run = args.make or args.run
    if run is None:
        sys.exit("bench_dashboard: pass --run RUN_DIR (or --make RUN_DIR to record one)")
    if args.make and not (run / "run.json").exists():
        make_run(run)
    if not (run / "run.json").exists():
        sys.exit(f"bench_dashboard: {run}: not a run folder (no run.json)")

    base = f"?run={run.name}&view="
    rows = []
    with tempfile.TemporaryDirectory() as tmp, B.serve(run.parent, log=Path(tmp) / "streamlit.log") as url, \
            B.browser() as page:
        cold = B.load(page, url + base + "Attention", charts=2)
        rows.append(("cold start (Attention, imports included)", cold))
        for view, (n, chart) in {**SLIDER_VIEWS, **OTHER_VIEWS}.items():
            if view == "Attention":
                page.goto("about:blank")  # a new session: the view's session state starts empty
            t = B.load(page, url + base + view.replace(" ", "%20"), charts=n)
            if view != "Attention":
                rows.append((f"first view: {view}", t))
            else:
                rows.append(("first view: Attention (server warm)", t))
            if view in SLIDER_VIEWS:
                moves = [B.move_slider(page, "ArrowLeft", index=chart) for _ in range(args.moves)]
                rows.append((f"slider move: {view} (median of {len(moves)})", statistics.median(moves)))
                rows.append((f"slider move: {view} (max)", max(moves)))
            if view == "Attention":
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.screenshot))
            page.goto("about:blank")
    width = max(len(r[0]) for r in rows)
    print(f"dashboard on {run} (headless Chromium, this machine)")
    for what, seconds in rows:
        print(f"  {what:<{width}}  {seconds:6.2f} s")
    print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()

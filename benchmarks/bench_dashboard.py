"""Dashboard speed in a real browser (headless Chromium via Playwright, /usr/bin/chromium).

    python benchmarks/bench_dashboard.py --run runs/guppy20          # an existing recorded run
    python benchmarks/bench_dashboard.py --make runs/guppy20         # first record one: guppy preset, 20 snapshots
    python benchmarks/bench_dashboard.py --run runs/guppy20 --repeat 3   # median and max of 3 rounds
    python benchmarks/bench_dashboard.py --run runs/guppy20 --views Walkthrough   # one view and its interactions

What "first view" means here: from asking for the page to the script being idle with the
view's charts drawn. Rows:
  fresh browser + cold server   a browser with an empty HTTP cache (Streamlit's own ~MB of
                                JavaScript still to fetch and compile) on a server that has
                                served nothing yet: a floor no app code can lower (see below)
  cold server: start -> health  `streamlit run` started to its health check answering
  first view, cold server       the first page the server ever serves (this view's Python
                                imports and data reads included), browser cache warm
  first view, warm server       the server has served every view of another copy of the run
                                (imports done), this view's data still read from disk
  slider move                   ArrowLeft on the snapshot slider until the chart shows the other
                                snapshot and the app is idle again (the first moves read files)
  walkthrough: ...              the Walkthrough view's interactions, each until the page is redrawn
                                and idle: type a prompt (a new reply explained), move the reply-token
                                slider, put a second step side by side, move its slider (its model
                                and explanation new), and back to one step
  floor: empty app              the same two loads for a Streamlit page with two tiny charts
Targets from the issues: first view < 3 s, slider move < 0.5 s; each Walkthrough interaction <= 3 s
for the reference fish (a `guppy`-preset run: --make records one, at random-ish weights after 38 steps,
which costs the same to explain as a trained fish of that shape).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboards import browser as B  # noqa: E402

# view: (plotly charts on the page when drawn, index of the chart the slider redraws or None)
VIEWS = {"Attention": (2, 0), "Head metrics": (2, 0), "Residual stream": (3, 1), "Run overview": (2, None),
         "Gradients": (4, None), "Ablation": (1, None), "Walkthrough": (0, 2)}  # 0: walk_charts(run)
WALK_PROMPTS = ("do you like the cat?", "what is the meaning of life?")
FLOOR_APP = '''import plotly.graph_objects as go
import streamlit as st
st.set_page_config(page_title="floor", layout="wide")
st.title("floor")
for k in "ab":
    st.plotly_chart(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])), key=k)
'''


def make_run(path: Path) -> None:
    """The guppy preset with 20 snapshots (steps 0, 2, ..., 38): a few minutes on 2 CPU cores."""
    cmd = [str(Path(sys.executable).parent / "guppy-train"), "--preset", "guppy", "--persona", "fish",
           "--n-chats", "3000", "--steps", "38", "--batch-size", "16", "--record", "--record-every", "2",
           "--no-record-log-spaced", "--eval-prompts", "0", "--runs-dir", str(path.parent),
           "--run-name", path.name, "--quiet"]
    subprocess.run(cmd, check=True)


def link_copy(run: Path, dest: Path) -> None:
    """A copy of the run folder made of hard links (instant, no disk): another path, so the
    dashboard's caches see another run."""
    shutil.copytree(run, dest, copy_function=os.link)


def url_of(base: str, run: str, view: str) -> str:
    return f"{base}?run={run}&view={view.replace(' ', '%20')}"


def walk_charts(run: Path) -> int:
    """The Walkthrough's charts: tokens, embedding, one per layer, output, reply."""
    return json.loads((run / "run.json").read_text())["model_config"]["n_layers"] + 4


def walkthrough(page, charts: int, moves: int, rows: dict) -> None:
    """The Walkthrough's interactions, on the page as loaded (chart 2: layer 0's attention and pushes;
    sliders: 0 the step, 1 the reply token, or with two steps side by side 1 the other step)."""
    for prompt in WALK_PROMPTS:
        rows["walkthrough: type a prompt"].append(B.enter_text(page, "prompt (press Enter)", prompt, index=2))
    rows["walkthrough: reply-token slider"] += [B.move_slider(page, ("ArrowRight", "ArrowLeft")[j % 2], index=2, slider=1)
                                                for j in range(moves)]  # back and forth: a reply may be short
    rows["walkthrough: side by side on"].append(B.click_toggle(page, "side by side with another step", 2 * charts))
    rows["walkthrough: second step's slider"] += [B.move_slider(page, "ArrowRight", index=charts + 2, slider=1)
                                                  for _ in range(moves)]
    rows["walkthrough: side by side off"].append(B.click_toggle(page, "side by side with another step", charts))


def one_round(runs: Path, port: int, moves: int, rows: dict, log: Path, shot: Path | None, chosen: list[str]) -> None:
    views = {v: (c or walk_charts(runs / "measured"), i) for v, (c, i) in VIEWS.items() if v in chosen}
    with B.browser() as page:
        with B.serve(runs, log=log, port=port) as url:
            rows["fresh browser + cold server (Attention)"].append(B.load(page, url_of(url, "measured", "Attention"), 2))
        for view, (charts, _) in views.items():  # a new server per view; the browser cache is warm now
            page.goto("about:blank")
            t0 = time.perf_counter()
            with B.serve(runs, log=log, port=port) as url:
                rows["cold server: start -> health"].append(time.perf_counter() - t0)
                rows[f"first view, cold server: {view}"].append(B.load(page, url_of(url, "measured", view), charts))
        with B.serve(runs, log=log, port=port) as url:
            for view, (charts, _) in views.items():  # every import done, on another copy of the run
                page.goto("about:blank")
                B.load(page, url_of(url, "warmup", view), charts)
            for view, (charts, slider) in views.items():
                page.goto("about:blank")  # a new session: the view's session state starts empty
                rows[f"first view, warm server: {view}"].append(B.load(page, url_of(url, "measured", view), charts))
                if slider is not None:
                    rows[f"slider move: {view}"] += [B.move_slider(page, "ArrowLeft", index=slider) for _ in range(moves)]
                if view == "Walkthrough":
                    walkthrough(page, charts, moves, rows)
                if view == "Attention" and shot:
                    shot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shot))


def floor_round(tmp: Path, port: int, rows: dict, log: Path) -> None:
    app = tmp / "floor.py"
    app.write_text(FLOOR_APP)
    saved, B.APP = B.APP, app
    try:
        with B.browser() as page:
            with B.serve(tmp, log=log, port=port) as url:
                rows["floor: empty app, fresh browser + cold server"].append(B.load(page, url, 2))
            page.goto("about:blank")
            with B.serve(tmp, log=log, port=port) as url:
                rows["floor: empty app, cold server"].append(B.load(page, url, 2))
    finally:
        B.APP = saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a recorded run folder to measure")
    ap.add_argument("--make", type=Path, help="record a 20-snapshot guppy-preset run here first, then measure it")
    ap.add_argument("--moves", type=int, default=6, help="slider moves per view and round (default: 6)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds to run; rows give their median and max (default: 1)")
    ap.add_argument("--views", default=",".join(VIEWS),
                    help=f"comma-separated views to measure (default: all: {','.join(VIEWS)})")
    ap.add_argument("--screenshot", type=Path, default=ROOT / "runs" / "artifacts" / "bench-attention.png",
                    help="where to save a screenshot of the attention view")
    args = ap.parse_args(argv)
    if why := B.missing():
        sys.exit(f"bench_dashboard: cannot drive a browser: {why}")
    run = args.make or args.run
    if run is None:
        sys.exit("bench_dashboard: pass --run RUN_DIR (or --make RUN_DIR to record one)")
    if args.moves < 1 or args.repeat < 1:
        sys.exit("bench_dashboard: --moves and --repeat must be at least 1")
    chosen = [v.strip() for v in args.views.split(",")]
    if unknown := [v for v in chosen if v not in VIEWS]:
        sys.exit(f"bench_dashboard: --views: unknown {', '.join(unknown)}; expected some of {', '.join(VIEWS)}")
    if args.make and not (run / "run.json").exists():
        make_run(run)
    if not (run / "run.json").exists():
        sys.exit(f"bench_dashboard: {run}: not a run folder (no run.json)")

    rows: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(dir=run.resolve().parent, prefix=".bench-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        for name in ("measured", "warmup"):
            link_copy(run, runs / name)
        log = Path(tmp) / "streamlit.log"
        port = B.free_port()
        for i in range(args.repeat):
            one_round(runs, port, args.moves, rows, log, args.screenshot if i == 0 else None, chosen)
            floor_round(Path(tmp), port, rows, log)
    width = max(len(r) for r in rows)
    print(f"dashboard on {run} (headless Chromium, this machine; {args.repeat} round(s), seconds)")
    print(f"  {'':<{width}}  {'median':>7} {'max':>7}  n")
    for what, seconds in rows.items():
        print(f"  {what:<{width}}  {statistics.median(seconds):7.2f} {max(seconds):7.2f}  {len(seconds)}")
    print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()

"""The guppy dashboard: replay a recorded run (or watch one train) in the browser.

    streamlit run dashboards/app.py                        # runs from ./runs, on localhost
    streamlit run dashboards/app.py -- --runs-dir /data/runs
    GUPPY_RUNS_DIR=/data/runs streamlit run dashboards/app.py

Reads runs only through `guppy.open_run`. Only folders inside the runs directory can be
opened (also from a `?run=` link). The server binds to localhost (.streamlit/config.toml);
pass `--server.address 0.0.0.0` to share it on purpose.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboards/ on the path
    sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402

import streamlit as st  # noqa: E402

from dashboards import shaping  # noqa: E402
from dashboards.alignment import one_per_setting, sweep_members  # noqa: E402
from dashboards.cache import READ_ERRORS, RunHandle, freeze_imports  # noqa: E402
from dashboards.views import COMPARED, VIEWS  # noqa: E402


def runs_dir_from(argv: list[str]) -> Path:
    """--runs-dir after `--` on the streamlit command line, else $GUPPY_RUNS_DIR, else runs/."""
    parser = argparse.ArgumentParser(prog="dashboards/app.py", add_help=False)
    parser.add_argument("--runs-dir", default=os.environ.get("GUPPY_RUNS_DIR", "runs"),
                        help="folder holding run folders (default: $GUPPY_RUNS_DIR or runs)")
    args, _ = parser.parse_known_args(argv)
    return Path(args.runs_dir)


def open_handle(runs_dir: Path, name: str) -> RunHandle | None:
    """The run, or None after an error message in the page (the rest of the app keeps working)."""
    try:
        path = shaping.safe_run_path(runs_dir, name)
    except ValueError as e:
        st.error(str(e))
        return None
    try:
        h = RunHandle.open(name, path)
    except READ_ERRORS as e:
        st.error(f"Run **{name}** cannot be read: {e}")
        return None
    for step, why in h.bad.items():
        st.warning(f"{name}: snapshot at step {step} is unreadable and is skipped: {why}")
    return h


def sidebar(runs_dir: Path, names: list[str]) -> tuple[str, list[str], str, bool]:
    q = st.query_params
    asked = q.get("run")
    if asked and asked not in names:  # a link to a run that is not listed: let safe_run_path judge it
        names = [asked, *names]
    st.sidebar.title("guppy")
    st.sidebar.caption(f"runs from `{runs_dir}`")
    name = st.sidebar.selectbox("run", names, index=names.index(asked) if asked in names else 0, key="run")
    view_names = list(VIEWS)
    view = st.sidebar.radio("view", view_names, key="view",
                            index=view_names.index(q["view"]) if q.get("view") in view_names else 0)
    compare = []
    if VIEWS[view] in ("timeline", "overview", *COMPARED):  # the views that draw several runs
        compare = st.sidebar.multiselect("compare with (up to 3 runs)", [n for n in names if n != name],
                                         max_selections=3, key="compare")
        members = sweep_members(runs_dir, name.split("/")[0]) if "/" in name else []
        if len(members) > 1 and st.sidebar.toggle("side by side: this run's sweep", key="compare_sweep",
                                                  help="One run per setting (its first seed), up to 4."):
            mine_first = sorted(members, key=lambda m: m[0] != name)  # this run stands for its own setting
            compare = one_per_setting(mine_first, 4)[1:]
    live = st.sidebar.toggle("auto-refresh (live run)", key="live", help="Show new snapshots as they land.")
    if q.get("run") != name or q.get("view") != view:
        st.query_params.update(run=name, view=view)
    return name, compare, view, live


def watch(path: Path, seconds: float = 3.0) -> None:
    """While on, look for new snapshots / metrics every few seconds and rerun the page if any."""
    seen = shaping.run_signature(path)

    @st.fragment(run_every=seconds)
    def poll():
        if shaping.run_signature(path) != seen:
            st.rerun()

    poll()


def main() -> None:
    st.set_page_config(page_title="guppy dashboard", page_icon="🐟", layout="wide")
    runs_dir = runs_dir_from(sys.argv[1:])
    names = shaping.list_runs(runs_dir)
    if not names and not st.query_params.get("run"):
        st.title("guppy dashboard")
        st.info(f"No runs in `{runs_dir}` yet. Make a recorded run, then reload this page:")
        st.code(shaping.MAKE_A_RUN.format(runs_dir=runs_dir), language="bash")
        st.caption("Or point the dashboard elsewhere: `streamlit run dashboards/app.py -- --runs-dir PATH`.")
        return
    name, compare, view, live = sidebar(runs_dir, names)
    st.title(f"{name} · {view}")
    h = open_handle(runs_dir, name)
    if h is None:
        return
    others = [o for o in (open_handle(runs_dir, c) for c in compare) if o is not None]
    try:
        if view == "Sweep":
            importlib.import_module("dashboards.views.sweep").render(runs_dir, name)
        elif others and VIEWS[view] in COMPARED:
            importlib.import_module("dashboards.views.compare").render(VIEWS[view], [h, *others])
        else:
            importlib.import_module(f"dashboards.views.{VIEWS[view]}").render(h, others)
    except READ_ERRORS as e:  # a file that broke while reading: say which, keep the app alive
        st.error(f"{name}: {e}")
    if live:
        watch(h.path)
    freeze_imports()


main()
